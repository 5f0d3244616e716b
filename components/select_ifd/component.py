"""KFP component for `select_ifd` (phase-1 selection); a plain function the DAG wraps."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Output


def select_ifd(
    candidates: Input[Dataset],
    scores: Input[list[Dataset]],
    tracking: dict,
    selected: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> None:
    """Keep the reflected instruction when the student finds it harder: IFD(Q) > IFD(ori)."""
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.select_ifd.task import SelectIfdStage

    stage = SelectIfdStage(
        Path(candidates.path),
        [Path(s.path) for s in scores],
        Path(selected.path),
        Path(report.path),
    )
    run_stage(stage, StageSettings(tracking=tracking, metrics=metrics))
