"""``ScoringConfig``: how the student scores candidates (IFD and reversed IFD)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rtune.components.common.student import student_field
from rtune.components.scoring.templates import DEFAULT_REVERSE_PROMPT, OUTPUT_PLACEHOLDER, TEMPLATES

DTYPES = ("float32", "bfloat16", "float16")
START_TOKEN_AUTO = "auto"
START_TOKEN_NONE = "none"


@dataclass
class ScoringConfig:
    """Student scoring settings; defaults score with the embedded default model on CPU."""

    model: str = student_field("model")
    template: str = student_field("template")
    max_length: int = student_field("max_length")
    reverse_prompt: str = field(
        default=DEFAULT_REVERSE_PROMPT,
        metadata={"help": "reverse-prompt wording for r-IFD; '{output}' marks where y goes"},
    )
    batch_tokens: int = field(
        default=1024,
        metadata={"help": "token budget (rows x padded length) of one forward batch"},
    )
    dtype: str = student_field("dtype")
    start_token: str = student_field("start_token")
    num_shards: int = field(
        default=1,
        metadata={
            "help": "scoring tasks per phase (a dsl.ParallelFor); each scores every N-th record"
        },
    )

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(
                f"unknown template {self.template!r}; valid templates are {sorted(TEMPLATES)}"
            )
        if OUTPUT_PLACEHOLDER not in self.reverse_prompt:
            raise ValueError(
                f"reverse_prompt must contain {OUTPUT_PLACEHOLDER} where the response goes"
            )
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if not isinstance(self.batch_tokens, int) or self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be a positive integer, got {self.batch_tokens!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid dtypes are {list(DTYPES)}")
        if not self.model:
            raise ValueError("model must be 'default', a local HF folder or an s3:// prefix")
        if (
            isinstance(self.num_shards, bool)
            or not isinstance(self.num_shards, int)
            or self.num_shards < 1
        ):
            raise ValueError(f"num_shards must be an integer >= 1, got {self.num_shards!r}")
        if not self.start_token:
            raise ValueError("start_token must be 'auto', 'none' or a token of the vocabulary")

    def result_fields(self) -> dict[str, object]:
        """The settings that change scores (not ``batch_tokens``): a checkpoint's fingerprint."""
        return {
            "model": self.model,
            "template": self.template,
            "max_length": self.max_length,
            "reverse_prompt": self.reverse_prompt,
            "dtype": self.dtype,
            "start_token": self.start_token,
        }
