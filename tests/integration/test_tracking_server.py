"""A stage's run lands in a real MLflow server (sqlite) whose artifacts live on S3 (moto)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from rtune.components.common.tracking import PIPELINE_TAG, TrackingConfig, stage_run
from tests.servers import S3_ENV, mlflow_server, moto_s3

pytestmark = pytest.mark.integration


@pytest.fixture()
def tracking_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    with moto_s3() as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="mlflow")
        env = {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": endpoint}
        with mlflow_server(tmp_path, "s3://mlflow/artifacts", env) as server:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
            monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
            yield server.url, endpoint


def test_stage_runs_nest_under_one_parent_and_artifacts_reach_s3(
    tracking_server, tmp_path: Path, rtune_cache: Path
) -> None:
    import mlflow

    from rtune.components.common import reports
    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.prepare.config import PrepareConfig
    from rtune.components.prepare.task import PrepareStage

    url, endpoint = tracking_server
    tracking = {"experiment": "rt-int", "tracking_uri": url}
    summary = run_stage(
        PrepareStage(
            PrepareConfig(limit=6, tokenizer=None), "builtin:seed", tmp_path / "prepared.jsonl"
        ),
        StageSettings(tracking=tracking, run_id="kfp-123"),
    )
    assert summary.as_dict()["records_written"] == 6
    with stage_run("select_ifd", "kfp-123", TrackingConfig(**tracking)) as run:
        run.log_figure(
            reports.figure_decisions([{"decision": "A"}, {"decision": "dropped"}]),
            "figures/decisions.png",
        )
        run.log_table([{"id": "a", "candidate": "ori", "ifd": 0.5}], "scores/select_ifd.json")

    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name("rt-int")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("rtune.role") == "pipeline"]
    stages = {r.info.run_name: r for r in runs if r.data.tags.get("rtune.role") == "stage"}
    assert len(parents) == 1 and parents[0].data.tags[PIPELINE_TAG] == "kfp-123"
    assert set(stages) == {"prepare", "select_ifd"}
    for run in stages.values():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    prepared = stages["prepare"]
    assert prepared.data.params["max_length"] == "2048"
    assert prepared.data.metrics["records_written"] == 6
    assert [d.tags[0].value for d in prepared.inputs.dataset_inputs] == ["seed"]

    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=endpoint)
        .list_objects_v2(Bucket="mlflow")
        .get("Contents", [])
    ]
    assert any(k.endswith("figures/decisions.png") for k in keys), keys
    assert any(k.endswith("scores/select_ifd.json") for k in keys), keys
    assert not any(S3_ENV["AWS_SECRET_ACCESS_KEY"] in str(r.data.params) for r in runs)
