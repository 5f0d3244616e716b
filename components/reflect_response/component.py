"""KFP component for `reflect_response` (phase-2 teacher)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from rtune.components.common.images import image


@dsl.component(base_image=image("base"))
def reflect_response(
    records: Input[Dataset],
    teacher: dict,
    tracking: dict,
    kfp_run_id: str,
    checkpoint_root: str,
    candidates: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Teacher writes a better answer for each phase-1 winner (candidate A or QA)."""
    from pathlib import Path

    from rtune.components.reflect_response.task import run_reflect_response

    run_reflect_response(
        Path(records.path),
        teacher,
        tracking,
        kfp_run_id,
        Path(candidates.path),
        checkpoint_root,
        metrics,
    )
