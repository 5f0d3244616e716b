"""KFP components for imported reflections (``teacher.backend=imported``); the DAG wraps them
where it would put ``reflect_instruction`` and ``reflect_response``."""

from kfp.dsl import Dataset, Input, Metrics, Output


def import_reflections(
    records: Input[Dataset],
    teacher: dict,
    tracking: dict,
    candidates: Output[Dataset],
    responses: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Imported ori/Q candidates for the prepared records; A/QA kept for phase 2. No teacher."""
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.importer.task import ImportStage

    stage = ImportStage.from_parameters(
        teacher, Path(records.path), Path(candidates.path), Path(responses.path)
    )
    run_stage(stage, StageSettings(tracking=tracking, metrics=metrics))


def attach_imported_responses(
    records: Input[Dataset],
    responses: Input[Dataset],
    teacher: dict,
    tracking: dict,
    candidates: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Each phase-1 winner's imported reflected answer (A or QA). No teacher."""
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.importer.task import AttachStage

    stage = AttachStage.from_parameters(
        teacher, Path(records.path), Path(responses.path), Path(candidates.path)
    )
    run_stage(stage, StageSettings(tracking=tracking, metrics=metrics))
