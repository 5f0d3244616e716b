"""``teacher.response_format: reflection``: phase 2 asks for ``<thinking>``/``<reflection>``/
``<output>`` in every reply style, the parser accepts only well-formed tagged answers (anything
else is a parse failure that is repaired or falls back like any other), and the stored candidate
is the whole tagged answer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.records import read_jsonl, write_jsonl
from rtune.components.common.response_format import reflection_problem
from rtune.components.reflect_response.reflect import reflect_responses
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.parsing import FALLBACK_PARSE, FALLBACK_PLACEHOLDER, OK, parse_reply
from rtune.components.teacher.prompts import build_request, phase_for
from rtune.components.teacher.protocol import Completion, OnDone, TeacherRequest
from tests.fakes.openai_server import FakeOpenAIServer, Fault, reflection_answer

SAMPLE = {"instruction": "Name a prime number between 8 and 12.", "input": "", "output": "9"}
GOOD = (
    "<thinking>\n9 = 3 × 3, so it is not prime. 10 = 2 × 5. 11 has no divisor but 1 and "
    "itself.\n<reflection>\nThe old answer 9 was wrong.\n</reflection>\n</thinking>\n"
    "<output>\n11\n</output>"
)


def reflection(style: str = "faithful") -> Any:
    return phase_for(style, "response", "reflection")


def reply(answer: str) -> str:
    return f"[Critique]\nInaccurate: 9 is not prime.\n[Better Answer]\n{answer}"


# -- what the teacher is asked -----------------------------------------------------------------


@pytest.mark.parametrize("style", ["faithful", "concise"])
@pytest.mark.parametrize(
    ("structured", "prefill"), [(False, False), (True, False), (False, True)], ids=str
)
def test_every_reply_style_asks_for_the_tags(style: str, structured: bool, prefill: bool) -> None:
    request = build_request(
        reflection(style), SAMPLE, few_shot=True, structured=structured, prefill=prefill
    )
    asked = request.messages[-1]["content"]
    assert "inside <thinking>…</thinking>" in asked and "inside <output>…</output>" in asked
    if structured:
        description = request.json_schema["properties"]["better_answer"]["description"]
        assert "<thinking>" in description and "<output>" in description
    else:
        assert "[Better Answer]\n<thinking>\n" in asked and "\n<output>\n" in asked
    examples = [m["content"] for m in request.messages if m["role"] == "assistant"]
    assert len(examples) == 2
    assert all("<thinking>" in e and "</output>" in e for e in examples)
    if prefill:  # the critique first (faithful), or straight into the reasoning (concise)
        expected = "[Critique]\n" if style == "faithful" else "[Better Answer]\n<thinking>\n"
        assert request.prefill == expected


def test_plain_answers_ask_for_no_tags_and_the_instruction_phase_never_does() -> None:
    plain = build_request(
        phase_for("faithful", "response"), SAMPLE, few_shot=True, structured=False, prefill=True
    )
    assert "<output>" not in str(plain.messages) and plain.prefill == "[Critique]\n"
    assert phase_for("faithful", "instruction", "reflection") == phase_for(
        "faithful", "instruction"
    )
    assert reflection().version() != phase_for("faithful", "response").version()
    assert TeacherConfig(response_format="reflection").result_shaping()["response_format"]
    with pytest.raises(ValueError, match="response_format"):
        TeacherConfig(response_format="tagged")


# -- what the parser accepts -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        "<thinking>3 + 4 = 7.</thinking><output>7</output>",
        "<thinking>a</thinking>\n<reflection>b</reflection>\n<output>c</output>\n",
        "<thinking>a</thinking><output>Use the <thinking> tag literally.</output>",
    ],
)
def test_well_formed_answers_pass(text: str) -> None:
    assert reflection_problem(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<thinking>steps</thinking>\n11", "text outside the tags ('11')"),
        ("<thinking>steps</thinking>", "no <output>…</output> block after </thinking>"),
        ("<thinking>steps</thinking><output>11", "<output> is never closed"),
        ("<thinking>steps</thinking><output> \n</output>", "the <output> block is empty"),
        ("<output>11</output><thinking>steps</thinking>", "<output> is out of order"),
        ("<thinking>steps<output>11</output></thinking>", "<output> is out of order"),
        ("<thinking>steps<output>11</output>", "<output> is out of order"),
        ("<thinking>steps<reflection>oops</thinking><output>11</output>", "</thinking> is out"),
        ("<thinking>steps</reflection></thinking><output>11</output>", "</reflection> is out"),
        ("<thinking> </thinking><output>11</output>", "the <thinking> block is empty"),
        ("11", "text outside the tags ('11') before <thinking>"),
        ("<thinking>a</thinking><output>11</output>\nMore text.", "text after </output>"),
    ],
)
def test_malformed_answers_are_refused_with_the_reason(text: str, problem: str) -> None:
    assert problem in (reflection_problem(text) or "")
    parsed = parse_reply(reflection(), reply(text), SAMPLE)
    assert parsed.status == FALLBACK_PARSE
    assert parsed.reason is not None and "not in the reflection format" in parsed.reason


def test_a_tagged_answer_is_stored_whole_from_markers_and_json() -> None:
    import json

    from_markers = parse_reply(reflection(), reply(GOOD), SAMPLE)
    assert from_markers.status == OK and from_markers.fields == {"better_answer": GOOD}
    assert from_markers.critique == "Inaccurate: 9 is not prime."
    as_json = json.dumps({"critique": "Wrong.", "better_answer": GOOD})
    from_json = parse_reply(reflection(), as_json, SAMPLE)
    assert from_json.status == OK and from_json.fields == {"better_answer": GOOD}
    # a plain phase keeps reading a Reflection-style *teacher*'s <output> part only
    plain = parse_reply(
        phase_for("faithful", "response"), f"<output>{reply('Eleven.')}</output>", SAMPLE
    )
    assert plain.fields == {"better_answer": "Eleven."}


def test_a_reasoning_teachers_own_think_block_is_set_aside() -> None:
    parsed = parse_reply(reflection(), "<think>Let me see.</think>" + reply(GOOD), SAMPLE)
    assert parsed.status == OK and parsed.fields == {"better_answer": GOOD}


@pytest.mark.parametrize(
    ("output", "problem"),
    [("9", "the same text as the output"), ("<the final answer>", "placeholder")],
)
def test_placeholders_are_judged_on_the_output_part(output: str, problem: str) -> None:
    parsed = parse_reply(
        reflection(), reply(f"<thinking>Check it.</thinking><output>{output}</output>"), SAMPLE
    )
    assert parsed.status == FALLBACK_PLACEHOLDER and problem in (parsed.reason or "")


def test_reciting_the_format_slot_is_a_placeholder() -> None:
    text = (
        "<thinking>\n<your step-by-step reasoning; check each step>\n</thinking>\n"
        "<output>\n11\n</output>"
    )
    parsed = parse_reply(reflection(), reply(text), SAMPLE)
    assert parsed.status == FALLBACK_PLACEHOLDER and "slot" in (parsed.reason or "")


# -- one repair round, then the per-field fallback (the phase-2 stage over loopback HTTP) -------


def served(url: str, **overrides: Any) -> TeacherConfig:
    settings = {"backend": "openai", "url": url, "model": "m", "response_format": "reflection"}
    return TeacherConfig(**{**settings, **overrides})


def run(tmp_path: Path, config: TeacherConfig, **kw: Any) -> tuple[Any, dict[str, Any]]:
    write_jsonl(tmp_path / "in.jsonl", [{"id": "r0", **SAMPLE}])
    summary = reflect_responses(
        tmp_path / "in.jsonl", tmp_path / "out.jsonl", config, progress=False, **kw
    )
    [out] = read_jsonl(tmp_path / "out.jsonl")
    return summary, out


def test_the_repair_round_fixes_a_reply_without_output(tmp_path: Path) -> None:
    untagged = reply("<thinking>9 is 3 × 3.</thinking>\n11 is prime.")
    with FakeOpenAIServer() as server:
        server.inject(Fault(text=untagged))
        summary, out = run(tmp_path, served(server.url))
        _, repair = [r.body["messages"] for r in server.completions]
    note = repair[-1]["content"]
    assert repair[-2]["content"] == untagged
    assert "better_answer is not in the reflection format" in note and "<output>" in note
    meta = out["teacher"]["response"]
    assert meta["parse_status"] == OK and meta["rounds"] == 2
    assert any(
        r.startswith("repaired: better_answer is not in the reflection") for r in meta["reasons"]
    )
    answer = out["candidates"]["A"]["output"]
    assert answer == reflection_answer(
        SAMPLE["instruction"], f"A more detailed answer to: {SAMPLE['instruction']}"
    )
    assert reflection_problem(answer) is None
    assert summary.repaired == 1 and summary.parse_ok == 1


def test_a_reply_still_untagged_after_the_repair_falls_back_with_the_reason(
    tmp_path: Path,
) -> None:
    untagged = reply("11 is prime.")
    with FakeOpenAIServer() as server:
        server.inject(Fault(text=untagged), Fault(text=untagged))
        summary, out = run(tmp_path, served(server.url))
        assert len(server.completions) == 2
    meta = out["teacher"]["response"]
    assert meta["parse_status"] == FALLBACK_PARSE
    assert "better_answer is not in the reflection format" in meta["error"]
    assert "fallback better_answer: fallback_parse, kept the original" in meta["reasons"]
    assert out["candidates"]["A"]["output"] == SAMPLE["output"]
    assert summary.fallback_parse == 1


def test_a_structured_reply_is_asked_for_and_stored_tagged(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        _, out = run(tmp_path, served(server.url, structured_output=True))
        [body] = [r.body for r in server.completions]
    schema = body["response_format"]["json_schema"]["schema"]
    assert "<output>" in schema["properties"]["better_answer"]["description"]
    assert out["teacher"]["response"]["parse_status"] == OK
    assert reflection_problem(out["candidates"]["A"]["output"]) is None


class ReasonsWhenPrefilled:
    """A prefilling teacher like the 135M model: at ``[Critique]`` it writes a critique and an
    untagged answer; continued inside ``<thinking>`` it finishes the tagged answer."""

    prefills = True
    structured = False

    def __init__(self) -> None:
        self.prefills_seen: list[str] = []

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        for index, request in enumerate(requests):
            self.prefills_seen.append(request.prefill)
            if request.prefill.endswith("<thinking>\n"):
                text = "9 = 3 × 3; 11 is prime.\n</thinking>\n<output>\n11\n</output>"
            else:
                text = "Inaccurate: 9 is not prime.\n[Better Answer]\n11 is prime."
            on_done(index, Completion(text, "local", 50, 10, 0.1))


def test_a_prefilled_reply_is_continued_inside_thinking(tmp_path: Path) -> None:
    teacher = ReasonsWhenPrefilled()
    _, out = run(tmp_path, TeacherConfig(response_format="reflection"), teacher=teacher)
    assert teacher.prefills_seen == [
        "[Critique]\n",
        "[Critique]\nInaccurate: 9 is not prime.\n[Better Answer]\n<thinking>\n",
    ]
    assert out["teacher"]["response"]["parse_status"] == OK
    assert out["candidates"]["A"]["output"] == (
        "<thinking>\n9 = 3 × 3; 11 is prime.\n</thinking>\n<output>\n11\n</output>"
    )
