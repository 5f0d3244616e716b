"""``TeacherConfig``: which teacher answers, and how hard the client tries.

The API key never appears here: ``api_key_env`` names the environment variable that holds it, so
the config can be logged to MLflow, written to YAML and printed without leaking a secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rtune.components.common.response_format import RESPONSE_FORMATS

BACKENDS = ("transformers", "openai", "vllm", "imported")
IMPORTED = "imported"  # reflections made elsewhere (`rtune import`): no teacher runs
PROMPT_STYLES = ("faithful", "concise")
FALLBACKS = ("per_field", "whole")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")  # upper case: a mixed-case value is likely a key


@dataclass
class TeacherConfig:
    """Teacher backend settings. Defaults run the embedded default model on CPU."""

    backend: str = field(
        default="transformers",
        metadata={"help": "transformers | openai | vllm | imported (reflections from import_uri)"},
    )
    model: str = field(
        default="default",
        metadata={
            "help": "'default' (embedded model; for openai: the server's first model), a "
            "local HF folder / s3:// prefix (local backends) or a served model name (openai)"
        },
    )
    url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible base URL, e.g. http://host:8000/v1"}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "name of the env var holding the API key"}
    )
    concurrency: int = field(default=16, metadata={"help": "requests in flight (openai)"})
    timeout_s: float = field(default=120.0, metadata={"help": "deadline of one request attempt"})
    max_attempts: int = field(default=5, metadata={"help": "attempts per record incl. the first"})
    backoff_s: float = field(default=1.0, metadata={"help": "first retry delay; doubles each time"})
    max_backoff_s: float = field(default=60.0, metadata={"help": "cap on any retry delay"})
    max_error_rate: float = field(
        default=0.2,
        metadata={
            "help": "largest fraction of records whose request failed for good (fallback_error) "
            "a stage accepts; above it the stage fails, writes no output and keeps its checkpoint"
        },
    )
    max_new_tokens: int = field(default=512, metadata={"help": "generation budget per record"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    batch_size: int = field(default=8, metadata={"help": "records per batch (local backends)"})
    structured_output: bool = field(
        default=False, metadata={"help": "ask for JSON via response_format (openai only)"}
    )
    few_shot: bool = field(default=True, metadata={"help": "show two worked examples first"})
    import_uri: str | None = field(
        default=None,
        metadata={
            "help": "backend imported: a folder / s3:// prefix with ori, Q, A, QA .json(l) files, "
            "or one JSONL with the four candidates per record (README: Bring your own reflections)"
        },
    )
    prompt_style: str = field(
        default="faithful",
        metadata={
            "help": "faithful: the reference's substance, a critique of the instruction AND its "
            "answer first, then a harder instruction that stands alone (default); concise: the "
            "wording of earlier releases (judge the instruction, keep its intent)"
        },
    )
    response_format: str = field(
        default="plain",
        metadata={
            "help": "plain: better answers as they are (default); reflection: phase 2 writes "
            "them as <thinking>, optional <reflection>, <output> - the student is trained and "
            "served in that format, serve/evaluate split it (README: Reflection format)"
        },
    )
    repair: bool = field(
        default=True,
        metadata={"help": "ask once more, with the reply and what was wrong, when it is unusable"},
    )
    fallback: str = field(
        default="per_field",
        metadata={
            "help": "per_field: keep every usable field (a new instruction survives an unusable "
            "answer, which falls back to the original); whole: any bad field keeps the original"
        },
    )
    max_sample_tokens: int = field(
        default=2048,
        metadata={
            "help": "teacher budget for instruction+input+answer; a longer sample's answer is "
            "cut by the overflow before it is sent (the reference's 2048)"
        },
    )

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {list(BACKENDS)}")
        if not ENV_NAME.match(self.api_key_env):
            # Do not echo the value: a pasted key is the likely mistake here.
            raise ValueError(
                "api_key_env must be the upper-case NAME of an environment variable "
                "(e.g. OPENAI_API_KEY), not the key itself"
            )
        self._check_numbers()
        self._check_backend_options()

    def _check_numbers(self) -> None:
        positive = {
            "concurrency": self.concurrency,
            "max_attempts": self.max_attempts,
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "timeout_s": self.timeout_s,
            "max_sample_tokens": self.max_sample_tokens,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(
                f"need 0 <= backoff_s <= max_backoff_s, got {self.backoff_s} and {self.max_backoff_s}"
            )
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be between 0 and 1, got {self.max_error_rate}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    def _check_backend_options(self) -> None:
        if self.backend == IMPORTED and not self.import_uri:
            raise ValueError(
                "backend imported needs teacher.import_uri: the folder (or s3:// prefix) holding "
                "ori/Q/A/QA .json files, or a JSONL with the four candidates per record"
            )
        for name, value, allowed in (
            ("prompt_style", self.prompt_style, PROMPT_STYLES),
            ("fallback", self.fallback, FALLBACKS),
            ("response_format", self.response_format, RESPONSE_FORMATS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {list(allowed)}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if self.backend == "openai" and self.model == "default" and self.url is None:
            raise ValueError(
                "the openai backend needs a model name (--teacher-model) or the --teacher-url of a "
                "server whose first listed model is used"
            )
        if self.structured_output and self.backend not in ("openai", IMPORTED):
            raise ValueError(
                "structured_output needs the openai backend (a vLLM/KServe server honours "
                "response_format); local backends use prefilled markers instead"
            )

    def result_shaping(self) -> dict[str, Any]:
        """The settings that change what the teacher writes (for checkpoint fingerprints).

        Concurrency, timeouts, retries, batch size and the URL only change how fast the same
        answers arrive, so a resumed run may change them.
        """
        return {
            "backend": self.backend,
            "model": self.model,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "structured_output": self.structured_output,
            "few_shot": self.few_shot,
            "prompt_style": self.prompt_style,
            "response_format": self.response_format,
            "repair": self.repair,
            "fallback": self.fallback,
            "max_sample_tokens": self.max_sample_tokens,
        }
