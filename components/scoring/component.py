"""KFP components for student scoring: plan the shards, score one shard (plain functions)."""

from kfp.dsl import Dataset, Input, Metrics, Output


def plan_shards(scoring: dict) -> list:
    """Shard indices ``[0, ..., num_shards-1]`` for the scoring ``dsl.ParallelFor``."""
    from rtune.components.scoring.task import plan_shard_indices

    return plan_shard_indices(scoring)


def score_shard(
    records: Input[Dataset],
    student: dict,
    scoring: dict,
    tracking: dict,
    phase: str,
    shard_index: int,
    checkpoint_root: str,
    scores: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """IFD / r-IFD of this shard's candidates with the student model."""
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.scoring.task import ScoreShardStage

    stage = ScoreShardStage.from_parameters(
        student, scoring, phase, shard_index, Path(records.path), Path(scores.path)
    )
    run_stage(
        stage, StageSettings(tracking=tracking, checkpoint_root=checkpoint_root, metrics=metrics)
    )
