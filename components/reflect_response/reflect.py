"""Response reflection (phase 2): the teacher judges the answer of each record's phase-1 winner
and writes a better answer y2 to the same instruction.

The new candidate is ``A`` = (x0, input, y2) when ``ori`` won phase 1 and ``QA`` = (x1, "", y2)
when ``Q`` won; the record also gains ``teacher.response`` metadata. When the teacher fails, its
reply is unusable, or the reply was cut at ``max_new_tokens`` before the answer was finished
(``fallback_truncated``), the new candidate copies the winner's answer and ``parse_status`` says
why.
"""

from __future__ import annotations

from pathlib import Path

from rtune.components.common.record_schema import (
    NEW_CANDIDATE,
    Candidate,
    candidate,
    phase1_winner,
    with_candidate,
    with_teacher_meta,
)
from rtune.components.common.records import InputError, Record
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.prompts import RESPONSE_PHASE
from rtune.components.teacher.protocol import Teacher
from rtune.components.teacher.runner import ReflectSummary, Result, Sample, StagePlan, reflect_stage

__all__ = [
    "NEW_CANDIDATE",
    "ReflectSummary",
    "reflect_responses",
    "winner_sample",
    "with_better_answer",
]

FIX = "run phase-1 selection (`rtune select --phase ifd`) on the reflect_instruction output first"


def winner_sample(record: Record, source: str) -> Sample:
    """The phase-1 winner's (instruction, input, output), checked: the teacher needs texts."""
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
    """The record plus candidate ``A``/``QA`` (winner's instruction, new answer) and metadata."""
    name = NEW_CANDIDATE[phase1_winner(record, "records", FIX)]
    fields = result["fields"]
    answer = fields["better_answer"] if fields else sample["output"]
    new = Candidate(instruction=sample["instruction"], input=sample["input"], output=answer)
    return with_teacher_meta(with_candidate(record, name, new), "response", result["meta"])


PLAN = StagePlan(phase=RESPONSE_PHASE, sample=winner_sample, attach=with_better_answer)


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
