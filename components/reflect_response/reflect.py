"""Response reflection (phase 2): the teacher judges the answer of each record's phase-1 winner
and writes a better answer y2 to the same instruction.

The new candidate is ``A`` = (x0, input, y2) when ``ori`` won phase 1 and ``QA`` = (x1, "", y2)
when ``Q`` won; the record also gains ``teacher.response`` metadata. Plain input - records with no
phase-1 output, e.g. a prepared Alpaca file - is reflected as the reference does any file: the
record's own answer is the winner (``ori``), and the record gains ``candidates.ori``, ``A`` and
``phase1`` (winner ``ori``, reason "plain input: ..."). When the teacher fails, its
reply is unusable, or the reply was cut at ``max_new_tokens`` before the answer was finished
(``fallback_truncated``), the new candidate copies the winner's answer and ``parse_status`` says
why.
"""

from __future__ import annotations

from pathlib import Path

from rtune.components.common.record_schema import (
    NEW_CANDIDATE,
    ORI,
    Candidate,
    candidate,
    phase1_winner,
    with_candidate,
    with_teacher_meta,
)
from rtune.components.common.records import InputError, Record
from rtune.components.reflect_instruction.reflect import original_sample
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.protocol import Teacher
from rtune.components.teacher.runner import ReflectSummary, Result, Sample, StagePlan, reflect_stage

__all__ = [
    "NEW_CANDIDATE",
    "ReflectSummary",
    "reflect_responses",
    "winner_sample",
    "with_better_answer",
]

FIX = (
    "run phase-1 selection (`rtune select --phase ifd`) on the reflect_instruction output first, "
    "or give records without 'candidates' to reflect their own answers"
)


PLAIN_WINNER = {"winner": ORI, "reason": "plain input: no phase-1 output, the record's own answer"}


def is_plain(record: Record) -> bool:
    """A record with no phase-1 output at all (no ``candidates``, no ``phase1``): a prepared or
    Alpaca-style record whose own answer is reflected, as the reference reflects any file."""
    return "candidates" not in record and "phase1" not in record


def winner_sample(record: Record, source: str) -> Sample:
    """The phase-1 winner's (instruction, input, output) - the record's own for plain input -
    checked: the teacher needs texts."""
    if is_plain(record):
        return original_sample(record, source)
    winner = phase1_winner(record, source, FIX)
    chosen = candidate(record, winner, source, FIX)
    for name in ("instruction", "output"):
        if not getattr(chosen, name).strip():
            raise InputError(
                source,
                f"candidate {winner!r} has no {name}",
                FIX,
                record=record.get("id"),
                field=f"candidates.{winner}.{name}",
            )
    return {"instruction": chosen.instruction, "input": chosen.input, "output": chosen.output}


def with_better_answer(record: Record, sample: Sample, result: Result) -> Record:
    """The record plus candidate ``A``/``QA`` (winner's instruction, new answer) and metadata.

    Plain input gains ``candidates.ori`` (its own sample) and ``phase1`` = winner ``ori`` (reason
    says it was plain input), so phase-2 selection reads it like any phase-1 output."""
    if is_plain(record):
        base = dict(sample)
        record = {**record, "candidates": {ORI: base}, "phase1": dict(PLAIN_WINNER)}
    name = NEW_CANDIDATE[phase1_winner(record, "records", FIX)]
    fields = result["fields"] or {}
    answer = fields.get("better_answer", sample["output"])
    new = Candidate(instruction=sample["instruction"], input=sample["input"], output=answer)
    return with_teacher_meta(with_candidate(record, name, new), "response", result["meta"])


PLAN = StagePlan(phase="response", sample=winner_sample, attach=with_better_answer)


def reflect_responses(
    input_path: Path,
    output_path: Path,
    config: TeacherConfig,
    checkpoint_path: Path | None = None,
    teacher: Teacher | None = None,
    progress: bool = True,
) -> ReflectSummary:
    """Run phase 2 over ``input_path`` (records with ``phase1.winner``) into ``output_path``."""
    return reflect_stage(
        PLAN,
        Path(input_path),
        Path(output_path),
        config,
        checkpoint_path=checkpoint_path,
        teacher=teacher,
        progress=progress,
    )
