"""KFP component for `preflight`: the run's needs checked before any stage (a plain function)."""


def preflight(
    seed_uri: str,
    student: dict,
    teacher: dict,
    finetune: dict,
    quantize: dict,
    serve: dict,
    evaluate: dict,
    tracking: dict,
    checkpoint_root: str,
) -> None:
    """Secrets, teacher, MLflow, object store, checkpoint volume, custom resources: fail fast."""
    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.preflight.task import PreflightStage

    parameters = {
        "seed_uri": seed_uri,
        "student": student,
        "teacher": teacher,
        "finetune": finetune,
        "quantize": quantize,
        "serve": serve,
        "evaluate": evaluate,
        "tracking": tracking,
        "checkpoint_root": checkpoint_root,
    }
    # not tracked: an unreachable MLflow is one of the findings, not a crash before them
    run_stage(PreflightStage(parameters), StageSettings(tracking={"enabled": False}))
