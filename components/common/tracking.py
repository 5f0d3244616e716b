"""MLflow tracking: one parent run per pipeline run, one nested run per stage (DESIGN.md §7).

The parent run is found-or-created by the first stage that runs, looked up by the tag
``kfp.run_id`` (the KFP run id from ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``). Where the cluster's KFP
MLflow integration already injected ``MLFLOW_RUN_ID`` into the task, that run is used as the stage
run instead. The default store is ``sqlite:///mlflow.db`` (absolute path) in the working
directory; ``MLFLOW_TRACKING_URI`` points at a server (whose artifacts may live on S3).

Whatever text reaches MLflow through a :class:`StageRun` - params, tags, logged text and JSON,
a dataset's source - passes ``redact_credentials`` first: a URL with ``user:password@`` or a
``?token=`` in a config or a summary is shown with ``***`` there.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtune.components.common.config import redact_credentials

PIPELINE_TAG = "kfp.run_id"
ROLE_TAG = "rtune.role"
STAGE_TAG = "rtune.stage"
# MLflow 3's UI opens an experiment by its kind: a model-training one opens on the runs table
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow behind its basic-auth app (manifests/base/mlflow-deployment.yaml): the Secret whose keys
# every pod that logs to it gets as MLflow's login variables (tasks and training-job nodes alike)
MLFLOW_AUTH_SECRET = "rtune-mlflow-auth"
MLFLOW_AUTH_KEYS = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


@dataclass
class TrackingConfig:
    """Where runs go. ``tracking_uri`` empty -> ``$MLFLOW_TRACKING_URI`` or ./mlflow.db (sqlite)."""

    experiment: str = field(
        default="reflection-tuning", metadata={"help": "MLflow experiment name"}
    )
    tracking_uri: str = field(
        default="",
        metadata={
            "help": "MLflow server (http://...) or sqlite:///...; '' = $MLFLOW_TRACKING_URI or ./mlflow.db"
        },
    )
    enabled: bool = field(default=True, metadata={"help": "false = log nothing to MLflow"})

    def __post_init__(self) -> None:
        if not self.experiment:
            raise ValueError("experiment must be a non-empty name")


def resolve_tracking_uri(config: TrackingConfig) -> str:
    uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


def find_or_create_parent_run(
    client: Any, experiment_id: str, kfp_run_id: str, pipeline: str
) -> str:
    """The pipeline's parent run id, created (tagged with the KFP run id) if it does not exist yet."""
    query = f"tags.`{PIPELINE_TAG}` = '{kfp_run_id}' and tags.`{ROLE_TAG}` = 'pipeline'"
    found = client.search_runs(
        [experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"]
    )
    if found:
        return str(found[0].info.run_id)
    run = client.create_run(
        experiment_id,
        run_name=f"{pipeline}-{kfp_run_id}",
        tags={
            PIPELINE_TAG: kfp_run_id,
            ROLE_TAG: "pipeline",
            "mlflow.runName": f"{pipeline}-{kfp_run_id}",
        },
    )
    return str(run.info.run_id)


class StageRun:
    """What a stage logs into its nested run. Every method is a no-op when tracking is off."""

    def __init__(self, run_id: str | None, parent_run_id: str | None) -> None:
        self.run_id = run_id
        self.parent_run_id = parent_run_id

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def log_params(self, params: Mapping[str, str]) -> None:
        if self.active:
            import mlflow

            mlflow.log_params({k: redact_credentials(str(v))[:6000] for k, v in params.items()})

    def log_parent_params(self, params: Mapping[str, str], prefix: str) -> None:
        """The stage's settings on the parent run too (``<stage>.<key>``): the run's config.

        Params are write-once; a value another shard already logged the same is skipped.
        """
        if not (self.active and self.parent_run_id):
            return
        import time

        import mlflow
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        client = mlflow.MlflowClient()
        wanted = {f"{prefix}.{k}": redact_credentials(str(v))[:6000] for k, v in params.items()}
        for attempt in range(3):  # parallel shards race to insert the same keys: read again
            logged = client.get_run(self.parent_run_id).data.params
            fresh = {k: v for k, v in wanted.items() if k not in logged}
            if not fresh:
                return
            try:
                client.log_batch(self.parent_run_id, params=[Param(k, v) for k, v in fresh.items()])
                return
            except MlflowException:
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))

    def log_metrics(self, metrics: Mapping[str, float | int], to_parent: bool = False) -> None:
        if not self.active:
            return
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        mlflow.log_metrics(clean)
        if to_parent and self.parent_run_id:
            client = mlflow.MlflowClient()
            stamp = int(time.time() * 1000)
            for key, value in clean.items():
                client.log_metric(self.parent_run_id, key, value, timestamp=stamp)

    def set_tags(self, tags: Mapping[str, str], to_parent: bool = False) -> None:
        if not self.active:
            return
        import mlflow

        shown = {key: redact_credentials(str(value)) for key, value in tags.items()}
        mlflow.set_tags(shown)
        if to_parent and self.parent_run_id:
            client = mlflow.MlflowClient()
            for key, value in shown.items():
                client.set_tag(self.parent_run_id, key, value)

    def log_dataset(
        self,
        rows: Sequence[Mapping[str, Any]],
        source: str,
        name: str,
        context: str,
        to_parent: bool = False,
    ) -> None:
        """Log records as an ``mlflow.data`` dataset input (``source`` = the artifact's URI)."""
        if not self.active:
            return
        import mlflow
        import pandas as pd
        from mlflow.data.pandas_dataset import from_pandas

        frame = pd.DataFrame([_flat_row(row) for row in rows])
        dataset = from_pandas(frame, source=redact_credentials(source), name=name)
        mlflow.log_input(dataset, context=context)
        if to_parent and self.parent_run_id:
            from mlflow.entities import DatasetInput, InputTag

            entity = DatasetInput(
                dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)]
            )
            mlflow.MlflowClient().log_inputs(self.parent_run_id, datasets=[entity])

    def log_table(self, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> None:
        if self.active and rows:
            import mlflow
            import pandas as pd

            mlflow.log_table(
                pd.DataFrame([_flat_row(row) for row in rows]), artifact_file=artifact_file
            )

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        if self.active:
            import mlflow

            mlflow.log_figure(figure, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            import mlflow

            mlflow.log_text(redact_credentials(text), artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.active:
            import mlflow

            mlflow.log_artifact(str(path), artifact_path)

    def log_json(self, data: Any, artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), artifact_file)


def _flat_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Tables hold scalars: nested values (lists, dicts) become JSON strings."""
    return {
        k: (json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v)
        for k, v in row.items()
    }


@contextmanager
def stage_run(
    stage: str, kfp_run_id: str, config: TrackingConfig, pipeline: str = "reflection-tuning"
) -> Iterator[StageRun]:
    """Open the stage's nested MLflow run under the pipeline's parent run (or the injected run)."""
    if not config.enabled:
        yield StageRun(None, None)
        return
    import mlflow

    injected = os.environ.get("MLFLOW_RUN_ID")
    mlflow.set_tracking_uri(resolve_tracking_uri(config))
    if injected:
        with mlflow.start_run(run_id=injected) as run:
            mlflow.set_tags({STAGE_TAG: stage, PIPELINE_TAG: kfp_run_id})
            yield StageRun(run.info.run_id, None)
        return
    experiment = mlflow.set_experiment(config.experiment)
    client = mlflow.MlflowClient()
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    parent_id = find_or_create_parent_run(client, experiment.experiment_id, kfp_run_id, pipeline)
    tags = {PIPELINE_TAG: kfp_run_id, STAGE_TAG: stage, ROLE_TAG: "stage"}
    with mlflow.start_run(run_name=stage, parent_run_id=parent_id, nested=True, tags=tags) as run:
        yield StageRun(run.info.run_id, parent_id)


def temp_artifact_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="rtune-artifacts-"))
