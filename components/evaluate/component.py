"""KFP component for `evaluate` (served candidate vs the base student, and the fine-tuned model
before quantization beside them); a plain function."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output


def evaluate(
    endpoint: Input[Artifact],
    finetuned: Input[Model],
    student: dict,
    evaluate: dict,
    tracking: dict,
    checkpoint_root: str,
    results: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> None:
    """Verifiable suite, pairwise judge, lm-eval; `champion` on a win; training vs
    quantization effects (``finetuned`` = the finetune stage's model)."""
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.evaluate.task import EvaluateStage

    stage = EvaluateStage.from_parameters(
        student,
        evaluate,
        Path(endpoint.path),
        Path(results.path),
        Path(report.path),
        finetuned=Path(finetuned.path),
    )
    summary = run_stage(
        stage,
        StageSettings(
            tracking=tracking, checkpoint_root=checkpoint_root, metrics=metrics, to_parent=True
        ),
    )
    results.metadata.update(summary.artifact_metadata())
