"""Phase-2 teacher as a pipeline task: a better answer for each phase-1 winner."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.common.config import from_dict
from components.common.records import read_jsonl
from components.common.stage import MetricsSink, publish_metrics, tracked_stage
from components.reflect_instruction.task import candidate_rows, checkpoint_for, teacher_metrics
from components.teacher.config import TeacherConfig


def run_reflect_response(
    records_path: Path,
    teacher: Mapping[str, Any] | None,
    tracking: Mapping[str, Any] | None,
    kfp_run_id: str,
    output_path: Path,
    checkpoint_root: str = "",
    metrics: MetricsSink | None = None,
) -> dict[str, float]:
    from components.reflect_response.reflect import reflect_responses

    config = from_dict(TeacherConfig, teacher, "teacher")
    checkpoint = checkpoint_for("reflect_response", Path(records_path), config, checkpoint_root)
    with tracked_stage("reflect_response", kfp_run_id, tracking, config) as run:
        summary = reflect_responses(
            Path(records_path), Path(output_path), config, checkpoint_path=checkpoint
        )
        records = read_jsonl(output_path)
        run.log_dataset(
            candidate_rows(records, ("A", "QA")),
            source=str(output_path),
            name="candidates-response",
            context="candidates",
        )
        values = {**summary.as_dict(), **teacher_metrics(records, "response")}
        publish_metrics(run, metrics, values)
    return values
