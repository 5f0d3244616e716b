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
import re
import types
import typing
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
MAPPING_SECTIONS = (*STAGE_SECTIONS, "cluster", "local")
TEXT_SETTINGS = ("seed_uri", "checkpoint_root")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


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


SECTIONS = tuple(name for name in PipelineConfig.__dataclass_fields__ if name != "source")


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
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise InputError(
            str(path),
            f"unknown section(s) {unknown}",
            f"valid sections: {sorted(SECTIONS)}",
            field=unknown[0],
        )
    type_settings(data, str(path))
    for item in overrides or []:
        apply_override(data, item)
    config = PipelineConfig(**copy.deepcopy(data), source=str(path))
    validate(config)
    return config


def apply_override(data: dict[str, Any], item: str) -> None:
    """``teacher.backend=openai`` -> data["teacher"]["backend"] = "openai" (value parsed as YAML,
    then checked against the type the setting declares; errors name ``--set ...`` and the key)."""
    key, sep, raw = item.partition("=")
    where = f"--set {item}"
    if not sep or not key:
        raise InputError(
            where,
            f"bad --set {item!r}",
            "write --set section.key=value, e.g. --set prepare.limit=8",
        )
    parts = tuple(key.split("."))
    if parts[0] not in SECTIONS:
        raise InputError(
            where, f"unknown section {parts[0]!r}", f"valid sections: {sorted(SECTIONS)}", field=key
        )
    target = data
    for depth, part in enumerate(parts[:-1], start=1):
        if target.get(part) is None:
            target[part] = {}
        target = target[part]
        if not isinstance(target, dict):
            raise InputError(
                where,
                f"{'.'.join(parts[:depth])} is {_shown(target)}, not a section",
                "override a key inside a section",
                field=key,
            )
    target[parts[-1]] = typed_setting(parts, _yaml_value(raw, key, where), where)


def _yaml_value(raw: str, key: str, where: str) -> Any:
    """The ``--set`` value as YAML reads it (``8`` -> int, ``[a, b]`` -> list, empty -> "")."""
    if not raw:
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or type(err).__name__
        raise InputError(
            where,
            f"the value of {key} is not valid YAML ({problem})",
            f"quote it to pass it as text, e.g. --set '{key}=\"...\"'",
            field=key,
        ) from None


def type_settings(data: dict[str, Any], source: str) -> None:
    """Check (and normalise) every section and setting of a loaded config file in place."""
    for name, value in list(data.items()):
        data[name] = typed_setting((name,), value, source)
        if isinstance(data[name], dict):
            for key, inner in list(data[name].items()):
                data[name][key] = typed_setting((name, str(key)), inner, source)


def typed_setting(key: tuple[str, ...], value: Any, source: str) -> Any:
    """``value`` as the setting ``key`` takes it, or one InputError naming the key and the type.

    Sections must be mappings; a stage setting must match its config dataclass field (a float
    also accepts ``1e-5``, which YAML 1.1 reads as text). Unknown keys pass here: ``validate``
    reports them with the list of valid ones.
    """
    expected = expected_type(key)
    if expected is None:
        return value
    ok, typed = _as_type(expected, value)
    if ok:
        return typed
    name = ".".join(key)
    description = describe_type(expected, key)
    if len(key) == 1 and key[0] in MAPPING_SECTIONS:
        fix = f"set keys inside it, e.g. --set {name}.<key>=<value>"
    elif _plain(expected) is str:
        fix = f"quote a value YAML would read otherwise, e.g. --set '{name}=\"5\"'"
    else:
        fix = f"give {name} {description}"
    raise InputError(source, f"{name} must be {description}, got {_shown(value)}", fix, field=name)


def expected_type(key: tuple[str, ...]) -> Any:
    """The declared type of a config key (``None``: not declared here, e.g. free-form dicts)."""
    if len(key) == 1:
        if key[0] in TEXT_SETTINGS:
            return str
        return dict if key[0] in MAPPING_SECTIONS else None
    if len(key) != 2:
        return None
    section, name = key
    if section == "cluster":
        return GpuCount if name in CLUSTER_KEYS else None
    if section == "local":
        return str if name == "pipeline_root" else None
    if section == "scoring" and name == "num_shards":
        return int
    config_class = section_config_classes().get(section)
    if config_class is None:
        return None
    return typing.get_type_hints(config_class).get(name)


def section_config_classes() -> dict[str, type]:
    """The typed config of each stage section (imported lazily: compiling never needs torch)."""
    from rtune.components.common.tracking import TrackingConfig
    from rtune.components.evaluate.config import EvaluateConfig
    from rtune.components.finetune.config import FinetuneConfig
    from rtune.components.prepare.config import PrepareConfig
    from rtune.components.quantize.config import QuantizeConfig
    from rtune.components.scoring.config import ScoringConfig
    from rtune.components.select_rifd.rules import SelectionConfig
    from rtune.components.serve.config import ServeConfig
    from rtune.components.teacher.config import TeacherConfig

    return {
        "prepare": PrepareConfig,
        "teacher": TeacherConfig,
        "scoring": ScoringConfig,
        "selection": SelectionConfig,
        "finetune": FinetuneConfig,
        "quantize": QuantizeConfig,
        "serve": ServeConfig,
        "evaluate": EvaluateConfig,
        "tracking": TrackingConfig,
    }


class GpuCount(int):
    """Marker type of the ``cluster`` GPU counts: a non-negative integer."""


def _as_type(hint: Any, value: Any) -> tuple[bool, Any]:
    """(value fits ``hint``, the value normalised): KFP and YAML hand ints as floats and
    exponent floats without a dot (``2e-5``) as text."""
    if _is_optional(hint):
        if value is None:
            return True, None
        hint = _plain(hint)
    if hint is dict:
        return (True, {}) if value is None else (isinstance(value, dict), value)
    if hint is bool or hint is str:
        return isinstance(value, hint), value
    if isinstance(value, bool):
        return False, value
    if hint in (int, GpuCount):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return isinstance(value, int) and (hint is int or value >= 0), value
    if hint is float:
        if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            return True, float(value)
        return isinstance(value, int | float), value
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        items_ok = item is Any or all(_as_type(item, v)[0] for v in value or [])
        return isinstance(value, list) and items_ok, value
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict), value
    return True, value


def describe_type(hint: Any, key: tuple[str, ...] = ()) -> str:
    """How an error message names a type: ``an integer or null``, ``a list of strings``, ..."""
    if len(key) == 1 and key[0] in STAGE_SECTIONS:
        return f"a mapping of {section_config_classes()[key[0]].__name__} settings"
    suffix = " or null" if _is_optional(hint) else ""
    plain = _plain(hint)
    names = {
        bool: "true or false",
        int: "an integer",
        GpuCount: "a non-negative integer (GPUs)",
        float: "a number",
        str: "a string",
        dict: "a mapping",
    }
    if plain in names:
        return names[plain] + suffix
    if typing.get_origin(plain) is list:
        (item,) = typing.get_args(plain) or (Any,)
        return f"a list of {describe_type(item).removeprefix('a ').removeprefix('an ')}s{suffix}"
    if typing.get_origin(plain) is dict:
        return "a mapping" + suffix
    return str(plain) + suffix


def _is_optional(hint: Any) -> bool:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return union and type(None) in typing.get_args(hint)


def _plain(hint: Any) -> Any:
    """``int | None`` -> ``int`` (the non-null member of an optional)."""
    if _is_optional(hint):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        return members[0] if len(members) == 1 else hint
    return hint


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def validate(config: PipelineConfig) -> None:
    """Build every stage's typed config once (raises InputError naming the section and key)."""
    from rtune.components.common.config import from_dict
    from rtune.components.scoring.task import split_scoring_config

    source = config.source
    for section, config_class in section_config_classes().items():
        values = getattr(config, section)
        if section != "scoring":
            from_dict(config_class, values, f"{source}: {section}")
            continue
        try:
            split_scoring_config(values)
        except InputError as err:  # from_dict's message, under this file's name
            raise InputError(f"{source}: scoring", err.problem, err.fix, field=err.field) from None
        except ValueError as err:
            raise InputError(f"{source}: scoring", str(err), "fix the scoring section") from None
    unknown = sorted(set(config.cluster) - set(CLUSTER_KEYS))
    if unknown:
        raise InputError(
            f"{source}: cluster", f"unknown key(s) {unknown}", f"valid keys: {list(CLUSTER_KEYS)}"
        )
