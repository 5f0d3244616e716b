"""KFP components for student scoring: plan the shards, score one shard."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from rtune.components.common.images import image


@dsl.component(base_image=image("base"))
def plan_shards(scoring: dict) -> list:
    """Shard indices ``[0, ..., num_shards-1]`` for the scoring ``dsl.ParallelFor``."""
    from rtune.components.scoring.task import plan_shard_indices

    return plan_shard_indices(scoring)


@dsl.component(base_image=image("base"))
def score_shard(
    records: Input[Dataset],
    scoring: dict,
    tracking: dict,
    kfp_run_id: str,
    phase: str,
    shard_index: int,
    checkpoint_root: str,
    scores: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """IFD / r-IFD of this shard's candidates with the student model."""
    from pathlib import Path

    from rtune.components.scoring.task import run_score_shard

    run_score_shard(
        Path(records.path),
        scoring,
        tracking,
        kfp_run_id,
        phase,
        shard_index,
        Path(scores.path),
        checkpoint_root,
        metrics,
    )
