"""Multi-node launch: the fine-tune task stages its job on S3, creates a TrainJob on a real
Kubernetes API (kmock on loopback), waits for it and reads back rank 0's summary; a failed job
fails the stage with the job's own message."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.images import Images
from rtune.components.finetune.cluster import WorkVolume, run_cluster_job
from rtune.components.finetune.config import FinetuneConfig
from rtune.components.finetune.distributed_job import DistributedJobFailed
from rtune.components.finetune.worker import TrainingJob
from tests import kube as kube_fixtures
from tests.crd_schemas import validate_custom_resource
from tests.servers import S3_ENV, moto_s3, use_s3

kube = kube_fixtures.kube
kube_api = kube_fixtures.kube_api
TRAINJOBS = "trainer.kubeflow.org/v1alpha1/trainjobs"
PYTORCHJOBS = "kubeflow.org/v1/pytorchjobs"
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
    (patch,) = created["spec"]["runtimePatches"]
    (node_job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node_job["template"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "rtune-work"}
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/mnt/rtune"  # the defaults
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


def test_the_nodes_mount_the_work_volume_the_task_is_given(
    kube: kube_fixtures.KubeEmulator, kube_api: Any, s3: Any, tmp_path: Path
) -> None:
    from rtune.components.finetune.training_jobs import job_name

    config, job, work = _setup(tmp_path)
    config.launcher = "pytorchjob"
    prefix = "finetuned/runs/run-11/finetune-work-abc123"
    summary = {"global_step": 1, "loss_history": []}

    def controller(reads: int) -> dict[str, Any] | None:
        s3.put_object(
            Bucket=BUCKET, Key=f"{prefix}/output/train_summary.json", Body=json.dumps(summary)
        )
        return {"status": {"conditions": [kube_fixtures.condition("Succeeded")]}}

    name = job_name("run-11", "finetune")
    kube.on_fetch(PYTORCHJOBS, NS, name, controller)
    volume = WorkVolume(claim="team-work", mount="/data/work")
    run_cluster_job(config, job, work, {}, "run-11", kube_api, poll_interval_s=0.05, volume=volume)
    created = kube.object(PYTORCHJOBS, NS, name)
    assert created is not None
    for replica in created["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        (claim,) = pod["volumes"]
        assert claim["persistentVolumeClaim"] == {"claimName": "team-work"}
        (container,) = pod["containers"]
        assert container["volumeMounts"] == [{"name": claim["name"], "mountPath": "/data/work"}]


@pytest.mark.parametrize("logged_in", [True, False])
def test_the_nodes_get_mlflows_login_by_reference_when_the_task_has_one(
    kube: kube_fixtures.KubeEmulator,
    kube_api: Any,
    s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    logged_in: bool,
) -> None:
    """Rank 0 logs to the task's MLflow run: behind the basic-auth app it needs the same login
    (the rehearsal caught a 401 on /runs/get without it), from the Secret, never as a value."""
    from rtune.components.finetune.training_jobs import job_name

    password = "mlflow-password-value"
    if logged_in:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "rtune-pipeline")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    config, job, work = _setup(tmp_path)
    run = f"run-auth-{logged_in}"
    prefix = f"finetuned/runs/{run}/finetune-work-abc123"

    def controller(reads: int) -> dict[str, Any] | None:
        s3.put_object(
            Bucket=BUCKET, Key=f"{prefix}/output/train_summary.json", Body='{"loss_history": []}'
        )
        return {"status": {"conditions": [kube_fixtures.condition("Complete")]}}

    name = job_name(run, "finetune")
    kube.on_fetch(TRAINJOBS, NS, name, controller)
    run_cluster_job(config, job, work, {}, run, kube_api, poll_interval_s=0.05)
    created = kube.object(TRAINJOBS, NS, name)
    assert created is not None
    env = {e["name"]: e for e in created["spec"]["trainer"]["env"]}
    refs = {
        name: entry["valueFrom"]["secretKeyRef"]
        for name, entry in env.items()
        if name.startswith("MLFLOW_TRACKING_")
    }
    if logged_in:
        assert refs == {
            "MLFLOW_TRACKING_USERNAME": {"name": "rtune-mlflow-auth", "key": "username"},
            "MLFLOW_TRACKING_PASSWORD": {"name": "rtune-mlflow-auth", "key": "password"},
        }
        assert password not in json.dumps(created)
    else:
        assert refs == {}


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


# --------------------------------------------------------------------------- the task's own path

STUDENT = f"s3://{BUCKET}/student"


def _kubeconfig(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task pod finds its cluster through KUBECONFIG: here, the loopback API."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "loop", "cluster": {"server": url.rstrip("/")}}],
        "users": [{"name": "test", "user": {}}],
        "contexts": [{"name": "loop", "context": {"cluster": "loop", "user": "test"}}],
        "current-context": "loop",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))


def _run_finetune_task(
    kube: kube_fixtures.KubeEmulator,
    kube_api: Any,
    s3: Any,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    launcher: str,
) -> dict[str, Any]:
    """The fine-tune task with an ``s3://`` student and a cluster launcher, end to end. The job
    already exists (a retried task adopts it, so no poll interval is waited); on its first read
    the "nodes" read the staged job file, write rank 0's summary where it says, and succeed.
    Returns the job file the nodes read."""
    from kubernetes import client

    from rtune.components.common.k8s_workload import rtune_labels
    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.finetune.task import FinetuneOutputs, FinetuneStage
    from rtune.components.finetune.training_jobs import KINDS, job_name
    from tests.finetune_helpers.records import training_records

    for file in tiny_model_dir.iterdir():
        s3.upload_file(str(file), BUCKET, f"student/{file.name}")
    selected = tmp_path / "selected.jsonl"
    selected.write_text("".join(json.dumps(r) + "\n" for r in training_records(6)))
    config = FinetuneConfig(
        model=STUDENT,
        launcher=launcher,
        nodes=2,
        max_length=256,
        namespace=NS,
        model_store=f"s3://{BUCKET}/finetuned",
    )
    run_id = f"run-{uuid.uuid4().hex[:8]}"  # its own folder of the module's store
    kind = "PyTorchJob" if launcher == "pytorchjob" else "TrainJob"
    resource = KINDS[kind].resource
    name = job_name(run_id, "finetune")
    metadata = {"name": name, "namespace": NS, "labels": rtune_labels("finetune", run_id)}
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        resource.group,
        resource.version,
        NS,
        resource.plural,
        {"apiVersion": f"{resource.group}/{resource.version}", "kind": kind, "metadata": metadata},
    )
    read_by_nodes: dict[str, Any] = {}

    def nodes(reads: int) -> dict[str, Any]:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"finetuned/runs/{run_id}/")
        (key,) = [o["Key"] for o in listed["Contents"] if o["Key"].endswith("/job.json")]
        read_by_nodes.update(json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        summary = {
            "global_step": 3,
            "train_loss": 1.0,
            "first_loss": 1.2,
            "final_loss": 0.9,
            "tokens_per_second": 50.0,
            "peak_rss_mib": 10.0,
            "resumed_from_step": 0,
            "loss_history": [{"step": 1, "loss": 1.2, "lr": 1e-5}],
        }
        output = read_by_nodes["output_dir"].removeprefix(f"s3://{BUCKET}/")
        s3.put_object(Bucket=BUCKET, Key=f"{output}/train_summary.json", Body=json.dumps(summary))
        return {"status": {"conditions": [kube_fixtures.condition(KINDS[kind].success_condition)]}}

    kube.on_fetch(f"{resource.group}/{resource.version}/{resource.plural}", NS, name, nodes)
    _kubeconfig(tmp_path, kube.url, monkeypatch)
    outputs = FinetuneOutputs(tmp_path / "adapter", tmp_path / "model")
    settings = StageSettings(
        tracking={"enabled": False}, checkpoint_root=str(tmp_path / "ck"), run_id=run_id
    )
    run_stage(FinetuneStage(config, selected, outputs), settings)
    return read_by_nodes


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_the_nodes_get_the_students_s3_uri_not_the_task_pods_cache_path(
    kube: kube_fixtures.KubeEmulator,
    kube_api: Any,
    s3: Any,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    launcher: str,
) -> None:
    job = _run_finetune_task(kube, kube_api, s3, tmp_path, tiny_model_dir, monkeypatch, launcher)
    assert job["model"] == STUDENT  # each node fetches the model itself; no task-pod path
    assert job["rows"].startswith("s3://") and job["output_dir"].startswith("s3://")


def test_the_task_pod_fetches_only_the_tokenizer_of_a_cluster_jobs_student(
    kube: kube_fixtures.KubeEmulator,
    kube_api: Any,
    s3: Any,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _run_finetune_task(kube, kube_api, s3, tmp_path, tiny_model_dir, monkeypatch, "trainjob")
    fetched = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert "tokenizer.json" in fetched  # the rows were packed with the student's tokenizer
    assert not [n for n in fetched if n.endswith((".safetensors", ".bin"))]  # no weights
