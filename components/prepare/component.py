"""KFP component for `prepare` (thin: adapts artifacts to the stage in ``task.py``).

A plain function: the DAG makes it a component with its image at compile time.
"""

from kfp.dsl import Dataset, Metrics, Output


def prepare(
    seed_uri: str,
    student: dict,
    prepare_config: dict,
    tracking: dict,
    prepared: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Validate, normalise, id and de-duplicate the seed data."""
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.prepare.task import PrepareStage

    stage = PrepareStage.from_parameters(seed_uri, student, prepare_config, Path(prepared.path))
    run_stage(stage, StageSettings(tracking=tracking, metrics=metrics))
