"""KFP component for the exit handler: close the MLflow parent run, write the run summary."""

from kfp import dsl
from kfp.dsl import Markdown, Output


def finalize(
    status: dsl.PipelineTaskFinalStatus, tracking: dict, summary: Output[Markdown]
) -> None:
    """Runs after every stage, whatever happened: FINISHED or FAILED (naming the failed stages)."""
    from pathlib import Path

    from rtune.components.common.config import from_dict
    from rtune.components.common.stage import resolve_run_id
    from rtune.components.common.tracking import TrackingConfig
    from rtune.components.finalize.finalize import finalize_run

    outcome = finalize_run(
        status.state, resolve_run_id(), from_dict(TrackingConfig, tracking, "tracking")
    )
    Path(summary.path).write_text(outcome.markdown(), encoding="utf-8")
    from rtune.components.common.stage import SUMMARY_MARK

    print(f"{SUMMARY_MARK}finalize: {outcome.line()}", flush=True)
