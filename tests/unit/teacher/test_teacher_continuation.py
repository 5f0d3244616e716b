"""Two fixes to the teacher stages: a second round for prefilled replies that ended their turn
after the new instruction, and ``fallback_truncated`` for replies cut at ``max_new_tokens``.

The continuation is driven by a scripted prefill-capable teacher (and checked on the real
embedded model in one slow test); truncation by the loopback OpenAI server, which cuts replies
at the request's ``max_tokens`` like a real server, and by the local backends' own flags.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rtune.components.common.records import read_jsonl, write_jsonl
from rtune.components.reflect_instruction.reflect import reflect_instructions
from rtune.components.reflect_response.reflect import reflect_responses
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.parsing import (
    PARSE_STATUSES,
    leading_fields,
    parse_reply,
    unfinished_field,
)
from rtune.components.teacher.prompts import (
    INSTRUCTION_PHASE,
    RESPONSE_PHASE,
    build_request,
    continuation_prefill,
)
from rtune.components.teacher.protocol import Completion, OnDone, TeacherRequest
from rtune.components.teacher.runner import PENDING
from rtune.components.teacher.transformers_backend import TransformersTeacher, stop_text_at_end
from tests.fakes.openai_server import FakeOpenAIServer, Fault, sample_instruction
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
NEW_ANSWER = f"[{INSTRUCTION_PHASE.outputs[1].marker}]"  # "[New Answer]"


class Killed(RuntimeError):
    """Stands in for a kill during the second round."""


class ContinuingTeacher:
    """A prefill-capable teacher like the 135M model: asked plainly it writes only a new
    instruction and ends its turn; asked with ``[New Answer]`` prefilled it writes the answer.

    ``full_for`` names samples it answers completely in one go; ``kill_in_round2`` raises once
    that many second-round answers were delivered.
    """

    prefills = True
    structured = False

    def __init__(self, full_for: Sequence[str] = (), kill_in_round2: int | None = None) -> None:
        self.full_for = set(full_for)
        self.kill_in_round2 = kill_in_round2
        self.first: list[TeacherRequest] = []
        self.second: list[TeacherRequest] = []

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        for index, request in enumerate(requests):
            instruction = sample_instruction({"messages": list(request.messages)})
            if NEW_ANSWER in request.prefill:
                if self.kill_in_round2 is not None and len(self.second) >= self.kill_in_round2:
                    raise Killed("killed in round 2")
                self.second.append(request)
                reply = Completion(f"The answer to {instruction}.", "scripted", 150, 20, 0.25)
            else:
                self.first.append(request)
                text = f"Better: {instruction}"
                if instruction in self.full_for:
                    text += f"\n{NEW_ANSWER}\nAnswered at once."
                reply = Completion(text, "scripted", 100, 10, 0.5)
            on_done(index, reply)


def prepared(count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"r{i}", "instruction": f"Task {i}: explain rain.", "input": "", "output": f"A{i}."}
        for i in range(count)
    ]


# The behaviour of earlier releases (concise wording, no repair, whole fallback) stays available;
# these tests hold it. The faithful default is held by test_teacher_faithful.py.
EARLIER = {"prompt_style": "concise", "repair": False, "fallback": "whole"}


def run_phase1(tmp_path: Path, teacher: Any, count: int = 3, **config: Any) -> Any:
    write_jsonl(tmp_path / "in.jsonl", prepared(count))
    return reflect_instructions(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        TeacherConfig(**{**EARLIER, **config}),
        teacher=teacher,
        progress=False,
    )


def test_an_instruction_only_reply_gets_a_second_round_for_the_answer(tmp_path: Path) -> None:
    teacher = ContinuingTeacher(full_for=["Task 2: explain rain."])
    summary = run_phase1(tmp_path, teacher)
    assert len(teacher.first) == 3 and len(teacher.second) == 2  # r2 was complete at once
    for request in teacher.second:
        instruction = sample_instruction({"messages": list(request.messages)})
        assert request.prefill == f"[New Instruction]\nBetter: {instruction}\n[New Answer]\n"
        assert request.prefill.startswith(INSTRUCTION_PHASE.prefill)
    records = read_jsonl(tmp_path / "out.jsonl")
    first = records[0]
    assert first["candidates"]["Q"] == {
        "instruction": "Better: Task 0: explain rain.",
        "input": "",
        "output": "The answer to Task 0: explain rain..",
    }
    meta = first["teacher"]["instruction"]
    assert meta["parse_status"] == "ok" and meta["error"] is None
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (250, 30)
    assert meta["attempts"] == 2 and meta["rounds"] == 2 and meta["latency_s"] == 0.75
    once = records[2]["teacher"]["instruction"]
    assert once["rounds"] == 1 and once["completion_tokens"] == 10
    assert records[2]["candidates"]["Q"]["output"] == "Answered at once."
    assert summary.parse_ok == 3 and summary.continued == 2
    assert summary.prompt_tokens == 2 * 250 + 100 and "continued=2" in summary.line("instruction")


def test_no_second_round_for_a_placeholder_or_a_cut_instruction(tmp_path: Path) -> None:
    class Lazy(ContinuingTeacher):
        def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
            self.first.extend(requests)
            on_done(0, Completion("...", "scripted", 100, 3, 0.1))  # a placeholder
            on_done(1, Completion("Better: Task 1 and", "scripted", 100, 64, 0.1, truncated=True))

    teacher = Lazy()
    summary = run_phase1(tmp_path, teacher, count=2, max_new_tokens=64)
    assert len(teacher.first) == 2 and teacher.second == []
    metas = [r["teacher"]["instruction"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert [m["parse_status"] for m in metas] == ["fallback_parse", "fallback_truncated"]
    assert "max_new_tokens=64" in metas[1]["error"] and "new_answer" in metas[1]["error"]
    assert summary.continued == 0 and summary.fallback_truncated == 1


def test_a_kill_in_round_two_resumes_at_round_two(tmp_path: Path) -> None:
    with pytest.raises(Killed):
        run_phase1(tmp_path, ContinuingTeacher(kill_in_round2=1), count=4)
    checkpoint = read_jsonl(tmp_path / "out.jsonl.partial.jsonl")[1:]
    latest = {entry["key"]: entry["result"] for entry in checkpoint}
    assert sum(PENDING in result for result in latest.values()) == 3  # r0 finished round 2
    again = ContinuingTeacher()
    summary = run_phase1(tmp_path, again, count=4)
    assert again.first == [] and len(again.second) == 3  # round one is not asked again
    metas = [r["teacher"]["instruction"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert all(m["parse_status"] == "ok" and m["rounds"] == 2 for m in metas)
    assert all(m["prompt_tokens"] == 250 for m in metas)  # round one's cost survived the kill
    assert summary.resumed_from_checkpoint == 1 and summary.completed_now == 3
    assert not (tmp_path / "out.jsonl.partial.jsonl").exists()


def test_the_openai_backend_gets_no_second_round(tmp_path: Path) -> None:
    def instruction_only(body: dict[str, Any]) -> str:
        return f"[New Instruction]\nBetter: {sample_instruction(body)}"

    with FakeOpenAIServer(reply=instruction_only) as server:
        summary = run_phase1(tmp_path, None, backend="openai", url=server.url, model="m")
        asked = len(server.completions)
    assert asked == 3 and summary.fallback_parse == 3 and summary.continued == 0
    metas = [r["teacher"]["instruction"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert all(m["rounds"] == 1 and "new_answer" in m["error"] for m in metas)


def test_replies_cut_at_max_tokens_fall_back_in_both_phases(tmp_path: Path) -> None:
    """The loopback server cuts the 20-odd-word default reply at 12 words (finish_reason
    "length"): the answer is unfinished, so neither phase may keep it."""
    write_jsonl(tmp_path / "in.jsonl", prepared(2))
    with FakeOpenAIServer() as server:
        config = TeacherConfig(
            backend="openai", url=server.url, model="m", max_new_tokens=12, **EARLIER
        )
        first = reflect_instructions(
            tmp_path / "in.jsonl", tmp_path / "p1.jsonl", config, progress=False
        )
        records = read_jsonl(tmp_path / "p1.jsonl")
        for record in records:
            record["phase1"] = {"winner": "ori", "reason": "test"}
        write_jsonl(tmp_path / "sel.jsonl", records)
        short = dataclasses.replace(config, max_new_tokens=9)
        second = reflect_responses(
            tmp_path / "sel.jsonl", tmp_path / "p2.jsonl", short, progress=False
        )
    assert first.fallback_truncated == 2 and first.parse_ok == 0
    assert second.fallback_truncated == 2 and "fallback_truncated=2" in second.line("response")
    for record in read_jsonl(tmp_path / "p2.jsonl"):
        assert record["candidates"]["Q"] == record["candidates"]["ori"]
        assert record["candidates"]["A"]["output"] == record["candidates"]["ori"]["output"]
        for phase, budget in (("instruction", 12), ("response", 9)):
            meta = record["teacher"][phase]
            assert meta["parse_status"] == "fallback_truncated"
            assert f"reply cut at max_new_tokens={budget}" in meta["error"]
            assert "raise teacher.max_new_tokens" in meta["error"]


def test_a_cut_after_the_answer_was_finished_is_kept(tmp_path: Path) -> None:
    finished = "[New Instruction]\nSay why.\n[New Answer]\nBecause.\n<instruction>\nNext"
    unfinished = "[New Instruction]\nSay why.\n[New Answer]\nBecause the"
    write_jsonl(tmp_path / "in.jsonl", prepared(2))
    with FakeOpenAIServer() as server:
        server.inject(
            Fault(text=finished, finish_reason="length"),
            Fault(text=unfinished, finish_reason="length"),
        )
        config = TeacherConfig(
            backend="openai", url=server.url, model="m", concurrency=1, **EARLIER
        )
        summary = reflect_instructions(
            tmp_path / "in.jsonl", tmp_path / "out.jsonl", config, progress=False
        )
    kept, cut = read_jsonl(tmp_path / "out.jsonl")
    assert kept["candidates"]["Q"]["output"] == "Because."
    assert cut["teacher"]["instruction"]["parse_status"] == "fallback_truncated"
    assert summary.parse_ok == 1 and summary.fallback_truncated == 1


@pytest.mark.parametrize(
    ("phase", "text", "unfinished"),
    [
        (INSTRUCTION_PHASE, "[New Instruction]\nDo it.\n[New Answer]\nIt is do", "new_answer"),
        (INSTRUCTION_PHASE, "[New Instruction]\nDo it and", "new_answer"),
        (INSTRUCTION_PHASE, "[New Instruction]\nDo.\n[New Answer]\nDone.\n[Instruction]\nx", None),
        (INSTRUCTION_PHASE, '{"new_instruction": "Do.", "new_answer": "Done."} and', None),
        (RESPONSE_PHASE, "[Better Answer]\nThe tilt of the", "better_answer"),
        (RESPONSE_PHASE, "<output>[Better Answer]\nTilt.</output> more", None),
        (RESPONSE_PHASE, "[Feedback]\nToo short, and", "better_answer"),
    ],
)
def test_unfinished_field_of_a_cut_reply(phase: Any, text: str, unfinished: str | None) -> None:
    assert unfinished_field(phase, text) == unfinished


def test_leading_fields_and_the_continuation_prefill() -> None:
    sample = {"instruction": "Do it.", "input": "", "output": "Done."}
    lead = leading_fields(
        INSTRUCTION_PHASE, "Do it well.\n<instruction>", sample, "[New Instruction]\n"
    )
    assert lead == {"new_instruction": "Do it well."}
    assert leading_fields(INSTRUCTION_PHASE, "Do it.", sample, "[New Instruction]\n") == {}
    assert continuation_prefill(INSTRUCTION_PHASE, lead) == (
        "[New Instruction]\nDo it well.\n[New Answer]\n"
    )
    with pytest.raises(ValueError, match="leading part"):
        continuation_prefill(INSTRUCTION_PHASE, {"new_answer": "x"})


def tiny_request(stop: tuple[str, ...] = ()) -> TeacherRequest:
    sample = {"instruction": "Name three primary colors.", "input": "", "output": "Red."}
    request = build_request(
        INSTRUCTION_PHASE, sample, few_shot=False, structured=False, prefill=True
    )
    return dataclasses.replace(request, stop=stop)


def generate(teacher: TransformersTeacher, request: TeacherRequest) -> Completion:
    done: list[Completion] = []
    teacher.complete_many([request], lambda _, completion: done.append(completion))
    return done[0]


def test_transformers_flags_a_row_that_spent_its_budget(tiny_model_dir: Path) -> None:
    teacher = TransformersTeacher(TeacherConfig(model=str(tiny_model_dir), max_new_tokens=4))
    cut = generate(teacher, tiny_request())
    assert cut.truncated and cut.completion_tokens == 4
    teacher.config.max_new_tokens = 12
    free = generate(teacher, tiny_request())
    stop = (free.text[:4],)  # the random model's own first words: it will produce them
    stopped = generate(teacher, tiny_request(stop))
    assert not stopped.truncated and (stopped.completion_tokens or 0) < 12
    # A stop text completed by the very last budgeted token ends the row; it was not cut.
    teacher.config.max_new_tokens = stopped.completion_tokens or 0
    assert not generate(teacher, tiny_request(stop)).truncated


def test_stop_text_must_end_in_the_last_token() -> None:
    assert stop_text_at_end("abc STOP", "abc ST", ["STOP"])
    assert stop_text_at_end("abc STOPx", "abc STOP", ["STOP"]) is False
    assert stop_text_at_end("abc", "ab", []) is False


def test_vllm_reports_length_and_gets_a_second_round(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """vLLM prefills too: an instruction-only reply is continued, a "length" finish is cut."""
    prefills: list[str] = []

    class LLM:
        def __init__(self, model: str, **_: Any) -> None:
            self.model = model

        def get_tokenizer(self) -> Any:
            return SimpleNamespace(encode=lambda text, **_: text.split())

        def chat(self, conversations: list[Any], params: Any, **_: Any) -> list[Any]:
            outputs = []
            for conversation in conversations:
                prefill = conversation[-1]["content"]
                prefills.append(prefill)
                cut = "Task 1" in sample_instruction({"messages": conversation})
                text = "It rains because" if NEW_ANSWER in prefill else "Why does it rain?"
                finish = "length" if cut and NEW_ANSWER in prefill else "stop"
                best = SimpleNamespace(text=text, token_ids=[1, 2], finish_reason=finish)
                outputs.append(SimpleNamespace(prompt_token_ids=[0] * 50, outputs=[best]))
            return outputs

    module = types.ModuleType("vllm")
    module.LLM = LLM  # type: ignore[attr-defined]
    module.SamplingParams = lambda **kwargs: kwargs  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    summary = run_phase1(tmp_path, None, count=2, backend="vllm", model=str(tmp_path / "m"))
    assert prefills[2:] == ["[New Instruction]\nWhy does it rain?\n[New Answer]\n"] * 2
    ok, cut = (r["teacher"]["instruction"] for r in read_jsonl(tmp_path / "out.jsonl"))
    assert ok["parse_status"] == "ok" and ok["rounds"] == 2 and ok["prompt_tokens"] == 100
    assert cut["parse_status"] == "fallback_truncated" and cut["rounds"] == 2
    assert summary.continued == 2


@pytest.mark.slow
def test_embedded_model_with_the_second_round(embedded_model_dir: Path, tmp_path: Path) -> None:
    """Two seed records through the real 135M teacher. Reports how many were usable after the
    first round alone (the old behaviour) and after the second; asserts only the structure."""
    # Seeds 2-5: in the 16-record run seed 1 rambled to the budget; these end their turn early.
    seeds = read_jsonl(ROOT / "components/prepare/data/seed.jsonl")[1:3]
    write_jsonl(tmp_path / "in.jsonl", [{**s, "flags": []} for s in seeds])
    config = TeacherConfig(max_new_tokens=96, batch_size=2, **EARLIER)
    teacher = TransformersTeacher(config)
    prefills: list[str] = []
    ask = teacher.complete_many

    def logged(requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        prefills.extend(r.prefill for r in requests)
        ask(requests, on_done)

    teacher.complete_many = logged  # type: ignore[method-assign]
    summary = reflect_instructions(
        tmp_path / "in.jsonl", tmp_path / "out.jsonl", config, teacher=teacher, progress=False
    )
    records = read_jsonl(tmp_path / "out.jsonl")
    metas = [r["teacher"]["instruction"] for r in records]
    ok_in_one = sum(m["parse_status"] == "ok" and m["rounds"] == 1 for m in metas)
    print(
        f"\nembedded teacher, 2 seed records: ok after round one {ok_in_one}/2, "
        f"ok with the second round {summary.parse_ok}/2 "
        f"(continued {summary.continued}; statuses {[m['parse_status'] for m in metas]})"
    )
    assert [r["id"] for r in records] == [s["id"] for s in seeds]
    assert summary.continued == len(prefills) - 2
    assert all(p == INSTRUCTION_PHASE.prefill for p in prefills[:2])
    for prefill in prefills[2:]:
        assert prefill.startswith(INSTRUCTION_PHASE.prefill) and prefill.endswith(
            f"\n{NEW_ANSWER}\n"
        )
    for record, meta in zip(records, metas, strict=True):
        assert meta["parse_status"] in PARSE_STATUSES and meta["rounds"] in (1, 2)
        assert meta["completion_tokens"] <= 96 * meta["rounds"]
        if meta["parse_status"] == "ok":
            q = record["candidates"]["Q"]
            assert q["instruction"].strip() and q["output"].strip() and q["input"] == ""
        else:
            assert record["candidates"]["Q"] == record["candidates"]["ori"] and meta["error"]


def test_a_recited_reply_slot_is_a_placeholder_and_is_not_continued() -> None:
    """Seen on the 135M model: the new instruction padded with the format's slot lines."""
    sample = {"instruction": "Do it.", "input": "", "output": "Done."}
    padded = "How many eggs for 30 cookies?\n<the answer to the new instruction>"
    assert leading_fields(INSTRUCTION_PHASE, padded, sample, "[New Instruction]\n") == {}
    reply = f"{padded}\n[New Answer]\n7.5 eggs."
    parsed = parse_reply(INSTRUCTION_PHASE, reply, sample, "[New Instruction]\n")
    assert parsed.status == "fallback_placeholder" and "slot" in (parsed.reason or "")
