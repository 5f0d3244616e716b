"""Typed views of the records that travel between stages as JSONL.

On disk a record stays the dict it always was, so checkpoints and outputs of earlier runs still
read; these views give the stages names instead of string keys, and one place that checks a
record's shape. Reading a malformed part raises :class:`InputError` naming the file, the record id,
the field and the fix. The fields, stage by stage::

    id, instruction, input, output                              prepare (the seed record)
    candidates: {ori|Q|A|QA: {instruction, input, output}}      reflect_instruction / _response
    candidates.<name>.scores: {ifd, rifd, ..., reason}          select_ifd / select_rifd (merged;
                              phase 1 leaves r-IFD fields out, phase 2 completes the winner's)
    teacher: {instruction|response: TeacherMeta}                reflect_instruction / _response
    phase1: {winner, reason}                                    select_ifd
    phase2: {decision, reason}; decision; reason                select_rifd

Constructors (``with_*``) return a new record and never change the one given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, NoReturn, TypedDict, cast

from rtune.components.common.errors import InputError
from rtune.components.scoring.formulas import REASON_FIELD, SCORE_FIELDS

Record = dict[str, Any]

ORI, Q, A, QA, DROPPED = "ori", "Q", "A", "QA", "dropped"
NEW_CANDIDATE = {ORI: A, Q: QA}
DECISIONS = (ORI, Q, A, QA, DROPPED)

RECORD_FIX = "give the records the previous stage wrote, unedited"
SCORES_FIX = "give the records select_ifd/select_rifd wrote from `rtune score --candidates` rows"
PHASE1_FIX = "run phase-1 selection (`rtune select --phase ifd`) first"
DECISION_FIX = "run phase-2 selection (`rtune select --phase rifd`) first"
TEXT_FIELDS_FIX = (
    "every candidate needs string fields 'instruction' and 'output' ('input' optional)"
)


class Scores(TypedDict, total=False):
    """The scorer's fields for one candidate (``scoring.formulas``); a null score has a reason."""

    ifd: float | None
    rifd: float | None
    ifd_loss: float | None
    rifd_loss: float | None
    loss_output: float | None
    loss_output_given_instruction: float | None
    loss_instruction: float | None
    loss_instruction_given_output: float | None
    reason: str | None


class TeacherMeta(TypedDict, total=False):
    """What a teacher phase records about one record (``teacher.<phase>``).

    ``parse_status`` is ``ok``, ``partial`` (some fields fell back one by one) or a
    ``fallback_*`` status, with ``error`` saying why. Records written before the teacher kept its
    critique lack ``critique``, ``reasons``, ``prompt_style`` and ``sample_cut_tokens``; the
    accessors below read them as absent (``None`` / ``[]`` / ``0``).
    """

    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    attempts: int
    rounds: int
    parse_status: str
    error: str | None
    critique: str | None  # the teacher's judgement, written before its rewrite
    reasons: list[str]  # one line per repair, continuation, sample cut and per-field fallback
    prompt_style: str  # teacher.prompt_style: faithful | concise
    sample_cut_tokens: int  # answer tokens cut to fit teacher.max_sample_tokens (0: none)


@dataclass(frozen=True)
class SeedRecord:
    """The record ``prepare`` writes: the original sample ``(x0, input, y0)`` and its id."""

    id: str
    instruction: str
    input: str
    output: str

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], source: str) -> SeedRecord:
        rid = record.get("id")
        if not isinstance(rid, str) or not rid:
            raise InputError(source, "has no string 'id'", RECORD_FIX, field="id")
        instruction, input_text, output = _texts(record, source, rid, "", RECORD_FIX)
        return cls(rid, instruction, input_text, output)

    def to_dict(self) -> Record:
        return asdict(self)


@dataclass(frozen=True)
class Candidate:
    """One candidate ``(instruction, input, output)``; ``scores`` once the student scored it."""

    instruction: str
    input: str
    output: str
    scores: Scores | None = None

    @classmethod
    def from_dict(
        cls, value: Any, source: str, rid: str, name: str, fix: str = TEXT_FIELDS_FIX
    ) -> Candidate:
        where = f"candidates.{name}"
        if not isinstance(value, Mapping):
            _fail(source, rid, where, f"candidate {name!r} is not an object", fix)
        texts = _texts(value, source, rid, where + ".", fix)
        raw = value.get("scores")
        scores = None if raw is None else parse_scores(raw, source, rid, where + ".scores")
        return cls(*texts, scores=scores)

    def to_dict(self) -> Record:
        texts = {"instruction": self.instruction, "input": self.input, "output": self.output}
        return texts if self.scores is None else {**texts, "scores": self.scores}


@dataclass(frozen=True)
class Phase1:
    """Phase-1 outcome: ``winner`` is ``ori`` or ``Q``, ``reason`` the rule's short phrase."""

    winner: str
    reason: str

    @classmethod
    def from_dict(cls, value: Any, source: str, rid: str, fix: str = PHASE1_FIX) -> Phase1:
        value = value if isinstance(value, Mapping) else {}
        winner = _winner(value, source, rid, fix)
        return cls(winner, _reason(value, source, rid, "phase1.reason", fix))

    def to_dict(self) -> Record:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """A selection outcome: ``decision`` (ori | Q | A | QA | dropped) and its ``reason``."""

    decision: str
    reason: str

    @classmethod
    def from_dict(cls, value: Any, source: str, rid: str, where: str) -> Decision:
        """``where`` is ``"phase2"`` (the rule's own outcome) or ``""`` (the record's final one)."""
        if not isinstance(value, Mapping):
            _fail(source, rid, where, f"{where} is not an object", DECISION_FIX)
        prefix = f"{where}." if where else ""
        decision = value.get("decision")
        if decision not in DECISIONS:
            problem = f"{prefix}decision is {decision!r}, expected one of {list(DECISIONS)}"
            _fail(source, rid, prefix + "decision", problem, DECISION_FIX)
        return cls(str(decision), _reason(value, source, rid, prefix + "reason", DECISION_FIX))

    def to_dict(self) -> Record:
        return asdict(self)


def parse_scores(value: Any, source: str, rid: str, where: str) -> Scores:
    """``value`` checked as scores: an object whose known fields are numbers/null (``reason``:
    text/null). Fields may be absent (older rows carry fewer); unknown fields pass through."""
    if not isinstance(value, Mapping):
        _fail(
            source, rid, where, f"scores must be an object, got {type(value).__name__}", SCORES_FIX
        )
    for name in SCORE_FIELDS:
        score = value.get(name)
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            _fail(source, rid, f"{where}.{name}", f"{name} must be a number or null", SCORES_FIX)
    if value.get(REASON_FIELD) is not None and not isinstance(value[REASON_FIELD], str):
        _fail(source, rid, f"{where}.{REASON_FIELD}", "reason must be text or null", SCORES_FIX)
    return cast(Scores, value)


def seed_of(record: Mapping[str, Any], source: str) -> SeedRecord:
    return SeedRecord.from_dict(record, source)


def candidate_names(record: Mapping[str, Any], source: str) -> list[str]:
    """The names of the record's candidates, in the order the stages added them."""
    return list(_candidates(record, source))


def candidate(
    record: Mapping[str, Any], name: str, source: str, fix: str = TEXT_FIELDS_FIX
) -> Candidate:
    """Candidate ``name``; its absence is an error (``fix`` says which stage adds it)."""
    candidates = _candidates(record, source)
    if name not in candidates:
        _fail(source, _rid(record), f"candidates.{name}", f"record has no candidate {name!r}", fix)
    return Candidate.from_dict(candidates[name], source, _rid(record), name, fix)


def candidate_scores(record: Mapping[str, Any], name: str, source: str) -> Scores | None:
    """Candidate ``name``'s scores, or None while it is absent or unscored (never a 0)."""
    value = record.get("candidates")
    found = value.get(name) if isinstance(value, Mapping) else None
    if not isinstance(found, Mapping) or found.get("scores") is None:
        return None
    return parse_scores(found["scores"], source, _rid(record), f"candidates.{name}.scores")


def phase1_of(record: Mapping[str, Any], source: str, fix: str = PHASE1_FIX) -> Phase1:
    return Phase1.from_dict(record.get("phase1"), source, _rid(record), fix)


def phase1_winner(record: Mapping[str, Any], source: str, fix: str = PHASE1_FIX) -> str:
    """``ori`` or ``Q``: the candidate whose response the teacher reflects in phase 2."""
    phase1 = record.get("phase1")
    return _winner(phase1 if isinstance(phase1, Mapping) else {}, source, _rid(record), fix)


def phase2_of(record: Mapping[str, Any], source: str) -> Decision:
    """The phase-2 rule's own outcome (kept for review when a final cut overrides it)."""
    return Decision.from_dict(record.get("phase2"), source, _rid(record), "phase2")


def decision_of(record: Mapping[str, Any], source: str) -> Decision:
    """The record's final ``decision`` and ``reason`` (after any cut)."""
    return Decision.from_dict(record, source, _rid(record), "")


def latest_decision(record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(decision, reason)`` so far: the final one, else phase 1's; for reports (never raises)."""
    phase1 = record.get("phase1")
    phase1 = phase1 if isinstance(phase1, Mapping) else {}
    return (
        record.get("decision", phase1.get("winner")),
        record.get("reason", phase1.get("reason")),
    )


def teacher_status(record: Mapping[str, Any], phase: str) -> str | None:
    """The teacher's ``parse_status`` for ``phase`` ("instruction" or "response"), if recorded."""
    meta = (record.get("teacher") or {}).get(phase) or {}
    return meta.get("parse_status") if isinstance(meta, Mapping) else None


def teacher_meta(record: Mapping[str, Any], phase: str) -> TeacherMeta:
    """The teacher's metadata for ``phase``, ``{}`` when that phase has not run (never raises)."""
    meta = (record.get("teacher") or {}).get(phase) or {}
    return cast(TeacherMeta, meta) if isinstance(meta, Mapping) else {}


def teacher_critique(record: Mapping[str, Any], phase: str) -> str | None:
    """The teacher's critique in ``phase``, or ``None`` (none written, or an older record)."""
    critique = teacher_meta(record, phase).get("critique")
    return critique if isinstance(critique, str) else None


def teacher_reasons(record: Mapping[str, Any], phase: str) -> list[str]:
    """Why the teacher's result in ``phase`` is what it is: repairs, cuts, fallbacks (``[]``)."""
    reasons = teacher_meta(record, phase).get("reasons") or []
    return [str(reason) for reason in reasons] if isinstance(reasons, list) else []


def with_scores(record: Record, name: str, scores: Scores | Mapping[str, Any]) -> Record:
    """The record with ``candidates[name].scores`` set (the candidate's other fields kept)."""
    candidates = dict(record.get("candidates") or {})
    candidates[name] = {**candidates[name], "scores": scores}
    return {**record, "candidates": candidates}


def with_candidate(record: Record, name: str, new: Candidate) -> Record:
    return {**record, "candidates": {**(record.get("candidates") or {}), name: new.to_dict()}}


def with_teacher_meta(record: Record, phase: str, meta: TeacherMeta | Mapping[str, Any]) -> Record:
    return {**record, "teacher": {**(record.get("teacher") or {}), phase: meta}}


def with_phase1(record: Record, outcome: Phase1) -> Record:
    return {**record, "phase1": outcome.to_dict()}


def with_decision(record: Record, final: Decision, phase2: Decision | None = None) -> Record:
    """The record with its final ``decision``/``reason``; ``phase2`` too when the rule just ran."""
    extra = {} if phase2 is None else {"phase2": phase2.to_dict()}
    return {**record, **extra, "decision": final.decision, "reason": final.reason}


def _candidates(record: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    value = record.get("candidates")
    if not isinstance(value, Mapping):
        fix = "score or select after `rtune reflect --stage instruction` (it adds ori and Q)"
        _fail(source, _rid(record), "candidates", "record has no 'candidates' object", fix)
    return value


def _texts(
    item: Mapping[str, Any], source: str, rid: str, prefix: str, fix: str
) -> tuple[str, str, str]:
    """``instruction`` and ``output`` must be strings; ``input`` a string, null or absent."""
    for name in ("instruction", "output", "input"):
        value = item.get(name)
        if name not in item and name != "input":
            _fail(source, rid, prefix + name, f"missing field {name!r}", fix)
        if not isinstance(value, str) and not (name == "input" and value is None):
            problem = f"field {name!r} must be a string, got {type(value).__name__}"
            _fail(source, rid, prefix + name, problem, fix)
    return item["instruction"], item.get("input") or "", item["output"]


def _winner(phase1: Mapping[str, Any], source: str, rid: str, fix: str) -> str:
    winner = phase1.get("winner")
    if winner not in NEW_CANDIDATE:
        problem = f"phase1.winner is {winner!r}, expected 'ori' or 'Q'"
        _fail(source, rid, "phase1.winner", problem, fix)
    return str(winner)


def _reason(value: Mapping[str, Any], source: str, rid: str, where: str, fix: str) -> str:
    reason = value.get("reason")
    if not isinstance(reason, str):
        _fail(source, rid, where, f"{where} is {reason!r}, expected a short text", fix)
    return str(reason)


def _rid(record: Mapping[str, Any]) -> str:
    return str(record.get("id", "?"))


def _fail(source: str, rid: str, field: str, problem: str, fix: str) -> NoReturn:
    raise InputError(source, problem, fix, record=rid, field=field)
