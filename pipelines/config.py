"""Pipeline run configs: YAML files in ``pipelines/configs/`` plus ``--set key=value`` overrides.

A config groups parameters per stage, exactly as the pipeline takes them::

    seed_uri: builtin:seed          # or a local path / s3:// URI (JSON, JSONL, Parquet, HF folder)
    prepare:   {...}                # rtune.components.prepare.config.PrepareConfig
    teacher:   {...}                # rtune.components.teacher.config.TeacherConfig
    scoring:   {..., num_shards: 1} # rtune.components.scoring.config.ScoringConfig + shard count
    selection: {...}                # rtune.components.select_rifd.rules.SelectionConfig
    finetune:  {...}                # rtune.components.finetune.config.FinetuneConfig
    quantize:  {...}                # rtune.components.quantize.config.QuantizeConfig
    serve:     {...}                # rtune.components.serve.config.ServeConfig
    evaluate:  {...}                # rtune.components.evaluate.config.EvaluateConfig
    tracking:  {...}                # rtune.components.common.tracking.TrackingConfig
    checkpoint_root: ""             # durable checkpoints (default $RTUNE_CACHE/checkpoints)
    cluster:   {scoring_gpus: 1, quantize_gpus: 1}   # cluster-only resources (ignored by kfp.local)
    local:     {pipeline_root: rtune-runs}   # kfp.local only

Every section is validated against its typed config when loaded, so a typo fails before any work.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rtune.components.common.records import InputError

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "local.yaml"
STAGE_SECTIONS = (
    "prepare",
    "teacher",
    "scoring",
    "selection",
    "finetune",
    "quantize",
    "serve",
    "evaluate",
    "tracking",
)
CLUSTER_KEYS = ("scoring_gpus", "quantize_gpus")


@dataclass
class PipelineConfig:
    seed_uri: str = "builtin:seed"
    prepare: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    scoring: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    quantize: dict[str, Any] = field(default_factory=dict)
    serve: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)
    checkpoint_root: str = ""
    cluster: dict[str, Any] = field(default_factory=dict)
    local: dict[str, Any] = field(default_factory=dict)
    source: str = "<defaults>"

    def pipeline_arguments(self) -> dict[str, Any]:
        """Keyword arguments for ``reflection_tuning(...)`` (and compile-time defaults)."""
        return {
            "seed_uri": self.seed_uri,
            "prepare_config": self.prepare,
            "teacher": self.teacher,
            "scoring": self.scoring,
            "selection": self.selection,
            "finetune": self.finetune,
            "quantize": self.quantize,
            "serve": self.serve,
            "evaluate": self.evaluate,
            "tracking": self.tracking,
            "checkpoint_root": self.checkpoint_root,
        }

    def scoring_gpus(self) -> int:
        """GPUs per scoring shard: a compile-time resource of the cluster pipeline."""
        return int(self.cluster.get("scoring_gpus", 1))

    def quantize_gpus(self) -> int:
        """GPUs of the quantize task (GPTQ calibration runs the model layer by layer)."""
        if self.quantize.get("method", "w4a16") == "none":
            return 0
        return int(self.cluster.get("quantize_gpus", 1))

    def finetune_gpus(self) -> int:
        """GPUs of the fine-tune task's own pod: none when a TrainJob does the training."""
        if self.finetune.get("launcher", "local") in ("trainjob", "pytorchjob"):
            return 0
        return int(self.finetune.get("gpus_per_node", 0))


def load_pipeline_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    """Read a YAML run config, apply ``section.key=value`` overrides, validate every section."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise InputError(
            str(path),
            "config file not found",
            f"pass an existing file, e.g. one of {sorted(p.name for p in CONFIG_DIR.glob('*.yaml'))}",
        ) from None
    except yaml.YAMLError as err:
        raise InputError(str(path), f"invalid YAML: {err}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise InputError(
            str(path), "top level must be a mapping", "see pipelines/configs/local.yaml"
        )
    for item in overrides or []:
        apply_override(data, item, str(path))
    known = {f for f in PipelineConfig.__dataclass_fields__ if f != "source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(
            str(path),
            f"unknown section(s) {unknown}",
            f"valid sections: {sorted(known)}",
            field=unknown[0],
        )
    config = PipelineConfig(**copy.deepcopy(data), source=str(path))
    validate(config)
    return config


def apply_override(data: dict[str, Any], item: str, source: str) -> None:
    """``teacher.backend=openai`` -> data["teacher"]["backend"] = "openai" (value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise InputError(
            source,
            f"bad --set {item!r}",
            "write --set section.key=value, e.g. --set prepare.limit=8",
        )
    target = data
    parts = key.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise InputError(
                source, f"--set {key}: {part!r} is not a section", "override a key inside a section"
            )
    target[parts[-1]] = yaml.safe_load(raw) if raw else ""


def validate(config: PipelineConfig) -> None:
    """Build every stage's typed config once (raises InputError naming the section and key)."""
    from rtune.components.common.config import from_dict
    from rtune.components.common.tracking import TrackingConfig
    from rtune.components.evaluate.config import EvaluateConfig
    from rtune.components.finetune.config import FinetuneConfig
    from rtune.components.prepare.config import PrepareConfig
    from rtune.components.quantize.config import QuantizeConfig
    from rtune.components.scoring.task import split_scoring_config
    from rtune.components.select_rifd.rules import SelectionConfig
    from rtune.components.serve.config import ServeConfig
    from rtune.components.teacher.config import TeacherConfig

    source = config.source
    from_dict(PrepareConfig, config.prepare, f"{source}: prepare")
    from_dict(TeacherConfig, config.teacher, f"{source}: teacher")
    try:
        split_scoring_config(config.scoring)
    except ValueError as err:
        raise InputError(f"{source}: scoring", str(err), "fix the scoring section") from None
    from_dict(SelectionConfig, config.selection, f"{source}: selection")
    from_dict(FinetuneConfig, config.finetune, f"{source}: finetune")
    from_dict(QuantizeConfig, config.quantize, f"{source}: quantize")
    from_dict(ServeConfig, config.serve, f"{source}: serve")
    from_dict(EvaluateConfig, config.evaluate, f"{source}: evaluate")
    from_dict(TrackingConfig, config.tracking, f"{source}: tracking")
    unknown = sorted(set(config.cluster) - set(CLUSTER_KEYS))
    if unknown:
        raise InputError(
            f"{source}: cluster", f"unknown key(s) {unknown}", f"valid keys: {list(CLUSTER_KEYS)}"
        )
