"""The KFP launcher's part of a task: executor input in, artifacts down, the pod run, outputs up.

Shapes follow the KFP v2 backend (driver ``provisionOutputs``/``resolveInputs``, launcher
``executeV2``): output URIs ``<root>/<pipeline>/<run>/<task>/<uuid>/<output>``; local paths
``/minio/<bucket>/<key>`` (``s3://`` -> ``/s3/``); output parameters read from
``output_metadata.json`` or ``/tmp/kfp/outputs/<name>``; input artifacts carry their ML Metadata id
as ``name``, an empty ``instanceSchema`` and the metadata as ML Metadata returns it; optional
parameters with a default are filled in; every number arrives as protojson prints it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

from rtune.pipelines.rehearsal.ir import Component
from rtune.pipelines.rehearsal.values import mlmd_metadata, protojson_value

OUTPUT_PARAMETER_DIR = "/tmp/kfp/outputs"
SCHEMES = {"minio://": "/minio/", "s3://": "/s3/", "gs://": "/gcs/"}
_artifact_ids = count(1000)


@dataclass
class RuntimeArtifact:
    """An artifact as ML Metadata holds it after the producing task: id, uri, metadata."""

    id: str
    key: str
    schema_title: str
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_input(self) -> dict[str, Any]:
        return {
            "name": self.id,
            "type": {"instanceSchema": ""},
            "uri": self.uri,
            "metadata": {"display_name": self.key, **self.metadata},
        }


@dataclass
class TaskOutputs:
    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, list[RuntimeArtifact]] = field(default_factory=dict)


def local_path(uri: str) -> str:
    """Where the launcher puts an artifact inside the container."""
    for scheme, mount in SCHEMES.items():
        if uri.startswith(scheme):
            return mount + uri[len(scheme) :]
    raise ValueError(f"artifact URI {uri!r} has no local mapping (gs://, s3://, minio:// only)")


def split_uri(uri: str) -> tuple[str, str]:
    scheme = next(s for s in SCHEMES if uri.startswith(s))
    bucket, _, key = uri[len(scheme) :].partition("/")
    return bucket, key


@dataclass
class ProvisionedOutputs:
    task_root: str
    artifacts: dict[str, RuntimeArtifact]
    parameters: dict[str, str]

    @property
    def output_file(self) -> str:
        return local_path(self.task_root) + "/output_metadata.json"


def provision_outputs(
    component: Component, pipeline_root: str, pipeline: str, run_id: str, task: str, retry: int
) -> ProvisionedOutputs:
    """Output URIs under a fresh ``<task>/<uuid>`` folder of the run, plus ``executor-logs``."""
    task_root = f"{pipeline_root.rstrip('/')}/{pipeline}/{run_id}/{task}/{uuid.uuid4()}"
    artifacts = {
        key: RuntimeArtifact("", key, spec["artifactType"]["schemaTitle"], f"{task_root}/{key}")
        for key, spec in component.output_artifacts.items()
    }
    artifacts["executor-logs"] = RuntimeArtifact(
        "", "executor-logs", "system.Artifact", f"{task_root}/executor-logs-{retry}"
    )
    parameters = {key: f"{OUTPUT_PARAMETER_DIR}/{key}" for key in component.output_parameters}
    return ProvisionedOutputs(task_root, artifacts, parameters)


def executor_input(
    component: Component,
    parameters: Mapping[str, Any],
    artifacts: Mapping[str, list[RuntimeArtifact]],
    outputs: ProvisionedOutputs,
) -> dict[str, Any]:
    """The ``--executor_input`` JSON the launcher substitutes for ``{{$}}``."""
    values = {}
    for name, spec in component.input_parameters.items():
        if name in parameters and parameters[name] is not None:
            values[name] = protojson_value(parameters[name])
        elif "defaultValue" in spec:
            values[name] = protojson_value(spec["defaultValue"])
        elif not spec.get("isOptional"):
            raise ValueError(f"input parameter {name!r} has no value")
    return {
        "inputs": {
            "parameterValues": values,
            "artifacts": {
                name: {"artifacts": [artifact.as_input() for artifact in listed]}
                for name, listed in artifacts.items()
            },
        },
        "outputs": {
            "artifacts": {
                key: {
                    "artifacts": [
                        {
                            "name": key,
                            "type": {
                                "schemaTitle": artifact.schema_title,
                                "schemaVersion": "0.0.1",
                            },
                            "uri": artifact.uri,
                        }
                    ]
                }
                for key, artifact in outputs.artifacts.items()
            },
            "parameters": {key: {"outputFile": path} for key, path in outputs.parameters.items()},
            "outputFile": outputs.output_file,
        },
    }


def substitute_command(command: list[str], executor: dict[str, Any]) -> list[str]:
    """The container command with ``{{$}}`` replaced, as the launcher does before ``exec``."""
    text = json.dumps(executor)
    return [part.replace("{{$}}", text) for part in command]


def read_outputs(
    component: Component, outputs: ProvisionedOutputs, container_path: Any
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Output parameters and per-artifact metadata written by the executor.

    ``container_path(path)`` maps a path inside the container to the host folder that backs it.
    """
    output_file = Path(container_path(outputs.output_file))
    executor_output = (
        json.loads(output_file.read_text(encoding="utf-8")) if output_file.exists() else {}
    )
    parameters = dict(executor_output.get("parameterValues", {}))
    for key, path in outputs.parameters.items():
        if key in parameters:
            continue
        file = Path(container_path(path))
        if not file.exists():
            raise FileNotFoundError(f"output parameter {key!r}: {path} was not written")
        parameters[key] = _typed(file.read_text(encoding="utf-8"), component.output_parameters[key])
    metadata = {
        key: dict((entry.get("artifacts") or [{}])[0].get("metadata") or {})
        for key, entry in executor_output.get("artifacts", {}).items()
    }
    return parameters, metadata


def _typed(text: str, spec: Mapping[str, Any]) -> Any:
    kind = spec.get("parameterType", "STRING")
    if kind == "STRING":
        return text
    if kind == "NUMBER_INTEGER":
        return int(text)
    if kind == "NUMBER_DOUBLE":
        return float(text)
    if kind == "BOOLEAN":
        return text.strip().lower() == "true"
    return json.loads(text)


def record_artifacts(
    outputs: ProvisionedOutputs, metadata: Mapping[str, Mapping[str, Any]]
) -> dict[str, list[RuntimeArtifact]]:
    """The task's output artifacts as ML Metadata records them (new ids, converted metadata)."""
    recorded = {}
    for key, artifact in outputs.artifacts.items():
        if key == "executor-logs":
            continue
        given = metadata.get(key, {})
        recorded[key] = [
            RuntimeArtifact(
                str(next(_artifact_ids)),
                key,
                artifact.schema_title,
                artifact.uri,
                mlmd_metadata(given, key),
            )
        ]
    return recorded


def artifact_files(host_root: Path) -> Iterator[tuple[Path, str]]:
    """Files under an artifact's local path (a file artifact is itself), with relative keys."""
    if host_root.is_file():
        yield host_root, ""
        return
    for path in sorted(p for p in host_root.rglob("*") if p.is_file()):
        yield path, path.relative_to(host_root).as_posix()
