"""KFP component for `reflect_instruction` (phase-1 teacher)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from rtune.components.common.images import image


@dsl.component(base_image=image("base"))
def reflect_instruction(
    records: Input[Dataset],
    teacher: dict,
    tracking: dict,
    kfp_run_id: str,
    checkpoint_root: str,
    candidates: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Teacher critiques each instruction and writes a new one with its answer (candidate Q)."""
    from pathlib import Path

    from rtune.components.reflect_instruction.task import run_reflect_instruction

    run_reflect_instruction(
        Path(records.path),
        teacher,
        tracking,
        kfp_run_id,
        Path(candidates.path),
        checkpoint_root,
        metrics,
    )
