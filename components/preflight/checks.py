"""Preflight: what a cluster run needs, checked in seconds before any GPU is asked for.

Each check returns a :class:`Finding` (ok, or the problem and its fix). The preflight stage runs
them all, prints one line each, and fails with every problem at once — a missing Secret key, an
unreachable teacher or MLflow, an object store that refuses a write, a checkpoint volume that is
not writable, a custom resource the cluster does not have (or the run's identity may not use).
Nothing here holds a secret's value in a message.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        fix = f"  fix: {self.fix}" if self.fix and not self.ok else ""
        return f"{mark} {self.check}: {self.detail}{fix}"


def guarded(check: str, probe: Callable[[], Finding]) -> Finding:
    """A probe that raised is a failed check with the error's own words, not a traceback."""
    try:
        return probe()
    except Exception as error:
        return Finding(check, False, f"{type(error).__name__}: {error}")


def env_present(names: list[str], check: str, secret: str) -> Finding:
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        return Finding(
            check,
            False,
            f"{', '.join(missing)} not set in the pod",
            f"create the Secret {secret!r} with those keys in the run's namespace",
        )
    return Finding(check, True, f"{', '.join(names)} present (from Secret {secret!r})")


def http_reachable(check: str, url: str, headers: dict[str, str] | None = None) -> Finding:
    import requests

    started = time.monotonic()
    reply = requests.get(url, headers=headers or {}, timeout=10)
    seconds = time.monotonic() - started
    if reply.status_code in (401, 403):
        return Finding(check, False, f"{url} refused the key (HTTP {reply.status_code})",
                       "check the key in the Secret")  # fmt: skip
    if reply.status_code >= 400:
        return Finding(check, False, f"{url} answered HTTP {reply.status_code}")
    return Finding(check, True, f"{url} answered in {seconds:.2f} s")


def object_store_writable(check: str, prefix: str) -> Finding:
    """Write, read back and delete one small object under ``prefix``."""
    from rtune.components.common.storage import s3_client, split_s3

    bucket, key = split_s3(prefix.rstrip("/") + f"/.rtune-preflight-{uuid.uuid4().hex[:8]}")
    client = s3_client()
    client.put_object(Bucket=bucket, Key=key, Body=b"preflight")
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.delete_object(Bucket=bucket, Key=key)
    if body != b"preflight":
        return Finding(check, False, f"s3://{bucket}/{key} read back other bytes")
    return Finding(check, True, f"wrote, read and deleted an object in s3://{bucket}")


def folder_writable(check: str, folder: str) -> Finding:
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".rtune-preflight-{uuid.uuid4().hex[:8]}"
        probe.write_text("preflight", encoding="utf-8")
        probe.unlink()
    except OSError as error:
        return Finding(
            check,
            False,
            f"{folder} is not writable by UID {os.getuid()} ({error.strerror})",
            "mount the work volume there (cluster.work_volume) or set checkpoint_root under it",
        )
    return Finding(check, True, f"{folder} is writable")


def custom_resource_usable(check: str, group: str, version: str, plural: str) -> Finding:
    """List the resource in the pod's namespace: 404 = not installed, 403 = not allowed."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from rtune.components.common.k8s_workload import load_api_client, pod_namespace

    namespace = pod_namespace()
    api = client.CustomObjectsApi(load_api_client())
    try:
        api.list_namespaced_custom_object(group, version, namespace, plural, limit=1)
    except ApiException as error:
        if error.status == 404:
            return Finding(check, False, f"{plural}.{group} is not installed on the cluster",
                           f"install the operator that provides {plural}.{group}")  # fmt: skip
        if error.status == 403:
            return Finding(
                check,
                False,
                f"the run's service account may not list {plural}.{group} in {namespace}",
                "bind the rtune Role to the run's service account (manifests/)",
            )
        raise
    return Finding(check, True, f"{plural}.{group} usable in namespace {namespace}")


def summarize(findings: list[Finding]) -> tuple[bool, str]:
    failed = [f for f in findings if not f.ok]
    if failed:
        return False, f"preflight: {len(failed)} of {len(findings)} checks failed"
    if not findings:  # a local run: no Secrets, endpoints or volumes to check
        return True, "preflight: nothing to check (no cluster settings in this run)"
    return True, f"preflight: all {len(findings)} checks passed"


def describe(findings: list[Finding]) -> str:
    return "\n".join(f.line() for f in findings)
