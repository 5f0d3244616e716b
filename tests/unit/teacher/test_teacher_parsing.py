"""The teacher's prompts and reply parser: every shape of reply we have seen, and the fallbacks."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rtune.components.teacher.parsing import (
    FALLBACK_PARSE,
    FALLBACK_PLACEHOLDER,
    OK,
    extract_markers,
    leading_fields,
    parse_reply,
    unfinished_field,
)
from rtune.components.teacher.prompts import (
    CONCISE_PHASES,
    INSTRUCTION_PHASE,
    RESPONSE_PHASE,
    PhaseSpec,
    build_request,
    render_reply,
)

SAMPLE = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
WANT = {
    "new_instruction": "Translate 'Good morning' into French and explain the greeting.",
    "new_answer": "Bonjour. It is the usual greeting until the evening.",
}


@pytest.mark.parametrize(
    "reply",
    [
        "[New Instruction]\n{i}\n[New Answer]\n{a}",
        "[Feedback]\nToo short.\n[New Instruction]\n{i}\n[New Answer]\n{a}",
        "**[New Instruction]**\n{i}\n**[New Answer]**\n{a}",
        "[New Instruction]: {i}\n[New Answer]: {a}",
        "**New Instruction:** {i}\n**New Answer:** {a}",
        "**New Instruction**: {i}\n\n**New Answer**: {a}",
        "New Instruction: {i}\nNew Answer: {a}",
        "### New Instruction\n{i}\n### New Answer\n{a}",
        "[new instruction]\n{i}\n[NEW ANSWER]\n{a}",
        "[New_Instruction]\n{i}\n[New-Answer]\n{a}",
        "Sure! Here is my rewrite.\n\n[New Instruction]\n{i}\n\n[New Answer]\n{a}\n",
    ],
)
def test_markers_in_every_common_shape_parse(reply: str) -> None:
    parsed = parse_reply(
        INSTRUCTION_PHASE, reply.format(i=WANT["new_instruction"], a=WANT["new_answer"]), SAMPLE
    )
    assert parsed.status == OK, parsed.reason
    assert parsed.fields == WANT


@pytest.mark.parametrize(
    "reply",
    [
        json.dumps(WANT),
        "```json\n" + json.dumps(WANT, indent=2) + "\n```",
        "Here you go:\n```\n" + json.dumps(WANT) + "\n```\nHope it helps.",
        "Result: "
        + json.dumps(
            {"New Instruction": WANT["new_instruction"], "new-answer": WANT["new_answer"]}
        ),
    ],
)
def test_json_bare_fenced_or_in_prose_parses(reply: str) -> None:
    parsed = parse_reply(INSTRUCTION_PHASE, reply, SAMPLE)
    assert parsed.status == OK, parsed.reason
    assert parsed.fields == WANT


def test_prefilled_marker_is_put_back_before_parsing() -> None:
    continuation = f"{WANT['new_instruction']}\n[New Answer]\n{WANT['new_answer']}"
    assert parse_reply(INSTRUCTION_PHASE, continuation, SAMPLE).status == FALLBACK_PARSE
    parsed = parse_reply(INSTRUCTION_PHASE, continuation, SAMPLE, prefill=INSTRUCTION_PHASE.prefill)
    assert parsed.status == OK and parsed.fields == WANT


def test_model_that_repeats_the_prefilled_marker_still_parses() -> None:
    reply = f"[New Instruction] {WANT['new_instruction']}\n[New Answer]\n{WANT['new_answer']}"
    parsed = parse_reply(INSTRUCTION_PHASE, reply, SAMPLE, prefill=INSTRUCTION_PHASE.prefill)
    assert parsed.fields == WANT


def test_first_section_wins_when_a_small_model_keeps_inventing_samples() -> None:
    reply = (
        f"[New Instruction]\n{WANT['new_instruction']}\n[New Answer]\n{WANT['new_answer']}\n"
        "[Instruction]\nSomething else\n[New Instruction]\nAnother one\n[New Answer]\nNo"
    )
    assert parse_reply(INSTRUCTION_PHASE, reply, SAMPLE).fields == WANT


def test_echoed_sample_markers_end_a_section() -> None:
    reply = f"{WANT['new_instruction']}\n<input>\nGood morning\n</input>\n[Answer]\nBonjour"
    fields = extract_markers(INSTRUCTION_PHASE.prefill + reply, INSTRUCTION_PHASE)
    assert fields == {"new_instruction": WANT["new_instruction"]}


def test_words_in_prose_are_not_markers() -> None:
    reply = "The new instruction should be clearer, and a new answer longer."
    parsed = parse_reply(INSTRUCTION_PHASE, reply, SAMPLE)
    assert parsed.status == FALLBACK_PARSE


def test_reply_without_markers_or_json_falls_back_with_a_reason() -> None:
    parsed = parse_reply(INSTRUCTION_PHASE, "This sample is fine as it is.", SAMPLE)
    assert parsed.status == FALLBACK_PARSE and parsed.fields is None
    assert "new_instruction" in (parsed.reason or "") and "[New Answer]" in (parsed.reason or "")


def test_missing_second_field_is_named() -> None:
    parsed = parse_reply(INSTRUCTION_PHASE, f"[New Instruction]\n{WANT['new_instruction']}", SAMPLE)
    assert parsed.status == FALLBACK_PARSE
    assert "no new_answer" in (parsed.reason or "") and "found only" in (parsed.reason or "")


@pytest.mark.parametrize(
    ("instruction", "answer", "why"),
    [
        ("...", WANT["new_answer"], "placeholder"),
        ("<the new self-contained instruction>", WANT["new_answer"], "placeholder"),
        ("<new instruction>", WANT["new_answer"], "placeholder"),
        ("{new_instruction}", WANT["new_answer"], "placeholder"),
        ("[insert instruction here]", WANT["new_answer"], "placeholder"),
        ("N/A", WANT["new_answer"], "placeholder"),
        ("**", WANT["new_answer"], "placeholder"),
        ("New Instruction", WANT["new_answer"], "placeholder"),
        (WANT["new_instruction"], "…", "placeholder"),
        ("translate to french", WANT["new_answer"], "same text as the instruction"),
        (WANT["new_instruction"], WANT["new_instruction"], "same text as the new_instruction"),
        (
            INSTRUCTION_PHASE.examples[1].outputs["new_instruction"],
            WANT["new_answer"],
            "worked example",
        ),
    ],
)
def test_placeholders_and_copies_fall_back(instruction: str, answer: str, why: str) -> None:
    reply = f"[New Instruction]\n{instruction}\n[New Answer]\n{answer}"
    parsed = parse_reply(INSTRUCTION_PHASE, reply, SAMPLE)
    assert parsed.status == FALLBACK_PLACEHOLDER
    assert why in (parsed.reason or "")


def test_empty_json_value_is_a_placeholder() -> None:
    parsed = parse_reply(INSTRUCTION_PHASE, json.dumps({**WANT, "new_answer": "  "}), SAMPLE)
    assert parsed.status == FALLBACK_PLACEHOLDER


def test_response_phase_parses_better_answer_and_rejects_the_old_one() -> None:
    good = parse_reply(RESPONSE_PHASE, "[Better Answer]\nBonjour (good morning).", SAMPLE)
    assert good.status == OK and good.fields == {"better_answer": "Bonjour (good morning)."}
    same = parse_reply(RESPONSE_PHASE, "[Better Answer]\nBonjour", SAMPLE)
    assert same.status == FALLBACK_PLACEHOLDER and "output" in (same.reason or "")


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   ",
        "{",
        "}{",
        "```json\n{not json}\n```",
        "[New Instruction]",
        "[[[]]]",
        '{"new_instruction": null, "new_answer": 3}',
        "[New Answer]\n" * 50,
        "\x00\ufffd",
        '["new_instruction", "new_answer"]',
    ],
)
def test_parser_never_raises(garbage: str) -> None:
    parsed = parse_reply(INSTRUCTION_PHASE, garbage, SAMPLE, prefill=INSTRUCTION_PHASE.prefill)
    assert parsed.status in (FALLBACK_PARSE, FALLBACK_PLACEHOLDER)
    assert parsed.fields is None and parsed.reason


@pytest.mark.parametrize("phase", list(CONCISE_PHASES.values()), ids=list(CONCISE_PHASES))
@pytest.mark.parametrize(("structured", "feedback"), [(False, True), (False, False), (True, False)])
def test_worked_examples_round_trip_through_the_parser(phase, structured, feedback) -> None:
    """The format we show the teacher is exactly the format we read back; a verbatim copy of a
    worked example is caught."""
    for example in phase.examples:
        copied = render_reply(phase, example, structured=structured, feedback=feedback)
        verdict = parse_reply(phase, copied, {"instruction": "x", "input": "", "output": "y"})
        assert verdict.status == FALLBACK_PLACEHOLDER and "worked example" in (verdict.reason or "")
        revised = dataclasses.replace(
            example, outputs={k: f"Revised: {v}" for k, v in example.outputs.items()}
        )
        reply = render_reply(phase, revised, structured=structured, feedback=feedback)
        parsed = parse_reply(phase, reply, example.sample)
        assert parsed.status == OK, parsed.reason
        assert parsed.fields == revised.outputs


def test_prefilled_request_has_two_examples_and_no_feedback() -> None:
    request = build_request(
        INSTRUCTION_PHASE, SAMPLE, few_shot=True, structured=False, prefill=True
    )
    roles = [m["role"] for m in request.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert request.prefill == "[New Instruction]\n" and request.json_schema is None
    assert all(
        m["content"].startswith("[New Instruction]")
        for m in request.messages
        if m["role"] == "assistant"
    )
    assert "[Feedback]" not in "".join(m["content"] for m in request.messages)
    last = request.messages[-1]["content"]
    assert "<instruction>\nTranslate to French.\n</instruction>" in last
    assert "<input>\nGood morning\n</input>" in last
    for criterion in ("complexity", "detail", "knowledge", "Ambiguity", "reasoning"):
        assert criterion in last
    assert "self-contained" in last
    assert "Judge the instruction on these criteria:" in request.stop  # a recital ends the reply


def test_remote_request_asks_for_feedback_first() -> None:
    request = build_request(RESPONSE_PHASE, SAMPLE, few_shot=False, structured=False, prefill=False)
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.prefill == ""
    last = request.messages[-1]["content"]
    assert last.index("[Feedback]") < last.index("[Better Answer]")
    for criterion in ("Helpfulness", "Relevance", "Accuracy", "detail"):
        assert criterion in last
    assert "<input>" in last


def test_structured_request_carries_the_schema_and_no_prefill() -> None:
    request = build_request(INSTRUCTION_PHASE, SAMPLE, few_shot=True, structured=True, prefill=True)
    assert request.prefill == ""
    assert request.json_schema is not None
    assert request.json_schema["required"] == ["new_instruction", "new_answer"]
    assert json.loads(request.messages[2]["content"]).keys() == {"new_instruction", "new_answer"}
    assert '"new_instruction"' in request.messages[-1]["content"]


def test_sample_without_input_has_no_input_section() -> None:
    request = build_request(
        INSTRUCTION_PHASE, {**SAMPLE, "input": ""}, few_shot=False, structured=False, prefill=True
    )
    assert "<input>" not in request.messages[-1]["content"]


def test_prompt_version_changes_with_the_wording() -> None:
    changed = dataclasses.replace(INSTRUCTION_PHASE, task=INSTRUCTION_PHASE.task + " Be brief.")
    assert changed.version() != INSTRUCTION_PHASE.version()
    assert INSTRUCTION_PHASE.version() == INSTRUCTION_PHASE.version()


def test_reciting_the_prompt_ends_the_answer() -> None:
    reply = "Bonjour, good morning!\n\nJudge the answer on these criteria:\n1. Helpfulness: ..."
    parsed = parse_reply(RESPONSE_PHASE, reply, SAMPLE, prefill=RESPONSE_PHASE.prefill)
    assert parsed.status == OK and parsed.fields == {"better_answer": "Bonjour, good morning!"}


@pytest.mark.parametrize(
    "reply",
    [
        "<thinking>[New Instruction]\ndraft\n[New Answer]\ndraft</thinking>\n"
        "<reflection>The draft is vague.</reflection>\n"
        "<output>[New Instruction]\n{i}\n[New Answer]\n{a}</output>",
        "<think>\nLet me see. [New Instruction] draft\n</think>\n[New Instruction]\n{i}\n"
        "[New Answer]\n{a}",
    ],
)
def test_reasoning_blocks_are_not_mistaken_for_the_answer(reply: str) -> None:
    text = reply.format(i=WANT["new_instruction"], a=WANT["new_answer"])
    assert parse_reply(INSTRUCTION_PHASE, text, SAMPLE).fields == WANT


def test_unfinished_thinking_is_no_answer() -> None:
    parsed = parse_reply(INSTRUCTION_PHASE, "<think>[New Instruction] x [New Answer] y", SAMPLE)
    assert parsed.status == FALLBACK_PARSE


# A marker followed by its text with no space or newline in between, in every marker shape, for
# every field of both phases: the text's first character belongs to the field.
GLUED_SHAPES = [
    "[{m}]{v}",
    "**[{m}]**{v}",
    "[{m}]:{v}",
    "**[{m}]:**{v}",
    "{m}:{v}",
    "**{m}:**{v}",
    "**{m}**:{v}",
    "### {m}:{v}",
]


def glued_fields(phase: PhaseSpec) -> dict[str, str]:
    return {
        spec.key: f"T{spec.key} rewritten, {number}." for number, spec in enumerate(phase.outputs)
    }


@pytest.mark.parametrize("phase", list(CONCISE_PHASES.values()), ids=list(CONCISE_PHASES))
@pytest.mark.parametrize("shape", GLUED_SHAPES)
@pytest.mark.parametrize("feedback", ["", "[Feedback]Too vague.\n"])
def test_text_glued_to_its_marker_keeps_its_first_character(
    phase: PhaseSpec, shape: str, feedback: str
) -> None:
    want = glued_fields(phase)
    reply = feedback + "\n".join(shape.format(m=f.marker, v=want[f.key]) for f in phase.outputs)
    parsed = parse_reply(phase, reply, SAMPLE)
    assert parsed.status == OK, parsed.reason
    assert parsed.fields == want


@pytest.mark.parametrize("phase", list(CONCISE_PHASES.values()), ids=list(CONCISE_PHASES))
def test_glued_text_after_a_prefilled_or_repeated_marker_keeps_its_first_character(
    phase: PhaseSpec,
) -> None:
    want = glued_fields(phase)
    first, *rest = phase.outputs
    tail = "".join(f"\n[{f.marker}]{want[f.key]}" for f in rest)
    continued = want[first.key] + tail  # the model goes on right after the prefilled marker
    repeated = f"[{first.marker}]{want[first.key]}{tail}"  # ... or writes the marker again
    for reply in (continued, repeated):
        parsed = parse_reply(phase, reply, SAMPLE, prefill=phase.prefill)
        assert parsed.status == OK, parsed.reason
        assert parsed.fields == want
        assert leading_fields(phase, reply, SAMPLE, phase.prefill) == want
        assert unfinished_field(phase, reply + "\n</answer>", phase.prefill) is None
