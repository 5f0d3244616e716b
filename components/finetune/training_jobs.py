"""The Kubeflow training objects rtune runs multi-node training as: what to run
(:class:`DistributedJobSpec`, checked on construction) and the ``TrainJob`` / ``PyTorchJob`` built
from it. No cluster calls here; :mod:`.distributed_job` creates, follows and judges them.

    spec = DistributedJobSpec(name=job_name(run_id, "finetune"), namespace=ns,
                              image=Images().reference("train"), command=["torchrun"], args=[...],
                              nodes=2, procs_per_node=8, gpus_per_node=8,
                              secret_env=s3_secret_env("rtune-s3"), kfp_run_id=run_id)
    body = build_job(spec)

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

Secrets enter the pods only as ``secretKeyRef``; no secret value is ever put in the object.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rtune.components.common.k8s_workload import (
    GPU_RESOURCE,
    CustomResource,
    WorkloadRef,
    rtune_labels,
)

# Pod Security `restricted` (the namespace enforces it): the train image's non-root USER, no
# privilege escalation, no capabilities, the runtime's default seccomp profile.
NODE_POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
NODE_CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

JobKind = Literal["TrainJob", "PyTorchJob"]

RUNTIME_PATCH_MANAGER = "rtune"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
# AWS's own S3 has no endpoint to give: its Secret lacks the key, and a required reference would
# stop the pod at CreateContainerConfigError. MinIO / Ceph Secrets carry it.
OPTIONAL_SECRET_ENV = ("AWS_ENDPOINT_URL",)

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SECRET_LOOKING = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|API_KEY", re.IGNORECASE)


@dataclass
class DistributedJobSpec:
    """What to run on the cluster. Built by the finetune task from its config; no cluster calls.

    ``secret_env`` maps an env var to ``(secret name, key)``; only the reference goes into the
    object. ``env`` is for plain values and refuses names that look like credentials.
    ``optional_secret_env``: the ``secret_env`` names whose key may be missing from the Secret
    (the var is then unset); every other reference is required.
    ``service_account`` = "" keeps the training runtime's own service account.
    ``work_volume`` (a ReadWriteMany PVC, ``cluster.work_volume``) is mounted in every node at
    ``work_mount`` (``cluster.work_mount``), where the task pod has it too: the job's checkpoint
    folder lives there, so a retried job resumes. '' = no volume.
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
    optional_secret_env: tuple[str, ...] = OPTIONAL_SECRET_ENV
    work_volume: str = "rtune-work"
    work_mount: str = "/mnt/rtune"

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
        if self.work_volume and not self.work_mount.startswith("/"):
            raise ValueError(f"work_mount must be an absolute path, got {self.work_mount!r}")
        for key, value in self.all_labels().items():
            _check_label_value(key, value)

    def all_labels(self) -> dict[str, str]:
        """The caller's labels plus ``part-of: rtune``, the component and the KFP run id."""
        return {**rtune_labels("finetune", self.kfp_run_id), **self.labels}

    @property
    def ref(self) -> WorkloadRef:
        """The job object this spec names, for the shared lifecycle."""
        return WorkloadRef(KINDS[self.kind].resource, self.namespace, self.name)


@dataclass(frozen=True)
class KindInfo:
    """Where a job kind lives in the API, how it says it is done, and where node 0's log is."""

    resource: CustomResource
    success_condition: str
    log_container: str
    node0_labels: Callable[[str], dict[str, str]]


KINDS: dict[str, KindInfo] = {
    "TrainJob": KindInfo(
        resource=CustomResource("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"),
        success_condition="Complete",
        log_container="node",
        node0_labels=lambda name: {
            "jobset.sigs.k8s.io/jobset-name": name,
            "jobset.sigs.k8s.io/replicatedjob-name": "node",
            "batch.kubernetes.io/job-completion-index": "0",
        },
    ),
    "PyTorchJob": KindInfo(
        resource=CustomResource("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
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


def tracking_secret_env(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """MLflow's login for the nodes, by reference: when the task pod was given it (its MLflow is
    behind the basic-auth app), rank 0 logs to the same server and needs the same Secret — the
    values never enter the job object. ``env`` is the task pod's environment."""
    from rtune.components.common.tracking import MLFLOW_AUTH_KEYS, MLFLOW_AUTH_SECRET

    if not env.get(MLFLOW_AUTH_KEYS["username"]):
        return {}
    return {variable: (MLFLOW_AUTH_SECRET, key) for key, variable in MLFLOW_AUTH_KEYS.items()}


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
        {"name": name, "valueFrom": {"secretKeyRef": _secret_key_ref(spec, name, secret_name, key)}}
        for name, (secret_name, key) in spec.secret_env.items()
    ]
    return plain + secret


def _secret_key_ref(spec: DistributedJobSpec, env: str, secret: str, key: str) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if env in spec.optional_secret_env:
        ref["optional"] = True
    return ref


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


WORK_VOLUME_NAME = "rtune-work"


def work_volumes(spec: DistributedJobSpec) -> list[dict[str, Any]]:
    """The pod's ``volumes``: the work volume's PVC, when there is one."""
    if not spec.work_volume:
        return []
    return [{"name": WORK_VOLUME_NAME, "persistentVolumeClaim": {"claimName": spec.work_volume}}]


def work_mounts(spec: DistributedJobSpec) -> list[dict[str, Any]]:
    """The node container's ``volumeMounts``: the work volume at ``work_mount``."""
    if not spec.work_volume:
        return []
    return [{"name": WORK_VOLUME_NAME, "mountPath": spec.work_mount}]


def _metadata(spec: DistributedJobSpec) -> dict[str, Any]:
    return {"name": spec.name, "namespace": spec.namespace, "labels": spec.all_labels()}


def build_trainjob(spec: DistributedJobSpec) -> dict[str, Any]:
    """The ``TrainJob`` for ``spec``: the runtime supplies the pod template, we the entrypoint.

    A ``runtimePatches`` entry puts the restricted securityContext, the work volume (and
    ``service_account``, when set) into the pod template of the runtime's ``node`` job — the current Trainer API; Trainer
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
    }
    job_spec["runtimePatches"] = [_node_patch(spec)]
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _metadata(spec),
        "spec": job_spec,
    }


def _node_patch(spec: DistributedJobSpec) -> dict[str, Any]:
    """A ``runtimePatches`` entry (owned by manager ``rtune``) for the nodes' pod template: the
    restricted securityContext, the work volume, and the service account when one is given."""
    node: dict[str, Any] = {
        "name": "node",
        "securityContext": copy.deepcopy(NODE_CONTAINER_SECURITY),
    }
    pod: dict[str, Any] = {
        "securityContext": copy.deepcopy(NODE_POD_SECURITY),
        "containers": [node],
    }
    if volumes := work_volumes(spec):
        pod["volumes"] = volumes
        node["volumeMounts"] = work_mounts(spec)
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
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
    if volumes := work_volumes(spec):
        pod_spec["volumes"] = volumes
        container["volumeMounts"] = work_mounts(spec)
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
