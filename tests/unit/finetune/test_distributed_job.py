"""The multi-node launcher against a real Kubernetes API on loopback (kmock + the official client).

No controller runs: each test writes the status the Trainer / Training Operator would write, either
on the N-th read of the job (``kube.on_fetch``, deterministic) or up front. Time is a
``FakeClock`` that moves only when the launcher sleeps: waits are counted, never spent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client

from rtune.components.common.k8s_workload import load_api_client, pod_namespace, poll_workload
from rtune.components.common.pod_logs import LogTail, timestamp_key
from rtune.components.finetune.distributed_job import (
    DistributedJobFailed,
    DistributedJobTimeout,
    run_distributed_job,
)
from rtune.components.finetune.training_jobs import (
    KINDS,
    DistributedJobSpec,
    build_job,
    build_pytorchjob,
    build_trainjob,
    job_name,
    s3_secret_env,
)
from tests import kube as kube_fixtures
from tests.kube import KubeEmulator, condition
from tests.servers import free_port

kube = kube_fixtures.kube  # the fixtures, shared with the other Kubernetes API tests
kube_api = kube_fixtures.kube_api

NS = "team-a"
RUN_ID = "6f1c2d3e-0000-4a5b-9c8d-123456789abc"
POLL = 0.25  # seconds of the fake clock: waits are counted, not spent
TRAINJOBS = "trainer.kubeflow.org/v1alpha1/trainjobs"
PYTORCHJOBS = "kubeflow.org/v1/pytorchjobs"
RESOURCE = {"TrainJob": TRAINJOBS, "PyTorchJob": PYTORCHJOBS}
SUCCESS = {"TrainJob": "Complete", "PyTorchJob": "Succeeded"}


@dataclass
class FakeClock:
    """The launcher's clock and sleep: ``sleep`` records the wait and moves ``now`` by it."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run_job(
    spec: DistributedJobSpec,
    api: client.ApiClient,
    clock: FakeClock | None = None,
    log: Callable[[str], None] = lambda _: None,
    **options: Any,
) -> Any:
    """``run_distributed_job`` polling every POLL seconds of ``clock`` (a fresh one if None)."""
    clock = clock or FakeClock()
    options.setdefault("poll_interval_s", POLL)
    return run_distributed_job(spec, api, log=log, sleep=clock.sleep, clock=clock, **options)


def make_spec(**overrides: Any) -> DistributedJobSpec:
    values: dict[str, Any] = {
        "name": job_name(RUN_ID, "finetune"),
        "namespace": NS,
        "image": "ghcr.io/rtune/rtune-train:0.1.0",
        "command": ["torchrun"],
        "args": ["-m", "rtune.components.finetune.worker", "--job", "s3://b/job.json"],
        "nodes": 2,
        "procs_per_node": 8,
        "gpus_per_node": 8,
        "env": {"DS_ACCELERATOR": "cuda", "MLFLOW_TRACKING_URI": "http://mlflow:5000"},
        "secret_env": s3_secret_env("rtune-s3"),
        "cpu_request": "32",
        "memory_request": "512Gi",
        "memory_limit": "600Gi",
        "kfp_run_id": RUN_ID,
    }
    return DistributedJobSpec(**{**values, **overrides})


def job_path(spec: DistributedJobSpec, name: str | None = None) -> str:
    group, version, plural = RESOURCE[spec.kind].split("/")
    return f"/apis/{group}/{version}/namespaces/{spec.namespace}/{plural}/{name or spec.name}"


def complete_after(n: int, kind: str = "TrainJob", **fields: str) -> Callable[[int], Any]:
    """The controller's status write, applied on the N-th read of the job."""
    cond = condition(SUCCESS[kind], **fields)
    return lambda reads: {"status": {"conditions": [cond]}} if reads >= n else None


def fail_after(n: int, reason: str, message: str) -> Callable[[int], Any]:
    failed = condition("Failed", reason=reason, message=message)
    return lambda reads: {"status": {"conditions": [failed]}} if reads >= n else None


def create_directly(api: client.ApiClient, spec: DistributedJobSpec, obj: dict) -> None:
    group, version, plural = RESOURCE[spec.kind].split("/")
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        group, version, spec.namespace, plural, obj
    )


# ----------------------------------------------------------------------------- names and specs


def test_job_name_is_deterministic_unique_per_run_and_a_valid_trainjob_name() -> None:
    assert job_name(RUN_ID, "finetune") == job_name(RUN_ID, "finetune")
    assert job_name(RUN_ID, "finetune") != job_name(RUN_ID + "x", "finetune")
    assert job_name(RUN_ID, "finetune") != job_name(RUN_ID, "finetune-2")
    long = job_name(RUN_ID, "Fine_Tune " * 20 + "!!")
    for name in (
        job_name(RUN_ID, "finetune"),
        long,
        job_name(RUN_ID, "9-lives"),
        job_name("r", ""),
    ):
        assert len(name) <= 63
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name  # RFC 1035 (TrainJob rule)
    assert job_name(RUN_ID, "finetune").startswith("rtune-finetune-")
    with pytest.raises(ValueError, match="KFP run id"):
        job_name("", "finetune")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"name": "Bad_Name"}, "not a DNS label"),
        ({"namespace": "x" * 64}, "not a DNS label"),
        ({"nodes": 0}, "nodes must be >= 1"),
        ({"procs_per_node": 0}, "procs_per_node must be >= 1"),
        ({"gpus_per_node": -1}, "gpus_per_node"),
        ({"kind": "MPIJob"}, "kind"),
        ({"command": []}, "command"),
        ({"env": {"MINIO_SECRET_KEY": "x"}}, "look like credentials"),
        ({"env": {"HF_TOKEN": "x"}}, "secret_env"),
        ({"env": {"AWS_ENDPOINT_URL": "http://minio"}}, "both as plain env and as secret_env"),
        ({"labels": {"team": "not a label value!"}}, "label"),
    ],
)
def test_spec_refuses_bad_input_with_a_reason(overrides: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_spec(**overrides)


def test_pod_namespace_reads_the_service_account_mount(tmp_path) -> None:
    mounted = tmp_path / "namespace"
    mounted.write_text("kubeflow-user\n")
    assert pod_namespace(path=str(mounted)) == "kubeflow-user"
    assert pod_namespace(default="fallback", path=str(tmp_path / "absent")) == "fallback"


# ----------------------------------------------------------------------------- the objects


def test_trainjob_object_has_the_upstream_field_names() -> None:
    obj = build_trainjob(make_spec(service_account="trainer-sa"))
    assert obj["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and obj["kind"] == "TrainJob"
    assert obj["metadata"] == {
        "name": job_name(RUN_ID, "finetune"),
        "namespace": NS,
        "labels": {
            "app.kubernetes.io/part-of": "rtune",
            "app.kubernetes.io/component": "finetune",
            "rtune/kfp-run-id": RUN_ID,
        },
    }
    assert obj["spec"]["runtimeRef"] == {
        "name": "torch-distributed",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    trainer = obj["spec"]["trainer"]
    assert trainer["image"] == "ghcr.io/rtune/rtune-train:0.1.0"
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"][-2:] == ["--job", "s3://b/job.json"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "32", "memory": "512Gi", "nvidia.com/gpu": "8"},
        "limits": {"memory": "600Gi", "nvidia.com/gpu": "8"},
    }
    assert {"name": "DS_ACCELERATOR", "value": "cuda"} in trainer["env"]
    assert {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "rtune-s3", "key": "AWS_SECRET_ACCESS_KEY"}},
    } in trainer["env"]
    (patch,) = obj["spec"]["runtimePatches"]
    assert patch["manager"] == "rtune"
    (node_job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node_job["name"] == "node"
    pod = node_job["template"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "trainer-sa"
    assert pod["securityContext"]["runAsNonRoot"] is True  # Pod Security `restricted`
    (node,) = pod["containers"]
    assert node["name"] == "node" and node["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    (default_patch,) = build_trainjob(make_spec())["spec"]["runtimePatches"]
    default_pod = default_patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert "serviceAccountName" not in default_pod["template"]["spec"]["template"]["spec"]


def test_cpu_only_trainjob_has_no_gpu_resource() -> None:
    spec = make_spec(gpus_per_node=0, cpu_request="", memory_request="", memory_limit="")
    assert "resourcesPerNode" not in build_trainjob(spec)["spec"]["trainer"]


def test_pytorchjob_object_has_master_and_workers() -> None:
    obj = build_pytorchjob(make_spec(kind="PyTorchJob", nodes=3, service_account="trainer-sa"))
    assert obj["apiVersion"] == "kubeflow.org/v1" and obj["kind"] == "PyTorchJob"
    assert obj["spec"]["nprocPerNode"] == "8"  # a string upstream: auto | cpu | gpu | int
    replicas = obj["spec"]["pytorchReplicaSpecs"]
    assert {name: r["replicas"] for name, r in replicas.items()} == {"Master": 1, "Worker": 2}
    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"
        pod = replica["template"]["spec"]
        assert pod["serviceAccountName"] == "trainer-sa"
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert replica["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "rtune"
    single = build_pytorchjob(make_spec(kind="PyTorchJob", nodes=1))
    assert list(single["spec"]["pytorchReplicaSpecs"]) == ["Master"]


def test_objects_validate_against_the_crd_schemas() -> None:
    schemas = pytest.importorskip(
        "tests.crd_schemas", reason="tests/crd_schemas.py (CRD schema validation) not present yet"
    )
    for kind in KINDS:
        for spec in (make_spec(kind=kind), make_spec(kind=kind, service_account="sa", nodes=1)):
            schemas.validate_custom_resource(build_job(spec))


def test_only_the_s3_endpoint_reference_may_be_absent_from_the_secret() -> None:
    """AWS's own S3 needs no endpoint, so its Secret has no AWS_ENDPOINT_URL key: a required
    reference would stop every node at CreateContainerConfigError. The keys stay required."""
    for kind in KINDS:
        obj = build_job(make_spec(kind=kind))
        if kind == "TrainJob":
            containers = [obj["spec"]["trainer"]]
        else:
            replicas = obj["spec"]["pytorchReplicaSpecs"].values()
            containers = [c for r in replicas for c in r["template"]["spec"]["containers"]]
        for container in containers:
            refs = {
                e["name"]: e["valueFrom"]["secretKeyRef"]
                for e in container["env"]
                if "valueFrom" in e
            }
            assert refs["AWS_ENDPOINT_URL"] == {
                "name": "rtune-s3",
                "key": "AWS_ENDPOINT_URL",
                "optional": True,
            }
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert refs[key] == {"name": "rtune-s3", "key": key}  # required


def node_pods(obj: dict) -> list[dict]:
    """The pod specs a job object gives its nodes: the PyTorchJob's replicas, or the pod template
    rtune's runtime patch lays over the TrainJob runtime's ``node`` job."""
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    (patch,) = obj["spec"]["runtimePatches"]
    jobs = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return [job["template"]["spec"]["template"]["spec"] for job in jobs]


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_nodes_mount_the_work_volume_their_checkpoints_are_on(kind: str) -> None:
    """The job's checkpoint folder is on the work volume (the task pod's ``checkpoint_root``):
    every node mounts that PVC at the same path, or a retried job could not resume."""
    from tests.crd_schemas import validate_custom_resource

    for volume, mount in (("rtune-work", "/mnt/rtune"), ("team-pvc", "/data/work")):
        overrides = {} if volume == "rtune-work" else {"work_volume": volume, "work_mount": mount}
        obj = build_job(make_spec(kind=kind, **overrides))  # rtune-work at /mnt/rtune: defaults
        validate_custom_resource(obj)
        for pod in node_pods(obj):
            (volume_entry,) = pod["volumes"]
            assert volume_entry["persistentVolumeClaim"] == {"claimName": volume}
            (container,) = pod["containers"]
            (mounted,) = container["volumeMounts"]
            assert mounted == {"name": volume_entry["name"], "mountPath": mount}
    bare = build_job(make_spec(kind=kind, work_volume=""))  # '' = no work volume
    validate_custom_resource(bare)
    for pod in node_pods(bare):
        assert "volumes" not in pod
        assert all("volumeMounts" not in c for c in pod["containers"])


def test_a_work_mount_must_be_an_absolute_path() -> None:
    with pytest.raises(ValueError, match="work_mount"):
        make_spec(work_mount="mnt/rtune")


def test_secret_values_never_reach_the_object_or_the_log(
    kube: KubeEmulator, kube_api: client.ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-from-env")
    spec = make_spec()
    for obj in (build_trainjob(spec), build_pytorchjob(spec)):
        text = json.dumps(obj)
        assert "s3cr3t-value-from-env" not in text
    secret_entries = [e for e in build_trainjob(spec)["spec"]["trainer"]["env"] if "valueFrom" in e]
    assert {e["name"] for e in secret_entries} == set(s3_secret_env())
    assert all("value" not in e for e in secret_entries)

    kube.on_fetch(TRAINJOBS, NS, spec.name, complete_after(1))
    printed: list[str] = []
    run_job(spec, kube_api, log=printed.append)
    stored = json.dumps(kube.object(TRAINJOBS, NS, spec.name))
    assert "s3cr3t-value-from-env" not in stored
    assert "s3cr3t-value-from-env" not in "\n".join(printed)
    assert "http://mlflow:5000" not in "\n".join(printed)  # env values are not printed either


# ----------------------------------------------------------------------------- create and wait


def test_creates_the_built_trainjob_and_returns_when_complete(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    spec = make_spec()
    kube.on_fetch(TRAINJOBS, NS, spec.name, complete_after(3, message="jobset completed"))
    printed: list[str] = []
    clock = FakeClock()
    result = run_job(spec, kube_api, clock, log=printed.append)

    stored = kube.object(TRAINJOBS, NS, spec.name)
    assert stored is not None
    stored.pop("status")
    assert stored == build_trainjob(spec)
    assert kube.count("POST", job_path(spec).rsplit("/", 1)[0]) == 1
    assert kube.count("GET", job_path(spec)) == 4  # the existence check + 3 polls
    assert (result.kind, result.name, result.namespace) == ("TrainJob", spec.name, NS)
    assert (result.adopted, result.reason, result.message) == (
        False,
        "Complete",
        "jobset completed",
    )
    assert clock.sleeps == [POLL] * 3  # one poll interval before each of the 3 polls
    assert result.elapsed_s == clock.now == 3 * POLL
    assert printed[0].startswith(f"created TrainJob {NS}/{spec.name}: 2 node(s) x 8 process(es)")
    assert "Complete" in printed[-1]


@pytest.mark.parametrize("kind", ["TrainJob", "PyTorchJob"])
def test_failed_condition_raises_with_the_jobs_own_reason_and_message(
    kind: str, kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    spec = make_spec(kind=kind)
    message = "ReplicatedJob node failed: pod node-0-0 OOMKilled (exit code 137)"
    kube.on_fetch(RESOURCE[kind], NS, spec.name, fail_after(2, "JobFailed", message))
    with pytest.raises(DistributedJobFailed) as raised:
        run_job(spec, kube_api)
    error = raised.value
    assert (error.reason, error.message) == ("JobFailed", message)
    assert message in str(error) and "JobFailed" in str(error)
    assert f"{kind} {NS}/{spec.name} failed" in str(error)
    assert "left in the cluster for inspection" in str(error)
    assert kube.object(RESOURCE[kind], NS, spec.name) is not None  # not deleted


def test_pytorchjob_is_created_and_succeeds(kube: KubeEmulator, kube_api: client.ApiClient) -> None:
    spec = make_spec(kind="PyTorchJob", nodes=4)
    kube.on_fetch(PYTORCHJOBS, NS, spec.name, complete_after(2, kind="PyTorchJob"))
    result = run_job(spec, kube_api)
    assert result.reason == "Succeeded"
    stored = kube.object(PYTORCHJOBS, NS, spec.name)
    assert stored is not None
    stored.pop("status")
    assert stored == build_pytorchjob(spec)
    assert kube.object(TRAINJOBS, NS, spec.name) is None


def test_a_running_condition_is_not_the_end(kube: KubeEmulator, kube_api: client.ApiClient) -> None:
    spec = make_spec(kind="PyTorchJob")
    running = {"status": {"conditions": [condition("Created"), condition("Running")]}}
    done = {
        "status": {
            "conditions": [
                condition("Created"),
                condition("Running", status="False"),
                condition("Succeeded"),
            ]
        }
    }
    kube.on_fetch(PYTORCHJOBS, NS, spec.name, lambda n: running if n < 4 else done)
    run_job(spec, kube_api)
    assert kube.count("GET", job_path(spec)) == 1 + 4  # the existence check + 4 polls


# ----------------------------------------------------------------------------- retries: adopting


def test_a_retried_task_adopts_the_running_job_without_a_second_create(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    spec = make_spec()
    create_directly(kube_api, spec, build_trainjob(spec))  # the first attempt of the task
    kube.on_fetch(TRAINJOBS, NS, spec.name, complete_after(3))
    printed: list[str] = []
    result = run_job(spec, kube_api, log=printed.append)
    assert result.adopted is True
    assert kube.count("POST", job_path(spec).rsplit("/", 1)[0]) == 1  # only the first attempt's
    assert printed[0].startswith(f"adopting existing TrainJob {NS}/{spec.name}")


def test_an_adopted_job_that_already_succeeded_returns_at_once(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    spec = make_spec()
    finished = build_trainjob(spec) | {"status": {"conditions": [condition("Complete")]}}
    create_directly(kube_api, spec, finished)
    clock = FakeClock()
    result = run_job(spec, kube_api, clock, poll_interval_s=30.0)
    assert clock.sleeps == [] and result.elapsed_s == 0  # no poll interval was waited
    assert result.adopted and result.reason == "Complete"
    assert kube.count("GET", job_path(spec)) == 1
    assert kube.count("POST", job_path(spec).rsplit("/", 1)[0]) == 1


def test_an_adopted_job_that_already_failed_raises_its_error(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    spec = make_spec()
    failed = condition("Failed", reason="DeadlineExceeded", message="ran past the deadline")
    create_directly(kube_api, spec, build_trainjob(spec) | {"status": {"conditions": [failed]}})
    with pytest.raises(DistributedJobFailed, match="ran past the deadline"):
        run_job(spec, kube_api, poll_interval_s=30.0)


def test_a_same_named_job_of_someone_else_is_not_adopted(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    spec = make_spec()
    foreign = build_trainjob(spec)
    foreign["metadata"]["labels"] = {"app.kubernetes.io/part-of": "other"}
    create_directly(kube_api, spec, foreign)
    with pytest.raises(RuntimeError, match="not created by this rtune run"):
        run_job(spec, kube_api)


# ----------------------------------------------------------------------------- time and errors


def test_timeout_raises_and_leaves_the_job_running(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    spec = make_spec()
    clock = FakeClock()
    with pytest.raises(DistributedJobTimeout) as raised:
        run_job(spec, kube_api, clock, timeout_s=4 * POLL)
    assert clock.sleeps == [POLL] * 4 and clock.now == 4 * POLL  # waited out exactly the timeout
    assert kube.count("GET", job_path(spec)) == 1 + 4  # the existence check + a poll per wait
    text = str(raised.value)
    assert f"TrainJob {NS}/{spec.name} did not finish within 1 s" in text
    assert "left in the cluster, still running" in text and "kubectl delete trainjob" in text
    assert kube.object(TRAINJOBS, NS, spec.name) is not None
    assert not [r for r in kube.requests() if r[0] == "DELETE"]


def test_transient_api_errors_while_polling_are_retried(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    import kmock

    spec = make_spec()
    done = complete_after(4)

    def flaky(reads: int) -> Any:
        if reads in (2, 3):
            raise kmock.KubernetesError(status=503, reason="ServiceUnavailable", message="etcd")
        return done(reads)

    kube.on_fetch(TRAINJOBS, NS, spec.name, flaky)
    result = run_job(spec, kube_api)
    assert result.reason == "Complete"
    assert kube.count("GET", job_path(spec)) == 1 + 4  # the existence check + 4 polls, 2 failed


def test_an_unreachable_api_fails_after_several_tries_not_at_the_first() -> None:
    spec = make_spec()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    configuration.retries = False
    custom = client.CustomObjectsApi(client.ApiClient(configuration))
    errors: list[str] = []
    for attempt in range(1, 5):
        assert poll_workload(custom, spec.ref, errors) is None
        assert len(errors) == attempt
    with pytest.raises(RuntimeError, match=f"cannot read TrainJob {NS}/{spec.name}"):
        poll_workload(custom, spec.ref, errors)


def test_a_job_deleted_while_waiting_fails_the_step(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    import kmock

    spec = make_spec()

    def deleted_on_third_read(reads: int) -> Any:
        if reads >= 3:
            raise kmock.KubernetesObjectNotFoundError()

    kube.on_fetch(TRAINJOBS, NS, spec.name, deleted_on_third_read)
    with pytest.raises(DistributedJobFailed, match="deleted while waiting"):
        run_job(spec, kube_api)


# ----------------------------------------------------------------------------- logs


def stamp(second: int, fraction: str) -> str:
    """Kubelet-style RFC 3339 timestamps: the fraction drops trailing zeros."""
    return f"2026-01-01T00:00:{second:02d}{'.' + fraction if fraction else ''}Z"


def test_timestamp_key_orders_trimmed_fractions() -> None:
    ordered = [stamp(1, ""), stamp(1, "05"), stamp(1, "25"), stamp(1, "5"), stamp(2, "000001")]
    keys = [timestamp_key(s) for s in ordered]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert sorted(ordered) != ordered  # plain string order would get these wrong


def create_pod(api: client.ApiClient, name: str, labels: dict[str, str], phase: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "node", "image": "x"}]},
        "status": {"phase": phase},
    }
    client.CoreV1Api(api).create_namespaced_pod(NS, body)


NODE0_LINES = [
    (stamp(1, ""), "rank0: loading model"),
    (stamp(1, "25"), "rank0: step 1 loss 2.31"),
    (stamp(1, "5"), "rank0: step 2 loss 2.10"),
    (stamp(2, "1"), "rank0: same instant, first line"),
    (stamp(2, "1"), "rank0: same instant, second line"),
    (stamp(3, ""), "rank0: step 3 loss 1.95"),
    (stamp(4, "123456789"), "rank0: saving checkpoint"),
    (stamp(5, ""), "rank0: done"),
]


def other_pods(kind: str, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """Labels of node 0 (or the master) and of another node of the same job."""
    node0 = KINDS[kind].node0_labels(name)
    if kind == "TrainJob":
        return node0, node0 | {"batch.kubernetes.io/job-completion-index": "1"}
    return node0, node0 | {"training.kubeflow.org/replica-type": "worker"}


@pytest.mark.parametrize("kind", ["TrainJob", "PyTorchJob"])
def test_streams_node0_log_lines_once_each_in_order(
    kind: str, kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    spec = make_spec(kind=kind)
    node0, other = other_pods(kind, spec.name)
    create_pod(kube_api, "node-0", node0, "Running")
    create_pod(kube_api, "node-1", other, "Running")
    create_pod(kube_api, "unrelated", {"app": "x"}, "Running")
    asked: list[tuple[str, dict[str, str]]] = []

    def kubelet(pod: str, params: dict[str, str]) -> str:
        asked.append((pod, params))
        if pod != "node-0":
            return f"{stamp(1, '')} WRONG POD {pod}\n"
        shown = NODE0_LINES[: 2 * sum(1 for p, _ in asked if p == "node-0")]
        return "".join(f"{ts} {line}\n" for ts, line in shown)  # overlaps what was read before

    kube.serve_pod_logs(kubelet)
    kube.on_fetch(RESOURCE[kind], NS, spec.name, complete_after(4, kind=kind))
    printed: list[str] = []
    run_job(spec, kube_api, log=printed.append)

    prefix = f"[{spec.name} node-0] "
    assert [p[len(prefix) :] for p in printed if p.startswith(prefix)] == [
        line for _, line in NODE0_LINES
    ]
    assert {pod for pod, _ in asked} == {"node-0"}
    assert all(params["container"] == KINDS[kind].log_container for _, params in asked)
    assert all(params["timestamps"].lower() == "true" for _, params in asked)
    assert "tailLines" in asked[0][1] and "sinceSeconds" not in asked[0][1]
    assert all("sinceSeconds" in params for _, params in asked[1:])


def test_pending_pods_are_not_read_and_logs_start_when_running(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    spec = make_spec()
    create_pod(kube_api, "node-0", KINDS["TrainJob"].node0_labels(spec.name), "Pending")
    kube.serve_pod_logs(lambda pod, params: f"{stamp(1, '')} hello\n")
    tail = LogTail(
        client.CoreV1Api(kube_api), NS, KINDS["TrainJob"].node0_labels(spec.name), "node"
    )
    assert tail.new_lines() == []
    core = client.CoreV1Api(kube_api)
    core.patch_namespaced_pod_status("node-0", NS, {"status": {"phase": "Running"}})
    assert tail.new_lines() == ["hello"]
    assert tail.new_lines() == []


def test_log_errors_are_reported_once_and_never_fail_the_job(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    spec = make_spec()
    create_pod(kube_api, "node-0", KINDS["TrainJob"].node0_labels(spec.name), "Running")
    kube.fail_pod_logs(500)
    kube.on_fetch(TRAINJOBS, NS, spec.name, complete_after(4))
    printed: list[str] = []
    result = run_job(spec, kube_api, log=printed.append)
    assert result.reason == "Complete"
    failures = [p for p in printed if "log streaming" in p]
    assert len(failures) == 1, printed
    assert "still being followed" in failures[0] and "500" in failures[0]
    log_reads = [r for r in kube.requests() if r[1].endswith("/pods/node-0/log")]
    assert len(log_reads) == 5  # it kept trying each poll, quietly


# ----------------------------------------------------------------------------- client config


def test_load_api_client_uses_the_kubeconfig_outside_a_cluster(
    kube: KubeEmulator, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": kube.url.rstrip("/")}}],
                "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "t", "context": {"cluster": "kmock", "user": "tester"}}],
                "current-context": "t",
            }
        )
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr(client.Configuration, "_default", None)  # load_* sets a global default
    api = load_api_client()
    assert client.CoreV1Api(api).list_namespaced_pod(NS).items == []
    served = kube.on_loop(lambda: [dict(r.headers) for r in kube.handler])
    assert served[-1].get("Authorization") == "Bearer not-a-real-token"
