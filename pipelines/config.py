"""The run config: one typed object from YAML to the stage that uses each setting.

A config file (``pipelines/configs/*.yaml``) has one section per concern::

    seed_uri: builtin:seed          # or a path / s3:// URI (JSON, JSONL, Parquet, HF folder)
    student:   {...}                # StudentConfig: model, template, max_length, start token, dtype
    teacher:   {...}                # TeacherConfig (the judge defaults to it)
    prepare | scoring | selection | finetune | quantize | serve | evaluate: {...}   # each stage's own
    tracking:  {...}                # MLflow
    checkpoint_root: ""             # durable checkpoints (default $RTUNE_CACHE/checkpoints)
    cluster:   {...}                # ClusterConfig: images, pod sizes, scheduling (compile time)
    local:     {pipeline_root: rtune-runs}   # kfp.local only

Loading validates every section once, with errors naming the YAML key. The typed config becomes
plain data once, at the KFP boundary (:meth:`RunConfig.pipeline_arguments`); a stage turns its
section back into its typed config with :func:`stage_config`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rtune.components.common.records import InputError
from rtune.components.common.student import StudentConfig, own_values, section_config

T = TypeVar("T")
CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "local.yaml"
# KFP parameter name of each section (``prepare`` is also the name of a component in the DAG)
PARAMETER_NAMES = {"prepare": "prepare_config"}


def section_classes() -> dict[str, type]:
    """YAML section -> typed config class (imported late: compiling must not import torch)."""
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
        "student": StudentConfig,
        "teacher": TeacherConfig,
        "prepare": PrepareConfig,
        "scoring": ScoringConfig,
        "selection": SelectionConfig,
        "finetune": FinetuneConfig,
        "quantize": QuantizeConfig,
        "serve": ServeConfig,
        "evaluate": EvaluateConfig,
        "tracking": TrackingConfig,
    }


@dataclass
class PodSize:
    """Requests of one task's pod (limits: Kubernetes copies the GPU limit to the request)."""

    cpu: str = field(default="2", metadata={"help": "CPU request, e.g. '8'"})
    memory: str = field(default="8Gi", metadata={"help": "memory request, e.g. '64Gi'"})
    gpus: int = field(default=0, metadata={"help": "nvidia.com/gpu limit"})

    def __post_init__(self) -> None:
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise ValueError(f"gpus must be an integer >= 0, got {self.gpus!r}")


@dataclass
class ImagesConfig:
    registry: str = field(default="", metadata={"help": "'' = ghcr.io/rtune"})
    tag: str = field(default="", metadata={"help": "'' = the package version"})


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@dataclass
class ClusterConfig:
    """What only a cluster uses, fixed when the pipeline is compiled (``kfp.local`` ignores it):
    images, pod sizes, where GPU pods may run, the work volume and the pods' extra env."""

    images: ImagesConfig = field(default_factory=ImagesConfig)
    default: PodSize = field(default_factory=PodSize)
    scoring: PodSize = field(default_factory=lambda: PodSize(cpu="8", memory="32Gi", gpus=1))
    finetune: PodSize = field(default_factory=lambda: PodSize(cpu="16", memory="128Gi"))
    quantize: PodSize = field(default_factory=lambda: PodSize(cpu="8", memory="64Gi", gpus=1))
    gpu_tolerations: list[dict[str, Any]] = field(
        default_factory=lambda: [dict(GPU_TOLERATION)],
        metadata={"help": "tolerations of GPU pods (your GPU nodes' taints)"},
    )
    gpu_node_selector: dict[str, str] = field(
        default_factory=dict, metadata={"help": "node labels GPU pods need, e.g. a GPU type"}
    )
    gpu_memory: str = field(
        default="80Gi", metadata={"help": "memory of one GPU (scoring pods are sized by it)"}
    )
    shm_size: str = field(
        default="16Gi", metadata={"help": "memory-backed /dev/shm of GPU pods ('' = 64 MiB)"}
    )
    work_volume: str = field(
        default="rtune-work",
        metadata={"help": "PVC mounted at work_mount (checkpoints, model cache); '' = none"},
    )
    work_mount: str = field(default="/mnt/rtune", metadata={"help": "where the work volume is"})
    pod_env: str = field(
        default="rtune-pod-env",
        metadata={"help": "ConfigMap of env for every pod (caches on the work volume, HOME)"},
    )

    def __post_init__(self) -> None:
        if self.work_volume and not self.work_mount.startswith("/"):
            raise ValueError(f"work_mount must be an absolute path, got {self.work_mount!r}")


@dataclass
class LocalConfig:
    pipeline_root: str = field(default="rtune-runs", metadata={"help": "kfp.local output folder"})


@dataclass
class RunConfig:
    seed_uri: str = "builtin:seed"
    sections: dict[str, Any] = field(default_factory=dict)  # section name -> typed config
    checkpoint_root: str = ""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    source: str = "<defaults>"

    def section(self, name: str) -> Any:
        return self.sections[name]

    @property
    def student(self) -> StudentConfig:
        return self.sections["student"]  # type: ignore[no-any-return]

    def pipeline_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``reflection_tuning(...)``: each section as plain data, once.

        The student goes whole (its settings are the run form's first thing to read); a stage
        section carries only what differs from its defaults and never the settings it mirrors
        from the student (they travel once, in ``student``).
        """
        arguments: dict[str, Any] = {"seed_uri": self.seed_uri}
        for name, config in self.sections.items():
            plain = dataclasses.asdict(config) if name == "student" else own_values(config)
            arguments[PARAMETER_NAMES.get(name, name)] = plain
        arguments["checkpoint_root"] = self.checkpoint_root
        return arguments


def load_run_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    default: Path | None = DEFAULT_CONFIG,
) -> RunConfig:
    """Read a YAML run config, apply ``section.key=value`` overrides, validate every section.

    Without ``path``: ``default`` (``rtune run`` runs the local demo config), or — ``None``, what a
    one-stage command does — the code's defaults only (no demo-sized limits sneak in).
    """
    chosen = Path(path) if path else default
    data = _read_yaml(chosen) if chosen is not None else {}
    source = str(chosen) if chosen is not None else "settings"
    for item in overrides or []:
        apply_override(data, item, source)
    return build_run_config(data, source)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        shipped = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
        raise InputError(
            str(path), "config file not found", f"pass an existing file, e.g. one of {shipped}"
        ) from None
    except yaml.YAMLError as err:
        raise InputError(str(path), f"invalid YAML: {err}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise InputError(
            str(path), "top level must be a mapping", "see pipelines/configs/local.yaml"
        )
    return data


def apply_override(data: dict[str, Any], item: str, source: str) -> None:
    """``student.template=alpaca`` -> data["student"]["template"] = "alpaca" (value read as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise InputError(
            source,
            f"bad --set {item!r}",
            "write --set section.key=value, e.g. --set prepare.limit=8",
        )
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        problem = f"--set {key}: the value is not valid YAML ({str(err).splitlines()[0]})"
        raise InputError(
            source, problem, "quote the value, e.g. --set 'teacher.url=\"http://...\"'", field=key
        ) from None
    target = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            where = ".".join(parts[: depth + 1])
            raise InputError(
                source,
                f"--set {key}: {where!r} is not a section",
                "override a key inside a section",
                field=where,
            )
    target[parts[-1]] = value


def build_run_config(data: Mapping[str, Any], source: str) -> RunConfig:
    """Typed sections from plain data; one error naming the YAML key for anything wrong."""
    from rtune.components.common.config import from_dict

    data = copy.deepcopy(dict(data))
    classes = section_classes()
    known = {*classes, "seed_uri", "checkpoint_root", "cluster", "local"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(
            source,
            f"unknown section(s) {unknown}",
            f"valid sections: {sorted(known)}",
            field=unknown[0],
        )
    for name in [*classes, "cluster", "local"]:
        if data.get(name) is not None and not isinstance(data[name], Mapping):
            raise InputError(
                source,
                f"section {name!r} must be a mapping, got {type(data[name]).__name__}",
                f"write {name}: {{key: value}}",
                field=name,
            )
    student = from_dict(StudentConfig, data.get("student"), f"{source}: student")
    sections: dict[str, Any] = {"student": student}
    for name, cls in classes.items():
        if name != "student":
            sections[name] = section_config(cls, name, data.get(name), student, source)
    _judge_defaults_to_teacher(sections)
    _formats_follow_teacher(data, sections, source)
    cluster = from_dict(ClusterConfig, data.get("cluster"), f"{source}: cluster")
    return RunConfig(
        seed_uri=_text(data, "seed_uri", RunConfig.seed_uri, source),
        sections=sections,
        checkpoint_root=_text(data, "checkpoint_root", RunConfig.checkpoint_root, source),
        cluster=cluster,
        local=from_dict(LocalConfig, data.get("local"), f"{source}: local"),
        source=source,
    )


def check_for_cluster(config: RunConfig) -> None:
    """What only matters when the config is compiled for a cluster (kfp.local runs anywhere):
    checkpoints must be on the work volume, since a retried pod's own disk is gone; a scoring
    pod must hold the student."""
    from rtune.pipelines.pod_sizes import check_scoring_pod

    check_scoring_pod(config)
    root, cluster, source = config.checkpoint_root, config.cluster, config.source
    mount = cluster.work_mount.rstrip("/") + "/"
    if root and cluster.work_volume and not (root.rstrip("/") + "/").startswith(mount):
        raise InputError(
            source,
            f"checkpoint_root {root!r} is not on the work volume ({cluster.work_volume} at "
            f"{cluster.work_mount}): a retried pod would not find its checkpoints",
            f"set checkpoint_root under {cluster.work_mount}, e.g. {mount}checkpoints",
            field="checkpoint_root",
        )


def _text(data: Mapping[str, Any], key: str, default: str, source: str) -> str:
    """A top-level text setting (empty in YAML = the default); ``seed_uri: 5`` is refused, not
    read as a file named ``5``."""
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InputError(
            source,
            f"{key} must be a string, got {type(value).__name__} {value!r}",
            f"give {key} a path or URI (quote it if YAML reads it otherwise: '\"5\"')",
            field=key,
        )
    return value


JUDGE_FROM_TEACHER = ("backend", "model", "url", "api_key_env", "timeout_s", "max_attempts")


def _judge_defaults_to_teacher(sections: dict[str, Any]) -> None:
    """An empty ``evaluate.judge`` is the teacher (its endpoint; the judge's own budgets) - unless
    the reflections were imported: then there is no teacher, and the judge keeps its default."""
    evaluate = sections["evaluate"]
    if not evaluate.judge and sections["teacher"].backend != "imported":
        teacher = own_values(sections["teacher"])
        evaluate.judge = {k: v for k, v in teacher.items() if k in JUDGE_FROM_TEACHER}


REASONING_SECTIONS = ("serve", "evaluate")  # their reasoning_format follows a reflection teacher


def _formats_follow_teacher(data: Mapping[str, Any], sections: dict[str, Any], source: str) -> None:
    """``teacher.response_format`` decides the answer format of the whole run.

    Stage fields marked ``FOLLOWS_TEACHER`` (finetune/quantize ``response_format``: the system
    prompt the student is trained and served with) are copied from the teacher and refused in
    their own section. Under ``reflection``, ``serve.reasoning_format`` and
    ``evaluate.reasoning_format`` become ``reflection`` (split ``<thinking>``, score ``<output>``);
    a section that sets another value is refused, naming both keys.
    """
    from rtune.components.common.response_format import FOLLOWS_TEACHER, REFLECTION

    teacher = sections["teacher"]
    for name, config in sections.items():
        for item in dataclasses.fields(config):
            key = item.metadata.get(FOLLOWS_TEACHER)
            if key is None:
                continue
            if item.name in (data.get(name) or {}):
                raise InputError(
                    source,
                    f"{name}.{item.name} follows teacher.{key}, which is configured once",
                    f"set teacher.{key} instead (every stage that trains or serves reads it)",
                    field=f"{name}.{item.name}",
                )
            setattr(config, item.name, getattr(teacher, key))
    if teacher.response_format != REFLECTION:
        return
    for name in REASONING_SECTIONS:
        own = (data.get(name) or {}).get("reasoning_format")
        if own is not None and own != REFLECTION:
            raise InputError(
                source,
                f"teacher.response_format is reflection but {name}.reasoning_format is {own!r}: "
                "the fine-tuned model answers in <thinking>/<output> tags",
                f"remove {name}.reasoning_format (it follows the teacher) or set it to reflection",
                field=f"{name}.reasoning_format",
            )
        sections[name].reasoning_format = REFLECTION


def uses_s3(config: RunConfig) -> bool:
    """Whether any setting names an ``s3://`` location (then tasks get the S3 Secret)."""

    def walk(value: Any) -> bool:
        if isinstance(value, str):
            return value.startswith("s3://")
        if isinstance(value, dict):
            return any(walk(v) for v in value.values())
        if isinstance(value, list):
            return any(walk(v) for v in value)
        return False

    return walk(config.pipeline_arguments())
