"""KFP component for `prepare` (thin: adapts artifacts to rtune.components.prepare.task)."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from rtune.components.common.images import image


@dsl.component(base_image=image("base"))
def prepare(
    seed_uri: str,
    config: dict,
    tracking: dict,
    kfp_run_id: str,
    prepared: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Validate, normalise, id and de-duplicate the seed data."""
    from pathlib import Path

    from rtune.components.prepare.task import run_prepare

    run_prepare(seed_uri, config, tracking, kfp_run_id, Path(prepared.path), metrics)
