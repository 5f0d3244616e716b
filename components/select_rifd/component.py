"""KFP component for `select_rifd` (phase-2 selection and the final cut)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from rtune.components.common.images import image


@dsl.component(base_image=image("base"))
def select_rifd(
    candidates: Input[Dataset],
    scores: Input[list[Dataset]],
    selection: dict,
    tracking: dict,
    kfp_run_id: str,
    decisions: Output[Dataset],
    selected: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> None:
    """Keep the reflected response when r-IFD and IFD say it helps; write the training set."""
    from pathlib import Path

    from rtune.components.select_rifd.task import run_select_rifd

    run_select_rifd(
        Path(candidates.path),
        [Path(s.path) for s in scores],
        selection,
        tracking,
        kfp_run_id,
        Path(decisions.path),
        Path(selected.path),
        Path(report.path),
        metrics,
        last_stage=False,
    )
