"""KFP component for `evaluate` (thin: adapts artifacts to rtune.components.evaluate.task)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from rtune.components.common.images import image


@dsl.component(base_image=image("base"))
def evaluate(
    endpoint: Input[Artifact],
    evaluate: dict,
    tracking: dict,
    kfp_run_id: str,
    results: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    checkpoint_root: str = "",
) -> None:
    """Served candidate vs base: verifiable suite, pairwise judge, lm-eval; `champion` on a win."""
    from pathlib import Path

    from rtune.components.evaluate.task import run_evaluate

    summary = run_evaluate(
        Path(endpoint.path),
        evaluate,
        tracking,
        kfp_run_id,
        Path(report.path),
        Path(results.path),
        metrics,
        checkpoint_root=checkpoint_root,
    )
    results.metadata.update(
        {k: v for k, v in summary.items() if isinstance(v, str | int | float) and "/" not in k}
    )
