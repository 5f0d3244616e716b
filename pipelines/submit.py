"""Submit the pipeline to a Kubeflow Pipelines cluster and follow the run (``rtune submit``).

    client = KfpClient(host, token=...)
    submission = submit(client, SubmitRequest(load_run_config("pipelines/configs/llama3-8b.yaml")))
    print(submission.run_url)                      # {host}/#/runs/details/{run_id}
    run = wait_for_run(client, submission.run.id, timeout_s=86400)

``submit`` compiles the IR exactly as ``rtune compile`` does (config values as defaults, images
overridable), uploads it as a version of pipeline ``reflection-tuning`` (creating the pipeline on
first use), finds or creates the experiment, and starts a run whose parameters are the config's
``pipeline_arguments()``. The version name is content addressed (``packaging.content_version_name``,
the same name the Kubernetes manifest uses), so a changed pipeline or config becomes a new version
and resubmitting an unchanged one reuses the version already uploaded instead of failing on a
duplicate name.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rtune.pipelines.config import RunConfig
from rtune.pipelines.kfp_rest import Experiment, KfpClient, Pipeline, PipelineVersion, Run
from rtune.pipelines.packaging import Images, compile_ir, content_version_name

DEFAULT_EXPERIMENT = "reflection-tuning"


@dataclass(frozen=True)
class SubmitRequest:
    config: RunConfig
    experiment: str = DEFAULT_EXPERIMENT
    namespace: str = ""
    images: Images = field(default_factory=Images)
    run_name: str = ""
    service_account: str = ""


@dataclass(frozen=True)
class Submission:
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


def submit(client: KfpClient, request: SubmitRequest) -> Submission:
    """Compile, upload (or reuse) the version, find/create the experiment, start the run."""
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_ir(request.config, Path(tmp) / "reflection_tuning.yaml", request.images)
        from rtune.pipelines.reflection_tuning import PIPELINE_NAME

        version_name = content_version_name(package, PIPELINE_NAME)
        pipeline = client.find_pipeline(PIPELINE_NAME, request.namespace)
        if pipeline is None:
            description = "Selective Reflection-Tuning (uploaded by rtune submit)"
            pipeline = client.create_pipeline(PIPELINE_NAME, description, request.namespace)
        version = client.find_pipeline_version(pipeline.id, version_name)
        uploaded = version is None
        if version is None:
            version = client.upload_pipeline_version(pipeline.id, version_name, package)
    experiment = client.find_experiment(request.experiment, request.namespace)
    if experiment is None:
        experiment = client.create_experiment(request.experiment, request.namespace)
    run = client.create_run(
        request.run_name or default_run_name(request.config),
        experiment.id,
        version,
        request.config.pipeline_arguments(),
        request.service_account,
    )
    return Submission(pipeline, version, uploaded, experiment, run, run_url(client.host, run.id))


def wait_for_run(
    client: KfpClient,
    run_id: str,
    timeout_s: float,
    poll_s: float = 10.0,
    on_state: Callable[[Run], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Run:
    """Poll until the run is final or ``timeout_s`` passed; returns the last state seen
    (``run.finished`` is False on timeout). ``on_state`` hears every change of state."""
    deadline = clock() + timeout_s
    last_state = ""
    while True:
        run = client.get_run(run_id)
        if run.state != last_state and on_state is not None:
            on_state(run)
        last_state = run.state
        if run.finished or clock() >= deadline:
            return run
        sleep(min(poll_s, max(0.0, deadline - clock())))
