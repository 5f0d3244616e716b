"""Submit the pipeline to a Kubeflow Pipelines cluster and follow the run (``rtune submit``).

    client = KfpClient(host, token=...)
    submission = submit(client, SubmitRequest(load_run_config("pipelines/configs/llama3-8b.yaml")))
    print(submission.run_url)                      # {host}/#/runs/details/{run_id}
    run = wait_for_run(client, submission.run.id, timeout_s=86400)

``submit`` compiles the IR exactly as ``rtune compile`` does (config values as defaults, images
overridable), asks the backend what it is (``check_backend``), uploads the IR as a version of
pipeline ``reflection-tuning`` (creating the pipeline on first use), finds or creates the
experiment, and starts a run whose parameters are the config's ``pipeline_arguments()``. The
version name is content addressed (``packaging.content_version_name``, the same name the Kubernetes
manifest uses), so a changed pipeline or config becomes a new version and resubmitting an unchanged
one reuses the version already uploaded instead of failing on a duplicate name.

Nothing is written before ``check_backend`` passed: the backend must be Kubeflow Pipelines >= 2.5
(the compiled pipeline collects artifacts with ``dsl.Collected`` and uses the job-id placeholder),
and a multi-user backend needs a namespace (``--namespace``, else the pod's own) - without one the
shared pipeline would be created and the experiment then refused. Two submits racing for the same
pipeline, version or experiment both succeed: a 409 is answered by looking the object up again.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from rtune.pipelines.config import RunConfig
from rtune.pipelines.kfp_rest import (
    Experiment,
    KfpClient,
    KfpConflict,
    KfpError,
    KfpUnavailable,
    Pipeline,
    PipelineVersion,
    Run,
)
from rtune.pipelines.packaging import Images, compile_ir, content_version_name

DEFAULT_EXPERIMENT = "reflection-tuning"
MIN_BACKEND = (2, 5)
MIN_BACKEND_WHY = "dsl.Collected of artifacts, the job-id placeholder"
POD_NAMESPACE_ENV = "RTUNE_POD_NAMESPACE_PATH"
DEFAULT_POD_NAMESPACE_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
MAX_BACKOFF_S = 300.0
T = TypeVar("T")


@dataclass(frozen=True)
class SubmitRequest:
    config: RunConfig
    experiment: str = DEFAULT_EXPERIMENT
    namespace: str = ""
    images: Images = field(default_factory=Images)
    run_name: str = ""
    service_account: str = ""


@dataclass(frozen=True)
class Backend:
    """What ``check_backend`` learnt: the release, the mode, and the namespace runs go to."""

    tag_name: str
    multi_user: bool
    namespace: str  # "" in single-user mode
    pipeline_store: str = ""
    version_known: bool = True

    def line(self) -> str:
        mode = f"multi-user, namespace {self.namespace}" if self.multi_user else "single-user"
        store = f", {self.pipeline_store} pipeline store" if self.pipeline_store else ""
        if not self.version_known:
            needs = ".".join(map(str, MIN_BACKEND))
            return (
                f"Kubeflow Pipelines version unknown (healthz tag_name {self.tag_name!r}; the "
                f"pipeline needs >= {needs}), {mode}{store}"
            )
        return f"Kubeflow Pipelines {self.tag_name} ({mode}{store})"


@dataclass(frozen=True)
class Submission:
    backend: Backend
    pipeline: Pipeline
    version: PipelineVersion
    version_uploaded: bool  # False: this exact pipeline was uploaded before and is reused
    experiment: Experiment
    run: Run
    run_url: str


def run_url(host: str, run_id: str) -> str:
    """Where the run shows in the Kubeflow Pipelines UI."""
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def default_run_name(config: RunConfig, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"reflection-tuning {Path(config.source).stem} {stamp}"


def backend_version(tag_name: str) -> tuple[int, ...] | None:
    """``2.17.0`` / ``v2.5.0`` / ``2.14.0-rc.1`` -> (major, minor, patch); ``unknown`` -> None."""
    found = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", tag_name.strip())
    return tuple(int(part or 0) for part in found.groups()) if found else None


def pod_namespace(env: dict[str, str] | None = None) -> str:
    """The namespace of the pod's service account ("" outside a pod): where a run submitted from
    a notebook or a pipeline step of a profile belongs."""
    env = dict(os.environ) if env is None else env
    path = Path(env.get(POD_NAMESPACE_ENV) or DEFAULT_POD_NAMESPACE_PATH)
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def check_backend(client: KfpClient, namespace: str, in_pod_namespace: str = "") -> Backend:
    """Ask ``/healthz`` what the backend is, before anything is written: refuse a release older
    than ``MIN_BACKEND`` and a multi-user backend without a namespace."""
    health = client.health()
    version = backend_version(health.tag_name)
    needs = ".".join(map(str, MIN_BACKEND))
    if version is not None and version[:2] < MIN_BACKEND:
        raise KfpError(
            client.host,
            f"Kubeflow Pipelines {health.tag_name} is too old: the compiled pipeline needs "
            f">= {needs} ({MIN_BACKEND_WHY})",
            f"upgrade Kubeflow Pipelines to {needs} or newer (2.17 matches the kfp SDK rtune "
            "compiles with)",
        )
    chosen = (namespace or in_pod_namespace) if health.multi_user else ""
    if health.multi_user and not chosen:
        raise KfpError(
            client.host,
            "Kubeflow Pipelines runs multi-user: pipelines, experiments and runs belong to a "
            "profile namespace, and none was given",
            "pass --namespace <your profile namespace> (inside a pod of the profile it is taken "
            f"from {DEFAULT_POD_NAMESPACE_PATH})",
        )
    return Backend(
        health.tag_name, health.multi_user, chosen, health.pipeline_store, version is not None
    )


def find_or_create(find: Callable[[], T | None], create: Callable[[], T]) -> tuple[T, bool]:
    """The object ``find`` returns, else the one ``create`` makes (and True). A 409 means another
    submit created it since we looked: look again rather than fail."""
    found = find()
    if found is not None:
        return found, False
    try:
        return create(), True
    except KfpConflict:
        found = find()
        if found is None:
            raise
        return found, False


def submit(client: KfpClient, request: SubmitRequest, in_pod_namespace: str = "") -> Submission:
    """Compile, check the backend, upload (or reuse) the version, find/create the experiment,
    start the run."""
    from rtune.pipelines.reflection_tuning import PIPELINE_NAME

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_ir(request.config, Path(tmp) / "reflection_tuning.yaml", request.images)
        version_name = content_version_name(package, PIPELINE_NAME)
        backend = check_backend(client, request.namespace, in_pod_namespace)
        namespace = backend.namespace
        description = "Selective Reflection-Tuning (uploaded by rtune submit)"
        pipeline, _ = find_or_create(
            lambda: client.find_pipeline(PIPELINE_NAME, namespace),
            lambda: client.create_pipeline(PIPELINE_NAME, description, namespace),
        )
        version, uploaded = find_or_create(
            lambda: client.find_pipeline_version(pipeline.id, version_name),
            lambda: client.upload_pipeline_version(pipeline.id, version_name, package),
        )
    experiment, _ = find_or_create(
        lambda: client.find_experiment(request.experiment, namespace),
        lambda: client.create_experiment(request.experiment, namespace),
    )
    run = client.create_run(
        request.run_name or default_run_name(request.config),
        experiment.id,
        version,
        request.config.pipeline_arguments(),
        request.service_account,
    )
    url = run_url(client.host, run.id)
    return Submission(backend, pipeline, version, uploaded, experiment, run, url)


def wait_for_run(
    client: KfpClient,
    run_id: str,
    timeout_s: float,
    poll_s: float = 10.0,
    on_state: Callable[[Run], None] | None = None,
    on_retry: Callable[[KfpUnavailable, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Run:
    """Poll until the run is final or ``timeout_s`` passed; returns the last state seen
    (``run.finished`` is False on timeout). ``on_state`` hears every change of state.

    The API going away for a while (an API server restart behind the gateway: 502/503/504 or a
    dropped connection) does not end the wait: the n-th failure in a row is retried after
    ``poll_s * 2**(n-1)`` seconds, capped at ``MAX_BACKOFF_S`` and at the deadline, and
    ``on_retry(error, delay)`` hears it. Still failing at the deadline: the error is raised."""
    deadline = clock() + timeout_s
    last_state = ""
    failures = 0
    while True:
        try:
            run = client.get_run(run_id)
        except KfpUnavailable as err:
            if clock() >= deadline:
                raise
            failures += 1
            backoff = min(poll_s * 2 ** (failures - 1), max(MAX_BACKOFF_S, poll_s))
            delay = min(backoff, deadline - clock())
            if on_retry is not None:
                on_retry(err, delay)
            sleep(delay)
            continue
        failures = 0
        if run.state != last_state and on_state is not None:
            on_state(run)
        last_state = run.state
        if run.finished or clock() >= deadline:
            return run
        sleep(min(poll_s, max(0.0, deadline - clock())))
