"""The teacher, faithful by default: critique first in every reply style, one repair round over
real HTTP, per-field fallback, over-long samples cut to the teacher's budget, and the earlier
wording kept as the ``concise`` style."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.records import read_jsonl, write_jsonl
from rtune.components.reflect_instruction.reflect import reflect_instructions
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.prompts import build_request, phase_for
from rtune.components.teacher.protocol import Completion, OnDone, TeacherRequest
from rtune.components.teacher.sample_cut import cut_to_budget
from tests.fakes.openai_server import CRITIQUE, FakeOpenAIServer, Fault, sample_instruction

SAMPLE = {"instruction": "Why does it rain?", "input": "", "output": "Clouds."}
NEW = "Explain how warm, moist air becomes rain, naming each physical step and why it happens."


def faithful(name: str) -> Any:
    return phase_for(TeacherConfig().prompt_style, name)


def served(url: str, **overrides: Any) -> TeacherConfig:
    settings: dict[str, Any] = {"backend": "openai", "url": url, "model": "m", "few_shot": False}
    return TeacherConfig(**{**settings, **overrides})


def run(tmp_path: Path, config: TeacherConfig, records: list[dict[str, str]], **kw: Any) -> Any:
    write_jsonl(tmp_path / "in.jsonl", records)
    summary = reflect_instructions(
        tmp_path / "in.jsonl", tmp_path / "out.jsonl", config, progress=False, **kw
    )
    return summary, read_jsonl(tmp_path / "out.jsonl")


def record(rid: str = "r0", **fields: str) -> dict[str, str]:
    return {"id": rid, **SAMPLE, **fields}


# -- item 1/4/5: what the teacher is asked ---------------------------------------------------


def test_the_default_style_judges_instruction_and_answer_then_asks_for_a_harder_one() -> None:
    assert TeacherConfig().prompt_style == "faithful"
    request = build_request(
        faithful("instruction"), SAMPLE, few_shot=False, structured=True, prefill=False
    )
    schema = request.json_schema or {}
    assert list(schema["properties"]) == ["critique", "new_instruction", "new_answer"]
    assert schema["required"] == ["critique", "new_instruction", "new_answer"]
    text = request.messages[-1]["content"]
    for criterion in ("Topic complexity", "Ambiguity", "Reasoning"):  # the instruction's
        assert f"Instruction - {criterion}" in text
    for criterion in ("Helpfulness", "Relevance", "Accuracy", "Level of detail"):  # the answer's
        assert f"Answer - {criterion}" in text
    assert "lead to the weaknesses of the answer" in text  # why the instruction led to it
    assert "more complex" in text and "cannot be answered directly" in text
    assert "self-contained" in text and "relevant" in text
    assert "original intent" not in text


def test_the_response_phase_judges_the_four_answer_criteria_first() -> None:
    request = build_request(
        faithful("response"), SAMPLE, few_shot=False, structured=True, prefill=False
    )
    assert list((request.json_schema or {})["properties"]) == ["critique", "better_answer"]
    text = request.messages[-1]["content"]
    for criterion in ("Helpfulness", "Relevance", "Accuracy", "Level of detail"):
        assert criterion in text


@pytest.mark.parametrize("name", ["instruction", "response"])
def test_every_reply_style_starts_with_the_critique(name: str) -> None:
    phase = faithful(name)
    markers = build_request(phase, SAMPLE, few_shot=True, structured=False, prefill=False)
    text = markers.messages[-1]["content"]
    assert text.index("[Critique]") < text.index(f"[{phase.outputs[0].marker}]")
    prefilled = build_request(phase, SAMPLE, few_shot=True, structured=False, prefill=True)
    assert prefilled.prefill == "[Critique]\n"
    examples = [m["content"] for m in prefilled.messages if m["role"] == "assistant"]
    assert len(examples) == 2 and all(e.startswith("[Critique]\n") for e in examples)


def test_the_concise_style_keeps_the_earlier_wording() -> None:
    phase = phase_for("concise", "instruction")
    request = build_request(phase, SAMPLE, few_shot=False, structured=True, prefill=False)
    assert list((request.json_schema or {})["properties"]) == ["new_instruction", "new_answer"]
    assert "keeps the original intent" in request.messages[-1]["content"]
    assert phase.prefill == "[New Instruction]\n"
    with pytest.raises(ValueError, match="prompt_style"):
        TeacherConfig(prompt_style="verbose")


def test_the_critique_is_kept_on_the_record_from_a_structured_reply(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        summary, [out] = run(tmp_path, served(server.url, structured_output=True), [record()])
        [body] = [r.body for r in server.completions]
    schema = body["response_format"]["json_schema"]["schema"]
    assert next(iter(schema["properties"])) == "critique"
    meta = out["teacher"]["instruction"]
    assert meta["critique"] == f"{CRITIQUE} (Why does it rain?)"
    assert meta["prompt_style"] == "faithful" and meta["parse_status"] == "ok"
    assert summary.parse_ok == 1


# -- item 2: one repair round, then per-field fallback ----------------------------------------


def test_an_unusable_reply_is_sent_back_once_with_what_was_wrong(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        server.inject(Fault(text="This sample is fine as it is."))
        summary, [out] = run(tmp_path, served(server.url), [record()])
        first, repair = [r.body["messages"] for r in server.completions]
    assert repair[: len(first)] == first
    assert repair[-2] == {"role": "assistant", "content": "This sample is fine as it is."}
    note = repair[-1]["content"]
    assert "could not be used" in note and "no new_instruction" in note and "[Critique]" in note
    meta = out["teacher"]["instruction"]
    assert meta["parse_status"] == "ok" and meta["rounds"] == 2
    assert any(reason.startswith("repaired: no new_instruction") for reason in meta["reasons"])
    assert out["candidates"]["Q"]["instruction"].startswith("Why does it rain? Explain")
    assert summary.repaired == 1 and summary.parse_ok == 1


PARTIAL_REPLY = f"[Critique]\nToo easy.\n[New Instruction]\n{NEW}\n[New Answer]\n..."


@pytest.mark.parametrize(
    ("fallback", "status", "instruction"),
    [("per_field", "partial", NEW), ("whole", "fallback_placeholder", SAMPLE["instruction"])],
)
def test_fields_fall_back_one_by_one_after_the_single_repair(
    tmp_path: Path, fallback: str, status: str, instruction: str
) -> None:
    """The answer stays a placeholder after the repair: per_field keeps the new instruction
    (with the original answer, as the reference does); whole keeps nothing."""
    with FakeOpenAIServer() as server:
        server.inject(Fault(text=PARTIAL_REPLY), Fault(text=PARTIAL_REPLY))
        summary, [out] = run(tmp_path, served(server.url, fallback=fallback), [record()])
        asked = len(server.completions)
    assert asked == 2  # one repair, never a third request
    q = out["candidates"]["Q"]
    assert (q["instruction"], q["output"]) == (instruction, SAMPLE["output"])
    meta = out["teacher"]["instruction"]
    assert meta["parse_status"] == status and "new_answer is a placeholder" in meta["error"]
    assert "fallback new_answer: fallback_placeholder, kept the original" in meta["reasons"]
    assert meta["critique"] == "Too easy."
    assert summary.partial == (fallback == "per_field")


def test_no_repair_when_switched_off(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        server.inject(Fault(text="Nothing to add."))
        _, [out] = run(tmp_path, served(server.url, repair=False), [record()])
        assert len(server.completions) == 1
    assert out["teacher"]["instruction"]["parse_status"] == "fallback_parse"


class CritiqueThenStop:
    """A prefilling teacher like the 135M model: asked at ``[Critique]`` it writes a critique and
    ends its turn; asked with ``[New Instruction]`` prefilled it writes the rest."""

    prefills = True
    structured = False

    def __init__(self) -> None:
        self.prefills_seen: list[str] = []

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        for index, request in enumerate(requests):
            self.prefills_seen.append(request.prefill)
            if request.prefill.endswith("[New Instruction]\n"):
                text = f"{NEW}\n[New Answer]\nWarm air rises, cools, condenses and falls."
            else:
                text = "Too easy: one word asked, one word given."
            on_done(index, Completion(text, "local", 50, 10, 0.1))


def test_a_prefilled_critique_that_ends_its_turn_is_continued(tmp_path: Path) -> None:
    teacher = CritiqueThenStop()
    _, [out] = run(tmp_path, TeacherConfig(), [record()], teacher=teacher)
    assert teacher.prefills_seen == [
        "[Critique]\n",
        "[Critique]\nToo easy: one word asked, one word given.\n[New Instruction]\n",
    ]
    meta = out["teacher"]["instruction"]
    assert meta["parse_status"] == "ok" and meta["rounds"] == 2
    assert meta["critique"] == "Too easy: one word asked, one word given."
    assert out["candidates"]["Q"]["instruction"] == NEW


# -- item 3: over-long samples are cut to the teacher's budget --------------------------------


def words(text: str) -> int:
    return len(text.split())


def test_the_answer_is_cut_by_the_overflow_and_the_instruction_never() -> None:
    sample = {"instruction": "one two three ", "input": "four ", "output": " ".join(["w"] * 20)}
    seen, removed = cut_to_budget(sample, 10, words)
    assert seen["instruction"] == "one two three " and seen["input"] == "four "
    assert words(seen["output"]) == 6 and removed == 14
    assert cut_to_budget(sample, 100, words) == (sample, 0)
    assert cut_to_budget(sample, 2, words)[0]["output"] == ""


def test_an_over_long_sample_is_sent_cut_and_the_record_says_so(tmp_path: Path) -> None:
    long_answer = "Rain forms when droplets grow. " * 200  # ~6,000 characters
    with FakeOpenAIServer() as server:
        summary, [out] = run(
            tmp_path, served(server.url, max_sample_tokens=100), [record(output=long_answer)]
        )
        [body] = [r.body for r in server.completions]
    content = body["messages"][-1]["content"]
    sent = content[content.index("<answer>\n") + 9 : content.index("\n</answer>")]
    assert sent.startswith("Rain forms when droplets grow.") and len(sent) <= 400 - 17
    assert sample_instruction(body) == "Why does it rain?"
    meta = out["teacher"]["instruction"]
    assert meta["sample_cut_tokens"] > 1000
    assert meta["reasons"][0].startswith("sample cut: the answer lost")
    assert out["candidates"]["ori"]["output"] == long_answer  # the record keeps its answer
    assert summary.sample_cut == 1


class RamblingCritic(CritiqueThenStop):
    """Like the 135M model at ``[Critique]``: it repeats itself until the budget cuts it off."""

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        for index, request in enumerate(requests):
            if request.prefill == "[Critique]\n":
                self.prefills_seen.append(request.prefill)
                text = "Too easy. No detail asked. " + "The task was too easy. " * 40
                on_done(index, Completion(text, "local", 50, 128, 0.1, truncated=True))
            else:
                super().complete_many([request], lambda _, c, index=index: on_done(index, c))


def test_a_critique_cut_by_the_budget_is_shortened_and_the_rewrite_asked_for(
    tmp_path: Path,
) -> None:
    """The budget stays the local one: a critique that ran into it is kept to its first two
    sentences and the model is asked again at ``[New Instruction]``."""
    teacher = RamblingCritic()
    summary, [out] = run(tmp_path, TeacherConfig(max_new_tokens=128), [record()], teacher=teacher)
    assert teacher.prefills_seen[1] == (
        "[Critique]\nToo easy. No detail asked.\n[New Instruction]\n"
    )
    meta = out["teacher"]["instruction"]
    assert meta["parse_status"] == "ok" and meta["critique"] == "Too easy. No detail asked."
    assert out["candidates"]["Q"]["instruction"] == NEW and summary.continued == 1
