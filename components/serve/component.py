"""KFP component for `serve` (thin: adapts artifacts to rtune.components.serve.task)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from rtune.components.common.images import image


@dsl.component(base_image=image("base"))
def serve(
    model: Input[Model],
    serve: dict,
    tracking: dict,
    kfp_run_id: str,
    endpoint: Output[Artifact],
    metrics: Output[Metrics],
) -> str:
    """Serve the model (local server or KServe InferenceService), smoke-test it; returns its URL."""
    from pathlib import Path

    from rtune.components.serve.task import run_serve

    summary = run_serve(Path(model.path), serve, tracking, kfp_run_id, Path(endpoint.path), metrics)
    endpoint.metadata.update(
        {k: summary[k] for k in ("kind", "base_url", "model", "server", "reasoning_format")}
    )
    return str(summary["base_url"])
