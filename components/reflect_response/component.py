"""KFP component for `reflect_response` (phase-2 teacher); a plain function the DAG wraps."""

from kfp.dsl import Dataset, Input, Metrics, Output


def reflect_response(
    records: Input[Dataset],
    teacher: dict,
    tracking: dict,
    checkpoint_root: str,
    candidates: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Teacher writes a better answer for each phase-1 winner (candidate A or QA)."""
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.reflect_instruction.task import ReflectStage

    stage = ReflectStage.from_parameters(
        "response", teacher, Path(records.path), Path(candidates.path)
    )
    run_stage(
        stage, StageSettings(tracking=tracking, checkpoint_root=checkpoint_root, metrics=metrics)
    )
