"""The rehearsal's training operator and KServe give a job's nodes and a predictor what a cluster
would: the job's env, Secrets by reference, its volumes; the model fetched with only the serving
account's credentials."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from rtune.components.finetune.training_jobs import (
    KINDS,
    DistributedJobSpec,
    build_job,
    s3_secret_env,
)
from rtune.pipelines.rehearsal.cluster import SERVING_ACTIONS, Cluster
from rtune.pipelines.rehearsal.kserve import (
    LoadFailed,
    S3Settings,
    download_model,
    storage_credentials,
)
from rtune.pipelines.rehearsal.kubeapi import PodLog, start_kube_api
from rtune.pipelines.rehearsal.objectstore import start_object_store
from rtune.pipelines.rehearsal.session import render_overlay
from rtune.pipelines.rehearsal.trainer import (
    TRAINJOBS,
    JobRefused,
    TrainingController,
    node_mounts,
    pytorchjob_nodes,
    resolve_env,
    trainjob_nodes,
)
from tests.paths import REPO_ROOT

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="pods need root to set up namespaces")
SECRETS = {
    "rtune-s3": {"AWS_ACCESS_KEY_ID": "AKIA-node", "AWS_SECRET_ACCESS_KEY": "s3-secret-value"}
}


def _spec(kind: str = "TrainJob", **changes: Any) -> DistributedJobSpec:
    fields: dict[str, Any] = {
        "name": "rtune-finetune-0a1b2c3d4e",
        "namespace": "kubeflow",
        "image": "ghcr.io/rtune/rtune-train:0.1.0",
        "command": ["torchrun"],
        "args": ["-m", "rtune.components.finetune.worker", "--job", "s3://b/job.json"],
        "nodes": 2,
        "procs_per_node": 1,
        "env": {"RTUNE_STUDENT": "s3://rtune-models/student"},
        "secret_env": s3_secret_env(),
        "kind": kind,
    }
    return DistributedJobSpec(**{**fields, **changes})


@pytest.mark.parametrize("kind", ["TrainJob", "PyTorchJob"])
def test_each_node_gets_the_jobs_entrypoint_env_and_work_volume(kind: str, tmp_path: Path) -> None:
    obj = build_job(_spec(kind))
    nodes, layout = (trainjob_nodes if kind == "TrainJob" else pytorchjob_nodes)(obj)
    assert [node.rank for node in nodes] == [0, 1] and layout.nodes == 2
    node0 = KINDS[kind].node0_labels(obj["metadata"]["name"])
    assert node0.items() <= nodes[0].labels.items()  # the finetune task follows node 0's log
    assert not node0.items() <= nodes[1].labels.items()
    assert nodes[1].command == ["torchrun", *obj_args(obj, kind)]
    env = resolve_env(nodes[1].env, SECRETS)
    assert env["RTUNE_STUDENT"] == "s3://rtune-models/student"
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3-secret-value"
    assert "AWS_ENDPOINT_URL" not in env  # optional: AWS's own S3 Secret has no such key
    mounts = node_mounts(nodes[1], {"rtune-work": tmp_path})
    assert [(m.target, m.source) for m in mounts] == [("/mnt/rtune", tmp_path)]
    assert nodes[1].container_security["runAsNonRoot"] is True


def obj_args(obj: dict[str, Any], kind: str) -> list[str]:
    if kind == "TrainJob":
        return list(obj["spec"]["trainer"]["args"])
    return list(
        obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    )


def test_a_job_without_the_work_volume_gives_its_nodes_no_checkpoint_folder() -> None:
    nodes, _ = trainjob_nodes(build_job(_spec(work_volume="")))
    assert node_mounts(nodes[0], {"rtune-work": Path("/x")}) == []


def test_a_missing_secret_key_or_claim_refuses_the_node_as_kubernetes_would() -> None:
    nodes, _ = trainjob_nodes(build_job(_spec()))
    with pytest.raises(JobRefused, match="key 'AWS_SECRET_ACCESS_KEY' not in secret 'rtune-s3'"):
        resolve_env(nodes[0].env, {"rtune-s3": {"AWS_ACCESS_KEY_ID": "a"}})
    with pytest.raises(JobRefused, match='persistentvolumeclaim "rtune-work" not found'):
        node_mounts(nodes[0], {})
    with pytest.raises(JobRefused, match="TrainingRuntimeNotFound"):
        obj = build_job(_spec())
        obj["spec"]["runtimeRef"]["name"] = "mpi-distributed"
        trainjob_nodes(obj)


def test_a_pod_log_is_served_with_timestamps_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    log = PodLog(path)
    assert log.read({}) == ""
    path.write_text("one\ntwo\nthr")
    assert log.read({"tailLines": "1"}) == "two\n"  # a partial line waits for its end
    with path.open("a") as out:
        out.write("ee\n")
    stamped = log.read({"timestamps": "true", "sinceSeconds": "60"}).splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two", "three"]
    assert all(line.split(" ", 1)[0].endswith("Z") for line in stamped)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def kube_cluster(tmp_path: Path) -> Any:
    cluster = Cluster("kubeflow", tmp_path / "cluster")
    cluster.work.mkdir()
    cluster.kube = start_kube_api(cluster.work, "127.0.0.1", _free_port(), [TRAINJOBS_RESOURCE])
    cluster.secrets = {k: dict(v) for k, v in SECRETS.items()}
    yield cluster
    cluster.kube._stop()


TRAINJOBS_RESOURCE = "trainer.kubeflow.org/v1alpha1/trainjobs"
NODE_PROBE = (
    "import os, pathlib; rank = os.environ['PET_NODE_RANK']; "
    "pathlib.Path('/mnt/rtune/node-' + rank).write_text(' '.join(os.environ.get(k, '-') for k in "
    "('PET_NNODES', 'PET_MASTER_ADDR', 'AWS_ACCESS_KEY_ID', 'RTUNE_STUDENT'))); "
    "print('node', rank, 'uid', os.getuid()); raise SystemExit(int(os.environ.get('FAIL', '0')))"
)


def _run(cluster: Cluster, tmp_path: Path, **changes: Any) -> tuple[bool, dict[str, Any]]:
    spec = _spec(command=["python3"], args=["-c", NODE_PROBE], **changes)
    obj = build_job(spec)
    assert cluster.kube is not None
    cluster.kube.call("POST", f"{TRAINJOBS}/namespaces/kubeflow/trainjobs", obj)
    controller = TrainingController(cluster, {"rtune-work": tmp_path / "pvc"}, out=lambda _: None)
    done = controller.run_job("TrainJob", obj)
    status = cluster.kube.call("GET", f"{TRAINJOBS}/namespaces/kubeflow/trainjobs/{spec.name}")
    return done, status["status"]["conditions"][0]


@as_root
def test_a_trainjob_runs_every_node_as_a_pod_and_completes(
    kube_cluster: Cluster, tmp_path: Path
) -> None:
    (tmp_path / "pvc").mkdir()
    done, condition = _run(kube_cluster, tmp_path)
    assert done and (condition["type"], condition["status"]) == ("Complete", "True")
    name = "rtune-finetune-0a1b2c3d4e"
    for rank in (0, 1):  # each node wrote to the shared work volume, with the job's env
        seen = (tmp_path / "pvc" / f"node-{rank}").read_text().split()
        assert seen == ["2", f"{name}-node-0-0.{name}", "AKIA-node", "s3://rtune-models/student"]
    assert kube_cluster.kube is not None
    log = kube_cluster.kube.pod_logs[("kubeflow", f"{name}-node-0-0")].read({})
    assert "node 0 uid 10001" in log  # the train image's user, from the securityContext rules
    assert f"{name}-node-0-0.{name}" in kube_cluster.hosts_file.read_text()


@as_root
def test_a_failing_node_or_missing_secret_fails_the_job_with_the_reason(
    kube_cluster: Cluster, tmp_path: Path
) -> None:
    (tmp_path / "pvc").mkdir()
    done, condition = _run(kube_cluster, tmp_path, env={"FAIL": "3"})
    assert not done and (condition["type"], condition["reason"]) == ("Failed", "NodeFailed")
    assert "exited with 3" in condition["message"]
    del kube_cluster.secrets["rtune-s3"]
    done, condition = _run(kube_cluster, tmp_path, name="rtune-finetune-1a1b2c3d4e")
    assert (condition["type"], condition["reason"]) == ("Failed", "CreateContainerConfigError")
    assert "secret 'rtune-s3' not found" in condition["message"]


# -- KServe's storage initializer ---------------------------------------------------------------


@pytest.fixture(scope="module")
def store() -> Any:
    store = start_object_store("127.0.0.77", 9000)
    store.add_identity("rtune", ["rtune-models"])
    store.add_identity("serving", ["rtune-models"], SERVING_ACTIONS)
    store.add_identity("other", ["other-bucket"])
    store.require_signatures()
    client = store.client("rtune")
    for name in ("config.json", "model.safetensors"):
        client.put_object(Bucket="rtune-models", Key=f"runs/r1/model/{name}", Body=b"{}")
    yield store
    store.stop()


def _secrets(store: Any, identity: str) -> dict[str, dict[str, str]]:
    who = store.identities[identity]
    return {
        "rtune-s3-serving": {
            "AWS_ACCESS_KEY_ID": who.access_key_id,
            "AWS_SECRET_ACCESS_KEY": who.secret_access_key,
        }
    }


def _resolve(host: str) -> str:
    return {"minio-service.kubeflow": "127.0.0.77"}[host]


def test_the_model_is_fetched_with_the_serving_accounts_secret_only(
    store: Any, tmp_path: Path
) -> None:
    documents = render_overlay(REPO_ROOT / "manifests/overlays/standalone")
    settings = storage_credentials(
        "rtune-serving", "kubeflow", documents, _secrets(store, "serving")
    )
    assert settings.endpoint == "minio-service.kubeflow:9000" and not settings.use_https
    start = len(store.accesses)
    count = download_model("s3://rtune-models/runs/r1/model", settings, _resolve, tmp_path / "m")
    assert count == 2 and json.loads((tmp_path / "m" / "config.json").read_text()) == {}
    reads = store.accesses_since(start)
    assert reads and {access.identity for access in reads} == {"serving"}
    # the serving identity can read, never write
    with pytest.raises(Exception, match="AccessDenied"):
        store.client("serving").put_object(Bucket="rtune-models", Key="x", Body=b"x")


def test_without_the_accounts_secret_or_grant_the_model_fails_to_load(
    store: Any, tmp_path: Path
) -> None:
    documents = render_overlay(REPO_ROOT / "manifests/overlays/standalone")
    with pytest.raises(LoadFailed, match="no Secret with S3 credentials"):
        storage_credentials("rtune-serving", "kubeflow", documents, {})
    with pytest.raises(LoadFailed, match='serviceaccount "default" not found'):
        storage_credentials("default", "kubeflow", documents, _secrets(store, "serving"))
    other = storage_credentials("rtune-serving", "kubeflow", documents, _secrets(store, "other"))
    with pytest.raises(LoadFailed, match=r"AccessDenied|Forbidden|403"):
        download_model("s3://rtune-models/runs/r1/model", other, _resolve, tmp_path / "m")


def test_an_object_key_leaving_the_model_folder_is_refused(store: Any, tmp_path: Path) -> None:
    store.client("rtune").put_object(Bucket="rtune-models", Key="evil/../../x", Body=b"x")
    settings = S3Settings(
        store.identities["serving"].access_key_id,
        store.identities["serving"].secret_access_key,
        "minio-service.kubeflow:9000",
        False,
        "us-east-1",
    )
    with pytest.raises(LoadFailed, match="leaves the model folder"):
        download_model("s3://rtune-models/evil", settings, _resolve, tmp_path / "m")
