"""The local teacher backends: transformers on real weights (the embedded default and a tiny
random model), and the vLLM backend checked by contract against a stand-in ``vllm`` module."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from rtune.components.common.records import read_jsonl, write_jsonl
from rtune.components.reflect_instruction.reflect import reflect_instructions
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.factory import make_teacher
from rtune.components.teacher.parsing import PARSE_STATUSES
from rtune.components.teacher.prompts import INSTRUCTION_PHASE, build_request
from rtune.components.teacher.protocol import Completion
from rtune.components.teacher.transformers_backend import (
    TransformersTeacher,
    batches_by_length,
    generated_length,
    render_prompt,
)
from tests.fakes.openai_server import sample_instruction

SAMPLES = [
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, blue, yellow."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Sort the numbers.", "input": "3, 1, 2", "output": "1, 2, 3"},
]


def requests_for(samples: list[dict[str, str]], few_shot: bool = True) -> list[Any]:
    return [
        build_request(INSTRUCTION_PHASE, s, few_shot=few_shot, structured=False, prefill=True)
        for s in samples
    ]


def collect(teacher: Any, requests: list[Any]) -> dict[int, Completion]:
    done: dict[int, Completion] = {}

    def on_done(index: int, completion: Completion) -> None:
        assert index not in done
        done[index] = completion

    teacher.complete_many(requests, on_done)
    return done


def test_batches_group_similar_lengths_longest_first() -> None:
    assert batches_by_length([5, 50, 7, 40, 6], 2) == [[1, 3], [2, 4], [0]]
    assert batches_by_length([], 4) == []


def test_generated_length_stops_at_the_first_end_of_turn() -> None:
    assert generated_length([11, 12, 2, 2, 2], {2}) == 3
    assert generated_length([11, 12, 13], {2}) == 3
    assert generated_length([0, 2], {0, 2}) == 1


def test_prompt_is_the_chat_template_ending_in_the_prefilled_marker(
    embedded_model_dir: Path,
) -> None:
    from rtune.components.common.models import load_tokenizer

    tokenizer = load_tokenizer(embedded_model_dir)
    [request] = requests_for(SAMPLES[1:2])
    prompt = render_prompt(tokenizer, request)
    assert prompt.endswith("<|im_start|>assistant\n[New Instruction]\n")
    assert prompt.count("<|im_start|>assistant\n[New Instruction]\n") == 3  # 2 examples + ours
    assert "<input>\nGood morning\n</input>" in prompt and prompt.startswith("<|im_start|>system\n")


def test_left_padded_batches_generate_what_each_prompt_generates_alone(
    tiny_model_dir: Path,
) -> None:
    """Left padding + the attention mask must make batching invisible in greedy output."""
    teacher = TransformersTeacher(
        TeacherConfig(model=str(tiny_model_dir), max_new_tokens=6, batch_size=3)
    )
    assert teacher.tokenizer.padding_side == "left"
    requests = requests_for(SAMPLES, few_shot=False)
    batched = collect(teacher, requests)
    teacher.config.batch_size = 1
    alone = collect(teacher, requests)
    assert sorted(batched) == [0, 1, 2]
    for index in range(3):
        assert batched[index].text == alone[index].text
        assert batched[index].prompt_tokens == alone[index].prompt_tokens
        assert 1 <= (batched[index].completion_tokens or 0) <= 6
        assert batched[index].prefill == "[New Instruction]\n"
    assert batched[0].prompt_tokens != batched[1].prompt_tokens  # really different lengths


def test_generation_stops_at_a_stop_text(tiny_model_dir: Path) -> None:
    """A row ends as soon as it produced one of the request's stop texts (greedy output of the
    random model is deterministic, so its own first words make a stop text it will produce)."""
    teacher = TransformersTeacher(
        TeacherConfig(model=str(tiny_model_dir), max_new_tokens=12, batch_size=1)
    )
    [request] = requests_for(SAMPLES[:1], few_shot=False)
    free = collect(teacher, [dataclasses.replace(request, stop=())])[0]
    assert free.completion_tokens == 12 and len(free.text) >= 4
    stopped = collect(teacher, [dataclasses.replace(request, stop=(free.text[:4],))])[0]
    assert (stopped.completion_tokens or 0) < 12
    assert free.text.startswith(stopped.text)  # the same greedy path, cut short


@pytest.mark.slow
def test_embedded_default_teacher_reports_status_tokens_and_latency(
    embedded_model_dir: Path,
    tmp_path: Path,
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", **s} for i, s in enumerate(SAMPLES[:2])])
    summary = reflect_instructions(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        TeacherConfig(max_new_tokens=12, batch_size=2),
        progress=False,
    )
    records = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in records] == ["r0", "r1"]
    for record in records:
        meta = record["teacher"]["instruction"]
        assert meta["parse_status"] in PARSE_STATUSES and meta["parse_status"] != "fallback_error"
        assert meta["model"] == embedded_model_dir.name
        assert meta["prompt_tokens"] > 500  # system + two worked examples + the sample
        # 12 tokens cut the critique: one continuation round at the next marker, each round
        # within its own max_new_tokens, never a third request
        assert meta["rounds"] in (1, 2) and meta["attempts"] == meta["rounds"]
        assert meta["rounds"] <= meta["completion_tokens"] <= 12 * meta["rounds"]
        assert meta["latency_s"] > 0
    assert summary.records == 2 and summary.completion_tokens <= 2 * 24


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeLLM:
    """Just enough of ``vllm.LLM``: remembers how it was built and called."""

    built: ClassVar[list[FakeLLM]] = []

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.model, self.kwargs, self.calls = model, kwargs, []
        FakeLLM.built.append(self)

    def get_tokenizer(self) -> Any:
        return SimpleNamespace(encode=lambda text, **_: text.split())

    def chat(
        self, conversations: list[list[dict[str, str]]], params: FakeSamplingParams, **kwargs: Any
    ) -> list[Any]:
        self.calls.append((conversations, params, kwargs))
        return [
            SimpleNamespace(
                prompt_token_ids=list(range(100 + i)),
                outputs=[
                    SimpleNamespace(
                        text=f"Better: {sample_instruction({'messages': c})}\n[New Answer]\nIt is so.",
                        token_ids=[5, 6, 7],
                    )
                ],
            )
            for i, c in enumerate(conversations)
        ]


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[FakeLLM]:
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.built = []
    return FakeLLM


def test_vllm_backend_sends_prefilled_chats_and_maps_outputs(
    fake_vllm: type[FakeLLM],
    tmp_path: Path,
) -> None:
    model_dir = tmp_path / "teacher-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", **s} for i, s in enumerate(SAMPLES)])
    config = TeacherConfig(
        backend="vllm",
        model=str(model_dir),
        max_new_tokens=77,
        temperature=0.2,
        batch_size=2,
        prompt_style="concise",  # the stand-in writes the concise reply ([New Instruction] first)
    )
    summary = reflect_instructions(
        tmp_path / "in.jsonl", tmp_path / "out.jsonl", config, progress=False
    )
    [llm] = fake_vllm.built
    assert llm.model == str(model_dir)
    assert [len(conversations) for conversations, _, _ in llm.calls] == [2, 1]
    for conversations, params, kwargs in llm.calls:
        assert params.kwargs["max_tokens"] == 77 and params.kwargs["temperature"] == 0.2
        assert "Judge the instruction on these criteria:" in params.kwargs["stop"]
        assert kwargs["continue_final_message"] is True
        assert kwargs["add_generation_prompt"] is False
        for conversation in conversations:
            assert conversation[-1] == {"role": "assistant", "content": "[New Instruction]\n"}
            assert conversation[0]["role"] == "system"
    records = read_jsonl(tmp_path / "out.jsonl")
    for record, sample in zip(records, SAMPLES, strict=True):
        assert record["candidates"]["Q"]["instruction"] == f"Better: {sample['instruction']}"
        meta = record["teacher"]["instruction"]
        assert meta["parse_status"] == "ok" and meta["completion_tokens"] == 3
        assert meta["prompt_tokens"] in (100, 101) and meta["model"] == str(model_dir)
    assert summary.parse_ok == 3


def test_vllm_backend_without_vllm_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(RuntimeError) as raised:
        make_teacher(TeacherConfig(backend="vllm"))
    message = str(raised.value)
    assert "pip install 'rtune[serve]'" in message and "serve image" in message
    assert "--teacher openai" in message
