"""One shape for every stage: a stage declares its config, inputs and outputs; one runner runs it.

    @dataclass
    class ScoreShard:                      # a Stage
        name = "score_ifd-shard-0"
        config: ScoringConfig
        records: Path                      # inputs and outputs are plain fields
        scores: Path
        def run(self, context: StageContext) -> ScoreSummary: ...

    summary = run_stage(ScoreShard(...), StageSettings(tracking=..., checkpoint_root=...))

The runner owns what every stage needs and none should write again: the run id (the KFP run's, from
the pod's ``pipeline/runid`` label as ``$KFP_RUN_ID``, or one of its own for a CLI run), the
stage's nested MLflow run with its config as params, the checkpoint folder
(``<checkpoint_root>/<stage group>/``), the metrics (MLflow and the Kubeflow UI's Metrics
artifact) and the stage's line of the run summary (an MLflow tag, and one log line).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from rtune.components.common.checkpoint import fingerprint
from rtune.components.common.config import flatten, redact_credentials
from rtune.components.common.config import from_dict as config_from_dict
from rtune.components.common.gpus import require_gpu_devices
from rtune.components.common.storage import cache_root
from rtune.components.common.tracking import StageRun, TrackingConfig, stage_run

RUN_ID_ENV = "KFP_RUN_ID"
SUMMARY_TAG = "rtune.summary"
SUMMARY_MARK = "rtune-summary "  # the line `rtune run` shows for a finished stage


class MetricsSink(Protocol):
    """A KFP ``Metrics`` artifact (or anything with ``log_metric``)."""

    def log_metric(self, metric: str, value: float) -> None: ...


class StageSummary(Protocol):
    """What a stage returns: numbers for metrics, and its line of the run summary."""

    def as_dict(self) -> dict[str, Any]: ...

    def line(self) -> str: ...


S = TypeVar("S", bound=StageSummary, covariant=True)


class Stage(Protocol[S]):
    name: str
    config: Any

    def run(self, context: StageContext) -> S: ...


@dataclass(frozen=True)
class StageSettings:
    """What the DAG (or a CLI command) gives every stage besides its config and data."""

    tracking: Mapping[str, Any] | None = None
    checkpoint_root: str = ""
    metrics: MetricsSink | None = None
    run_id: str = ""  # '' = $KFP_RUN_ID, else a fresh id (a CLI run is a run of its own)
    extra_params: Mapping[str, str] = field(default_factory=dict)
    to_parent: bool = False  # also log the metrics on the pipeline's parent run


@dataclass
class StageContext:
    name: str
    run: StageRun
    run_id: str
    checkpoint_dir: Path
    sink: MetricsSink | None = None
    to_parent: bool = False

    def publish(self, metrics: Mapping[str, Any]) -> None:
        """Metrics now, e.g. what a failing stage cost before it raises."""
        publish_metrics(self.run, self.sink, metrics, self.to_parent)

    def checkpoint(self, *identity: Any) -> Path:
        """The checkpoint file of the work ``identity`` names (the same work lands on it again)."""
        return self.checkpoint_dir / f"{fingerprint(*identity)}.partial.jsonl"


def resolve_run_id(given: str = "") -> str:
    return given or os.environ.get(RUN_ID_ENV) or new_run_id()


def new_run_id() -> str:
    """A run of its own (a CLI command): ``cli-`` and 12 hex digits."""
    return f"cli-{uuid.uuid4().hex[:12]}"


def checkpoint_dir(root: str, group: str) -> Path:
    """``<root>/<group>``; ``root`` defaults to ``$RTUNE_CACHE/checkpoints`` (mount a volume there)."""
    return Path(root or cache_root() / "checkpoints") / group


PER_SHARD_PARAMS = frozenset({"shard_index"})  # on a shard's own run only, never the parent's


def stage_group(name: str) -> str:
    """``score_ifd-shard-3`` -> ``score_ifd``: shards of one stage share a checkpoint folder."""
    return name.split("-shard-")[0]


def run_stage(stage: Stage[S], settings: StageSettings = StageSettings()) -> S:
    """Run ``stage`` tracked, checkpointed and reported; returns its summary."""
    require_gpu_devices()  # a GPU pod without its GPUs fails now, not on the CPU for hours
    run_id = resolve_run_id(settings.run_id)
    tracking = config_from_dict(TrackingConfig, settings.tracking, "tracking")
    with stage_run(stage.name, run_id, tracking) as run:
        params = {**getattr(stage, "params", {}), **dict(settings.extra_params)}
        settings_params = {**flatten(stage.config), **params}
        run.log_params(settings_params)
        # the run's config on the parent; a shard's own index is not config, and parallel
        # shards writing different values to one write-once param would fail each other
        shared = {k: v for k, v in settings_params.items() if k not in PER_SHARD_PARAMS}
        run.log_parent_params(shared, stage_group(stage.name))
        context = StageContext(
            stage.name,
            run,
            run_id,
            checkpoint_dir(settings.checkpoint_root, stage_group(stage.name)),
            settings.metrics,  # what a failing stage publishes reaches the Kubeflow UI too
        )
        summary = stage.run(context)
        publish_metrics(run, settings.metrics, summary.as_dict(), settings.to_parent)
        line = redact_credentials(summary.line())  # a log line too, not only MLflow's tag
        run.set_tags({SUMMARY_TAG: line[:5000]})
        print(f"{SUMMARY_MARK}{stage.name}: {line}", file=sys.stderr, flush=True)
    return summary


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
