"""KFP component for `select_rifd` (phase-2 selection and the final cut); a plain function."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Output


def select_rifd(
    candidates: Input[Dataset],
    scores: Input[list[Dataset]],
    selection: dict,
    tracking: dict,
    decisions: Output[Dataset],
    selected: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> None:
    """Keep the reflected response when r-IFD and IFD say it helps; write the training set."""
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.select_rifd.task import SelectRifdStage

    stage = SelectRifdStage.from_parameters(
        selection,
        Path(candidates.path),
        [Path(s.path) for s in scores],
        Path(decisions.path),
        Path(selected.path),
        Path(report.path),
    )
    run_stage(stage, StageSettings(tracking=tracking, metrics=metrics, to_parent=True))
