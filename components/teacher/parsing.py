"""Turn a teacher's free-form reply into the fields a phase needs - or say exactly why not.

Replies come in many shapes: ``[New Answer]``, ``**New Answer:**``, ``### new answer``, JSON with
or without a code fence, a reply that continues a prefilled marker, a small model that echoes the
prompt. The parser accepts all of them and never raises: a reply without the fields is
``fallback_parse``; a field that is empty, a template placeholder (``...``, ``<new instruction>``,
``N/A``), a copy of the original it should improve on, or a copy of a worked example is
``fallback_placeholder``. A reply the token budget cut off while it was still writing a field
(or before it reached one) is ``fallback_truncated``: a cut answer must not become training data.
The stage then keeps the original text and records the status.

A *tagged* field (``teacher.response_format: reflection``) must also be a Reflection-format
answer (``common/response_format.reflection_problem``: ``<thinking>``, optional
``<reflection>``, a closed non-empty ``<output>``, in that order); one that is not is
``fallback_parse`` with the reason, and its placeholder checks judge the ``<output>`` part. Such a
reply keeps its tags: only a reasoning teacher's own ``<think>`` blocks are set aside
(``reply_body``), where a plain reply is cut to its ``<output>`` part (``final_answer``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rtune.components.common.response_format import reflection_output, reflection_problem
from rtune.components.teacher.phase_spec import CRITIQUE_KEY, OutputField, PhaseSpec
from rtune.components.teacher.prompts import (
    ALL_PHASES,
    CRITIQUE_MARKERS,
    SAMPLE_TAGS,
    prompt_echo_lines,
)

OK = "ok"
FALLBACK_PARSE = "fallback_parse"
FALLBACK_PLACEHOLDER = "fallback_placeholder"
FALLBACK_ERROR = "fallback_error"
FALLBACK_TRUNCATED = "fallback_truncated"
PARTIAL = "partial"  # some fields usable, the others fell back one by one (teacher.fallback)
PARSE_STATUSES = (
    OK,
    PARTIAL,
    FALLBACK_PARSE,
    FALLBACK_PLACEHOLDER,
    FALLBACK_ERROR,
    FALLBACK_TRUNCATED,
)

# Whole-field texts that mean "nothing here" (compared after lower-casing and trimming).
PLACEHOLDER_WORDS = frozenset(
    [
        "",
        "n/a",
        "na",
        "none",
        "null",
        "nil",
        "tbd",
        "todo",
        "same",
        "same as above",
        "unchanged",
        "no change",
        "no changes",
        "not applicable",
        "insert here",
    ]
)
# Sample markers a model may echo (ours are tags, older prompts used brackets): a new section.
ECHO_MARKERS = ("Instruction", "Input", "Answer")
TEMPLATE_SLOT = re.compile(
    r"^(?:<[^<>\n]{1,80}>|\{[A-Za-z][\w \-]{0,60}\}|\[[A-Za-z][A-Za-z _\-]{0,60}\])$"
)
FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
FINAL_OUTPUT = re.compile(r"<output>(.*?)(?:</output>|\Z)", re.DOTALL | re.IGNORECASE)
REASONING = re.compile(r"<(think|thinking|reflection)>.*?(?:</\1>|\Z)", re.DOTALL | re.IGNORECASE)
THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class ParsedReply:
    """``fields`` maps output keys to text when ``status`` is ok, else ``None`` with a ``reason``;
    ``critique`` is the teacher's judgement when the reply has a usable one (whatever the status)."""

    status: str
    fields: dict[str, str] | None
    reason: str | None = None
    critique: str | None = None


@dataclass(frozen=True)
class FieldProblem:
    """Why one output field of a reply cannot be used: a fallback status and a reason."""

    status: str
    reason: str


@dataclass(frozen=True)
class ReplyFields:
    """A reply read field by field: the ``usable`` output fields, a ``problem`` for each of the
    others, and the critique (``None`` when absent or a placeholder)."""

    usable: dict[str, str]
    problems: dict[str, FieldProblem]
    critique: str | None

    @property
    def complete(self) -> bool:
        return not self.problems


def _label(marker: str) -> str:
    return r"[\s_\-]*".join(re.escape(word) for word in marker.split())


def _marker_regex() -> re.Pattern[str]:
    """Markers as bracket tags anywhere (``**[New Answer]**:``) or, for output markers only, as
    line-start labels with a colon (``New Answer:``) or as a heading/bold line (``## New Answer``).
    A line that echoes the prompt's own sentences (``Judge the answer on these criteria:``) or a
    sample tag (``<answer>``) also ends a section: a small model that starts reciting the prompt
    has finished its answer.
    """
    outputs = sorted(
        {f.marker for p in ALL_PHASES for f in p.outputs} | set(CRITIQUE_MARKERS),
        key=len,
        reverse=True,
    )
    every = sorted(set(outputs) | set(ECHO_MARKERS), key=len, reverse=True)
    tag = "|".join(_label(m) for m in every)
    out = "|".join(_label(m) for m in outputs)
    emph = r"(?:\*\*|__)"
    bracket = (
        rf"(?:\#{{1,6}}[ \t]*)?{emph}?\[[ \t*_]*(?P<b>{tag})[ \t*_]*\]"
        rf"(?:[ \t]*:)?{emph}?(?:[ \t]*:)?"
    )
    colon = rf"^[ \t>]*(?:\#{{1,6}}[ \t]*)?{emph}?(?P<c>{out})[ \t]*{emph}?[ \t]*:(?:[ \t]*{emph})?"
    heading = rf"^[ \t]*(?:\#{{1,6}}[ \t]*{emph}?|{emph})(?P<h>{out})[ \t]*{emph}?[ \t]*$"
    recital = "|".join(re.escape(line) for line in prompt_echo_lines())
    tags = "|".join(SAMPLE_TAGS)
    echo = rf"^[ \t]*(?P<e>{recital})|(?P<t></?(?:{tags})>)"
    return re.compile(f"{bracket}|{colon}|{heading}|{echo}", re.IGNORECASE | re.MULTILINE)


MARKER = _marker_regex()


def _norm_marker(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _marker_keys(phase: PhaseSpec) -> dict[str, str]:
    """Normalized marker -> field key; either style's critique marker is the critique."""
    keys = {_norm_marker(marker): CRITIQUE_KEY for marker in CRITIQUE_MARKERS}
    return {**keys, **{_norm_marker(f.marker): f.key for f in phase.outputs}}


def _sections(text: str, phase: PhaseSpec) -> list[tuple[str | None, str]]:
    """Every marker-led section in order: (output key or ``None`` for any other marker, content)."""
    keys = _marker_keys(phase)
    matches = list(MARKER.finditer(text))
    ends = [m.start() for m in matches[1:]] + [len(text)]
    sections: list[tuple[str | None, str]] = []
    for match, end in zip(matches, ends, strict=False):
        name = _norm_marker(match.group("b") or match.group("c") or match.group("h") or "")
        sections.append((keys.get(name), text[match.end() : end].strip().lstrip(":").strip()))
    return sections


def _chosen_sections(sections: list[tuple[str | None, str]]) -> dict[str, int]:
    """For each output key, the index of its first non-empty section (the one that is used)."""
    chosen: dict[str, int] = {}
    for index, (key, content) in enumerate(sections):
        if key and content and key not in chosen:
            chosen[key] = index
    return chosen


def extract_markers(text: str, phase: PhaseSpec) -> dict[str, str]:
    """Fields found between markers; for each field the first non-empty section wins (a small
    model that goes on inventing more samples after its answer does not overwrite it)."""
    sections = _sections(text, phase)
    return {key: sections[index][1] for key, index in _chosen_sections(sections).items()}


def _json_candidates(text: str) -> list[str]:
    candidates = [block for block in FENCE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    return candidates


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def extract_json(text: str, phase: PhaseSpec) -> dict[str, str]:
    """Fields from the first JSON object (fenced or bare) that has any of the phase's keys."""
    wanted = {f.key for f in phase.outputs} | {CRITIQUE_KEY}
    for candidate in _json_candidates(text):
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if not isinstance(value, dict):
            continue
        found = {_norm_marker(str(k)).replace(" ", "_"): _as_text(v) for k, v in value.items()}
        fields = {k: v.strip() for k, v in found.items() if k in wanted and v is not None}
        if fields:
            return fields
    return {}


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip(".,;:!?\"'`*_ ").lower()


def first_issue(
    phase: PhaseSpec, fields: Mapping[str, str], sample: Mapping[str, str]
) -> FieldProblem | None:
    """Why the parsed fields are not a real reflection, or ``None`` when they are (fields that
    are absent are not judged): the first output field's ``field_issue``."""
    for spec in phase.outputs:
        if spec.key in fields:  # a partial reply is judged on the fields it has
            issue = field_issue(phase, spec, fields, sample)
            if issue:
                return issue
    return None


def field_issue(
    phase: PhaseSpec, spec: OutputField, fields: Mapping[str, str], sample: Mapping[str, str]
) -> FieldProblem | None:
    """Why output field ``spec`` cannot be used: a tagged field out of the Reflection format
    (``fallback_parse``), else a placeholder (``fallback_placeholder``, ``field_problem``)."""
    if spec.tagged and (problem := reflection_problem(fields[spec.key])):
        return FieldProblem(
            FALLBACK_PARSE, f"{spec.key} is not in the reflection format: {problem}"
        )
    if problem := field_problem(phase, spec, fields, sample):
        return FieldProblem(FALLBACK_PLACEHOLDER, problem)
    return None


def _judged_text(spec: OutputField, text: str) -> str:
    """The text a field's placeholder checks read: a tagged answer's ``<output>`` part."""
    return reflection_output(text) if spec.tagged else text


def _slot_lines(phase: PhaseSpec, spec: OutputField) -> set[str]:
    """The reply format's slots a field may recite: every output's meaning and the lines of
    this field's own layout (``<the final answer>``), normalized."""
    slots = {_normalize(f.meaning) for f in phase.outputs}
    slots |= {_normalize(line.strip(" <>")) for line in spec.layout.splitlines()}
    return slots - {"thinking", "/thinking", "reflection", "/reflection", "output", "/output"}


def field_problem(
    phase: PhaseSpec, spec: OutputField, fields: Mapping[str, str], sample: Mapping[str, str]
) -> str | None:
    """Why output field ``spec`` of the parsed ``fields`` is a placeholder, or ``None``: empty, a
    template slot or placeholder word, a copy of what it should improve on, or of a worked
    example. A field with a line that recites a slot of the reply format (``<the answer to the
    new instruction>``) is a placeholder too: a small model pads with them."""
    meanings = {_normalize(f.meaning) for f in phase.outputs}
    markers = {_normalize(f.marker) for f in phase.outputs}
    text = _judged_text(spec, fields[spec.key])
    norm = _normalize(text)
    if (
        norm in PLACEHOLDER_WORDS
        or norm in meanings
        or norm in markers
        or not any(ch.isalnum() for ch in text)
        or TEMPLATE_SLOT.match(text.strip())
    ):
        return f"{spec.key} is a placeholder ({_snippet(text)})"
    slots = _slot_lines(phase, spec)
    slot = next(
        (line for line in fields[spec.key].splitlines() if _normalize(line.strip(" <>")) in slots),
        None,
    )
    if slot is not None:
        return f"{spec.key} recites the reply format's slot ({_snippet(slot)})"
    for other in spec.not_same_as:
        source = fields.get(other, sample.get(other, ""))
        if source.strip() and norm == _normalize(source):
            return f"{spec.key} is the same text as the {other}"
    if any(norm == _normalize(_judged_text(spec, ex.outputs[spec.key])) for ex in phase.examples):
        return f"{spec.key} copies a worked example from the prompt"
    return None


def brief_critique(text: str, sentences: int = 2, words: int = 60) -> str:
    """The first ``sentences`` sentences of a critique's first paragraph, at most ``words``
    words: what is kept of a critique a small model ran on with until its budget was spent."""
    first = text.strip().split("\n\n")[0]
    kept = " ".join(re.split(r"(?<=[.!?])\s+", first)[:sentences])
    return " ".join(kept.split()[:words])


def usable_critique(text: str | None) -> str | None:
    """The critique, or ``None`` when it is absent, a placeholder word or a template slot."""
    if text is None:
        return None
    text = text.strip()
    if _normalize(text) in PLACEHOLDER_WORDS or TEMPLATE_SLOT.match(text) or not text:
        return None
    return text


def _snippet(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def final_answer(text: str) -> str:
    """The part of a reply that is the answer: the ``<output>`` block of a Reflection-style model,
    else the text without ``<think>``/``<thinking>``/``<reflection>`` blocks (drafts in there
    must not be mistaken for the answer)."""
    match = FINAL_OUTPUT.search(text)
    return match.group(1) if match else REASONING.sub("", text)


def reply_body(phase: PhaseSpec, text: str) -> str:
    """The part of a reply its fields are read from: ``final_answer`` for a plain phase; for a
    Reflection-format phase the whole reply but a reasoning teacher's ``<think>`` blocks (the
    answer's own ``<thinking>``/``<output>`` tags are what the phase asked for)."""
    if phase.response_format == "reflection":
        return THINK.sub("", text)
    return final_answer(text)


def parse_reply(
    phase: PhaseSpec, text: str, sample: Mapping[str, str], prefill: str = ""
) -> ParsedReply:
    """Parse a reply to ``phase`` about ``sample``; ``prefill`` is put back in front first.

    Reasoning blocks are set aside; JSON and markers are both tried and the one that yields more
    of the fields wins (JSON on a tie). Never raises.
    """
    full = reply_body(phase, prefill + text)
    wanted = [f.key for f in phase.outputs]
    fields, _ = _reply_fields(phase, full)
    critique = usable_critique(fields.get(CRITIQUE_KEY))
    missing = [key for key in wanted if key not in fields]
    if missing:
        markers = ", ".join(f"[{f.marker}]" for f in phase.outputs)
        found = f"; found only {sorted(fields)}" if fields else ""
        return ParsedReply(
            FALLBACK_PARSE,
            None,
            f"no {', '.join(missing)} in the reply (markers {markers} or JSON keys "
            f"{wanted}){found}",
            critique,
        )
    issue = first_issue(phase, fields, sample)
    if issue:
        return ParsedReply(issue.status, None, issue.reason, critique)
    return ParsedReply(OK, {key: fields[key] for key in wanted}, None, critique)


def read_reply(
    phase: PhaseSpec, text: str, sample: Mapping[str, str], prefill: str = "", cut: bool = False
) -> ReplyFields:
    """Read a reply field by field (for the per-field fallback): each output field is usable or
    has its own problem. ``cut`` says the token budget stopped the reply: the field it was still
    writing, and every field after it, is ``fallback_truncated`` (a cut answer must not become
    training data); the fields finished before the cut stay usable."""
    fields, _ = _reply_fields(phase, reply_body(phase, prefill + text))
    unfinished = unfinished_field(phase, text, prefill) if cut else None
    keys = [f.key for f in phase.outputs]
    after_cut = set(keys[keys.index(unfinished) :]) if unfinished else set()
    usable: dict[str, str] = {}
    problems: dict[str, FieldProblem] = {}
    for spec in phase.outputs:
        if spec.key in after_cut:
            problems[spec.key] = FieldProblem(
                FALLBACK_TRUNCATED, f"the reply was cut before {spec.key} was finished"
            )
        elif spec.key not in fields:
            problems[spec.key] = FieldProblem(
                FALLBACK_PARSE, f"no {spec.key} in the reply ([{spec.marker}] or JSON key)"
            )
        elif issue := field_issue(phase, spec, fields, sample):
            problems[spec.key] = issue
        else:
            usable[spec.key] = fields[spec.key]
    return ReplyFields(usable, problems, usable_critique(fields.get(CRITIQUE_KEY)))


def _reply_fields(phase: PhaseSpec, answer: str) -> tuple[dict[str, str], bool]:
    """The fields of a reply's answer part and whether they came from JSON: JSON and markers are
    both tried, the one with more of the fields wins (JSON on a tie)."""
    from_json, from_markers = extract_json(answer, phase), extract_markers(answer, phase)
    if len(from_json) >= len(from_markers):
        return from_json, True
    return from_markers, False


def unfinished_field(phase: PhaseSpec, text: str, prefill: str = "") -> str | None:
    """For a reply the token budget cut off: the output field it had not finished, or ``None``
    when every field was finished before the cut.

    A missing field is unfinished (the cut came before it). Fields of a parsed JSON object, or of
    a closed ``<output>`` block, are finished: the closing brace or tag was written. A marker
    section is finished when anything followed it - another marker, a recital of the prompt, a
    sample tag; a section that runs to the end of the reply was still being written.
    """
    full = prefill + text
    answer = reply_body(phase, full)
    fields, from_json = _reply_fields(phase, answer)
    missing = [f.key for f in phase.outputs if f.key not in fields]
    if missing:
        return missing[0]
    block = FINAL_OUTPUT.search(full)
    if from_json or (block is not None and block.group(0).lower().endswith("</output>")):
        return None
    sections = _sections(answer, phase)
    last = len(sections) - 1
    outputs = {f.key for f in phase.outputs}
    chosen = _chosen_sections(sections).items()
    open_keys = [key for key, index in chosen if index == last and key in outputs]
    return open_keys[0] if open_keys else None


def leading_fields(
    phase: PhaseSpec, text: str, sample: Mapping[str, str], prefill: str = ""
) -> dict[str, str]:
    """The real sections a prefilled marker reply wrote before it stopped early: the longest run
    of the phase's leading prefilled sections (``PhaseSpec.prefilled_fields``: the critique first
    when the style asks for it) that are present and not placeholders ({} when the first is
    missing or a placeholder). A small model often writes one section and then ends its turn;
    these are the sections a second request can build on."""
    found = extract_markers(reply_body(phase, prefill + text), phase)
    lead: dict[str, str] = {}
    for spec in phase.prefilled_fields:
        if spec.key not in found:
            break
        if spec.key == CRITIQUE_KEY:
            if usable_critique(found[spec.key]) is None:
                break
        elif field_issue(phase, spec, {**lead, spec.key: found[spec.key]}, sample):
            break
        lead[spec.key] = found[spec.key]
    return lead
