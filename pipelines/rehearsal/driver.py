"""Walk the compiled DAG as the KFP backend does and run every container task as a pod.

Inputs are resolved from the IR bindings (pipeline parameters, upstream outputs, runtime
placeholders, ``ParallelFor`` items, ``dsl.Collected`` lists, an exit handler's final status);
a task whose upstream failed is skipped unless its trigger is "all upstream tasks completed" (the
exit handler). Retries follow the task's ``retryPolicy`` with a fresh pod and the same executor
input; caching follows KFP's fingerprint (image, command, parameter values, input artifact ids).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from rtune.pipelines.rehearsal import launcher
from rtune.pipelines.rehearsal.cluster import (
    KFP_ARTIFACT_SECRET,
    PIPELINE_ROOT,
    Cluster,
    ClusterProblem,
)
from rtune.pipelines.rehearsal.images import UnknownImage, image_facts
from rtune.pipelines.rehearsal.ir import CompiledPipeline, Component, Task, UnsupportedPipeline
from rtune.pipelines.rehearsal.launcher import RuntimeArtifact, TaskOutputs
from rtune.pipelines.rehearsal.pod import run_pod
from rtune.pipelines.rehearsal.report import TaskReport, summarize_access
from rtune.pipelines.rehearsal.taskpod import PodContext, build_pod, needs_workspace
from rtune.pipelines.rehearsal.values import MetadataRejected

PLACEHOLDERS = ("{{$.pipeline_job_uuid}}", "{{$.pipeline_job_name}}", "{{$.pipeline_task_name}}")


class TaskFailed(RuntimeError):
    pass


@dataclass
class Scope:
    parameters: dict[str, Any]
    artifacts: dict[str, list[RuntimeArtifact]]


@dataclass
class RehearsalOptions:
    until: str = ""  # stop after the task with this name (later tasks are not rehearsed)
    kill: Mapping[str, Callable[[], bool]] = field(default_factory=dict)  # task -> kill condition
    task_timeout_s: float = 3600.0
    on_report: Callable[[TaskReport], None] = lambda report: None


@dataclass
class Rehearsal:
    pipeline: CompiledPipeline
    cluster: Cluster
    context: PodContext
    work: Path
    options: RehearsalOptions = field(default_factory=RehearsalOptions)
    reports: list[TaskReport] = field(default_factory=list)
    cache: dict[str, TaskOutputs] = field(default_factory=dict)
    stopped: bool = False

    def run(self, arguments: Mapping[str, Any]) -> list[TaskReport]:
        """Run the pipeline once with ``arguments`` over the compiled defaults."""
        self.reports, self.stopped = [], False
        parameters = {**self.pipeline.defaults(), **arguments}
        self._dag(self.pipeline.root, Scope(parameters, {}), "")
        return self.reports

    # -- DAG -------------------------------------------------------------------------------
    def _dag(
        self, component: Component, scope: Scope, path: str
    ) -> tuple[bool, dict[str, TaskOutputs]]:
        graph = {key: set(task.dependencies) for key, task in component.tasks.items()}
        results: dict[str, TaskOutputs] = {}
        failed: set[str] = set()
        for key in TopologicalSorter(graph).static_order():
            task = component.tasks[key]
            upstream_failed = bool(set(task.dependencies) & failed)
            exit_task = task.trigger_strategy == "ALL_UPSTREAM_TASKS_COMPLETED"
            if self.stopped or (upstream_failed and not exit_task):
                failed.add(key)
                if not self.stopped:
                    self._report(TaskReport(task.display_name, "SKIP", detail="upstream failed"))
                continue
            try:
                results[key] = self._task(task, scope, results, failed, f"{path}{key}")
            except TaskFailed:
                failed.add(key)
        return not failed, results

    def _task(
        self, task: Task, scope: Scope, results: dict[str, TaskOutputs], failed: set[str], path: str
    ) -> TaskOutputs:
        component = self.pipeline.component(task.component)
        parameters = self._parameters(task, scope, results, failed)
        artifacts = self._artifacts(task, scope, results)
        if task.iterator:
            return self._loop(task, component, Scope(parameters, artifacts), path)
        if component.is_dag:
            ok, inner = self._dag(component, Scope(parameters, artifacts), f"{path}/")
            if not ok:
                raise TaskFailed(task.display_name)
            return _dag_outputs(component, inner)
        outputs = self._container(task, component, parameters, artifacts, path)
        if self.options.until and task.display_name == self.options.until:
            self.stopped = True
        return outputs

    def _loop(self, task: Task, component: Component, scope: Scope, path: str) -> TaskOutputs:
        items_from = task.iterator["items"]
        if "inputParameter" in items_from:
            items = scope.parameters[items_from["inputParameter"]]
        else:
            items = json.loads(items_from["raw"])
        collected = TaskOutputs()
        for index, item in enumerate(items):
            inner = Scope({**scope.parameters, task.iterator["itemInput"]: item}, scope.artifacts)
            ok, results = self._dag(component, inner, f"{path}-{index}/")
            if not ok:
                raise TaskFailed(task.display_name)
            outputs = _dag_outputs(component, results)
            for key, listed in outputs.artifacts.items():
                collected.artifacts.setdefault(key, []).extend(listed)
            for key, value in outputs.parameters.items():
                collected.parameters.setdefault(key, []).append(value)
        return collected

    # -- inputs ----------------------------------------------------------------------------
    def _parameters(
        self, task: Task, scope: Scope, results: Mapping[str, TaskOutputs], failed: set[str]
    ) -> dict[str, Any]:
        values = {}
        for name, binding in task.parameters.items():
            if "componentInputParameter" in binding:
                values[name] = scope.parameters.get(binding["componentInputParameter"])
            elif "taskOutputParameter" in binding:
                source = binding["taskOutputParameter"]
                values[name] = results[source["producerTask"]].parameters[
                    source["outputParameterKey"]
                ]
            elif "runtimeValue" in binding:
                values[name] = self._constant(binding["runtimeValue"]["constant"], task)
            elif "taskFinalStatus" in binding:
                producer = binding["taskFinalStatus"]["producerTask"]
                values[name] = {
                    "state": "FAILED" if producer in failed else "COMPLETE",
                    "pipelineJobResourceName": self.context.workflow,
                    "pipelineTaskName": producer,
                    "error": {},
                }
            else:
                raise UnsupportedPipeline(
                    f"{task.key}.{name}: binding {sorted(binding)} not rehearsed"
                )
        return values

    def _constant(self, value: Any, task: Task) -> Any:
        if value == "{{$.pipeline_job_uuid}}":
            return self.context.run_id
        if value == "{{$.pipeline_job_name}}":
            return self.context.workflow
        if value == "{{$.pipeline_task_name}}":
            return task.key
        if isinstance(value, str) and "{{$.workspace_path}}" in value:
            return value.replace("{{$.workspace_path}}", "/kfp-workspace")
        return value

    def _artifacts(
        self, task: Task, scope: Scope, results: Mapping[str, TaskOutputs]
    ) -> dict[str, list[RuntimeArtifact]]:
        found = {}
        for name, binding in task.artifacts.items():
            if "componentInputArtifact" in binding:
                found[name] = scope.artifacts[binding["componentInputArtifact"]]
            elif "taskOutputArtifact" in binding:
                source = binding["taskOutputArtifact"]
                found[name] = results[source["producerTask"]].artifacts[source["outputArtifactKey"]]
            else:
                raise UnsupportedPipeline(f"{task.key}.{name}: artifact binding {sorted(binding)}")
        return found

    # -- one container task ---------------------------------------------------------------
    def _container(
        self,
        task: Task,
        component: Component,
        parameters: dict[str, Any],
        artifacts: dict[str, list[RuntimeArtifact]],
        path: str,
    ) -> TaskOutputs:
        container = self.pipeline.container_of(component)
        key = _fingerprint(container, component, parameters, artifacts)
        if task.caching and key in self.cache:
            self._report(TaskReport(task.display_name, "CACHED", detail="cache hit: not run"))
            return self.cache[key]
        outputs = launcher.provision_outputs(
            component, PIPELINE_ROOT, self.pipeline.name, self.context.run_id, task.key, 0
        )
        executor = launcher.executor_input(component, parameters, artifacts, outputs)
        command = launcher.substitute_command([*container.command, *container.args], executor)
        report = TaskReport(task.display_name, "FAIL")
        started = time.monotonic()
        for attempt in range(task.max_retries + 1):
            report.attempts = attempt + 1
            result = self._attempt(
                task, component, container, command, artifacts, outputs, attempt, report, path
            )
            if result is not None:
                report.status, report.seconds = "PASS", time.monotonic() - started
                self._report(report)
                if task.caching:
                    self.cache[key] = result
                return result
        report.seconds = time.monotonic() - started
        self._report(report)
        raise TaskFailed(task.display_name)

    def _attempt(
        self,
        task: Task,
        component: Component,
        container: Any,
        command: list[str],
        artifacts: Mapping[str, list[RuntimeArtifact]],
        outputs: launcher.ProvisionedOutputs,
        attempt: int,
        report: TaskReport,
        path: str,
    ) -> TaskOutputs | None:
        attempt_dir = self.work / "tasks" / path.replace("/", "_") / f"attempt-{attempt}"
        try:
            image = image_facts(container.image)
            spec = build_pod(
                task.key, image, container, self.pipeline.platform_of(component), command,
                self.cluster, self.context, attempt, task.max_retries > 0,
                needs_workspace(task.parameters),
            )  # fmt: skip
        except (ClusterProblem, UnknownImage) as problem:
            report.detail = str(problem)
            return None
        refused = self._launcher_refused()
        if refused:
            report.detail = refused
            return None
        mapping = _container_paths(attempt_dir, image.env.get("HOME", "/"), spec.mounts)
        store = self.cluster.store
        assert store is not None
        launcher_client = store.client("kfp-artifacts")
        _download_inputs(launcher_client, artifacts, mapping)
        _prepare_output_folders(outputs, mapping, image.uid, image.gid)
        mark = len(store.accesses)
        kill = self.options.kill.get(task.display_name) if attempt == 0 else None
        result = run_pod(spec, attempt_dir, self.options.task_timeout_s, kill)
        report.log = result.log
        report.reads, report.writes = summarize_access(store.accesses_since(mark), "rtune")
        if not result.succeeded:
            report.detail = (
                "killed; " if result.killed else f"exit {result.exit_code}; "
            ) + result.tail(12)
            return None
        try:
            values, metadata = launcher.read_outputs(component, outputs, mapping)
            recorded = launcher.record_artifacts(outputs, metadata)
        except (FileNotFoundError, MetadataRejected) as problem:
            report.detail = str(problem)
            return None
        _upload_outputs(launcher_client, outputs, mapping)
        report.outputs = [a.uri for listed in recorded.values() for a in listed]
        report.detail = ""
        return TaskOutputs(values, recorded)

    def _launcher_refused(self) -> str:
        """KFP's launcher reads the artifact store's Secret with the run's own identity."""
        from rtune.pipelines.rehearsal.rbac import Attributes, allowed

        kube, sa_dir = self.cluster.kube, self.context.service_account_dir
        if kube is None or sa_dir is None:
            return ""
        subject, grants = kube.accounts[(sa_dir / "token").read_text()]
        need = Attributes("get", "", "secrets", self.cluster.namespace, KFP_ARTIFACT_SECRET)
        if allowed(grants, need):
            return ""
        return (
            f"KFP launcher: secrets {KFP_ARTIFACT_SECRET!r} is forbidden: {need.describe(subject)}"
        )

    def _report(self, report: TaskReport) -> None:
        self.reports.append(report)
        self.options.on_report(report)


def _dag_outputs(component: Component, results: Mapping[str, TaskOutputs]) -> TaskOutputs:
    outputs = TaskOutputs()
    for key, spec in component.dag_outputs.get("artifacts", {}).items():
        for selector in spec.get("artifactSelectors", []):
            produced = results[selector["producerSubtask"]].artifacts[selector["outputArtifactKey"]]
            outputs.artifacts.setdefault(key, []).extend(produced)
    for key, spec in component.dag_outputs.get("parameters", {}).items():
        source = spec["valueFromParameter"]
        outputs.parameters[key] = results[source["producerSubtask"]].parameters[
            source["outputParameterKey"]
        ]
    return outputs


def _fingerprint(
    container: Any,
    component: Component,
    parameters: Mapping[str, Any],
    artifacts: Mapping[str, list[RuntimeArtifact]],
) -> str:
    """KFP's cache key: image, raw command+args, parameter values, input artifact ids, outputs."""
    key = {
        "image": container.image,
        "command": [*container.command, *container.args],
        "parameters": parameters,
        "artifacts": {name: [a.id for a in listed] for name, listed in artifacts.items()},
        "outputs": sorted(component.output_artifacts),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _container_paths(attempt_dir: Path, home: str, mounts: list[Any]) -> Callable[[str], Path]:
    """Map a path inside the pod to the host folder that backs it in this attempt."""
    table = [("/tmp", attempt_dir / "tmp"), (home, attempt_dir / "home")]
    table += [(p, attempt_dir / "scratch" / p.strip("/")) for p in ("/s3", "/minio", "/gcs")]
    table += [(m.target, m.source) for m in mounts if m.source.is_absolute() and not m.tmpfs_size]

    def host(path: str) -> Path:
        for prefix, source in sorted(table, key=lambda item: -len(item[0])):
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return source / path[len(prefix) :].lstrip("/")
        raise ValueError(f"{path} is not on a writable volume of the pod")

    return host


def _download_inputs(
    client: Any, artifacts: Mapping[str, list[RuntimeArtifact]], host: Callable[[str], Path]
) -> None:
    for listed in artifacts.values():
        for artifact in listed:
            bucket, key = launcher.split_uri(artifact.uri)
            target = host(launcher.local_path(artifact.uri))
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            for page in pages:
                for obj in page.get("Contents", []):
                    relative = obj["Key"][len(key) :].lstrip("/")
                    destination = target / relative if relative else target
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(bucket, obj["Key"], str(destination))


def _prepare_output_folders(
    outputs: launcher.ProvisionedOutputs, host: Callable[[str], Path], uid: int, gid: int
) -> None:
    import os

    paths = [launcher.local_path(a.uri) for a in outputs.artifacts.values()]
    paths += [*outputs.parameters.values(), outputs.output_file]
    for path in paths:
        folder = host(path).parent
        folder.mkdir(parents=True, exist_ok=True)
        for parent in [folder, *folder.parents]:
            if parent.name in ("tmp", "minio", "s3", "gcs"):
                break
            os.chown(parent, uid, gid)


def _upload_outputs(
    client: Any, outputs: launcher.ProvisionedOutputs, host: Callable[[str], Path]
) -> None:
    for artifact in outputs.artifacts.values():
        source = host(launcher.local_path(artifact.uri))
        if not source.exists():
            continue  # the launcher only warns (a Metrics artifact has no file)
        bucket, key = launcher.split_uri(artifact.uri)
        for path, relative in launcher.artifact_files(source):
            client.upload_file(str(path), bucket, f"{key}/{relative}".rstrip("/"))


def last_error(tail: str) -> str:
    """The line that says what went wrong: the last exception line of a traceback, if any."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    errors = [line for line in lines if ("Error" in line or "Exception" in line) and ":" in line]
    return (errors or lines or [""])[-1]


def new_run_id() -> str:
    return str(uuid.uuid4())
