"""Multi-node launch: the fine-tune task stages its job on S3, creates a TrainJob on a real
Kubernetes API (kmock on loopback), waits for it and reads back rank 0's summary; a failed job
fails the stage with the job's own message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.images import Images
from rtune.components.finetune.cluster import run_cluster_job
from rtune.components.finetune.config import FinetuneConfig
from rtune.components.finetune.distributed_job import DistributedJobFailed
from rtune.components.finetune.worker import TrainingJob
from tests import kube as kube_fixtures
from tests.crd_schemas import validate_custom_resource
from tests.servers import S3_ENV, moto_s3, use_s3

kube = kube_fixtures.kube
kube_api = kube_fixtures.kube_api
TRAINJOBS = "trainer.kubeflow.org/v1alpha1/trainjobs"
BUCKET = "rtune-models"
NS = "team-a"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture()
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    return use_s3(monkeypatch, s3_server, tmp_path / "cache", BUCKET)


def _setup(tmp_path: Path) -> tuple[FinetuneConfig, TrainingJob, Path]:
    work = tmp_path / "work-abc123"
    work.mkdir()
    (work / "rows.jsonl").write_text('{"input_ids": [1, 2]}\n')
    config = FinetuneConfig(
        method="full",
        deepspeed="zero3_offload",
        launcher="trainjob",
        nodes=2,
        nproc_per_node=8,
        gpus_per_node=8,
        namespace=NS,
        model_store=f"s3://{BUCKET}/finetuned",
    )
    job = TrainingJob(
        config=config.__dict__,
        rows=str(work / "rows.jsonl"),
        model="s3://rtune-models/base",
        checkpoint_dir="/mnt/rtune-checkpoints/finetune/abc",
        output_dir=str(work / "output"),
    )
    return config, job, work


def test_trainjob_runs_the_worker_from_s3_and_returns_rank0_summary(
    kube: kube_fixtures.KubeEmulator, kube_api: Any, s3: Any, tmp_path: Path
) -> None:
    config, job, work = _setup(tmp_path)
    prefix = "finetuned/runs/run-7/finetune-work-abc123"  # the run's own folder of the store
    summary = {"global_step": 12, "train_loss": 0.9, "loss_history": []}

    def controller(reads: int) -> dict[str, Any] | None:
        if reads < 2:
            return None
        s3.put_object(
            Bucket=BUCKET, Key=f"{prefix}/output/train_summary.json", Body=json.dumps(summary)
        )
        return {"status": {"conditions": [kube_fixtures.condition("Complete")]}}

    from rtune.components.finetune.training_jobs import job_name

    kube.on_fetch(TRAINJOBS, NS, job_name("run-7", "finetune"), controller)
    result = run_cluster_job(
        config, job, work, {"MLFLOW_RUN_ID": "abc"}, "run-7", kube_api, poll_interval_s=0.05
    )
    assert result["global_step"] == 12
    assert result["output_uri"] == f"s3://{BUCKET}/{prefix}/output"

    created = kube.object(TRAINJOBS, NS, job_name("run-7", "finetune"))
    assert created is not None
    created.pop("status", None)
    validate_custom_resource(created)
    trainer = created["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert trainer["command"] == ["torchrun"]
    job_uri = f"s3://{BUCKET}/{prefix}/job.json"
    assert trainer["args"] == ["-m", "rtune.components.finetune.worker", "--job", job_uri]
    assert trainer["image"] == Images().reference("train")
    env = {e["name"]: e for e in trainer["env"]}
    assert env["MLFLOW_RUN_ID"]["value"] == "abc"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "rtune-s3"
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in json.dumps(created)

    staged = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/job.json")["Body"].read())
    assert staged["rows"] == f"s3://{BUCKET}/{prefix}/rows.jsonl"
    assert staged["output_dir"] == f"s3://{BUCKET}/{prefix}/output"
    assert staged["checkpoint_dir"] == job.checkpoint_dir
    rows = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/rows.jsonl")["Body"].read()
    assert rows == (work / "rows.jsonl").read_bytes()


def test_a_failed_trainjob_fails_the_stage_with_its_own_message(
    kube: kube_fixtures.KubeEmulator, kube_api: Any, s3: Any, tmp_path: Path
) -> None:
    from rtune.components.finetune.training_jobs import job_name

    config, job, work = _setup(tmp_path)
    failed = kube_fixtures.condition("Failed", reason="JobFailed", message="node-1 OOMKilled")
    kube.on_fetch(
        TRAINJOBS,
        NS,
        job_name("run-8", "finetune"),
        lambda reads: {"status": {"conditions": [failed]}} if reads >= 2 else None,
    )
    with pytest.raises(DistributedJobFailed, match="node-1 OOMKilled"):
        run_cluster_job(config, job, work, {}, "run-8", kube_api, poll_interval_s=0.05)


def test_cluster_launch_needs_an_s3_model_store(tmp_path: Path) -> None:
    config, job, work = _setup(tmp_path)
    config.model_store = ""
    with pytest.raises(ValueError, match="model_store"):
        run_cluster_job(config, job, work, {}, "run-9", object(), poll_interval_s=0.05)
