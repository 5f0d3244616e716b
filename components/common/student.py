"""``StudentConfig``: the student model, configured once and read by every stage that uses it.

The student scores candidates (IFD / r-IFD), is fine-tuned, quantized, served and evaluated. Its
model, prompt template, token limit, start token and inference dtype are one choice: scoring with
one template and training with another would teach the student a format it was not selected for.
A stage config names the student settings it reads with :func:`student_field`; the run config
fills them from the ``student:`` section, and a stage section that sets one is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rtune.components.scoring.templates import TEMPLATES

DTYPES = ("float32", "bfloat16", "float16")
T = TypeVar("T")
STUDENT_KEY = "student"  # field metadata: which StudentConfig field a stage field mirrors


@dataclass
class StudentConfig:
    """The student model; defaults run the embedded default (SmolLM2-135M-Instruct) on CPU."""

    model: str = field(
        default="default",
        metadata={
            "help": "student model: 'default' (embedded), a local HF folder or an s3:// prefix"
        },
    )
    template: str = field(
        default="vicuna",
        metadata={
            "help": f"prompt template used to score, train and serve, one of {sorted(TEMPLATES)}"
        },
    )
    max_length: int = field(
        default=2048, metadata={"help": "token limit of a templated record (score, train, check)"}
    )
    start_token: str = field(
        default="auto",
        metadata={
            "help": "token prepended to every scored pass when the tokenizer adds no BOS: 'auto' "
            "('<|endoftext|>' if in the vocabulary, else bos, else eos), 'none', or a token"
        },
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "inference dtype; float32 on CPU (bf16 moves IFD by up to 0.2)"},
    )
    tokenizer: str = field(
        default="",
        metadata={"help": "tokenizer when it lives elsewhere than the model ('' = the model's)"},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must be 'default', a local HF folder or an s3:// prefix")
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got {self.template!r}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int):
            raise ValueError(f"max_length must be an integer, got {self.max_length!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if not self.start_token:
            raise ValueError("start_token must be 'auto', 'none' or a token of the vocabulary")

    @property
    def tokenizer_spec(self) -> str:
        return self.tokenizer or self.model


def student_field(name: str, default: Any = dataclasses.MISSING, help: str = "") -> Any:
    """A stage config field that mirrors ``StudentConfig.<name>`` (filled from ``student:``).

    ``name`` may be a property (``tokenizer_spec``); then give ``default`` and ``help``.
    """
    source = StudentConfig.__dataclass_fields__.get(name)
    metadata = {"help": help or (source.metadata["help"] if source else name), STUDENT_KEY: name}
    value = source.default if source is not None and default is dataclasses.MISSING else default
    return field(default=value, metadata=metadata)


def student_fields(cls: type) -> dict[str, str]:
    """``{stage field: student field}`` of a stage config class."""
    return {
        f.name: f.metadata[STUDENT_KEY]
        for f in dataclasses.fields(cls)
        if STUDENT_KEY in f.metadata
    }


def section_config(
    cls: type[T], name: str, section: Mapping[str, Any] | None, student: StudentConfig, source: str
) -> T:
    """A stage's typed config: its section's own values plus the student's mirrored ones.

    A section that sets a student setting itself is refused with the key to move, so one run
    cannot score with one template and train with another.
    """
    from rtune.components.common.config import from_dict
    from rtune.components.common.errors import InputError

    section = dict(section or {})
    mirrored = student_fields(cls)
    for key in section:
        if key in mirrored:
            raise InputError(
                f"{source}: {name}",
                f"{name}.{key} belongs to the student, which is configured once",
                f"move it to student.{mirrored[key]} (every stage reads it from there)",
                field=f"{name}.{key}",
            )
    values = {**section, **{own: getattr(student, theirs) for own, theirs in mirrored.items()}}
    return from_dict(cls, values, f"{source}: {name}")


def stage_config(
    cls: type[T], name: str, section: Mapping[str, Any] | None, student: Mapping[str, Any] | None
) -> T:
    """The stage side of the KFP boundary: a section's plain data and the student's -> typed."""
    from rtune.components.common.config import from_dict

    typed = from_dict(StudentConfig, student, "pipeline parameter student")
    return section_config(cls, name, section, typed, "pipeline parameters")


def own_values(config: Any) -> dict[str, Any]:
    """A stage config as plain data: the values that differ from the defaults, without the
    settings it mirrors from the student (they travel once, in ``student``).

    Defaults are left out so the run form shows what the run config says, and because a KFP
    struct cannot hold ``None`` (a default ``None`` is simply not sent).
    """
    mirrored = set(student_fields(type(config)))
    defaults = dataclasses.asdict(type(config)())
    return {
        k: _without_none(v)
        for k, v in dataclasses.asdict(config).items()
        if k not in mirrored and v != defaults.get(k) and v is not None
    }


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
