"""The answer format a run teaches its student (``teacher.response_format``): plain or reflection.

``plain`` (default) is an answer as it is. ``reflection`` is the Reflection-70B format
(DESIGN.md §3)::

    <thinking>
    step-by-step reasoning that checks itself
    <reflection>optional: where the reasoning went wrong, and the correction</reflection>
    </thinking>
    <reflection>optional: the correction, after the thinking</reflection>
    <output>
    the final answer
    </output>

The teacher writes phase-2 answers in it (``reflection_problem`` decides which replies are
usable), the student is fine-tuned on the whole tagged text with ``REFLECTION_SYSTEM_PROMPT`` as
the system turn of its training prompt, and the served model's chat template puts that system turn
in front of a conversation that brings none - so a client gets the format without asking.
Serving and evaluation split the reply with ``serve/reasoning.py`` and score ``<output>`` only.
"""

from __future__ import annotations

import re
from dataclasses import field
from typing import Any

PLAIN, REFLECTION = "plain", "reflection"
RESPONSE_FORMATS = (PLAIN, REFLECTION)
REFLECTION_SYSTEM_PROMPT = (
    "Answer in three parts. First reason step by step inside <thinking></thinking> and check "
    "each step. If you find a mistake, correct it inside <reflection></reflection>. Then give "
    "the final answer alone inside <output></output>."
)
FOLLOWS_TEACHER = "follows_teacher"  # field metadata: a stage setting copied from the teacher
TAG = re.compile(r"</?(?:thinking|reflection|output)>")
OUTPUT_CLOSE = re.compile(r"</output>")
OUTPUT_BLOCK = re.compile(r"<output>(.*?)</output>", re.DOTALL)

# state -> {tag: next state}; a tag not listed in a state is out of order.
_START, _THINKING, _NESTED, _THOUGHT, _REFLECTION, _REFLECTED, _OUTPUT, _DONE = range(8)
_MOVES: dict[int, dict[str, int]] = {
    _START: {"<thinking>": _THINKING},
    _THINKING: {"<reflection>": _NESTED, "</thinking>": _THOUGHT},
    _NESTED: {"</reflection>": _THINKING},
    _THOUGHT: {"<reflection>": _REFLECTION, "<output>": _OUTPUT},
    _REFLECTION: {"</reflection>": _REFLECTED},
    _REFLECTED: {"<output>": _OUTPUT},
    _OUTPUT: {"</output>": _DONE},
}
_BLOCK_OF = {_THINKING: "<thinking>", _NESTED: "<reflection>", _REFLECTION: "<reflection>"}
_UNCLOSED = {
    _START: "no <thinking> block",
    _THINKING: "<thinking> is never closed",
    _NESTED: "<reflection> is never closed",
    _THOUGHT: "no <output>…</output> block after </thinking>",
    _REFLECTION: "<reflection> is never closed",
    _REFLECTED: "no <output>…</output> block after </reflection>",
    _OUTPUT: "<output> is never closed with </output>",
}


def response_format_field() -> Any:
    """A stage config field that follows ``teacher.response_format`` (the run config copies it
    there and refuses it in the stage's own section: the teacher decides what answers look
    like, and the stages that train on them or serve them follow)."""
    return field(
        default=PLAIN,
        metadata={
            "help": "follows teacher.response_format (set it there): reflection trains and "
            "serves with the reflection system prompt",
            FOLLOWS_TEACHER: "response_format",
        },
    )


def check_response_format(value: str) -> None:
    if value not in RESPONSE_FORMATS:
        raise ValueError(f"response_format must be one of {list(RESPONSE_FORMATS)}, got {value!r}")


def system_prompt(response_format: str) -> str:
    """The system turn the student is trained and served with ('' for plain answers)."""
    check_response_format(response_format)
    return REFLECTION_SYSTEM_PROMPT if response_format == REFLECTION else ""


def reflection_problem(text: str) -> str | None:
    """Why ``text`` is not a reflection-format answer, or ``None`` when it is.

    It must be, with only whitespace around the blocks: a non-empty ``<thinking>`` block (which
    may hold ``<reflection>`` blocks), an optional non-empty ``<reflection>`` block, then a
    non-empty ``<output>`` block, closed, and nothing after it. Inside ``<output>`` only
    ``</output>`` is a tag (an answer may mention a tag), as the serving split reads it.
    """
    state, position, body = _START, 0, {_THINKING: "", _NESTED: "", _REFLECTION: ""}
    while state != _DONE:
        match = _next_tag(text, position, state)
        between = text[position : match.start() if match else len(text)]
        if state in (_START, _THOUGHT, _REFLECTED) and between.strip():
            return f"text outside the tags ({_snippet(between)}) before {_expected(state)}"
        if match is None:
            return _UNCLOSED[state]
        tag = match.group(0)
        if state in body:
            body[state] += between
        if state == _OUTPUT and not between.strip():
            return "the <output> block is empty"
        following = _MOVES[state].get(tag)
        if following is None:
            return f"{tag} is out of order: expected {_expected(state)}"
        if state in _BLOCK_OF and following != _NESTED and not body[state].strip():
            return f"the {_BLOCK_OF[state]} block is empty"
        if following == _NESTED:
            body[_NESTED] = ""
        state, position = following, match.end()
    after = text[position:]
    if after.strip():
        return f"text after </output> ({_snippet(after)})"
    return None


def _next_tag(text: str, position: int, state: int) -> re.Match[str] | None:
    return (OUTPUT_CLOSE if state == _OUTPUT else TAG).search(text, position)


def _expected(state: int) -> str:
    return " or ".join(_MOVES[state])


def _snippet(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def reflection_output(text: str) -> str:
    """The final answer of a reflection-format text: its ``<output>`` block ('' without one)."""
    match = OUTPUT_BLOCK.search(text)
    return match.group(1).strip() if match else ""


def training_answer(answer: str, response_format: str) -> str:
    """The response a record is trained on. Under ``reflection``, an answer that is not in the
    format (the phase-1 winner a selection policy kept, a teacher fallback) is trained as
    ``<output>answer</output>``: every trained reply then follows the system prompt's format, and
    the ``<output>`` part that evaluation scores is always there. A tagged answer is kept whole."""
    if response_format != REFLECTION or reflection_problem(answer) is None:
        return answer
    return f"<output>\n{answer.strip()}\n</output>"
