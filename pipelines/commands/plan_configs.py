"""Which shipped pipeline config a plan's recommendation is: ``pipelines/configs/*.yaml`` whose
``finetune:`` section names the same method, DeepSpeed config and topology, for the same model size."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rtune.components.finetune.plan_recommend import Recommendation

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def config_model_size(config: Mapping[str, Any]) -> str | None:
    """The size token ("8B", "70B", "135M") of a pipeline config's student, when it names one."""
    for section in ("student", "finetune", "scoring"):
        model = (config.get(section) or {}).get("model")
        if model == "default":
            return "135M"
        match = re.search(
            r"(?<![\d.])(\d+(?:\.\d+)?[BM])(?![A-Za-z])", str(model or ""), re.IGNORECASE
        )
        if match:
            return match.group(1).upper()
    return None


def matching_pipeline_configs(
    recommendation: Recommendation, size: str, config_dir: Path
) -> list[Path]:
    """Shipped pipeline YAMLs whose ``finetune:`` section is this recommendation (same model size)."""
    row = recommendation.row
    if row is None or row.deepspeed is None:
        return []
    wanted = {
        "method": recommendation.method,
        "deepspeed": row.deepspeed,
        "nodes": recommendation.nodes,
        "gpus_per_node": recommendation.gpus_per_node,
    }
    matches = []
    for path in sorted(config_dir.glob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        finetune = config.get("finetune") or {}
        same_size = not size or config_model_size(config) in (None, size)
        if same_size and all(finetune.get(key) == value for key, value in wanted.items()):
            matches.append(path)
    return matches


def shown(path: Path) -> str:
    """The config's path relative to the repository (pipelines/configs/x.yaml)."""
    return str(path.relative_to(CONFIG_DIR.parents[1]))
