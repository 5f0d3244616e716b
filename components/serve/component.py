"""KFP component for `serve` (local server or KServe InferenceService); a plain function."""

from kfp.dsl import Artifact, Input, Metrics, Model, Output


def serve(
    model: Input[Model],
    serve: dict,
    tracking: dict,
    endpoint: Output[Artifact],
    metrics: Output[Metrics],
) -> str:
    """Serve the model, smoke-test it; returns its URL (the endpoint spec is the artifact)."""
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.serve.task import ServeStage

    stage = ServeStage.from_parameters(serve, Path(model.path), Path(endpoint.path))
    summary = run_stage(stage, StageSettings(tracking=tracking, metrics=metrics, to_parent=True))
    endpoint.metadata.update(summary.artifact_metadata())
    return summary.base_url
