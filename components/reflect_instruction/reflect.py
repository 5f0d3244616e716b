"""Instruction reflection (phase 1): for each prepared record the teacher judges the instruction
and writes a new self-contained instruction x1 with its answer y1.

Every record gains ``candidates`` = {"ori": (x0, input, y0), "Q": (x1, "", y1)} and
``teacher.instruction`` metadata (model, tokens, latency, attempts, parse_status, error, rounds,
critique, reasons, prompt_style, sample_cut_tokens). When the teacher fails or its reply is
unusable - or was cut at ``max_new_tokens`` before the answer was finished - the unusable fields
fall back to the original ones (``Q`` is a copy of ``ori`` when none is usable) and
``parse_status``/``reasons`` say why; the student then simply sees no reason to prefer ``Q``. A local teacher that wrote x1 but ended its turn before
y1 is asked once more with x1 and the ``[New Answer]`` marker prefilled (``rounds`` = 2; the
runner's module doc has the details).
"""

from __future__ import annotations

from pathlib import Path

from rtune.components.common.record_schema import with_teacher_meta
from rtune.components.common.records import InputError, Record
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.protocol import Teacher
from rtune.components.teacher.runner import ReflectSummary, Result, Sample, StagePlan, reflect_stage

__all__ = [
    "ReflectSummary",
    "original_sample",
    "reflect_instructions",
    "with_reflected_instruction",
]


def original_sample(record: Record, source: str) -> Sample:
    """The record's own (instruction, input, output), checked to be text."""
    for name in ("instruction", "output"):
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InputError(
                source,
                f"{name!r} is missing or empty",
                "run the data through `rtune prepare` first",
                record=record.get("id"),
                field=name,
            )
    text_input = record.get("input") or ""
    if not isinstance(text_input, str):
        raise InputError(
            source,
            "'input' must be a string",
            'use "" when there is no input',
            record=record.get("id"),
            field="input",
        )
    return {"instruction": record["instruction"], "input": text_input, "output": record["output"]}


def with_reflected_instruction(record: Record, sample: Sample, result: Result) -> Record:
    """The record plus its ``ori`` and ``Q`` candidates and the teacher's metadata.

    Fields fall back one by one (``teacher.fallback: per_field``, the reference's rule): a new
    instruction is kept even when its answer was unusable (``Q`` then pairs it with the original
    answer), and a usable new answer is kept under the original instruction and input. No fields
    at all: ``Q`` copies ``ori``.
    """
    fields = result["fields"] or {}
    reflected = dict(sample)
    if "new_instruction" in fields:
        reflected.update(instruction=fields["new_instruction"], input="")
    if "new_answer" in fields:
        reflected["output"] = fields["new_answer"]
    grown = {**record, "candidates": {"ori": dict(sample), "Q": reflected}}
    return with_teacher_meta(grown, "instruction", result["meta"])


PLAN = StagePlan(phase="instruction", sample=original_sample, attach=with_reflected_instruction)


def reflect_instructions(
    input_path: Path,
    output_path: Path,
    config: TeacherConfig,
    checkpoint_path: Path | None = None,
    teacher: Teacher | None = None,
    progress: bool = True,
) -> ReflectSummary:
    """Run phase 1 over ``input_path`` (prepared records) into ``output_path``; resumable."""
    return reflect_stage(
        PLAN,
        Path(input_path),
        Path(output_path),
        config,
        checkpoint_path=checkpoint_path,
        teacher=teacher,
        progress=progress,
    )
