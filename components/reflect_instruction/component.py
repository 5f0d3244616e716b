"""KFP component for `reflect_instruction` (phase-1 teacher); a plain function the DAG wraps."""

from kfp.dsl import Dataset, Input, Metrics, Output


def reflect_instruction(
    records: Input[Dataset],
    teacher: dict,
    tracking: dict,
    checkpoint_root: str,
    candidates: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Teacher critiques each instruction and writes a new one with its answer (candidate Q)."""
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.reflect_instruction.task import ReflectStage

    stage = ReflectStage.from_parameters(
        "instruction", teacher, Path(records.path), Path(candidates.path)
    )
    run_stage(
        stage, StageSettings(tracking=tracking, checkpoint_root=checkpoint_root, metrics=metrics)
    )
