"""Student scoring as pipeline tasks: plan shards, score one shard (``dsl.ParallelFor`` body)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rtune.components.common.checkpoint import fingerprint
from rtune.components.common.config import from_dict
from rtune.components.common.stage import MetricsSink, publish_metrics, tracked_stage
from rtune.components.common.storage import cache_root
from rtune.components.scoring.config import ScoringConfig

PIPELINE_ONLY_KEYS = ("num_shards",)


def split_scoring_config(scoring: Mapping[str, Any] | None) -> tuple[ScoringConfig, int]:
    """The scorer's config and the number of shards (a pipeline-level knob kept beside it)."""
    values = dict(scoring or {})
    num_shards = int(values.pop("num_shards", 1))
    if num_shards < 1:
        raise ValueError(f"scoring.num_shards must be >= 1, got {num_shards}")
    return from_dict(ScoringConfig, values, "scoring"), num_shards


def plan_shard_indices(scoring: Mapping[str, Any] | None) -> list[int]:
    return list(range(split_scoring_config(scoring)[1]))


def run_score_shard(
    records_path: Path,
    scoring: Mapping[str, Any] | None,
    tracking: Mapping[str, Any] | None,
    kfp_run_id: str,
    phase: str,
    shard_index: int,
    output_path: Path,
    checkpoint_root: str = "",
    metrics: MetricsSink | None = None,
) -> dict[str, float]:
    from rtune.components.scoring.stage import score_candidates

    config, num_shards = split_scoring_config(scoring)
    key = fingerprint(
        phase,
        shard_index,
        num_shards,
        str(config),
        Path(records_path).read_bytes().decode("utf-8", "replace"),
    )
    checkpoint = (
        Path(checkpoint_root or cache_root() / "checkpoints")
        / f"score_{phase}"
        / f"{key}.partial.jsonl"
    )
    name = f"score_{phase}-shard-{int(shard_index)}"
    with tracked_stage(name, kfp_run_id, tracking, config, {"num_shards": str(num_shards)}) as run:
        summary = score_candidates(
            Path(records_path),
            Path(output_path),
            config,
            phase,  # type: ignore[arg-type]
            shard_index=int(shard_index),
            num_shards=num_shards,
            checkpoint_path=checkpoint,
        )
        publish_metrics(run, metrics, summary.as_dict())
    return summary.as_dict()
