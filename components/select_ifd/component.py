"""KFP component for `select_ifd` (phase-1 selection)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from rtune.components.common.images import image


@dsl.component(base_image=image("base"))
def select_ifd(
    candidates: Input[Dataset],
    scores: Input[list[Dataset]],
    tracking: dict,
    kfp_run_id: str,
    selected: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> None:
    """Keep the reflected instruction when the student finds it harder: IFD(Q) > IFD(ori)."""
    from pathlib import Path

    from rtune.components.select_ifd.task import run_select_ifd

    run_select_ifd(
        Path(candidates.path),
        [Path(s.path) for s in scores],
        tracking,
        kfp_run_id,
        Path(selected.path),
        Path(report.path),
        metrics,
    )
