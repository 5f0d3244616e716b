"""The teacher phases as stages: reflect instructions (phase 1) or responses (phase 2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtune.components.common.config import from_dict
from rtune.components.common.record_schema import (
    candidate,
    candidate_names,
    teacher_critique,
    teacher_meta,
    teacher_reasons,
    teacher_status,
)
from rtune.components.common.records import Record, read_jsonl
from rtune.components.common.stage import StageContext
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.health import TeacherUnavailable
from rtune.components.teacher.runner import ReflectSummary


def candidate_rows(
    records: list[Record], names: tuple[str, ...], source: str = "records"
) -> list[dict[str, Any]]:
    """Flat rows (id, candidate, instruction, input, output) for the ``candidates`` dataset."""
    return [
        {"id": r["id"], "candidate": name, **candidate(r, name, source).to_dict()}
        for r in records
        for name in names
        if name in candidate_names(r, source)
    ]


def teacher_metrics(records: list[Record], phase: str) -> dict[str, float]:
    """``parse_status_<status>`` counts of the teacher's replies in ``phase``."""
    statuses = [teacher_status(r, phase) for r in records]
    return {
        f"parse_status_{s}": float(statuses.count(s)) for s in sorted({str(s) for s in statuses})
    }


PHASE_CANDIDATES = {"instruction": ("ori", "Q"), "response": ("A", "QA")}
NEW_CANDIDATES = {"instruction": ("Q",), "response": ("A", "QA")}  # what the teacher wrote
REPORT_ROWS = 200  # records shown in the HTML report (the MLflow table has them all)


def teacher_rows(
    records: list[Record], phase: str, source: str = "records"
) -> list[dict[str, Any]]:
    """One row per record for review: what the teacher wrote (the new candidate), its critique,
    status, rounds and the reasons behind any repair, cut or fallback."""
    rows = []
    for record in records:
        names = candidate_names(record, source)
        name = next(n for n in NEW_CANDIDATES[phase] if n in names)
        new = candidate(record, name, source)
        meta = teacher_meta(record, phase)
        rows.append(
            {
                "id": record["id"],
                "candidate": name,
                "parse_status": meta.get("parse_status"),
                "critique": teacher_critique(record, phase),
                "instruction": new.instruction,
                "output": new.output,
                "rounds": meta.get("rounds"),
                "sample_cut_tokens": meta.get("sample_cut_tokens", 0),
                "reasons": "; ".join(teacher_reasons(record, phase)),
            }
        )
    return rows


@dataclass
class ReflectPhaseSummary:
    phase: str
    summary: ReflectSummary
    statuses: dict[str, float]

    def as_dict(self) -> dict[str, float]:
        return {**self.summary.as_dict(), **self.statuses}

    def line(self) -> str:
        return self.summary.line(self.phase)


@dataclass
class ReflectStage:
    """One teacher phase: records in, records with the new candidates (``Q``, or ``A``/``QA``) out.

    Raises ``TeacherUnavailable`` (after publishing what it cost) when the teacher failed for good
    on more than ``teacher.max_error_rate`` of the records, so the pipeline stops here instead of
    training on answers that were never reflected. The checkpoint is keyed by the input and the
    teacher settings that shape answers: a retry - also with another URL, concurrency or
    ``max_error_rate``, which is how a run stopped by a dead teacher is finished - resumes.
    """

    phase: str
    config: TeacherConfig
    records: Path
    candidates: Path
    checkpoint_path: Path | None = (
        None  # '' = the runner's folder (a CLI puts it beside the output)
    )
    progress: bool = True
    name: str = ""
    report: Path | None = None  # also write the HTML report here (it always goes to MLflow)

    def __post_init__(self) -> None:
        if self.phase not in PHASE_CANDIDATES:
            raise ValueError(f"phase must be one of {sorted(PHASE_CANDIDATES)}, got {self.phase!r}")
        self.name = self.name or f"reflect_{self.phase}"

    @classmethod
    def from_parameters(
        cls, phase: str, teacher: Mapping[str, Any] | None, records: Path, candidates: Path
    ) -> ReflectStage:
        return cls(phase, from_dict(TeacherConfig, teacher, "teacher"), records, candidates)

    def run(self, context: StageContext) -> ReflectPhaseSummary:
        from rtune.components.reflect_instruction.reflect import reflect_instructions
        from rtune.components.reflect_response.reflect import reflect_responses

        reflect = reflect_instructions if self.phase == "instruction" else reflect_responses
        text = Path(self.records).read_bytes().decode("utf-8", "replace")
        checkpoint = self.checkpoint_path or context.checkpoint(
            self.name, text, self.config.result_shaping()
        )
        try:
            summary = reflect(
                Path(self.records),
                Path(self.candidates),
                self.config,
                checkpoint_path=checkpoint,
                progress=self.progress,
            )
        except TeacherUnavailable as err:  # the run fails, with what it cost on record
            context.publish(err.metrics)
            raise
        records = read_jsonl(self.candidates)
        context.run.log_dataset(
            candidate_rows(records, PHASE_CANDIDATES[self.phase], str(self.candidates)),
            source=str(self.candidates),
            name=f"candidates-{self.phase}",
            context="candidates",
        )
        result = ReflectPhaseSummary(self.phase, summary, teacher_metrics(records, self.phase))
        self._report(context, records, result)
        return result

    def _report(
        self, context: StageContext, records: list[Record], result: ReflectPhaseSummary
    ) -> None:
        """The per-record teacher table to MLflow, and the HTML report (MLflow and ``report``)."""
        from rtune.components.common.reports import html_report

        rows = teacher_rows(records, self.phase, str(self.candidates))
        context.run.log_table(rows, f"teacher/{self.name}.json")
        page = html_report(
            f"{self.name}: what the teacher judged and wrote",
            result.as_dict(),
            {},
            rows[:REPORT_ROWS],
            f"Teacher critiques and rewrites (first {REPORT_ROWS})",
        )
        context.run.log_text(page, f"reports/{self.name}.html")
        if self.report is not None:
            Path(self.report).write_text(page, encoding="utf-8")
