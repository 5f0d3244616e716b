"""The `prepare` stage as a pipeline task: validate and normalise the seed data, track it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rtune.components.common.config import from_dict
from rtune.components.common.records import read_jsonl
from rtune.components.common.stage import MetricsSink, publish_metrics, tracked_stage
from rtune.components.prepare.config import PrepareConfig
from rtune.components.prepare.prepare import SEED_URI, PrepareSummary, prepare_dataset, seed_path


def run_prepare(
    seed_uri: str,
    config: Mapping[str, Any] | None,
    tracking: Mapping[str, Any] | None,
    kfp_run_id: str,
    output_path: Path,
    metrics: MetricsSink | None = None,
) -> PrepareSummary:
    """Prepare ``seed_uri`` into ``output_path``; log the seed as an MLflow dataset (context ``seed``)."""
    prepare_config = from_dict(PrepareConfig, config, "prepare")
    source = str(seed_path()) if seed_uri == SEED_URI else seed_uri
    with tracked_stage(
        "prepare", kfp_run_id, tracking, prepare_config, {"seed_uri": source}
    ) as run:
        summary = prepare_dataset(seed_uri, Path(output_path), prepare_config)
        run.log_dataset(read_jsonl(output_path), source=source, name="seed", context="seed")
        publish_metrics(run, metrics, summary.as_dict())
    return summary
