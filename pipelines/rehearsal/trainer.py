"""The rehearsal's training operator: each node of a ``TrainJob`` / ``PyTorchJob`` runs as a pod.

A cluster's Kubeflow Trainer (or Training Operator) turns the job the finetune task creates into
one pod per node; what those pods get decides whether training can start at all. This controller
plays that part under the same pod rules as the pipeline's tasks (:mod:`.pod`):

- the node's image, command and args from the job (``spec.trainer`` / the ``pytorch`` container);
- env: the image's, the job's plain values, ``secretKeyRef`` values from the cluster's Secrets (a
  missing Secret or key fails the job as ``CreateContainerConfigError`` unless ``optional``), and
  what the operator injects for torchrun (``PET_NNODES``, ``PET_NPROC_PER_NODE``,
  ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``);
- volumes: only those the job's pod template declares (``runtimePatches`` for a TrainJob) — a PVC
  must exist in the cluster, and a node without the work volume has no checkpoint folder;
- the user from the template's ``securityContext`` (``runAsNonRoot`` with a root image is refused);
- ranks on loopback: node 0's name (``<job>-node-0-0.<job>`` as JobSet names it, or
  ``<job>-master-0``) gets an address of its own in the cluster's DNS.

Node pods appear in the Kubernetes API with the labels the operators give them, and their logs
are served at ``pods/<name>/log``, so the finetune task follows node 0 as it would on a cluster.
The job ends ``Complete`` (``Succeeded`` for a PyTorchJob) when every node exits 0, else ``Failed``
with the failing node's last line. Only the ``torch-distributed`` runtime exists (what Kubeflow
Trainer installs); resources (GPUs) are not enforced — this machine has none.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rtune.pipelines.rehearsal.cluster import Cluster, ClusterProblem
from rtune.pipelines.rehearsal.images import UnknownImage, image_facts
from rtune.pipelines.rehearsal.kubeapi import PodLog
from rtune.pipelines.rehearsal.pod import Mount, PodSpec, run_pod

TRAINJOBS = "/apis/trainer.kubeflow.org/v1alpha1"
PYTORCHJOBS = "/apis/kubeflow.org/v1"
RUNTIMES = ("torch-distributed",)  # the ClusterTrainingRuntime Kubeflow Trainer installs
TORCH_PORT = {"TrainJob": 29400, "PyTorchJob": 23456}  # what each operator sets


class JobRefused(Exception):
    """What makes a cluster refuse to start the job's pods (reason, message)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class NodePod:
    """One node of a job, as the operator would create its pod."""

    name: str
    host: str  # the name the other nodes reach it by
    rank: int
    labels: dict[str, str]
    image: str
    command: list[str]
    env: list[dict[str, Any]]
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    pod_security: dict[str, Any] = field(default_factory=dict)
    container_security: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TorchLayout:
    nodes: int
    procs_per_node: int
    master: str
    port: int


def trainjob_nodes(obj: Mapping[str, Any]) -> tuple[list[NodePod], TorchLayout]:
    """The node pods of a ``TrainJob``: the runtime's ``node`` job with the trainer's entrypoint
    and the job's ``runtimePatches`` applied to its pod template."""
    name = obj["metadata"]["name"]
    spec = obj.get("spec") or {}
    runtime = (spec.get("runtimeRef") or {}).get("name", "")
    if runtime not in RUNTIMES:
        raise JobRefused(
            "TrainingRuntimeNotFound", f"ClusterTrainingRuntime {runtime!r} does not exist"
        )
    trainer = spec.get("trainer") or {}
    pod: dict[str, Any] = {}
    container: dict[str, Any] = {}
    for patch in spec.get("runtimePatches") or []:
        replicated = (
            ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        ).get("replicatedJobs") or []
        for job in replicated:
            if job.get("name") != "node":
                continue
            template = ((job.get("template") or {}).get("spec") or {}).get("template") or {}
            patched = template.get("spec") or {}
            pod = {**pod, **{k: v for k, v in patched.items() if k != "containers"}}
            for item in patched.get("containers") or []:
                if item.get("name") == "node":
                    container = {**container, **item}
    nodes = int(trainer.get("numNodes") or 1)
    master = f"{name}-node-0-0.{name}"
    pods = [
        NodePod(
            name=f"{name}-node-0-{index}",
            host=f"{name}-node-0-{index}.{name}",
            rank=index,
            labels={
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "batch.kubernetes.io/job-completion-index": str(index),
            },
            image=str(trainer.get("image", "")),
            command=[*trainer.get("command", []), *trainer.get("args", [])],
            env=list(trainer.get("env") or []),
            volumes=list(pod.get("volumes") or []),
            volume_mounts=list(container.get("volumeMounts") or []),
            pod_security=dict(pod.get("securityContext") or {}),
            container_security=dict(container.get("securityContext") or {}),
        )
        for index in range(nodes)
    ]
    procs = int(trainer.get("numProcPerNode") or 1)
    return pods, TorchLayout(nodes, procs, master, TORCH_PORT["TrainJob"])


def pytorchjob_nodes(obj: Mapping[str, Any]) -> tuple[list[NodePod], TorchLayout]:
    """The node pods of a ``PyTorchJob``: its Master, then its Workers, each from its template."""
    name = obj["metadata"]["name"]
    spec = obj.get("spec") or {}
    replicas = spec.get("pytorchReplicaSpecs") or {}
    pods: list[NodePod] = []
    for role in ("Master", "Worker"):
        replica = replicas.get(role)
        if not replica:
            continue
        template = (replica.get("template") or {}).get("spec") or {}
        container = next(
            (c for c in template.get("containers") or [] if c.get("name") == "pytorch"), None
        )
        if container is None:
            raise JobRefused("InvalidSpec", f"{role} has no container named 'pytorch'")
        for index in range(int(replica.get("replicas") or 1)):
            pod_name = f"{name}-{role.lower()}-{index}"
            pods.append(
                NodePod(
                    name=pod_name,
                    host=pod_name,
                    rank=len(pods),
                    labels={
                        "training.kubeflow.org/job-name": name,
                        "training.kubeflow.org/replica-type": role.lower(),
                        "training.kubeflow.org/replica-index": str(index),
                    },
                    image=str(container.get("image", "")),
                    command=[*container.get("command", []), *container.get("args", [])],
                    env=list(container.get("env") or []),
                    volumes=list(template.get("volumes") or []),
                    volume_mounts=list(container.get("volumeMounts") or []),
                    pod_security=dict(template.get("securityContext") or {}),
                    container_security=dict(container.get("securityContext") or {}),
                )
            )
    if not pods:
        raise JobRefused("InvalidSpec", "no Master replica")
    procs = spec.get("nprocPerNode", "1")
    layout = TorchLayout(
        len(pods), int(procs) if str(procs).isdigit() else 1, f"{name}-master-0", 23456
    )
    return pods, layout


def resolve_env(
    entries: list[dict[str, Any]], secrets: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """Container ``env`` as the kubelet resolves it: values, and ``secretKeyRef`` from the
    cluster's Secrets (a missing one refuses the pod unless ``optional``)."""
    env: dict[str, str] = {}
    for entry in entries:
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            raise JobRefused(
                "CreateContainerConfigError", f"env {entry.get('name')}: not rehearsed"
            )
        data = secrets.get(ref["name"])
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                continue
            what = (
                f"secret {ref['name']!r} not found"
                if data is None
                else f"key {ref['key']!r} not in secret {ref['name']!r}"
            )
            raise JobRefused("CreateContainerConfigError", what)
        env[entry["name"]] = data[ref["key"]]
    return env


def node_mounts(node: NodePod, pvcs: Mapping[str, Path]) -> list[Mount]:
    """The node's ``volumeMounts`` of the volumes its pod declares (a PVC must exist)."""
    volumes = {volume["name"]: volume for volume in node.volumes}
    mounts = []
    for item in node.volume_mounts:
        volume = volumes.get(item["name"])
        if volume is None:
            raise JobRefused("InvalidSpec", f"volumeMount {item['name']!r} names no volume")
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None:
            if claim not in pvcs:
                raise JobRefused("FailedScheduling", f'persistentvolumeclaim "{claim}" not found')
            source = pvcs[claim] / item.get("subPath", "")
            mounts.append(Mount(item["mountPath"], source, bool(item.get("readOnly"))))
        elif "emptyDir" in volume:
            mounts.append(Mount(item["mountPath"], Path(f"emptydir-{item['name']}")))
        else:
            raise JobRefused("InvalidSpec", f"volume {item['name']!r}: kind not rehearsed")
    return mounts


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TrainingController:
    """Watches TrainJobs and PyTorchJobs in the rehearsal's API and runs each new one."""

    cluster: Cluster
    pvcs: Mapping[str, Path]
    out: Callable[[str], None] = print
    timeout_s: float = 3600.0
    handled: set[tuple[str, str, str]] = field(default_factory=set)
    jobs: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> TrainingController:
        threading.Thread(target=self._watch, daemon=True, name="rehearsal-trainer").start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for kind, base, plural in (
                ("TrainJob", TRAINJOBS, "trainjobs"),
                ("PyTorchJob", PYTORCHJOBS, "pytorchjobs"),
            ):
                try:
                    listed = self._api(kind).call("GET", f"{base}/{plural}") or {}
                except OSError:
                    continue  # the API is stopping
                for obj in listed.get("items") or []:
                    meta = obj["metadata"]
                    key = (kind, meta.get("namespace", ""), meta["name"])
                    if key in self.handled or (obj.get("status") or {}).get("conditions"):
                        continue
                    self.handled.add(key)
                    threading.Thread(target=self.run_job, args=(kind, obj), daemon=True).start()

    def _api(self, kind: str) -> Any:
        assert self.cluster.kube is not None
        return self.cluster.kube

    def run_job(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """Run every node; set the job's terminal condition. True when it completed."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        self.jobs.append(f"{kind} {namespace}/{name}")
        try:
            nodes, layout = (trainjob_nodes if kind == "TrainJob" else pytorchjob_nodes)(obj)
            specs = [self._pod(node, layout, namespace) for node in nodes]
        except JobRefused as refused:
            self.out(f"  {kind} {namespace}/{name}: {refused}")
            self._condition(kind, namespace, name, False, refused.reason, refused.message)
            return False
        self._condition(kind, namespace, name, None, "Created", "pods created")
        failed = threading.Event()
        results: dict[int, tuple[int, str]] = {}
        folder = self.cluster.work / "trainjobs" / name

        def node_run(node: NodePod, spec: PodSpec) -> None:
            attempt = folder / node.name
            log = PodLog(attempt / "log.txt")
            assert self.cluster.kube is not None
            self.cluster.kube.pod_logs[(namespace, node.name)] = log
            self._pod_object(namespace, node, "Running")
            result = run_pod(spec, attempt, self.timeout_s, kill_when=failed.is_set)
            results[node.rank] = (result.exit_code, result.tail(3))
            self._pod_object(namespace, node, "Succeeded" if result.succeeded else "Failed")
            if not result.succeeded:
                failed.set()

        threads = [
            threading.Thread(target=node_run, args=(node, spec), daemon=True)
            for node, spec in zip(nodes, specs, strict=True)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        bad = sorted(rank for rank, (code, _) in results.items() if code != 0)
        seconds = time.monotonic() - started
        if bad:
            code, tail = results[bad[0]]
            last = tail.strip().splitlines()[-1] if tail.strip() else "(no output)"
            message = f"node {bad[0]} exited with {code}: {last}"
            self.out(f"  {kind} {namespace}/{name} failed after {seconds:.0f} s: {message}")
            self._condition(kind, namespace, name, False, "NodeFailed", message)
            return False
        self.out(
            f"  {kind} {namespace}/{name}: {layout.nodes} node(s) x {layout.procs_per_node} "
            f"process(es) done in {seconds:.0f} s"
        )
        self._condition(kind, namespace, name, True, "JobsCompleted", "all nodes exited 0")
        return True

    def _pod(self, node: NodePod, layout: TorchLayout, namespace: str) -> PodSpec:
        try:
            image = image_facts(node.image)
        except UnknownImage as error:
            raise JobRefused("ErrImagePull", str(error)) from error
        security = {**node.pod_security, **node.container_security}
        uid = int(security.get("runAsUser", image.uid))
        gid = int(security.get("runAsGroup", image.gid))
        if security.get("runAsNonRoot") and uid == 0:
            raise JobRefused(
                "CreateContainerConfigError",
                "container has runAsNonRoot and image will run as root",
            )
        image = replace(image, uid=uid, gid=gid)
        address = self.cluster.address_of(node.host)
        if node.host != node.name:
            self.cluster.alias(node.name, address)
        env = dict(image.env)
        env.update(resolve_env(node.env, self.cluster.secrets))
        env.update(
            {
                "PET_NNODES": str(layout.nodes),
                "PET_NPROC_PER_NODE": str(layout.procs_per_node),
                "PET_NODE_RANK": str(node.rank),
                "PET_MASTER_ADDR": layout.master,
                "PET_MASTER_PORT": str(layout.port),
                "HOSTNAME": node.name,
                "KUBERNETES_SERVICE_HOST": self.cluster.hosts.get("kubernetes.default.svc", ""),
                "KUBERNETES_SERVICE_PORT": "443",
            }
        )
        if not node.command:
            raise JobRefused("InvalidSpec", "no command: the node would run the image's default")
        self.cluster.address_of(layout.master)
        return PodSpec(
            name=node.name,
            image=image,
            command=node.command,
            env=env,
            mounts=node_mounts(node, self.pvcs),
            hosts=dict(self.cluster.hosts),
            hosts_file=self.cluster.hosts_file,
        )

    def _pod_object(self, namespace: str, node: NodePod, phase: str) -> None:
        assert self.cluster.kube is not None
        path = f"/api/v1/namespaces/{namespace}/pods"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": node.name,
                "namespace": namespace,
                "labels": node.labels,
                "creationTimestamp": _now(),
            },
            "status": {"phase": phase},
        }
        if self.cluster.kube.call("GET", f"{path}/{node.name}") is None:
            self.cluster.kube.call("POST", path, body)
        else:
            self.cluster.kube.call("PATCH", f"{path}/{node.name}", {"status": {"phase": phase}})

    def _condition(
        self, kind: str, namespace: str, name: str, done: bool | None, reason: str, message: str
    ) -> None:
        """``done``: True = the success condition, False = ``Failed``, None = still running."""
        success = "Complete" if kind == "TrainJob" else "Succeeded"
        kinds = {"TrainJob": (TRAINJOBS, "trainjobs"), "PyTorchJob": (PYTORCHJOBS, "pytorchjobs")}
        base, plural = kinds[kind]
        if done is None:
            conditions = [{"type": "Created", "status": "True", "reason": reason}]
        else:
            conditions = [
                {
                    "type": success if done else "Failed",
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": _now(),
                }
            ]
        assert self.cluster.kube is not None
        try:
            self.cluster.kube.call(
                "PATCH",
                f"{base}/namespaces/{namespace}/{plural}/{name}/status",
                {"status": {"conditions": conditions}},
            )
        except OSError as error:
            raise ClusterProblem(f"could not set the status of {kind} {name}: {error}") from error
