"""The evaluate stage's typed config (``evaluate:`` in the pipeline YAML).

Defaults run on a laptop: the built-in verifiable suite and held-out instructions, the base
student (the embedded default) served on loopback, the embedded model as judge, no
lm-evaluation-harness benchmarks. The cluster configs point ``judge`` at the teacher's endpoint,
``base_url`` at a served base model and list ``benchmarks`` (gsm8k, ifeval, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rtune.components.common.config import redact_credentials
from rtune.components.common.student import student_field
from rtune.components.teacher.config import TeacherConfig

REASONING_FORMATS = ("none", "reflection")
SERVERS = ("auto", "transformers", "vllm")
BUILTIN_SUITE = "builtin:suite"
BUILTIN_HELDOUT = "builtin:heldout"
SUITE_METRICS = ("suite_accuracy", "suite_accuracy_arithmetic", "suite_accuracy_format")
JUDGE_METRICS = ("judge_win_rate", "judge_winning_score")
LM_EVAL_METRIC = re.compile(r"^lm_eval/(?P<task>[^/]+)/(?P<metric>.+)$")
# Default judge budgets: a served judge writes its two scores then a short explanation; a local
# (prefilling) judge writes one number per round and stops on "out of" - 8 tokens is plenty.
JUDGE_MAX_NEW_TOKENS = {"openai": 64, "transformers": 8, "vllm": 8}
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


@dataclass
class EvaluateConfig:
    """How the served candidate is compared with the base student.

    ``*_limit``: ``None`` = every item, ``0`` = skip that part, ``N`` = the first N items (the
    built-in suite alternates arithmetic and format items, so a small limit covers both).
    ``primary_metric`` decides the ``champion`` alias: ``suite_accuracy[_<category>]`` and
    ``lm_eval/<task>/<metric>`` compare the candidate's value with the base's (candidate must be
    higher by more than ``min_improvement``); ``judge_win_rate`` must exceed 0.5 +
    ``min_improvement`` and ``judge_winning_score`` 1 + ``min_improvement`` (a tie is no win).
    """

    judge: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "TeacherConfig of the judge; {} = the embedded model via transformers"},
    )
    heldout: str = field(
        default=BUILTIN_HELDOUT,
        metadata={"help": "instructions for the pairwise judge: builtin:heldout | JSONL | s3://"},
    )
    judge_limit: int | None = field(default=None, metadata={"help": "null = all, 0 = no judge"})
    suite: str = field(
        default=BUILTIN_SUITE,
        metadata={"help": "verifiable items: builtin:suite | JSONL path | s3:// URI"},
    )
    suite_limit: int | None = field(default=None, metadata={"help": "null = all, 0 = no suite"})
    max_new_tokens: int = field(default=256, metadata={"help": "answer budget per item"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy answers"})
    concurrency: int | None = field(
        default=None,
        metadata={
            "help": "answer requests in flight per endpoint; null = 1 on a local "
            "transformers server (it generates one at a time), 8 on a served one"
        },
    )
    timeout_s: float = field(default=300.0, metadata={"help": "deadline of one answer request"})
    base_model: str = student_field("model")  # the base student, served to compare with
    base_url: str = field(
        default="", metadata={"help": "served base model (http://host/v1); '' = serve base_model"}
    )
    base_served_model: str = field(default="", metadata={"help": "model name at base_url"})
    base_api_key_env: str = field(default="", metadata={"help": "env var with base_url's key"})
    compare_finetuned: bool = field(
        default=True,
        metadata={
            "help": "also evaluate the fine-tuned model before quantization, so the report "
            "separates the training effect from the quantization effect; false = two models"
        },
    )
    finetuned_url: str = field(
        default="",
        metadata={
            "help": "served fine-tuned (unquantized) model (http://host/v1); '' = serve the "
            "finetune stage's model folder locally"
        },
    )
    finetuned_served_model: str = field(
        default="", metadata={"help": "model name at finetuned_url"}
    )
    finetuned_api_key_env: str = field(
        default="", metadata={"help": "env var with finetuned_url's key"}
    )
    finetuned_ready_timeout_s: float = field(
        default=1800.0,
        metadata={
            "help": "candidate on KServe, fine-tuned model in object storage: how long its "
            "evaluation-only InferenceService may take to become Ready"
        },
    )
    server: str = field(
        default="auto", metadata={"help": "local base/fine-tuned server: auto|transformers|vllm"}
    )
    reasoning_format: str = field(
        default="none",
        metadata={"help": "reflection = score only the <output> part of an answer"},
    )
    primary_metric: str = field(
        default="suite_accuracy",
        metadata={"help": "suite_accuracy | judge_win_rate | lm_eval/<task>/<metric> | ..."},
    )
    min_improvement: float = field(
        default=0.0, metadata={"help": "margin the candidate must beat the base by"}
    )
    benchmarks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-eval generative tasks via /chat/completions (gsm8k, ifeval, ...)"},
    )
    loglikelihood_benchmarks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-eval multiple-choice tasks via /completions (mmlu, ...)"},
    )
    lm_eval_limit: int | None = field(default=None, metadata={"help": "items per task; null = all"})
    lm_eval_concurrency: int = field(default=8, metadata={"help": "lm-eval num_concurrent"})
    lm_eval_tokenizer: str = field(
        default="",
        metadata={
            "help": "tokenizer (folder, s3:// prefix or embedded default) for loglikelihood "
            "tasks; '' = the student's own (base_model), fetched without its weights"
        },
    )
    champion_alias: str = field(default="champion", metadata={"help": "alias set on a win"})

    def __post_init__(self) -> None:
        for name in ("benchmarks", "loglikelihood_benchmarks"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [t.strip() for t in value.split(",") if t.strip()])
        _one_of("reasoning_format", self.reasoning_format, REASONING_FORMATS)
        _one_of("server", self.server, SERVERS)
        self._check_numbers()
        self._check_primary_metric()
        for prefix in ("base", "finetuned"):
            _check_served(prefix, *(getattr(self, f"{prefix}_{k}") for k in SERVED_FIELDS))
        self.judge_config()  # a bad judge section fails here, before any answer is generated

    def _check_numbers(self) -> None:
        for name in ("judge_limit", "suite_limit", "lm_eval_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be >= 0 or null (all items), got {value!r}")
        if self.concurrency is not None and self.concurrency <= 0:
            raise ValueError(f"concurrency must be > 0 or null (auto), got {self.concurrency}")
        for name in (
            "max_new_tokens",
            "lm_eval_concurrency",
            "timeout_s",
            "finetuned_ready_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.min_improvement < 0:
            raise ValueError(f"min_improvement must be >= 0, got {self.min_improvement}")

    def _check_primary_metric(self) -> None:
        metric = self.primary_metric
        if metric in SUITE_METRICS:
            if self.suite_limit == 0:
                raise ValueError(f"primary_metric {metric!r} needs the suite (suite_limit is 0)")
            return
        if metric in JUDGE_METRICS:
            if self.judge_limit == 0:
                raise ValueError(f"primary_metric {metric!r} needs the judge (judge_limit is 0)")
            return
        match = LM_EVAL_METRIC.match(metric)
        if match is None:
            raise ValueError(
                f"primary_metric {metric!r} is unknown: use one of "
                f"{[*SUITE_METRICS, *JUDGE_METRICS]} or lm_eval/<task>/<metric>"
            )
        if match["task"] not in self.benchmarks + self.loglikelihood_benchmarks:
            raise ValueError(
                f"primary_metric {metric!r} names lm-eval task {match['task']!r}, which is not "
                "in benchmarks or loglikelihood_benchmarks"
            )

    def judge_config(self) -> TeacherConfig:
        """The judge as a teacher backend; its answer budget defaults to one short verdict."""
        from rtune.components.common.config import from_dict

        backend = str(self.judge.get("backend", "transformers"))
        values = {"max_new_tokens": JUDGE_MAX_NEW_TOKENS.get(backend, 64), **self.judge}
        return from_dict(TeacherConfig, values, "evaluate.judge")

    def answer_concurrency(self, local_server: str | None) -> int:
        """Requests in flight to one endpoint. ``transformers serve`` runs concurrent requests
        as parallel generations on the same cores: on a 2-core CPU four of them took minutes
        each, hit the client timeout and were retried on top - one at a time is fastest."""
        if self.concurrency is not None:
            return self.concurrency
        return 1 if local_server == "transformers" else 8

    @property
    def lm_eval_tasks(self) -> list[str]:
        return [*self.benchmarks, *self.loglikelihood_benchmarks]

    def result_shaping(self) -> dict[str, Any]:
        """Settings that change the answers or verdicts (the checkpoint's fingerprint).

        Concurrency, timeouts, limits and the primary metric only change how many items are
        asked or how the numbers are read, so a resumed evaluation may change them.
        """
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "reasoning_format": self.reasoning_format,
            "judge": self.judge_config().result_shaping(),
        }


SERVED_FIELDS = ("url", "served_model", "api_key_env")


def _check_served(prefix: str, url: str, served_model: str, api_key_env: str) -> None:
    """``<prefix>_url`` / ``_served_model`` / ``_api_key_env``: a served model to compare."""
    if url and not url.startswith(("http://", "https://")):
        shown = redact_credentials(url)
        raise ValueError(f"{prefix}_url must start with http:// or https://, got {shown!r}")
    if url and not served_model:
        raise ValueError(
            f"{prefix}_url needs {prefix}_served_model: the model name the server answers to"
        )
    if api_key_env and not ENV_NAME.match(api_key_env):
        raise ValueError(
            f"{prefix}_api_key_env must be the upper-case NAME of an environment variable, "
            "not the key itself"
        )


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
