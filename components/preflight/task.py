"""The preflight stage: every check the run config calls for, one line each, all problems at once.

What is checked follows from the config: S3 credentials and a write to each model store when any
setting is an ``s3://`` URI; the teacher's (and a separate judge's) ``/v1/models`` with its key
when it is served; MLflow's ``/health`` when tracking goes to a server; the checkpoint folder
when one is set; the custom resources the launchers and the serving backend create (TrainJob,
PyTorchJob, InferenceService) when they are used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rtune.components.common.config import from_dict
from rtune.components.common.stage import StageContext
from rtune.components.common.tracking import TrackingConfig
from rtune.components.preflight import checks
from rtune.components.preflight.checks import Finding
from rtune.components.teacher.config import TeacherConfig

S3_KEYS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
CUSTOM_RESOURCES = {
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs"),
    "kserve": ("serving.kserve.io", "v1beta1", "inferenceservices"),
}


class PreflightFailed(RuntimeError):
    """One or more checks failed; the message lists every one with its fix."""


@dataclass
class PreflightSummary:
    findings: list[Finding]

    def as_dict(self) -> dict[str, float]:
        return {
            "checks": float(len(self.findings)),
            "failed_checks": float(sum(not f.ok for f in self.findings)),
        }

    def line(self) -> str:
        return checks.summarize(self.findings)[1]


@dataclass
class PreflightStage:
    """The run's parameters in; a verdict out (raises ``PreflightFailed`` naming every problem)."""

    parameters: Mapping[str, Any]
    name: str = "preflight"
    config: dict[str, Any] = field(default_factory=dict)

    def run(self, context: StageContext) -> PreflightSummary:
        findings = [checks.guarded(name, probe) for name, probe in planned_checks(self.parameters)]
        print(checks.describe(findings), flush=True)
        ok, verdict = checks.summarize(findings)
        if not ok:
            problems = "\n".join(f.line() for f in findings if not f.ok)
            raise PreflightFailed(f"{verdict}:\n{problems}")
        return PreflightSummary(findings)


def planned_checks(p: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, probe) for each check the parameters call for."""
    planned: list[tuple[str, Any]] = []
    if any(uri.startswith("s3://") for uri in _strings(p)):
        planned.append(
            ("s3 credentials", lambda: checks.env_present(S3_KEYS, "s3 credentials", "rtune-s3"))
        )
        for section in ("finetune", "quantize"):
            store = str((p.get(section) or {}).get("model_store", ""))
            if store.startswith("s3://"):
                name = f"{section}.model_store"
                planned.append((name, lambda n=name, s=store: checks.object_store_writable(n, s)))
    planned += _served_checks(p)
    tracking = from_dict(TrackingConfig, p.get("tracking"), "tracking")
    uri = tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking.enabled and uri.startswith("http"):
        health = uri.rstrip("/") + "/health"
        planned.append(("mlflow", lambda: checks.http_reachable("mlflow", health)))
    root = str(p.get("checkpoint_root") or "")
    if root:
        planned.append(("checkpoint_root", lambda: checks.folder_writable("checkpoint_root", root)))
    for kind in _custom_resources(p):
        group, version, plural = CUSTOM_RESOURCES[kind]
        planned.append(
            (plural, lambda g=group, v=version, r=plural: checks.custom_resource_usable(r, g, v, r))
        )
    return planned


def _served_checks(p: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The teacher, and the judge when it is another endpoint: reachable with their keys."""
    found = []
    teacher = from_dict(TeacherConfig, p.get("teacher"), "teacher")
    judge = from_dict(TeacherConfig, (p.get("evaluate") or {}).get("judge") or {}, "evaluate.judge")
    seen = set()
    for name, config in (("teacher", teacher), ("judge", judge)):
        if config.backend != "openai" or not config.url or config.url in seen:
            continue
        seen.add(config.url)
        key = os.environ.get(config.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = config.url.rstrip("/") + "/models"
        found.append((name, lambda n=name, u=url, h=headers: checks.http_reachable(n, u, h)))
    return found


def _custom_resources(p: Mapping[str, Any]) -> list[str]:
    kinds = []
    launcher = str((p.get("finetune") or {}).get("launcher", "local"))
    if launcher in CUSTOM_RESOURCES:
        kinds.append(launcher)
    if str((p.get("serve") or {}).get("backend", "local")) == "kserve":
        kinds.append("kserve")
    return kinds


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []
