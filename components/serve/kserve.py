"""Serve the model on the cluster: a KServe ``InferenceService`` on the ``rtune-vllm`` runtime.

    obj = build_inference_service("rtune-student", "team-a", "s3://models/run-1/model", gpus=1,
                                  reasoning_format="reflection")
    custom = client.CustomObjectsApi(load_api_client())
    create_or_update(custom, obj)                          # a re-run updates, never duplicates
    ready = wait_ready(custom, "team-a", "rtune-student", timeout_s=1800)
    ready.base_url                                        # http://…/v1, vLLM's OpenAI API

The object (field names from KServe's ``v1beta1`` Go types, checked against the CRD in tests):
``spec.predictor.model`` names the runtime, ``modelFormat: vllm`` and the model's ``storageUri``
(KServe's storage initializer copies it to ``/mnt/models``, with the S3 credentials of
``serviceAccountName``); its ``args`` are appended to the runtime's vLLM flags and its
``resources`` override the runtime's per key. vLLM serves the model under the
InferenceService's name (the runtime passes ``--served-model-name={{.Name}}``).

Readiness is the ``Ready`` condition of the current generation, with a URL. The controller's own
words decide failure: ``modelStatus`` (``FailedToLoad``, ``BlockedByFailedLoad``,
``InvalidSpec`` with ``lastFailureInfo``) or a condition that is ``False`` for a terminal reason
(``RevisionFailed``, ``RevisionMissing`` — Knative's "no ready revision" — and the like).
Creating, adopting and waiting are the shared :mod:`rtune.components.common.k8s_workload`
lifecycle; this module holds the object and those readiness rules.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtune.components.common.k8s_workload import (
    GPU_RESOURCE,
    RUN_ID_LABEL,
    CustomResource,
    Logger,
    Polling,
    WorkloadRef,
    create_or_adopt,
    current_status,
    describe_conditions,
    merge_patch,
    require_rtune_owner,
    rtune_labels,
    wait_for,
)

INFERENCE_SERVICES = CustomResource(
    "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
)
REASONING_PARSER = "rtune-reflection"
# where images/serve/Dockerfile puts components/serve/vllm_reasoning.py (a fixed path: the
# site-packages one depends on the image's Python)
REFLECTION_PLUGIN_PATH = "/opt/rtune/vllm_reasoning.py"
FAILED_REASONS = {
    "RevisionFailed",
    "RevisionMissing",
    "ProgressDeadlineExceeded",
    "ModelLoadFailed",
    "RuntimeUnhealthy",
    "RuntimeNotRecognized",
    "NoSupportingRuntime",
    "InvalidPredictorSpec",
}
FAILED_TRANSITIONS = {"BlockedByFailedLoad", "InvalidSpec"}
ADOPT_FIX = "set serve.name to another name, or delete it"
# Pod Security `restricted` (the namespace enforces it), on top of the runtime container's own
# securityContext, which KServe merges with the model's field by field.
PREDICTOR_POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
MODEL_CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


class InferenceServiceFailed(RuntimeError):
    """The controller says the service cannot become ready; the text is its reason and message."""

    def __init__(self, namespace: str, name: str, reason: str, message: str) -> None:
        self.namespace, self.name, self.reason, self.message = namespace, name, reason, message
        super().__init__(
            f"InferenceService {namespace}/{name} failed: {reason or 'no reason given'}: "
            f"{message or 'no message given'}\n"
            f"  inspect it: kubectl describe inferenceservice {name} -n {namespace}; the model "
            f"server's log: kubectl logs -n {namespace} -l "
            f"serving.kserve.io/inferenceservice={name} -c kserve-container"
        )


class InferenceServiceTimeout(TimeoutError):
    """Not ready in time. The service is left as it is, for inspection."""


@dataclass(frozen=True)
class ReadyService:
    """``url``: status.url (external); ``address_url``: the in-cluster address, when given."""

    name: str
    namespace: str
    url: str
    address_url: str
    elapsed_s: float

    @property
    def base_url(self) -> str:
        """The OpenAI API root, reached the way pipeline pods can (cluster address first)."""
        return (self.address_url or self.url).rstrip("/") + "/v1"


def build_inference_service(
    name: str,
    namespace: str,
    storage_uri: str,
    *,
    runtime: str = "rtune-vllm",
    gpus: int = 1,
    reasoning_format: str = "none",
    served_model_name: str = "",
    extra_args: Sequence[str] = (),
    service_account: str = "",
    cpu: str = "",
    memory: str = "",
    min_replicas: int = 1,
    max_replicas: int = 1,
    kfp_run_id: str = "",
    plugin_path: str = REFLECTION_PLUGIN_PATH,
) -> dict[str, Any]:
    """The InferenceService object (a plain dict, ready for the API). No cluster calls."""
    if not storage_uri:
        raise ValueError("storage_uri is required: the model's s3:// (or other KServe) location")
    args = vllm_args(gpus, reasoning_format, name, served_model_name, extra_args, plugin_path)
    model: dict[str, Any] = {
        "modelFormat": {"name": "vllm"},
        "runtime": runtime,
        "storageUri": storage_uri,
        "args": args,
        "securityContext": copy.deepcopy(MODEL_CONTAINER_SECURITY),
    }
    if per_pod := resources(gpus, cpu, memory):
        model["resources"] = per_pod
    predictor: dict[str, Any] = {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "securityContext": copy.deepcopy(PREDICTOR_POD_SECURITY),
        "model": model,
    }
    if service_account:
        predictor["serviceAccountName"] = service_account
    labels = rtune_labels("serve", kfp_run_id)
    return {
        "apiVersion": f"{INFERENCE_SERVICES.group}/{INFERENCE_SERVICES.version}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"predictor": predictor},
    }


def sibling_service(
    served: Mapping[str, Any], name: str, storage_uri: str, component: str
) -> dict[str, Any]:
    """Another model served exactly like ``served`` (runtime, args, resources, service account,
    security): a copy of its spec with ``storageUri`` replaced, named ``name``, labelled as
    ``component``'s (its run id kept). No cluster calls."""
    if not storage_uri:
        raise ValueError("storage_uri is required: the model's s3:// (or other KServe) location")
    meta = served.get("metadata") or {}
    spec = copy.deepcopy(dict(served.get("spec") or {}))
    spec["predictor"]["model"]["storageUri"] = storage_uri
    run_id = (meta.get("labels") or {}).get(RUN_ID_LABEL, "")
    return {
        "apiVersion": served.get("apiVersion")
        or f"{INFERENCE_SERVICES.group}/{INFERENCE_SERVICES.version}",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": rtune_labels(component, run_id),
        },
        "spec": spec,
    }


def vllm_args(
    gpus: int,
    reasoning_format: str,
    name: str,
    served_model_name: str = "",
    extra_args: Sequence[str] = (),
    plugin_path: str = REFLECTION_PLUGIN_PATH,
) -> list[str]:
    """Flags appended to the runtime's ``vllm`` command line."""
    args: list[str] = []
    if gpus > 1:
        args.append(f"--tensor-parallel-size={gpus}")
    if served_model_name and served_model_name != name:
        args.append(f"--served-model-name={served_model_name}")  # the last one wins
    if reasoning_format == "reflection":
        args += [
            f"--reasoning-parser-plugin={plugin_path}",
            f"--reasoning-parser={REASONING_PARSER}",
        ]
    return args + list(extra_args)


def resources(gpus: int, cpu: str = "", memory: str = "") -> dict[str, dict[str, str]]:
    """Requests and limits (GPUs in both: extended resources need requests == limits)."""
    wanted = {"cpu": cpu, "memory": memory, GPU_RESOURCE: str(gpus) if gpus else ""}
    chosen = {k: v for k, v in wanted.items() if v}
    return {"requests": dict(chosen), "limits": dict(chosen)} if chosen else {}


def create_or_update(
    custom: Any, obj: Mapping[str, Any], log: Logger = print
) -> tuple[dict[str, Any], bool]:
    """Create the service, or patch the one of that name to ``obj``'s spec. (object, created).

    A service of that name that rtune did not create is refused, not taken over.
    """
    meta = obj["metadata"]
    ref = WorkloadRef(INFERENCE_SERVICES, meta["namespace"], meta["name"])
    existing, created = create_or_adopt(
        custom, ref, obj, lambda found: require_rtune_owner(found, ref, ADOPT_FIX)
    )
    if created:
        log(f"created {ref} ({obj['spec']['predictor']['model']['storageUri']})")
        return existing, True
    patch: dict[str, Any] = {}
    if spec_patch := merge_patch(existing.get("spec") or {}, obj["spec"]):
        patch["spec"] = spec_patch
    labels = (existing.get("metadata") or {}).get("labels") or {}
    if any(labels.get(key) != value for key, value in meta["labels"].items()):
        patch["metadata"] = {"labels": meta["labels"]}
    if not patch:
        log(f"{ref} already has this spec")
        return existing, False
    updated = ref.patch(custom, patch)
    log(f"updated {ref}: {sorted(patch.get('spec', {}))}")
    return updated, False


def failure(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(reason, message)`` when the controller reports a failure it will not recover from."""
    status = current_status(obj)
    if status is None:
        return None
    model = status.get("modelStatus") or {}
    states = model.get("states") or {}
    info = model.get("lastFailureInfo") or {}
    if model.get("transitionStatus") in FAILED_TRANSITIONS or "FailedToLoad" in (
        states.get("activeModelState"),
        states.get("targetModelState"),
    ):
        reason = info.get("reason") or model.get("transitionStatus") or "FailedToLoad"
        return str(reason), str(info.get("message", ""))
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("reason") in FAILED_REASONS:
            return str(condition["reason"]), str(condition.get("message", ""))
    return None


def ready_urls(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(status.url, status.address.url)`` once the current generation is Ready with a URL."""
    status = current_status(obj)
    if status is None:
        return None
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    url = str(status.get("url") or "")
    address = str((status.get("address") or {}).get("url") or "")
    return (url, address) if ready and (url or address) else None


@dataclass
class ReadinessRules:
    """The service's rules for the shared wait: the controller's failure first, then Ready with
    a URL; otherwise each new state is logged once."""

    namespace: str
    name: str
    log: Logger
    last: str = "not read yet"

    def judge(self, obj: Mapping[str, Any]) -> tuple[str, str] | None:
        if found := failure(obj):
            raise InferenceServiceFailed(self.namespace, self.name, *found)
        if urls := ready_urls(obj):
            return urls
        if (state := describe_conditions(obj)) != self.last:
            self.last = state
            self.log(f"InferenceService {self.namespace}/{self.name}: {state}")
        return None

    def deleted(self) -> Exception:
        return InferenceServiceFailed(
            self.namespace, self.name, "NotFound", "it was deleted while waiting"
        )

    def timed_out(self, timeout_s: float, last: Mapping[str, Any] | None) -> Exception:
        ns, name = self.namespace, self.name
        return InferenceServiceTimeout(
            f"InferenceService {ns}/{name} was not Ready within {timeout_s:g} s (last state: "
            f"{self.last}). It was left in place: kubectl describe inferenceservice {name} -n "
            f"{ns}; raise serve.timeout_s if the model is still loading"
        )


def wait_ready(
    custom: Any,
    namespace: str,
    name: str,
    timeout_s: float,
    poll_interval_s: float = 10.0,
    log: Logger = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ReadyService:
    """Poll until Ready (returns the URLs), a terminal failure (raises
    :class:`InferenceServiceFailed`) or ``timeout_s`` (raises :class:`InferenceServiceTimeout`).
    ``sleep`` and ``clock`` are the waits and the time (tests pass a clock they move)."""
    start = clock()
    ref = WorkloadRef(INFERENCE_SERVICES, namespace, name)
    polling = Polling(timeout_s, poll_interval_s, sleep, clock)
    url, address = wait_for(custom, ref, ReadinessRules(namespace, name, log), polling, start=start)
    elapsed = clock() - start
    log(f"InferenceService {namespace}/{name} is Ready after {elapsed:.0f} s: {url or address}")
    return ReadyService(name, namespace, url, address, elapsed)
