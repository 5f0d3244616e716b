"""A task's pod as the KFP driver would build it: env and volumes from the compiled platform spec.

Env = the image's ``ENV`` + the IR container's env + what KFP and Kubernetes inject (``KFP_POD_NAME``,
``KFP_POD_UID``, ``KFP_RETRY_INDEX`` on retried tasks, ``KUBERNETES_SERVICE_*``, ``HOSTNAME``) +
the platform spec's Secrets, ConfigMaps and field refs. A Secret or key that does not exist fails
the pod (``CreateContainerConfigError``) unless the entry is ``optional``. Volumes: PVCs that must
exist in the cluster (a host folder each, kept across tasks and retries), ``emptyDir`` (memory-
backed ones as tmpfs), generic ephemeral volumes, and the run's workspace when a task opts in.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rtune.components.common.gpus import EXPECTED_GPUS_ENV
from rtune.pipelines.rehearsal.cluster import Cluster, ClusterProblem
from rtune.pipelines.rehearsal.images import ImageFacts
from rtune.pipelines.rehearsal.ir import Container
from rtune.pipelines.rehearsal.pod import Mount, PodSpec

WORKSPACE_PATH = "/kfp-workspace"
KUBERNETES_API = ("kubernetes.default.svc", 443)
_LABEL = re.compile(r"^metadata\.labels\['(?P<key>[^']+)'\]$")


@dataclass(frozen=True)
class PodContext:
    """Facts of the run a pod's env and volumes draw on."""

    run_id: str
    workflow: str
    service_account: str
    pvcs: Mapping[str, Path]  # PVC name -> its folder (PVCs that exist in the cluster)
    workspace: Path | None
    service_account_dir: Path | None = None
    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def build_pod(
    name: str,
    image: ImageFacts,
    container: Container,
    platform: Mapping[str, Any],
    command: list[str],
    cluster: Cluster,
    context: PodContext,
    attempt: int,
    retried: bool,
    uses_workspace: bool,
) -> PodSpec:
    """The pod of one attempt; raises :class:`ClusterProblem` where Kubernetes would refuse it."""
    image = _run_as(image, platform)
    pod_name = f"{context.workflow}-{name}-{uuid.uuid4().hex[:8]}"
    env = dict(image.env)
    env.update(container.env)
    if container.accelerators and EXPECTED_GPUS_ENV in env:
        # the one difference from a cluster: this machine has no GPU to give the pod, so the
        # task is told none were granted and runs on the CPU (the GPU path is tested apart)
        env[EXPECTED_GPUS_ENV] = "0"
    env.update(
        {
            "KFP_POD_NAME": pod_name,
            "KFP_POD_UID": str(uuid.uuid4()),
            "HOSTNAME": pod_name[:63],
            "KUBERNETES_SERVICE_HOST": cluster.address_of(KUBERNETES_API[0]),
            "KUBERNETES_SERVICE_PORT": str(KUBERNETES_API[1]),
        }
    )
    if retried:
        env["KFP_RETRY_INDEX"] = str(attempt)
    env.update(_secret_env(platform, cluster))
    env.update(_config_map_env(platform, context))
    env.update(_field_env(platform, pod_name, cluster, context))
    mounts = _volumes(platform, context, uses_workspace)
    return PodSpec(
        name=pod_name,
        image=image,
        command=command,
        env=env,
        mounts=mounts,
        hosts=dict(cluster.hosts),
        service_account_dir=context.service_account_dir,
        hosts_file=cluster.hosts_file,
    )


def _run_as(image: ImageFacts, platform: Mapping[str, Any]) -> ImageFacts:
    """The user the main container runs as: the platform spec's ``securityContext`` (kfp-kubernetes
    ``set_security_context``), else the image's ``USER``. ``runAsNonRoot`` with user 0 is refused
    as the kubelet refuses it (Pod Security ``restricted`` needs it on every container)."""
    context = platform.get("securityContext") or {}
    uid = int(context.get("runAsUser", image.uid))
    gid = int(context.get("runAsGroup", image.gid))
    if context.get("runAsNonRoot") and uid == 0:
        raise ClusterProblem(
            "CreateContainerConfigError: container has runAsNonRoot and image will run as root"
        )
    return replace(image, uid=uid, gid=gid)


def _name(entry: Mapping[str, Any], kind: str) -> str:
    parameter = entry.get(f"{kind}NameParameter", {}).get("runtimeValue", {})
    return str(parameter.get("constant") or entry.get(f"{kind}Name") or "")


def _secret_env(platform: Mapping[str, Any], cluster: Cluster) -> dict[str, str]:
    env = {}
    for entry in platform.get("secretAsEnv", []):
        secret, optional = _name(entry, "secret"), bool(entry.get("optional"))
        data = cluster.secrets.get(secret)
        for item in entry.get("keyToEnv", []):
            key = item["secretKey"]
            if data is None or key not in data:
                if optional:
                    continue
                what = (
                    f"secret {secret!r} not found"
                    if data is None
                    else f"key {key!r} not in secret {secret!r}"
                )
                raise ClusterProblem(f"CreateContainerConfigError: {what}")
            env[item["envVar"]] = data[key]
    return env


def _config_map_env(platform: Mapping[str, Any], context: PodContext) -> dict[str, str]:
    env = {}
    for entry in platform.get("configMapAsEnv", []):
        name, optional = _name(entry, "configMap"), bool(entry.get("optional"))
        data = context.config_maps.get(name)
        for item in entry.get("keyToEnv", []):
            if data is None or item["configMapKey"] not in data:
                if optional:
                    continue
                raise ClusterProblem(
                    f"CreateContainerConfigError: configmap {name!r} key {item['configMapKey']!r} not found"
                )
            env[item["envVar"]] = data[item["configMapKey"]]
    return env


def _field_env(
    platform: Mapping[str, Any], pod_name: str, cluster: Cluster, context: PodContext
) -> dict[str, str]:
    labels = {"pipeline/runid": context.run_id, "pipelines.kubeflow.org/v2_component": "true"}
    fields = {
        "metadata.name": pod_name,
        "metadata.namespace": cluster.namespace,
        "spec.serviceAccountName": context.service_account,
        "status.podIP": "127.0.0.1",
    }
    env = {}
    for entry in platform.get("fieldPathAsEnv", []):
        path = entry["fieldPath"]
        label = _LABEL.match(path)
        if label is not None:
            env[entry["name"]] = labels.get(label["key"], "")
        elif path in fields:
            env[entry["name"]] = fields[path]
        else:
            raise ClusterProblem(f"fieldPathAsEnv {path!r} is not rehearsed")
    return env


def _volumes(platform: Mapping[str, Any], context: PodContext, uses_workspace: bool) -> list[Mount]:
    mounts = []
    for entry in platform.get("pvcMount", []):
        pvc = _name(entry, "pvc") or str(entry.get("constant", ""))
        if pvc not in context.pvcs:
            raise ClusterProblem(
                f"persistentvolumeclaim {pvc!r} not found (declare it in manifests/ or create it)"
            )
        source = context.pvcs[pvc] / entry.get("subPath", "")
        mounts.append(Mount(entry["mountPath"], source))
    for entry in platform.get("emptyDirMounts", []):
        size = entry.get("sizeLimit", "") if entry.get("medium") == "Memory" else ""
        if entry.get("medium") == "Memory":
            mounts.append(Mount(entry["mountPath"], Path("/"), tmpfs_size=size or "50%"))
        else:
            mounts.append(Mount(entry["mountPath"], Path(f"emptydir-{entry['volumeName']}")))
    for entry in platform.get("genericEphemeralVolume", []):
        mounts.append(Mount(entry["mountPath"], Path(f"ephemeral-{entry['volumeName']}")))
    if uses_workspace:
        if context.workspace is None:
            raise ClusterProblem("the task uses the workspace but the pipeline declares none")
        mounts.append(Mount(WORKSPACE_PATH, context.workspace))
    return mounts


def needs_workspace(parameters: Mapping[str, Any]) -> bool:
    """The driver mounts the workspace when a top-level string input names it."""
    return any(
        isinstance(v, str) and ("{{$.workspace_path}}" in v or v.startswith(WORKSPACE_PATH))
        for v in parameters.values()
    )
