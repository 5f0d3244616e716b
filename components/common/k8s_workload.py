"""One Kubernetes workload's lifecycle, shared by every stage that runs something on the cluster
(finetune's TrainJob/PyTorchJob, serve's InferenceService): find the object by its deterministic
name, create it or adopt the one an earlier attempt made, wait for the controller's verdict, and
on failure or timeout leave the object in place for inspection.

    ref = WorkloadRef(TRAINJOBS, "team-a", "rtune-finetune-0a1b2c3d4e")
    custom = client.CustomObjectsApi(load_api_client())
    obj, created = create_or_adopt(custom, ref, body, lambda found: require_rtune_owner(
        found, ref, "delete it or run with another task name", run_id))
    verdict = wait_for(custom, ref, rules, Polling(timeout_s=3600.0), current=obj)

What "done" and "failed" mean is the kind's business: it comes in as :class:`WorkloadRules`
(``judge`` returns the result once done and raises the kind's own error on failure). This module
knows only the API calls, the ownership labels, the clock and the few condition readers every
kind needs. Transient API errors (429/5xx, connection refused or reset) are retried a few times
in a row before the wait gives up; a 404 while waiting means the object was deleted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import urllib3
from kubernetes import client

PART_OF_LABEL = "app.kubernetes.io/part-of"
COMPONENT_LABEL = "app.kubernetes.io/component"
RUN_ID_LABEL = "rtune/kfp-run-id"
GPU_RESOURCE = "nvidia.com/gpu"
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_TRANSIENT_ERRORS = 5

Logger = Callable[[str], None]
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


# ---------------------------------------------------------------------------------------------
# Where the cluster is


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


def rtune_labels(component: str, run_id: str = "") -> dict[str, str]:
    """``part-of: rtune``, the stage, and the KFP run id: how rtune recognises its own objects."""
    labels = {PART_OF_LABEL: "rtune", COMPONENT_LABEL: component}
    if run_id:
        labels[RUN_ID_LABEL] = run_id
    return labels


def short_error(error: BaseException, limit: int = 300) -> str:
    """An error on one line, cut at ``limit`` characters (API errors carry whole bodies)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "…"


# ---------------------------------------------------------------------------------------------
# One object of a custom resource


@dataclass(frozen=True)
class CustomResource:
    """Where a kind lives in the API: ``/apis/<group>/<version>/namespaces/<ns>/<plural>``."""

    group: str
    version: str
    plural: str
    kind: str


@dataclass(frozen=True)
class WorkloadRef:
    """One object by kind, namespace and name; ``str()`` is how messages name it."""

    resource: CustomResource
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.resource.kind} {self.namespace}/{self.name}"

    def _where(self) -> tuple[str, str, str, str]:
        return self.resource.group, self.resource.version, self.namespace, self.resource.plural

    def get(self, custom: Any) -> dict[str, Any] | None:
        """The object, or ``None`` when there is none of that name."""
        try:
            return dict(custom.get_namespaced_custom_object(*self._where(), self.name))
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def create(self, custom: Any, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(custom.create_namespaced_custom_object(*self._where(), dict(body)))

    def patch(self, custom: Any, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (the client's default for a dict body on custom objects)."""
        return dict(custom.patch_namespaced_custom_object(*self._where(), self.name, dict(patch)))

    def delete(self, custom: Any) -> bool:
        """Delete the object; False when there was none of that name."""
        try:
            custom.delete_namespaced_custom_object(*self._where(), self.name)
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True


def require_rtune_owner(
    existing: Mapping[str, Any], ref: WorkloadRef, fix: str, run_id: str | None = None
) -> None:
    """Refuse a same-named object rtune did not create (or, given ``run_id``, that another run
    created): adopting it would report someone else's result or overwrite their service."""
    labels = (existing.get("metadata") or {}).get("labels") or {}
    foreign = labels.get(PART_OF_LABEL) != "rtune"
    other_run = run_id is not None and labels.get(RUN_ID_LABEL, "") != run_id
    if foreign or other_run:
        creator = "rtune" if run_id is None else "this rtune run"
        raise RuntimeError(
            f"{ref} exists but was not created by {creator} (labels {dict(labels)}); fix: {fix}"
        )


def create_or_adopt(
    custom: Any,
    ref: WorkloadRef,
    body: Mapping[str, Any],
    check_owner: Callable[[Mapping[str, Any]], None],
) -> tuple[dict[str, Any], bool]:
    """Create ``body``, or adopt the object of that name an earlier attempt created (also when
    it appeared between our look and our create: the API's 409). Returns ``(object, created)``;
    an adopted object passes ``check_owner`` first, which raises to refuse it."""
    existing = ref.get(custom)
    if existing is None:
        try:
            return ref.create(custom, body), True
        except client.ApiException as error:
            if error.status != 409:
                raise
            existing = ref.get(custom)  # created by someone else since our look
            if existing is None:
                raise
    check_owner(existing)
    return existing, False


def merge_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``current`` into ``desired``: changed values,
    ``None`` for keys to remove, nested objects patched key by key, lists replaced whole."""
    patch: dict[str, Any] = {key: None for key in current if key not in desired}
    for key, value in desired.items():
        old = current.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if sub := merge_patch(old, value):
                patch[key] = sub
        elif value != old:
            patch[key] = value
    return patch


# ---------------------------------------------------------------------------------------------
# Reading the controller's status


def conditions(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``status.conditions`` as the controller wrote them (none before its first write)."""
    return list((obj.get("status") or {}).get("conditions") or [])


def true_condition(obj: Mapping[str, Any], condition_type: str) -> dict[str, Any] | None:
    """The condition of that type whose status is "True", if the controller wrote one."""
    for condition in conditions(obj):
        if condition.get("type") == condition_type and condition.get("status") == "True":
            return dict(condition)
    return None


def newest_true_condition(obj: Mapping[str, Any]) -> str:
    """The newest condition type that is True (like ``kubectl get``'s State column), or Pending."""
    current = [c.get("type", "") for c in conditions(obj) if c.get("status") == "True"]
    return current[-1] if current else "Pending"


def describe_conditions(obj: Mapping[str, Any]) -> str:
    """Every condition in one line (``Ready=False (RevisionFailed), …``), for progress messages."""
    parts = [
        f"{c.get('type')}={c.get('status')}" + (f" ({c['reason']})" if c.get("reason") else "")
        for c in conditions(obj)
    ]
    return ", ".join(parts) or "no status yet"


def current_status(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The status, if it describes the object's current generation; ``None`` when it is stale
    (``status.observedGeneration`` < ``metadata.generation``: the controller has not yet seen
    the last spec change, so its Ready or Failed is about the previous spec)."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return None
    return dict(status)


# ---------------------------------------------------------------------------------------------
# Waiting for the verdict


class WorkloadRules(Protocol[T_co]):
    """A kind's own status rules, as :func:`wait_for` asks them."""

    def judge(self, obj: Mapping[str, Any]) -> T_co | None:
        """The result once done; raises the kind's failure; ``None`` while still in progress."""
        ...

    def deleted(self) -> Exception:
        """The error for an object deleted while we waited."""
        ...

    def timed_out(self, timeout_s: float, last: Mapping[str, Any] | None) -> Exception:
        """The error for no verdict within ``timeout_s``; ``last`` is the last object read."""
        ...


@dataclass(frozen=True)
class Polling:
    """How often and how long to wait, and with which clock (tests pass one they move)."""

    timeout_s: float
    interval_s: float = 10.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


class WorkloadDeleted(LookupError):
    """The object is gone (404) while being waited for."""


def poll_workload(custom: Any, ref: WorkloadRef, errors: list[str]) -> dict[str, Any] | None:
    """The object, or ``None`` after a transient API error (recorded in ``errors``, which a good
    read clears); raises after ``MAX_TRANSIENT_ERRORS`` in a row, and ``WorkloadDeleted`` on 404."""
    try:
        obj = ref.get(custom)
    except client.ApiException as error:
        if error.status not in TRANSIENT_STATUS:
            raise
        errors.append(f"HTTP {error.status}")
    except (urllib3.exceptions.HTTPError, OSError) as error:  # connection refused, reset, …
        errors.append(f"{type(error).__name__}: {short_error(error, 120)}")
    else:
        errors.clear()
        if obj is None:
            raise WorkloadDeleted(str(ref))
        return obj
    if len(errors) >= MAX_TRANSIENT_ERRORS:
        raise RuntimeError(f"cannot read {ref}: {errors}")
    return None


def wait_for(
    custom: Any,
    ref: WorkloadRef,
    rules: WorkloadRules[T],
    polling: Polling,
    *,
    current: Mapping[str, Any] | None = None,
    start: float | None = None,
) -> T:
    """Judge the object every ``polling.interval_s`` until ``rules.judge`` gives a result (returned)
    or raises, or until ``polling.timeout_s`` after ``start`` (raises ``rules.timed_out``; the
    object is left as it is). ``current``: an object already read (judged first, no read)."""
    start = polling.clock() if start is None else start
    errors: list[str] = []
    last = current if current is not None else _poll(custom, ref, rules, errors)
    while True:
        if last is not None and (done := rules.judge(last)) is not None:
            return done
        remaining = start + polling.timeout_s - polling.clock()
        if remaining <= 0:
            raise rules.timed_out(polling.timeout_s, last)
        polling.sleep(min(polling.interval_s, remaining))
        last = _poll(custom, ref, rules, errors) or last  # None: a transient error, try again


def _poll(
    custom: Any, ref: WorkloadRef, rules: WorkloadRules[Any], errors: list[str]
) -> dict[str, Any] | None:
    try:
        return poll_workload(custom, ref, errors)
    except WorkloadDeleted:
        raise rules.deleted() from None
