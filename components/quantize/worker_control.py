"""Drive the llm-compressor worker from the project's interpreter: pick its Python, write its job,
run it with a timeout, and find a quantization it already finished.

The worker (``worker.py``) runs in llm-compressor's own interpreter with ``-I`` and imports only
the standard library at module level; this side talks to it through files in the work folder
only: ``job.json`` in, ``model/`` then ``quantize_summary.json`` (written last) out. A summary next
to a ``model/config.json`` means a finished quantization; anything else is redone.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from rtune.components.common.records import InputError
from rtune.components.quantize.config import GROUPED, QuantizeConfig
from rtune.components.quantize.data import save_calibration
from rtune.components.quantize.plan import QuantizePlan, check_group_size

SUMMARY_FILE = "quantize_summary.json"
WORKER_SCRIPT = Path(__file__).with_name("worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON_ENV = "RTUNE_QUANTIZE_PYTHON"


class QuantizationFailed(RuntimeError):
    """The llm-compressor worker failed (the message carries the tail of its output)."""


def quantize_python(config: QuantizeConfig) -> Path:
    """llm-compressor's interpreter: config.python, $RTUNE_QUANTIZE_PYTHON, <repo>/.venv-quantize."""
    chosen = config.python or os.environ.get(PYTHON_ENV, "")
    python = Path(chosen) if chosen else REPO_ROOT / ".venv-quantize" / "bin" / "python"
    where = "quantize.python" if config.python else (PYTHON_ENV if chosen else "the default")
    fix = (
        "run `make setup` (it creates .venv-quantize with llm-compressor), or set "
        f"{PYTHON_ENV} / quantize.python to an interpreter that has llm-compressor "
        "(in the rtune-quantize image: /opt/llmcompressor/bin/python)"
    )
    if not python.is_file() or not os.access(python, os.X_OK):
        raise InputError(str(python), f"no Python interpreter here ({where})", fix)
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('llmcompressor') is None)"
    if subprocess.run([str(python), "-I", "-c", probe], timeout=120).returncode != 0:
        raise InputError(str(python), f"llm-compressor is not installed there ({where})", fix)
    return python


def finished_worker(work: Path) -> dict[str, Any] | None:
    """The summary of a quantization that already finished here (the worker writes it last)."""
    path = work / SUMMARY_FILE
    if path.exists() and (work / "model" / "config.json").exists():
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return summary
    return None


def write_job(plan: QuantizePlan) -> Path:
    """The worker's job file (recipe, calibration ids, paths), after clearing what a killed
    worker left half-written."""
    from rtune.components.quantize.recipes import recipe_yaml

    work = plan.work
    work.mkdir(parents=True, exist_ok=True)
    for leftover in (work / "model", work / "model.partial"):
        shutil.rmtree(leftover, ignore_errors=True)
    (work / "recipe.yaml").write_text(recipe_yaml(plan.config), encoding="utf-8")
    job = {
        "method": plan.config.method,
        "model": str(plan.model_path),
        "recipe": str(work / "recipe.yaml"),
        "calibration": str(save_calibration(plan.calibration, work / "calibration.jsonl")),
        "max_seq_length": plan.config.max_seq_length,
        "output": str(work / "model"),
        "summary": str(work / SUMMARY_FILE),
        "chat_template": plan.chat_template,
    }
    path = work / "job.json"
    path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    return path


def worker_command(python: Path, job_path: Path) -> list[str]:
    """``-I``: the project's packages stay off the worker's path (its transformers is older)."""
    return [str(python), "-I", "-u", str(WORKER_SCRIPT), "--job", str(job_path)]


def run_worker(python: Path, job_path: Path, timeout_s: int) -> dict[str, Any]:
    """Run the worker, echo its output, and fail with the tail of it when it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    tail: collections.deque[str] = collections.deque(maxlen=40)
    log_path = job_path.with_name("worker.log")
    with (
        log_path.open("w", encoding="utf-8") as log,
        subprocess.Popen(
            worker_command(python, job_path),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as process,
    ):
        timer = threading.Timer(timeout_s, process.kill)
        timer.daemon = True  # never what keeps the interpreter alive
        timer.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stderr.write(line)
                log.write(line)
                tail.append(line)
            code = process.wait()
        finally:  # also when stopped (Ctrl-C, a task timeout): the timer would wait a day
            timer.cancel()
    summary = finished_worker(job_path.parent)
    if code != 0 or summary is None:
        reason = f"exited with code {code}" if code else "ended without writing its summary"
        raise QuantizationFailed(
            f"the llm-compressor worker ({python}) {reason}; full log {log_path}; last output:\n"
            + "".join(tail)
        )
    return summary


def quantized_model(plan: QuantizePlan) -> tuple[Path, dict[str, Any], bool]:
    """(folder, worker summary, reused): the quantized model, made now or found finished."""
    if plan.config.method == "none":
        return plan.model_path, {}, False
    done = finished_worker(plan.work)
    if done is not None:
        return plan.work / "model", done, True
    python = quantize_python(plan.config)
    if plan.config.method in GROUPED:
        check_group_size(plan.model_path, plan.config.group_size)
    summary = run_worker(python, write_job(plan), plan.config.worker_timeout_s)
    return plan.work / "model", summary, False
