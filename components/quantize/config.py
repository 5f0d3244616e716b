"""The quantize stage's typed config (``quantize:`` in the pipeline YAML).

Defaults quantize the embedded default model on CPU: GPTQ W4A16 with group size 64 (the model's
hidden size 576 is not a multiple of 128), calibrated on selected records in the scorer's
template, with a perplexity guard measured on records held out from calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rtune.components.common.response_format import check_response_format, response_format_field
from rtune.components.common.student import student_field
from rtune.components.scoring.templates import TEMPLATES

METHODS = ("w4a16", "fp8_dynamic", "w8a8", "sparse_2of4", "sparse_2of4_w4a16", "none")
CALIBRATED = ("w4a16", "w8a8", "sparse_2of4", "sparse_2of4_w4a16")  # need calibration data
GROUPED = ("w4a16", "sparse_2of4_w4a16")  # int4 weights in groups of ``group_size`` columns


@dataclass
class QuantizeConfig:
    """How to compress the fine-tuned model, and how much quality loss to accept.

    ``max_perplexity_increase`` bounds ``perplexity_quantized / perplexity_unquantized - 1`` on
    the held-out records' response tokens (0.25 = the quantized model may be at most 25 %
    more perplexed); the stage fails above it.
    """

    method: str = field(
        default="w4a16",
        metadata={"help": "w4a16 | fp8_dynamic | w8a8 | sparse_2of4 | sparse_2of4_w4a16 | none"},
    )
    group_size: int = field(
        default=64, metadata={"help": "int4 group size: must divide every Linear input width"}
    )
    calibration_records: int = field(
        default=32, metadata={"help": "selected records calibrating GPTQ/SmoothQuant/SparseGPT"}
    )
    max_seq_length: int = field(default=512, metadata={"help": "tokens per calibration text"})
    heldout_records: int = field(
        default=8, metadata={"help": "selected records kept out of calibration for perplexity"}
    )
    max_perplexity_increase: float = field(
        default=0.5, metadata={"help": "fail when quantized/unquantized perplexity - 1 exceeds it"}
    )
    template: str = student_field("template")
    response_format: str = response_format_field()
    ignore: list[str] = field(
        default_factory=lambda: ["lm_head"],
        metadata={"help": "modules kept in full precision (names or re:<regex>)"},
    )
    dampening_frac: float = field(default=0.01, metadata={"help": "GPTQ/SparseGPT dampening"})
    smoothing_strength: float = field(default=0.8, metadata={"help": "SmoothQuant alpha (w8a8)"})
    python: str = field(
        default="",
        metadata={
            "help": "llm-compressor interpreter: '' = $RTUNE_QUANTIZE_PYTHON or .venv-quantize"
        },
    )
    model_store: str = field(
        default="", metadata={"help": "s3:// prefix to upload the quantized model to"}
    )
    worker_timeout_s: int = field(
        default=24 * 3600,
        metadata={"help": "give up on the llm-compressor worker after this many seconds"},
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got {self.template!r}")
        check_response_format(self.response_format)
        if isinstance(self.ignore, str):
            self.ignore = [name.strip() for name in self.ignore.split(",") if name.strip()]
        for name in ("group_size", "calibration_records", "heldout_records", "worker_timeout_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_seq_length < 16:
            raise ValueError(f"max_seq_length must be >= 16 tokens, got {self.max_seq_length}")
        if self.max_perplexity_increase < 0:
            raise ValueError(
                "max_perplexity_increase is a relative bound >= 0 (0.25 = +25 %), "
                f"got {self.max_perplexity_increase}"
            )
        if not 0 < self.smoothing_strength < 1:
            raise ValueError(f"smoothing_strength must be in (0, 1), got {self.smoothing_strength}")
        if not 0 <= self.dampening_frac < 1:
            raise ValueError(f"dampening_frac must be in [0, 1), got {self.dampening_frac}")
        if self.model_store and not self.model_store.startswith("s3://"):
            raise ValueError(f"model_store must be '' or an s3:// prefix, got {self.model_store!r}")
