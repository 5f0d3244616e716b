"""Render a phase's wording (``wording``) into chat requests, in every reply format.

One user template serves both phases and both styles; the reply format - markers (with or
without the critique first), a prefilled marker, or JSON - is generated from the phase's fields,
so there is a single source of wording per phase and style and no copied variants.

A backend that can prefill (local models) gets the assistant turn started with the first section's
marker: ``[Critique]`` in the faithful style (a short judgement, then the rewrite), the first output
in the concise one; the worked examples then show the same sections, so the model sees one format.
A structured (JSON) reply carries the critique as the schema's first key when the style asks for
it. ``repair_request`` re-asks once for a reply that could not be used: the reply goes back to the
teacher with what was wrong and the format it must follow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace

from rtune.components.common.checkpoint import fingerprint
from rtune.components.teacher.phase_spec import Example, OutputField, PhaseSpec
from rtune.components.teacher.protocol import Message, TeacherRequest
from rtune.components.teacher.wording import (
    ALL_PHASES,
    CONCISE_INSTRUCTION,
    CONCISE_RESPONSE,
    FAITHFUL_INSTRUCTION,
    FAITHFUL_RESPONSE,
    PROMPT_STYLES,
    SYSTEM,
    phase_for,
)

__all__ = [
    "ALL_PHASES",
    "CONCISE_PHASES",
    "FAITHFUL_INSTRUCTION",
    "FAITHFUL_RESPONSE",
    "INSTRUCTION_PHASE",
    "PROMPT_STYLES",
    "RESPONSE_PHASE",
    "build_request",
    "phase_for",
    "repair_request",
]

# The concise (earlier releases') phases under their old names.
INSTRUCTION_PHASE = CONCISE_INSTRUCTION
RESPONSE_PHASE = CONCISE_RESPONSE
CONCISE_PHASES = PROMPT_STYLES["concise"]
INTRO = "Here is a sample from an instruction-tuning dataset."
JUDGE = "Judge the {target} on these criteria:"
MARKERS_LEAD = "Reply in exactly this format, each marker on its own line:"
JSON_LEAD = "Reply with only a JSON object with the keys"
REPAIR_LEAD = "Your reply could not be used:"
USER_TEMPLATE = f"""{INTRO}

{{sample}}

{JUDGE}
{{criteria}}

{{task}}

{{reply_format}}"""
SAMPLE_TAGS = ("instruction", "input", "answer")
CRITIQUE_MARKERS = tuple(sorted({p.critique.marker for p in ALL_PHASES}))


def prompt_echo_lines() -> tuple[str, ...]:
    """Fixed sentences of the prompt: a small model that starts echoing one has left its answer."""
    judges = tuple(sorted({JUDGE.format(target=phase.target) for phase in ALL_PHASES}))
    return (INTRO, *judges, MARKERS_LEAD, JSON_LEAD, REPAIR_LEAD)


def render_sample(sample: Mapping[str, str]) -> str:
    """The sample under judgement, in tags; the input is left out when there is none.

    Tags, not ``[Instruction]``-style markers: a small model that saw the sample in the same
    bracket style as its reply markers tended to recite the sample instead of writing the reply
    (0 of 10 seed samples parsed with brackets, 3 of 10 with tags, embedded model).
    """
    parts = [f"<{SAMPLE_TAGS[0]}>\n{sample['instruction'].strip()}\n</{SAMPLE_TAGS[0]}>"]
    if sample.get("input", "").strip():
        parts.append(f"<{SAMPLE_TAGS[1]}>\n{sample['input'].strip()}\n</{SAMPLE_TAGS[1]}>")
    parts.append(f"<{SAMPLE_TAGS[2]}>\n{sample['output'].strip()}\n</{SAMPLE_TAGS[2]}>")
    return "\n".join(parts)


def reply_format(phase: PhaseSpec, *, structured: bool, feedback: bool) -> str:
    """How to reply, generated from the phase's sections (``feedback``: critique first)."""
    fields = phase.reply_fields(critique=feedback)
    if structured:
        keys = ", ".join(f'"{f.key}" ({f.meaning})' for f in fields)
        return f"{JSON_LEAD} {keys}{', in this order' if feedback else ''}."
    layout = "\n".join(f"[{f.marker}]\n{f.layout or f'<{f.meaning}>'}" for f in fields)
    return f"{MARKERS_LEAD}\n{layout}"


def _example_text(example: Example, field: OutputField) -> str:
    return example.feedback if field.key == "critique" else example.outputs[field.key]


def render_reply(phase: PhaseSpec, example: Example, *, structured: bool, feedback: bool) -> str:
    """An example's ideal reply in the same format the model is asked for."""
    fields = phase.reply_fields(critique=feedback)
    if structured:
        return json.dumps({f.key: _example_text(example, f) for f in fields})
    return "\n".join(f"[{f.marker}]\n{_example_text(example, f)}" for f in fields)


def render_user(
    phase: PhaseSpec, sample: Mapping[str, str], *, structured: bool, feedback: bool
) -> str:
    criteria = "\n".join(f"{number}. {text}" for number, text in enumerate(phase.criteria, 1))
    return USER_TEMPLATE.format(
        sample=render_sample(sample),
        target=phase.target,
        criteria=criteria,
        task=phase.task,
        reply_format=reply_format(phase, structured=structured, feedback=feedback),
    )


def continuation_prefill(phase: PhaseSpec, written: Mapping[str, str]) -> str:
    """The assistant turn of a follow-up request for a prefilled reply that ended its turn early:
    the leading sections it wrote (``written``), in the reply format, then the marker of the first
    section it left out - so the model's next words can only be that section.

    For the concise instruction phase this is the prefill + the new instruction + ``[New Answer]``;
    for the faithful one it may be ``[Critique]`` + the critique + ``[New Instruction]``. A
    tagged answer's marker is followed by its opening ``<thinking>``.
    """
    sections = phase.prefilled_fields
    done = [spec for spec in sections if spec.key in written]
    if not done or len(done) == len(sections) or done != list(sections[: len(done)]):
        raise ValueError(
            f"a continuation needs a leading part of {[f.key for f in sections]}, "
            f"got {sorted(written)}"
        )
    text = "\n".join(f"[{spec.marker}]\n{written[spec.key].strip()}" for spec in done)
    following = sections[len(done)]
    return f"{text}\n[{following.marker}]\n{following.opening}"


def build_request(
    phase: PhaseSpec, sample: Mapping[str, str], *, few_shot: bool, structured: bool, prefill: bool
) -> TeacherRequest:
    """The chat request for one sample.

    Structured output wins over prefill (a JSON reply has no marker to start with). Whether the
    reply starts with the critique is the phase's call (``PhaseSpec.asks_critique``).
    """
    prefill = prefill and not structured
    feedback = phase.asks_critique(structured=structured, prefill=prefill)
    messages: list[Message] = [{"role": "system", "content": phase.system or SYSTEM}]
    for example in phase.examples if few_shot else ():
        user = render_user(phase, example.sample, structured=structured, feedback=feedback)
        reply = render_reply(phase, example, structured=structured, feedback=feedback)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    user = render_user(phase, sample, structured=structured, feedback=feedback)
    messages.append({"role": "user", "content": user})
    return TeacherRequest(
        messages=tuple(messages),
        prefill=phase.prefill if prefill else "",
        json_schema=phase.json_schema(critique=feedback) if structured else None,
        schema_name=f"{phase.name}_reflection",
        stop=prompt_echo_lines(),
    )


def repair_request(
    phase: PhaseSpec, first: TeacherRequest, reply: str, problem: str
) -> TeacherRequest:
    """The one repair round: the first request, the teacher's unusable ``reply`` (with its
    prefill) as its assistant turn, then a user turn that says what was wrong and repeats the
    format. A prefilling backend starts the new reply at the first section's marker again."""
    structured = first.json_schema is not None
    feedback = phase.asks_critique(structured=structured, prefill=bool(first.prefill))
    note = (
        f"{REPAIR_LEAD} {problem}. Write the whole reply again, about the same sample. "
        + reply_format(phase, structured=structured, feedback=feedback)
    )
    messages = (
        *first.messages,
        {"role": "assistant", "content": (first.prefill + reply).strip() or "(empty)"},
        {"role": "user", "content": note},
    )
    return replace(first, messages=messages)


def prompt_version(phase: PhaseSpec) -> str:
    """A hash of the prompts ``phase`` renders in every reply style (see ``PhaseSpec.version``)."""
    probe = {"instruction": "probe", "input": "probe input", "output": "probe answer"}
    styles = [(False, False), (False, True), (True, False)]
    requests = [
        build_request(phase, probe, few_shot=True, structured=structured, prefill=prefill)
        for structured, prefill in styles
    ]
    repair = repair_request(phase, requests[0], "probe reply", "probe problem")
    return fingerprint([*requests, repair])
