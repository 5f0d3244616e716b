"""Benchmarks through lm-evaluation-harness (``lm_eval``, 0.4.x) against a served endpoint.

Generative tasks (gsm8k, ifeval, ...) go to ``/v1/chat/completions`` with the harness's
``local-chat-completions`` model and ``--apply_chat_template``; the harness sends text, not
token ids (``tokenized_requests=False``), so no tokenizer is needed. Multiple-choice tasks
scored by loglikelihood (mmlu, ...) cannot use a chat endpoint (it returns no prompt logprobs):
they go to ``/v1/completions`` with ``local-completions`` and a Hugging Face tokenizer.

The harness writes ``<output_path>/<model name, sanitized>/results_<timestamp>.json``; its
``results`` map task -> {"<metric>,<filter>": value, "<metric>_stderr,<filter>": ..., "alias",
...}. Each metric becomes ``lm_eval/<task>/<metric>`` (filter ``none``) or
``lm_eval/<task>/<metric>_<filter>`` (e.g. ``lm_eval/gsm8k/exact_match_strict-match``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rtune.components.common.config import redact_credentials

# What the harness's process may see of the stage's environment: the basics of a process, the
# Hugging Face/tokenizer/dataset settings (HF_TOKEN goes to the Hub only), locale, proxies and CA
# bundles. Nothing else - the pod also holds the teacher's key, S3 and MLflow credentials.
HARNESS_ENV_NAMES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM",
        "TMPDIR", "TMP", "TEMP", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "NLTK_DATA",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
        "http_proxy", "https_proxy", "no_proxy", "all_proxy",
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "DISABLE_MULTIPROC",
    }
)  # fmt: skip
HARNESS_ENV_PREFIXES = (
    "LC_", "PYTHON", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "XDG_",
    "LMEVAL_", "LM_EVAL_", "LM_HARNESS_",
)  # fmt: skip
HARNESS_KEY_ENV = "OPENAI_API_KEY"  # what lm-eval's local-(chat-)completions send as Bearer
NO_KEY = "EMPTY"  # the placeholder the served endpoints' clients send when they have no key

NOT_INSTALLED = (
    "lm-evaluation-harness is not installed in this environment, but evaluate.benchmarks "
    "asks for {tasks}: install the eval extra (pip install 'rtune[eval]') or run the stage in "
    "the rtune-base image; or set evaluate.benchmarks: [] to skip the benchmarks"
)


def lm_eval_command(
    base_url: str,
    model: str,
    tasks: Sequence[str],
    output_dir: Path,
    limit: int | None = None,
    num_concurrent: int = 8,
    loglikelihood: bool = False,
    tokenizer: str = "",
    cache: Path | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The ``python -m lm_eval`` command line for one endpoint and one kind of task.

    ``base_url`` is the OpenAI base URL (``http://host:port/v1``); the harness wants the full
    route, so ``/chat/completions`` (or ``/completions``) is appended. ``cache`` is the
    harness's own request cache (sqlite, written as answers arrive): a killed run that is
    started again with the same cache only asks what it had not asked yet.
    """
    root = base_url.rstrip("/")
    if loglikelihood:
        args = {
            "base_url": f"{root}/completions",
            "model": model,
            "num_concurrent": num_concurrent,
            "tokenizer_backend": "huggingface",
            "tokenizer": tokenizer or model,
            "tokenized_requests": False,
        }
        name = "local-completions"
    else:
        args = {
            "base_url": f"{root}/chat/completions",
            "model": model,
            "num_concurrent": num_concurrent,
            "tokenized_requests": False,
        }
        name = "local-chat-completions"
    command = [
        python,
        "-m",
        "lm_eval",
        "--model",
        name,
        "--model_args",
        ",".join(f"{key}={value}" for key, value in args.items()),
        "--tasks",
        ",".join(tasks),
        "--apply_chat_template",
        "--output_path",
        str(output_dir),
    ]
    if limit is not None:
        command += ["--limit", str(limit)]
    if cache is not None:
        command += ["--use_cache", str(cache)]
    return command


def metric_name(task: str, key: str) -> str | None:
    """``("gsm8k", "exact_match,strict-match")`` -> ``lm_eval/gsm8k/exact_match_strict-match``;
    ``None`` for keys that are not a metric (``alias``, ``sample_len``) or are a stderr."""
    metric, comma, filter_name = key.partition(",")
    if not comma or metric.endswith("_stderr"):
        return None
    suffix = "" if filter_name == "none" else f"_{filter_name}"
    return f"lm_eval/{task}/{metric}{suffix}"


def parse_results(results: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, float]:
    """Numeric metrics of the requested tasks (groups such as ``mmlu`` included; their
    subtasks left out) from a harness results JSON."""
    per_task = results.get("results")
    if not isinstance(per_task, Mapping):
        raise ValueError("not an lm-eval results file: no 'results' mapping")
    metrics: dict[str, float] = {}
    for task in tasks:
        for key, value in per_task.get(task, {}).items():
            name = metric_name(task, key)
            if name and isinstance(value, int | float) and not isinstance(value, bool):
                metrics[name] = float(value)
    missing = [task for task in tasks if task not in per_task]
    if missing:
        raise ValueError(f"lm-eval results have no entry for task(s) {missing}")
    return metrics


def latest_results_file(output_dir: Path) -> Path:
    found = sorted(output_dir.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"lm_eval wrote no results_*.json under {output_dir}")
    return found[-1]


def lm_eval_installed() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def harness_env(api_key_env: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment of the ``lm_eval`` process: what it needs to run, plus under
    ``OPENAI_API_KEY`` the evaluated endpoint's own key (from ``api_key_env``) or ``EMPTY``.

    lm-eval sends whatever ``OPENAI_API_KEY`` holds as the Bearer token to the endpoint; in the
    evaluate pod that variable holds the teacher's key, which must never go to a student or
    base endpoint. So the environment is built from a list of harmless names, never copied.
    """
    env = {
        name: value
        for name, value in environ.items()
        if name in HARNESS_ENV_NAMES or name.startswith(HARNESS_ENV_PREFIXES)
    }
    env[HARNESS_KEY_ENV] = (environ.get(api_key_env, "") if api_key_env else "") or NO_KEY
    return env


def run_lm_eval(
    base_url: str,
    model: str,
    tasks: Sequence[str],
    output_dir: Path,
    api_key_env: str = "",
    **options: Any,
) -> dict[str, float]:
    """Run the harness for ``tasks`` against one endpoint; returns ``lm_eval/...`` metrics.

    The harness's local API models read the key from ``OPENAI_API_KEY``; the endpoint's own
    key variable (``api_key_env``) is passed through under that name, never on the command line,
    in an environment that holds nothing else secret (``harness_env``).
    """
    if not tasks:
        return {}
    if not lm_eval_installed():
        raise RuntimeError(NOT_INSTALLED.format(tasks=list(tasks)))
    output_dir.mkdir(parents=True, exist_ok=True)
    command = lm_eval_command(base_url, model, tasks, output_dir, **options)
    completed = subprocess.run(command, env=harness_env(api_key_env), check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"lm_eval exited with code {completed.returncode} for tasks {list(tasks)} "
            f"against {redact_credentials(base_url)} (its log is above)"
        )
    results_file = latest_results_file(output_dir)
    return parse_results(json.loads(results_file.read_text(encoding="utf-8")), tasks)
