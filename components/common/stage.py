"""Glue shared by every stage task: typed configs in, a tracked nested run, metrics out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from rtune.components.common.config import flatten
from rtune.components.common.config import from_dict as config_from_dict
from rtune.components.common.tracking import StageRun, TrackingConfig, stage_run


class MetricsSink(Protocol):
    """A KFP ``Metrics`` artifact (or anything with ``log_metric``)."""

    def log_metric(self, metric: str, value: float) -> None: ...


@contextmanager
def tracked_stage(
    name: str,
    kfp_run_id: str,
    tracking: Mapping[str, Any] | None,
    config: Any,
    extra_params: Mapping[str, str] | None = None,
) -> Iterator[StageRun]:
    """Open the stage's nested MLflow run and log its flattened config as params."""
    tracking_config = config_from_dict(TrackingConfig, tracking, "tracking")
    with stage_run(name, kfp_run_id, tracking_config) as run:
        run.log_params({**flatten(config), **dict(extra_params or {})})
        yield run


def publish_metrics(
    run: StageRun, sink: MetricsSink | None, metrics: Mapping[str, Any], to_parent: bool = False
) -> None:
    """Send numeric metrics to MLflow and to the Kubeflow UI (the task's Metrics artifact)."""
    numeric = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    run.log_metrics(numeric, to_parent=to_parent)
    if sink is not None:
        for key, value in numeric.items():
            sink.log_metric(key, value)
