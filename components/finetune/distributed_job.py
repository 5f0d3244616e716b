"""Multi-node training through the cluster: create a Kubeflow Trainer ``TrainJob`` (or a Training
Operator v1 ``PyTorchJob``), follow node 0's log, wait, and fail with the job's own error.

    spec = DistributedJobSpec(name=job_name(run_id, "finetune"), namespace=ns, image=image("train"),
                              command=["torchrun"], args=[...], nodes=2, procs_per_node=8,
                              gpus_per_node=8, secret_env=s3_secret_env("rtune-s3"), kfp_run_id=run_id)
    result = run_distributed_job(spec, load_api_client())

Objects (field names checked against the upstream Go types):

- ``TrainJob`` (trainer.kubeflow.org/v1alpha1): ``spec.runtimeRef`` names a
  ``ClusterTrainingRuntime`` (``torch-distributed``) that owns the pod template; ``spec.trainer``
  overrides image, command, args, env, ``numNodes``, ``numProcPerNode`` and ``resourcesPerNode``.
  The controller runs it as a JobSet whose replicated job ``node`` has one pod per node; node 0 is
  the pod with ``batch.kubernetes.io/job-completion-index=0``. Terminal conditions: ``Complete`` /
  ``Failed`` (``metav1.Condition``: type, status, reason, message).
- ``PyTorchJob`` (kubeflow.org/v1): ``Master`` (1 replica) + ``Worker`` (nodes - 1), container
  ``pytorch``, ``nprocPerNode`` (a string upstream: "auto" | "cpu" | "gpu" | an int). Terminal
  conditions: ``Succeeded`` / ``Failed``. Pods carry ``training.kubeflow.org/job-name`` and
  ``training.kubeflow.org/replica-type=master`` (lower-cased by the operator).

Idempotent by name: a retried KFP task computes the same ``job_name`` and adopts the job it
created before instead of starting a second one. Secrets enter the pods only as ``secretKeyRef``;
no secret value is ever put in the object or printed.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import urllib3
from kubernetes import client

JobKind = Literal["TrainJob", "PyTorchJob"]
Logger = Callable[[str], None]

PART_OF_LABEL = "app.kubernetes.io/part-of"
COMPONENT_LABEL = "app.kubernetes.io/component"
RUN_ID_LABEL = "rtune/kfp-run-id"
GPU_RESOURCE = "nvidia.com/gpu"
RUNTIME_PATCH_MANAGER = "rtune"
DEFAULT_TIMEOUT_S = 3 * 24 * 3600.0
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
# Pod Security `restricted` (the namespace enforces it): the train image's non-root USER, no
# privilege escalation, no capabilities, the runtime's default seccomp profile.
NODE_POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
NODE_CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SECRET_LOOKING = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|API_KEY", re.IGNORECASE)
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}
_MAX_TRANSIENT_ERRORS = 5


class DistributedJobFailed(RuntimeError):
    """The job reached its ``Failed`` condition; the text is the job's own reason and message."""

    def __init__(self, kind: str, namespace: str, name: str, reason: str, message: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        self.reason, self.message = reason, message
        super().__init__(
            f"{kind} {namespace}/{name} failed: {reason or 'no reason given'}: "
            f"{message or 'no message given'}\n"
            f"  the job is left in the cluster for inspection: "
            f"kubectl describe {kind.lower()} {name} -n {namespace}"
        )


class DistributedJobTimeout(TimeoutError):
    """The job did not reach a terminal condition in time. It is left running, not deleted."""


@dataclass
class DistributedJobSpec:
    """What to run on the cluster. Built by the finetune task from its config; no cluster calls.

    ``secret_env`` maps an env var to ``(secret name, key)``; only the reference goes into the
    object. ``env`` is for plain values and refuses names that look like credentials.
    ``service_account`` = "" keeps the training runtime's own service account.
    """

    name: str
    namespace: str
    image: str
    command: list[str]
    args: list[str] = field(default_factory=list)
    nodes: int = 1
    procs_per_node: int = 1
    gpus_per_node: int = 0
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, tuple[str, str]] = field(default_factory=dict)
    runtime: str = "torch-distributed"
    kind: JobKind = "TrainJob"
    cpu_request: str = ""
    cpu_limit: str = ""
    memory_request: str = ""
    memory_limit: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    kfp_run_id: str = ""
    service_account: str = ""

    def __post_init__(self) -> None:
        _check_dns_label("name", self.name, "build it with job_name(kfp_run_id, task)")
        _check_dns_label("namespace", self.namespace, "use the namespace the pipeline runs in")
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {sorted(KINDS)}")
        if not self.image or not self.command:
            raise ValueError("image and command are required: the nodes run this entrypoint")
        for count in ("nodes", "procs_per_node"):
            if getattr(self, count) < 1:
                raise ValueError(f"{count} must be >= 1, got {getattr(self, count)}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        _check_env_names(self.env, self.secret_env)
        for key, value in self.all_labels().items():
            _check_label_value(key, value)

    def all_labels(self) -> dict[str, str]:
        """The caller's labels plus ``part-of: rtune``, the component and the KFP run id."""
        labels = {PART_OF_LABEL: "rtune", COMPONENT_LABEL: "finetune"}
        if self.kfp_run_id:
            labels[RUN_ID_LABEL] = self.kfp_run_id
        return {**labels, **self.labels}


@dataclass(frozen=True)
class JobResult:
    """How the job ended: ``reason``/``message`` are copied from its success condition."""

    kind: str
    namespace: str
    name: str
    adopted: bool
    reason: str
    message: str
    elapsed_s: float


@dataclass(frozen=True)
class KindInfo:
    """Where a job kind lives in the API, how it says it is done, and where node 0's log is."""

    group: str
    version: str
    plural: str
    success_condition: str
    log_container: str
    node0_labels: Callable[[str], dict[str, str]]


KINDS: dict[str, KindInfo] = {
    "TrainJob": KindInfo(
        group="trainer.kubeflow.org",
        version="v1alpha1",
        plural="trainjobs",
        success_condition="Complete",
        log_container="node",
        node0_labels=lambda name: {
            "jobset.sigs.k8s.io/jobset-name": name,
            "jobset.sigs.k8s.io/replicatedjob-name": "node",
            "batch.kubernetes.io/job-completion-index": "0",
        },
    ),
    "PyTorchJob": KindInfo(
        group="kubeflow.org",
        version="v1",
        plural="pytorchjobs",
        success_condition="Succeeded",
        log_container="pytorch",
        node0_labels=lambda name: {
            "training.kubeflow.org/job-name": name,
            "training.kubeflow.org/replica-type": "master",
        },
    ),
}
FAILED_CONDITION = "Failed"


# ---------------------------------------------------------------------------------------------
# Names and small helpers


def job_name(kfp_run_id: str, task: str) -> str:
    """A valid, deterministic job name: ``rtune-<task slug>-<10 hex of sha256(run id/task)>``.

    The same KFP run and task always give the same name, so a retried task finds the job it
    created; two runs never share one. RFC 1035 label (TrainJob's own rule): starts with a
    letter, ``[a-z0-9-]``, at most 63 characters.
    """
    if not kfp_run_id:
        raise ValueError("job_name needs the KFP run id: without it two runs would share a job")
    digest = hashlib.sha256(f"{kfp_run_id}/{task}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", task.lower()).strip("-")[: 63 - len("rtune--") - 10]
    return "-".join(part for part in ("rtune", slug.strip("-"), digest) if part)


def s3_secret_env(
    secret: str = "rtune-s3", keys: tuple[str, ...] = S3_SECRET_KEYS
) -> dict[str, tuple[str, str]]:
    """``secret_env`` entries that expose each key of ``secret`` as the env var of that name."""
    return {key: (secret, key) for key in keys}


def pod_namespace(default: str = "default", path: str = SERVICE_ACCOUNT_NAMESPACE_FILE) -> str:
    """The namespace this pod runs in (from its service account mount), else ``default``."""
    file = Path(path)
    return file.read_text().strip() if file.exists() else default


def load_api_client() -> client.ApiClient:
    """An API client from the in-cluster service account, or from ``KUBECONFIG``/~/.kube/config."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # read now, not at import
    return client.ApiClient()


def _check_dns_label(what: str, value: str, fix: str) -> None:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"{what} {value!r} is not a DNS label (a-z, 0-9, '-', starts with a letter, "
            f"<= 63 characters); fix: {fix}"
        )


def _check_label_value(key: str, value: str) -> None:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(f"label {key}={value!r} is not a valid Kubernetes label value")


def _check_env_names(env: Mapping[str, str], secret_env: Mapping[str, tuple[str, str]]) -> None:
    both = sorted(set(env) & set(secret_env))
    if both:
        raise ValueError(f"env vars {both} are given both as plain env and as secret_env")
    leaked = sorted(name for name in env if _SECRET_LOOKING.search(name))
    if leaked:
        raise ValueError(
            f"env vars {leaked} look like credentials: pass them as secret_env "
            "{'NAME': (secret, key)} so that only a secretKeyRef reaches the cluster"
        )


# ---------------------------------------------------------------------------------------------
# Building the objects


def env_vars(spec: DistributedJobSpec) -> list[dict[str, Any]]:
    """Container env: plain values, then ``valueFrom.secretKeyRef`` references (never values)."""
    plain = [{"name": name, "value": value} for name, value in spec.env.items()]
    secret = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}
        for name, (secret_name, key) in spec.secret_env.items()
    ]
    return plain + secret


def resources(spec: DistributedJobSpec) -> dict[str, dict[str, str]]:
    """Per-node requests/limits; GPUs go in both (extended resources need requests == limits)."""
    requests = {"cpu": spec.cpu_request, "memory": spec.memory_request}
    limits = {"cpu": spec.cpu_limit, "memory": spec.memory_limit}
    if spec.gpus_per_node:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(spec.gpus_per_node)
    out = {
        "requests": {k: v for k, v in requests.items() if v},
        "limits": {k: v for k, v in limits.items() if v},
    }
    return {k: v for k, v in out.items() if v}


def _metadata(spec: DistributedJobSpec) -> dict[str, Any]:
    return {"name": spec.name, "namespace": spec.namespace, "labels": spec.all_labels()}


def build_trainjob(spec: DistributedJobSpec) -> dict[str, Any]:
    """The ``TrainJob`` for ``spec``: the runtime supplies the pod template, we the entrypoint.

    A ``runtimePatches`` entry puts the restricted securityContext (and ``service_account``, when
    set) into the pod template of the runtime's ``node`` job — the current Trainer API; Trainer
    v2.0/v2.1 had ``podSpecOverrides``/``podTemplateOverrides`` instead, so on those clusters
    set both in the ClusterTrainingRuntime.
    """
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command),
        "args": list(spec.args),
        "numNodes": spec.nodes,
        "numProcPerNode": spec.procs_per_node,
        "env": env_vars(spec),
    }
    if per_node := resources(spec):
        trainer["resourcesPerNode"] = per_node
    job_spec: dict[str, Any] = {
        "runtimeRef": {
            "name": spec.runtime,
            "apiGroup": "trainer.kubeflow.org",
            "kind": "ClusterTrainingRuntime",
        },
        "trainer": trainer,
        "runtimePatches": [_node_patch(spec.service_account)],
    }
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _metadata(spec),
        "spec": job_spec,
    }


def _node_patch(service_account: str) -> dict[str, Any]:
    """A ``runtimePatches`` entry (owned by manager ``rtune``) for the nodes' pod template: the
    restricted securityContext, and the service account when one is given."""
    pod: dict[str, Any] = {
        "securityContext": copy.deepcopy(NODE_POD_SECURITY),
        "containers": [{"name": "node", "securityContext": copy.deepcopy(NODE_CONTAINER_SECURITY)}],
    }
    if service_account:
        pod["serviceAccountName"] = service_account
    pod_template = {"spec": pod}
    node_job = {"name": "node", "template": {"spec": {"template": pod_template}}}
    return {
        "manager": RUNTIME_PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node_job]}}},
    }


def _pytorch_replica(spec: DistributedJobSpec, replicas: int) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "pytorch",
        "image": spec.image,
        "command": list(spec.command),
        "args": list(spec.args),
        "env": env_vars(spec),
        "securityContext": copy.deepcopy(NODE_CONTAINER_SECURITY),
    }
    if per_node := resources(spec):
        container["resources"] = per_node
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": copy.deepcopy(NODE_POD_SECURITY),
    }
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    return {
        "replicas": replicas,
        "restartPolicy": "OnFailure",
        "template": {"metadata": {"labels": spec.all_labels()}, "spec": pod_spec},
    }


def build_pytorchjob(spec: DistributedJobSpec) -> dict[str, Any]:
    """The ``PyTorchJob`` for ``spec``: Master + (nodes - 1) Workers, the same container on each.

    The operator sets ``PET_NNODES``/``PET_NODE_RANK``/``PET_MASTER_ADDR``… for torchrun.
    """
    replicas = {"Master": _pytorch_replica(spec, 1)}
    if spec.nodes > 1:
        replicas["Worker"] = _pytorch_replica(spec, spec.nodes - 1)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _metadata(spec),
        "spec": {"nprocPerNode": str(spec.procs_per_node), "pytorchReplicaSpecs": replicas},
    }


def build_job(spec: DistributedJobSpec) -> dict[str, Any]:
    """``build_trainjob`` or ``build_pytorchjob`` by ``spec.kind``."""
    return build_trainjob(spec) if spec.kind == "TrainJob" else build_pytorchjob(spec)


# ---------------------------------------------------------------------------------------------
# Status


def true_condition(obj: Mapping[str, Any], condition_type: str) -> dict[str, Any] | None:
    """The condition of that type whose status is "True", if the controller wrote one."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type and condition.get("status") == "True":
            return dict(condition)
    return None


def job_state(obj: Mapping[str, Any]) -> str:
    """The newest condition type that is True (like ``kubectl get``'s State column), or Pending."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    current = [c.get("type", "") for c in conditions if c.get("status") == "True"]
    return current[-1] if current else "Pending"


# ---------------------------------------------------------------------------------------------
# Following node 0's log


def _timestamp_key(stamp: str) -> str:
    """A sortable key for the kubelet's RFC 3339 timestamps, whose fraction drops trailing zeros."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{seconds}.{fraction:0<9}"


@dataclass
class LogTail:
    """Best-effort tail of node 0's log: each ``new_lines()`` returns only lines not seen before.

    Uses ``timestamps=True`` and remembers the newest timestamp printed; later reads ask for the
    seconds since the previous read plus a margin (``since_seconds`` is judged by the kubelet's
    clock, so only the elapsed time matters) and drop lines at or before that timestamp. Any
    error is reported once through ``log`` and never raised: the logs are a courtesy, the job's
    conditions decide success.
    """

    core: Any
    namespace: str
    labels: dict[str, str]
    container: str
    log: Logger = print
    first_tail_lines: int = 1000
    margin_s: int = 5
    pod: str = ""
    last_key: str = ""
    seen_at_last: set[str] = field(default_factory=set)
    last_read: float = 0.0
    failed: bool = False

    def new_lines(self) -> list[str]:
        try:
            return self._read_new()
        except Exception as error:  # any failure: the job is still followed by its status
            if not self.failed:
                self.failed = True
                self.log(
                    f"(log streaming of {self.namespace}/{self.pod or 'node 0'} failed, the job is "
                    f"still being followed: {type(error).__name__}: {_short(error)})"
                )
            return []

    def _read_new(self) -> list[str]:
        pod = self._node0_pod()
        if pod is None:
            return []
        if pod != self.pod:
            self.pod, self.last_key, self.seen_at_last, self.last_read = pod, "", set(), 0.0
        now = time.monotonic()
        kwargs: dict[str, Any] = {"container": self.container, "timestamps": True}
        if self.last_read:
            kwargs["since_seconds"] = math.ceil(now - self.last_read) + self.margin_s
        else:
            kwargs["tail_lines"] = self.first_tail_lines
        text = self.core.read_namespaced_pod_log(self.pod, self.namespace, **kwargs)
        self.last_read = now
        return self._unseen(text or "")

    def _node0_pod(self) -> str | None:
        """Newest running-or-finished pod carrying node 0's labels (checked here too)."""
        selector = ",".join(f"{k}={v}" for k, v in self.labels.items())
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        ours = [
            p
            for p in pods
            if self.labels.items() <= (p.metadata.labels or {}).items()
            and (p.status is None or p.status.phase != "Pending")
        ]
        if not ours:
            return None
        ours.sort(key=lambda p: (str(p.metadata.creation_timestamp or ""), p.metadata.name))
        return str(ours[-1].metadata.name)

    def _unseen(self, text: str) -> list[str]:
        lines: list[str] = []
        for raw in text.splitlines():
            stamp, _, line = raw.partition(" ")
            key = _timestamp_key(stamp)
            if key < self.last_key or (key == self.last_key and raw in self.seen_at_last):
                continue
            if key > self.last_key:
                self.last_key, self.seen_at_last = key, set()
            self.seen_at_last.add(raw)
            lines.append(line)
        return lines


def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "…"


# ---------------------------------------------------------------------------------------------
# Create or adopt, then wait


def _get_job(api: Any, info: KindInfo, spec: DistributedJobSpec) -> dict[str, Any] | None:
    try:
        obj = api.get_namespaced_custom_object(
            info.group, info.version, spec.namespace, info.plural, spec.name
        )
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return dict(obj)


def _create_job(api: Any, info: KindInfo, spec: DistributedJobSpec) -> dict[str, Any]:
    body = build_job(spec)
    return dict(
        api.create_namespaced_custom_object(
            info.group, info.version, spec.namespace, info.plural, body
        )
    )


def _adoptable(existing: Mapping[str, Any], spec: DistributedJobSpec) -> dict[str, Any]:
    """Refuse a same-named job that rtune did not create: adopting it would report its result."""
    labels = (existing.get("metadata") or {}).get("labels") or {}
    if labels.get(PART_OF_LABEL) != "rtune" or labels.get(RUN_ID_LABEL, "") != spec.kfp_run_id:
        raise RuntimeError(
            f"{spec.kind} {spec.namespace}/{spec.name} exists but was not created by this rtune "
            f"run (labels {dict(labels)}); fix: delete it or run with another task name"
        )
    return dict(existing)


def create_or_adopt(
    api: Any, spec: DistributedJobSpec, log: Logger = print
) -> tuple[dict[str, Any], bool]:
    """Create the job, or adopt the one a previous attempt of this task created. (obj, adopted)."""
    info = KINDS[spec.kind]
    existing = _get_job(api, info, spec)
    if existing is not None:
        log(f"adopting existing {spec.kind} {spec.namespace}/{spec.name} ({job_state(existing)})")
        return _adoptable(existing, spec), True
    try:
        created = _create_job(api, info, spec)
    except client.ApiException as error:
        if error.status != 409:
            raise
        raced = _get_job(api, info, spec)  # created between our get and create
        if raced is None:
            raise
        return _adoptable(raced, spec), True
    log(
        f"created {spec.kind} {spec.namespace}/{spec.name}: {spec.nodes} node(s) x "
        f"{spec.procs_per_node} process(es), {spec.gpus_per_node} GPU(s) per node, "
        f"env {sorted(spec.env) + sorted(spec.secret_env)}"
    )
    return dict(created), False


def _poll_job(
    api: Any, info: KindInfo, spec: DistributedJobSpec, errors: list[str]
) -> dict[str, Any] | None:
    """The job, or None on a transient API error (raised after several in a row)."""
    try:
        obj = _get_job(api, info, spec)
    except client.ApiException as error:
        if error.status not in _TRANSIENT_STATUS:
            raise
        errors.append(f"HTTP {error.status}")
    except (urllib3.exceptions.HTTPError, OSError) as error:  # connection refused, reset, …
        errors.append(f"{type(error).__name__}: {_short(error, 120)}")
    else:
        errors.clear()
        if obj is None:
            raise DistributedJobFailed(
                spec.kind, spec.namespace, spec.name, "Deleted", "the job was deleted while waiting"
            )
        return obj
    if len(errors) >= _MAX_TRANSIENT_ERRORS:
        raise RuntimeError(f"cannot read {spec.kind} {spec.namespace}/{spec.name}: {errors}")
    return None


def _outcome(
    info: KindInfo, spec: DistributedJobSpec, obj: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The success condition when done; raises DistributedJobFailed on the Failed condition."""
    failed = true_condition(obj, FAILED_CONDITION)
    if failed is not None:
        reason, message = failed.get("reason", ""), failed.get("message", "")
        raise DistributedJobFailed(spec.kind, spec.namespace, spec.name, reason, message)
    return true_condition(obj, info.success_condition)


def _timeout(spec: DistributedJobSpec, timeout_s: float, state: str) -> DistributedJobTimeout:
    kind, ns, name = spec.kind, spec.namespace, spec.name
    return DistributedJobTimeout(
        f"{kind} {ns}/{name} did not finish within {timeout_s:g} s (last state: {state}). It was "
        f"left in the cluster, still running, for inspection: kubectl describe {kind.lower()} "
        f"{name} -n {ns}; delete it with kubectl delete {kind.lower()} {name} -n {ns}"
    )


def run_distributed_job(
    spec: DistributedJobSpec,
    api_client: client.ApiClient,
    *,
    poll_interval_s: float = 10.0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    log: Logger = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> JobResult:
    """Create (or adopt) the job, print node 0's new log lines every poll, wait for the end.

    Returns on the success condition; raises ``DistributedJobFailed`` with the job's own reason
    and message on ``Failed``; raises ``DistributedJobTimeout`` after ``timeout_s`` (the job is
    left running). A job adopted already finished is judged at once, without waiting or logs.
    ``sleep`` and ``clock`` are the waits and the time (tests pass a clock they move themselves).
    """
    info = KINDS[spec.kind]
    custom = client.CustomObjectsApi(api_client)
    start = clock()
    obj, adopted = create_or_adopt(custom, spec, log)
    done = _outcome(info, spec, obj)  # an adopted job may have ended: judged now, no waiting
    if done is not None:
        return _result(spec, adopted, done, clock() - start, log)
    tail = LogTail(
        client.CoreV1Api(api_client), spec.namespace, info.node0_labels(spec.name),
        info.log_container, log,
    )  # fmt: skip
    errors: list[str] = []
    while True:
        for line in tail.new_lines():  # a finished job's last lines too, before judging it
            log(f"[{spec.name} node-0] {line}")
        done = _outcome(info, spec, obj)
        if done is not None:
            return _result(spec, adopted, done, clock() - start, log)
        remaining = start + timeout_s - clock()
        if remaining <= 0:
            raise _timeout(spec, timeout_s, job_state(obj))
        sleep(min(poll_interval_s, remaining))
        obj = _poll_job(custom, info, spec, errors) or obj  # None: a transient error, try again


def _result(
    spec: DistributedJobSpec, adopted: bool, done: Mapping[str, Any], elapsed_s: float, log: Logger
) -> JobResult:
    result = JobResult(
        kind=spec.kind,
        namespace=spec.namespace,
        name=spec.name,
        adopted=adopted,
        reason=str(done.get("reason", "")),
        message=str(done.get("message", "")),
        elapsed_s=elapsed_s,
    )
    state = KINDS[spec.kind].success_condition
    log(f"{spec.kind} {spec.namespace}/{spec.name} {state}: {result.reason} {result.message}")
    return result
