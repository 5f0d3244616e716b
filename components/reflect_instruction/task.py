"""Phase-1 teacher as a pipeline task: reflect every instruction, checkpointed, tracked."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rtune.components.common.checkpoint import fingerprint
from rtune.components.common.config import from_dict
from rtune.components.common.records import Record, read_jsonl
from rtune.components.common.stage import MetricsSink, publish_metrics, tracked_stage
from rtune.components.common.storage import cache_root
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.health import TeacherUnavailable


def checkpoint_for(stage: str, input_path: Path, teacher: TeacherConfig, root: str = "") -> Path:
    """A durable checkpoint path keyed by the stage input and the teacher settings that shape
    its answers.

    A KFP retry (or a re-run of the same pipeline on the same data) lands on the same file and
    resumes - also after the teacher's URL, concurrency, retries or ``max_error_rate`` changed,
    which is how a run stopped by a dead teacher is finished. ``root`` defaults to
    ``$RTUNE_CACHE/checkpoints``; mount a PVC there in a cluster.
    """
    text = Path(input_path).read_bytes().decode("utf-8", "replace")
    key = fingerprint(stage, text, teacher.result_shaping())
    return Path(root or cache_root() / "checkpoints") / stage / f"{key}.partial.jsonl"


def candidate_rows(records: list[Record], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Flat rows (id, candidate, instruction, input, output) for the ``candidates`` dataset."""
    return [
        {"id": r["id"], "candidate": name, **r["candidates"][name]}
        for r in records
        for name in names
        if name in r.get("candidates", {})
    ]


def teacher_metrics(records: list[Record], phase: str) -> dict[str, float]:
    statuses = [r.get("teacher", {}).get(phase, {}).get("parse_status") for r in records]
    return {
        f"parse_status_{s}": float(statuses.count(s)) for s in sorted({str(s) for s in statuses})
    }


def run_reflect_phase(
    phase: str,
    reflect: Callable[..., Any],
    candidates: tuple[str, ...],
    records_path: Path,
    teacher: Mapping[str, Any] | None,
    tracking: Mapping[str, Any] | None,
    kfp_run_id: str,
    output_path: Path,
    checkpoint_root: str = "",
    metrics: MetricsSink | None = None,
) -> dict[str, float]:
    """One teacher phase (``instruction`` or ``response``) with its checkpoint, run and metrics.

    Raises ``TeacherUnavailable`` (after logging the metrics) when the teacher failed for good on
    more than ``teacher.max_error_rate`` of the records, so the pipeline stops here instead of
    training on answers that were never reflected.
    """
    stage = f"reflect_{phase}"
    config = from_dict(TeacherConfig, teacher, "teacher")
    checkpoint = checkpoint_for(stage, Path(records_path), config, checkpoint_root)
    with tracked_stage(stage, kfp_run_id, tracking, config) as run:
        try:
            summary = reflect(
                Path(records_path), Path(output_path), config, checkpoint_path=checkpoint
            )
        except TeacherUnavailable as err:  # the run fails, with what it cost on record
            publish_metrics(run, metrics, err.metrics)
            raise
        records = read_jsonl(output_path)
        run.log_dataset(
            candidate_rows(records, candidates),
            source=str(output_path),
            name=f"candidates-{phase}",
            context="candidates",
        )
        values = {**summary.as_dict(), **teacher_metrics(records, phase)}
        publish_metrics(run, metrics, values)
    return values


def run_reflect_instruction(
    records_path: Path,
    teacher: Mapping[str, Any] | None,
    tracking: Mapping[str, Any] | None,
    kfp_run_id: str,
    output_path: Path,
    checkpoint_root: str = "",
    metrics: MetricsSink | None = None,
) -> dict[str, float]:
    from rtune.components.reflect_instruction.reflect import reflect_instructions

    return run_reflect_phase(
        "instruction",
        reflect_instructions,
        ("ori", "Q"),
        records_path,
        teacher,
        tracking,
        kfp_run_id,
        output_path,
        checkpoint_root,
        metrics,
    )
