"""Phase-2 teacher as a pipeline task: a better answer for each phase-1 winner."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rtune.components.common.stage import MetricsSink
from rtune.components.reflect_instruction.task import run_reflect_phase


def run_reflect_response(
    records_path: Path,
    teacher: Mapping[str, Any] | None,
    tracking: Mapping[str, Any] | None,
    kfp_run_id: str,
    output_path: Path,
    checkpoint_root: str = "",
    metrics: MetricsSink | None = None,
) -> dict[str, float]:
    from rtune.components.reflect_response.reflect import reflect_responses

    return run_reflect_phase(
        "response",
        reflect_responses,
        ("A", "QA"),
        records_path,
        teacher,
        tracking,
        kfp_run_id,
        output_path,
        checkpoint_root,
        metrics,
    )
