"""The ``champion`` alias: given to the fine-tuned version that beat the base (DESIGN.md §7).

The version is the one the fine-tune stage registered in this pipeline run: the parent run's
tags ``rtune.registered_model`` and ``rtune.model_version`` name it. The version also gets the
evaluation's numbers as tags (``rtune.eval.<metric>``), so the registry shows why it won.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MODEL_TAG = "rtune.registered_model"
VERSION_TAG = "rtune.model_version"


@dataclass(frozen=True)
class Promotion:
    version: str  # "" when nothing was promoted
    note: str


def registered_version(run: Any) -> tuple[str, str] | None:
    """(model name, version) the pipeline run registered, from its parent run's tags."""
    import mlflow

    run_id = run.parent_run_id or run.run_id
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    name, version = tags.get(MODEL_TAG), tags.get(VERSION_TAG)
    return (name, version) if name and version else None


def promote(run: Any, beats: bool, alias: str, evidence: Mapping[str, float]) -> Promotion:
    """Set ``alias`` on this run's registered version when the candidate won; else say why not."""
    if not beats:
        return Promotion("", "not promoted: the candidate did not beat the base")
    if not run.active:
        return Promotion("", "not promoted: tracking is off, so there is no registered version")
    found = registered_version(run)
    if found is None:
        return Promotion(
            "",
            f"not promoted: the pipeline run has no tags {MODEL_TAG}/{VERSION_TAG} "
            "(the fine-tune stage sets them when it registers the model)",
        )
    import mlflow

    name, version = found
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, alias, version)
    for key, value in evidence.items():
        client.set_model_version_tag(name, version, f"rtune.eval.{key}", f"{value:.6g}")
    return Promotion(version, f"{name} version {version} is now @{alias}")
