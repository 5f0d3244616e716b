"""The compiled pipeline (KFP IR YAML + Kubernetes platform spec) as typed, read-only data.

Only what a backend needs to run it: components (a DAG or an executor), the tasks of each DAG
with their input bindings, the executors' containers and each executor's platform config. The
rest of the IR stays in ``raw`` fields for the few places that need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class UnsupportedPipeline(ValueError):
    """The IR uses a feature the rehearsal does not play (named, so the gap is visible)."""


@dataclass(frozen=True)
class Container:
    """An executor's container as compiled: image, command, args, env, resources."""

    image: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: Mapping[str, str]
    resources: Mapping[str, Any]

    @property
    def accelerators(self) -> int:
        accelerator = self.resources.get("accelerator") or {}
        count = accelerator.get("resourceCount") or accelerator.get("count") or 0
        return int(count)


@dataclass(frozen=True)
class Task:
    """One task of a DAG: which component it runs and where each of its inputs comes from."""

    key: str
    display_name: str
    component: str
    parameters: Mapping[str, Any]
    artifacts: Mapping[str, Any]
    dependencies: tuple[str, ...]
    caching: bool
    retry: Mapping[str, Any]
    trigger_strategy: str
    iterator: Mapping[str, Any]

    @property
    def max_retries(self) -> int:
        return int(self.retry.get("maxRetryCount", 0))


@dataclass(frozen=True)
class Component:
    """A component: its input/output definitions and either a DAG or an executor label."""

    name: str
    input_parameters: Mapping[str, Any]
    input_artifacts: Mapping[str, Any]
    output_parameters: Mapping[str, Any]
    output_artifacts: Mapping[str, Any]
    tasks: Mapping[str, Task] = field(default_factory=dict)
    dag_outputs: Mapping[str, Any] = field(default_factory=dict)
    executor: str = ""

    @property
    def is_dag(self) -> bool:
        return not self.executor


@dataclass(frozen=True)
class CompiledPipeline:
    name: str
    root: Component
    components: Mapping[str, Component]
    containers: Mapping[str, Container]
    platform: Mapping[str, Mapping[str, Any]]  # executor label -> kubernetes executor config
    pipeline_config: Mapping[str, Any]
    source: str

    def component(self, name: str) -> Component:
        return self.components[name]

    def container_of(self, component: Component) -> Container:
        return self.containers[component.executor]

    def platform_of(self, component: Component) -> Mapping[str, Any]:
        return self.platform.get(component.executor, {})

    def defaults(self) -> dict[str, Any]:
        """The pipeline parameters' compiled defaults (the run form's values)."""
        return {
            name: spec["defaultValue"]
            for name, spec in self.root.input_parameters.items()
            if "defaultValue" in spec
        }


def load_compiled(path: str | Path) -> CompiledPipeline:
    """Read a compiled pipeline: the IR document and, when present, its platform-spec document."""
    path = Path(path)
    documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    if not documents or "root" not in documents[0]:
        raise UnsupportedPipeline(f"{path}: not a KFP IR pipeline (no 'root' DAG)")
    spec = documents[0]
    kubernetes = next(
        (doc["platforms"]["kubernetes"] for doc in documents[1:] if "platforms" in doc), {}
    )
    components = {name: _component(name, body) for name, body in spec["components"].items()}
    containers = {
        label: _container(body["container"])
        for label, body in spec["deploymentSpec"]["executors"].items()
        if "container" in body
    }
    for label, body in spec["deploymentSpec"]["executors"].items():
        if "container" not in body:
            raise UnsupportedPipeline(f"{path}: executor {label} is not a container ({list(body)})")
    return CompiledPipeline(
        name=spec["pipelineInfo"]["name"],
        root=_component("root", spec["root"]),
        components=components,
        containers=containers,
        platform=kubernetes.get("deploymentSpec", {}).get("executors", {}),
        pipeline_config=kubernetes.get("pipelineConfig", {}),
        source=str(path),
    )


def _component(name: str, body: Mapping[str, Any]) -> Component:
    inputs = body.get("inputDefinitions", {})
    outputs = body.get("outputDefinitions", {})
    dag = body.get("dag", {})
    return Component(
        name=name,
        input_parameters=inputs.get("parameters", {}),
        input_artifacts=inputs.get("artifacts", {}),
        output_parameters=outputs.get("parameters", {}),
        output_artifacts=outputs.get("artifacts", {}),
        tasks={key: _task(key, task) for key, task in dag.get("tasks", {}).items()},
        dag_outputs=dag.get("outputs", {}),
        executor=body.get("executorLabel", ""),
    )


def _task(key: str, body: Mapping[str, Any]) -> Task:
    if "conditions" in body.get("triggerPolicy", {}) or "condition" in body.get(
        "triggerPolicy", {}
    ):
        raise UnsupportedPipeline(f"task {key}: dsl.If/Condition is not rehearsed yet")
    if "artifactIterator" in body:
        raise UnsupportedPipeline(f"task {key}: ParallelFor over artifacts is not rehearsed")
    inputs = body.get("inputs", {})
    return Task(
        key=key,
        display_name=body.get("taskInfo", {}).get("name", key),
        component=body["componentRef"]["name"],
        parameters=inputs.get("parameters", {}),
        artifacts=inputs.get("artifacts", {}),
        dependencies=tuple(body.get("dependentTasks", [])),
        caching=bool(body.get("cachingOptions", {}).get("enableCache", False)),
        retry=body.get("retryPolicy", {}),
        trigger_strategy=body.get("triggerPolicy", {}).get("strategy", ""),
        iterator=body.get("parameterIterator", {}),
    )


def _container(body: Mapping[str, Any]) -> Container:
    env = {item["name"]: str(item.get("value", "")) for item in body.get("env", [])}
    return Container(
        image=body["image"],
        command=tuple(body.get("command", [])),
        args=tuple(body.get("args", [])),
        env=env,
        resources=body.get("resources", {}),
    )
