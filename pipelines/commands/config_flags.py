"""One CLI grammar for every stage command, generated from the config dataclasses.

    rtune score --input r.jsonl --output s.jsonl --template alpaca --batch-tokens 4096
    rtune score --input r.jsonl --output s.jsonl --config pipelines/configs/llama3-8b.yaml \\
                --set student.dtype=bfloat16

Every command takes ``--config`` (a run config; default ``pipelines/configs/local.yaml``), any
number of ``--set section.key=value``, ``--checkpoint-root`` and ``--no-tracking``, plus one flag
per setting of the sections it reads, named after the field (``--max-length``) with the field's
``help`` metadata as its help — one source of help text. A student setting is one flag however
many sections read it; a name two sections share is prefixed with the section (``--teacher-model``).
A flag is a ``--set``: flags are applied after the config file, ``--set`` after the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from rtune.components.common.response_format import FOLLOWS_TEACHER
from rtune.components.common.student import StudentConfig, student_fields

DEST_PREFIX = "config:"


def add_config_options(
    parser: argparse.ArgumentParser,
    sections: Mapping[str, type],
    aliases: Mapping[str, str] | None = None,
) -> None:
    """``--config``, ``--set``, ``--checkpoint-root``, ``--no-tracking`` and one flag per setting.

    ``aliases`` maps an extra flag (kept for old command lines) to its ``section.key``.
    """
    parser.add_argument(
        "--config", default=None, help="run config YAML (default: the settings' own defaults)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set student.template=alpaca (repeatable)",
    )
    parser.add_argument(
        "--checkpoint-root", default=None, help="checkpoints (default $RTUNE_CACHE/checkpoints)"
    )
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    taken = set(parser._option_string_actions)  # the command's own flags win
    flags = {
        (f"--{s.key.replace('.', '-').replace('_', '-')}" if flag in taken else flag): s
        for flag, s in setting_flags(sections).items()
    }
    for section in ["student", *[s for s in sections if s != "student"]]:
        mine = [(flag, s) for flag, s in flags.items() if s.key.startswith(f"{section}.")]
        if mine:
            group = parser.add_argument_group(f"{section} settings (--set {section}.KEY=VALUE)")
            for flag, setting in mine:
                _add_flag(group, flag, setting)
    by_key = {s.key: s for s in flags.values()}
    for flag, key in (aliases or {}).items():
        if flag in flags or flag in taken:
            continue
        parse = by_key[key].parse if key in by_key else str
        parser.add_argument(
            flag,
            dest=DEST_PREFIX + key,
            default=argparse.SUPPRESS,
            type=parse,
            help=argparse.SUPPRESS,
        )


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str  # section.field
    help: str
    parse: Any  # text -> value


def _settings_of(section: str, cls: type) -> list[tuple[str, Setting]]:
    hints = typing.get_type_hints(cls)
    mirrored = student_fields(cls)
    found = []
    for f in dataclasses.fields(cls):
        parse = _converter(hints[f.name])
        follows = FOLLOWS_TEACHER in f.metadata  # set on the teacher: --response-format
        if f.name in mirrored or follows or parse is None or not f.init:
            continue
        found.append((f.name, Setting(f"{section}.{f.name}", f.metadata.get("help", ""), parse)))
    return found


def setting_flags(sections: Mapping[str, type]) -> dict[str, Setting]:
    """``--flag`` -> its setting, for every settable field of ``sections`` (+ the student's)."""
    wanted: list[tuple[str, str, Setting]] = []
    student_keys = {n for cls in sections.values() for n in student_fields(cls).values()}
    if student_keys or "student" in sections:
        students = dict(_settings_of("student", StudentConfig))
        keys = students if "student" in sections else student_keys
        wanted += [("student", n, students[n]) for n in sorted(keys) if n in students]
    for section, cls in sections.items():
        if section != "student":
            wanted += [(section, name, s) for name, s in _settings_of(section, cls)]
    names = [name for _, name, _ in wanted]
    flags = {}
    for section, name, setting in wanted:
        shared = names.count(name) > 1 and section != "student"
        flags["--" + (f"{section}-{name}" if shared else name).replace("_", "-")] = setting
    return flags


def _converter(hint: Any) -> Any:
    """A function parsing a flag's text into the field's type; None for nested sections."""
    options = (
        [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    )
    if len(options) != 1:
        return str
    kind = options[0]
    if kind is bool:
        return _boolean
    if kind in (int, float, str):
        return kind
    if typing.get_origin(kind) is list:
        return lambda text: [item.strip() for item in text.split(",") if item.strip()]
    return None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_flag(group: Any, flag: str, setting: Setting) -> None:
    switch = setting.parse is _boolean  # `--structured-output` alone means true
    group.add_argument(
        flag,
        dest=DEST_PREFIX + setting.key,
        default=argparse.SUPPRESS,
        type=setting.parse,
        nargs="?" if switch else None,
        const=True if switch else None,
        metavar="BOOL" if switch else setting.key.rsplit(".", 1)[-1].upper(),
        # argparse %-formats help text: a literal "%" ("~30 % slower") must be doubled
        help=f"{setting.help or setting.key} [{setting.key}]".replace("%", "%%"),
    )


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The flags that were given, as ``--set`` items, followed by the explicit ``--set`` items."""
    items = []
    for dest, value in vars(args).items():
        if dest.startswith(DEST_PREFIX):
            rendered = yaml.safe_dump(value, default_flow_style=True).strip()
            rendered = rendered.removesuffix("\n...").removesuffix("...").strip()
            items.append(f"{dest[len(DEST_PREFIX) :]}={rendered}")
    return [*items, *args.overrides]


def load_command_config(args: argparse.Namespace, defaults: Sequence[str] = ()) -> Any:
    """The run config a stage command runs with (``defaults`` come before the user's settings)."""
    from rtune.pipelines.config import load_run_config

    overrides = [*defaults, *config_overrides(args)]
    if args.checkpoint_root is not None:
        overrides.append(f"checkpoint_root={args.checkpoint_root}")
    if args.no_tracking:
        overrides.append("tracking.enabled=false")
    return load_run_config(args.config, overrides, default=None)


def stage_settings(config: Any) -> Any:
    """What a one-stage command gives the stage runner: tracking and checkpoints from the config.

    A CLI run is a pipeline run of its own in MLflow (its own run id), also where
    ``$KFP_RUN_ID`` is set (in a pod, or by an earlier ``rtune run`` in the same process).
    """
    from rtune.components.common.stage import StageSettings, new_run_id

    tracking = dataclasses.asdict(config.section("tracking"))
    return StageSettings(
        tracking=tracking, checkpoint_root=config.checkpoint_root, run_id=new_run_id()
    )
