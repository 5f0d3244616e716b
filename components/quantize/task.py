"""The quantize stage as a pipeline task: merged model in, compressed model out, quality guarded.

    model/ (or MODEL_URI.txt -> s3://)  +  selected.jsonl
      -> split by hash of id: held-out records | calibration records (scorer's P(x)+y token ids)
      -> worker in llm-compressor's interpreter: oneshot(recipe, calibration) -> compressed model
      -> perplexity of both models on the held-out responses, weight sizes
      -> MLflow (params, metrics also on the parent run, figure, recipe, summary, report),
         KFP metrics + HTML; parent tags rtune.quantization, rtune.quantized_uri
      -> quality guard: perplexity_quantized / perplexity_unquantized - 1 <= max_perplexity_increase
      -> quantized model to the output (+ model store upload, MODEL_URI.txt)

The work folder ``<checkpoint_root>/quantize/<fingerprint>`` is keyed by the recipe, the
calibration token ids and the model: a finished quantization is reused (a changed bound re-checks
without quantizing again); a killed one left no summary and is redone.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rtune.components.common import reports
from rtune.components.common.checkpoint import fingerprint
from rtune.components.common.config import from_dict
from rtune.components.common.records import InputError, read_jsonl
from rtune.components.common.stage import MetricsSink, publish_metrics, tracked_stage
from rtune.components.common.storage import cache_root
from rtune.components.quantize.config import CALIBRATED, GROUPED, QuantizeConfig
from rtune.components.quantize.data import (
    CalibrationSplit,
    ResponseTexts,
    response_passes,
    save_calibration,
    split_records,
    texts_digest,
)
from rtune.components.quantize.perplexity import MB, Perplexity, weight_bytes

MODEL_URI_FILE = "MODEL_URI.txt"
SUMMARY_FILE = "quantize_summary.json"
EVALUATION_FILE = "evaluation.json"
WORKER_SCRIPT = Path(__file__).with_name("worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON_ENV = "RTUNE_QUANTIZE_PYTHON"


class QualityGateFailed(RuntimeError):
    """The quantized model lost more quality than ``quantize.max_perplexity_increase`` allows."""


class QuantizationFailed(RuntimeError):
    """The llm-compressor worker failed (the message carries the tail of its output)."""


@dataclass
class QuantizeOutputs:
    model_dir: Path
    report_path: Path | None = None


@dataclass
class QuantizePlan:
    """What one run works on: the split, its token passes and the work folder."""

    config: QuantizeConfig
    model_path: Path
    split: CalibrationSplit
    calibration: ResponseTexts
    heldout: ResponseTexts
    work: Path


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


def read_model_uri(model_dir: Path) -> str:
    """The ``s3://`` URI of a model that lives in the store (a cluster fine-tune), or ''."""
    marker = Path(model_dir) / MODEL_URI_FILE
    return marker.read_text(encoding="utf-8").strip() if marker.is_file() else ""


def model_signature(model_path: Path, blocks: int = 16, block_size: int = 1 << 16) -> str:
    """What tells one model folder from another, cheaply: config.json and, per weight file,
    name, size and a hash of ``blocks`` evenly spaced blocks (a retrained model changes them;
    hashing a 140 GB checkpoint whole would take minutes on every run)."""
    digest = hashlib.sha256()
    config = model_path / "config.json"
    digest.update(config.read_bytes() if config.exists() else b"")
    for path in sorted(p for p in model_path.rglob("*") if p.is_file()):
        if path.suffix not in {".safetensors", ".bin", ".pt", ".pth"}:
            continue
        size = path.stat().st_size
        digest.update(f"{path.relative_to(model_path)}:{size}".encode())
        with path.open("rb") as handle:
            for index in range(blocks):
                handle.seek(max(size - block_size, 0) * index // max(blocks - 1, 1))
                digest.update(handle.read(block_size))
    return digest.hexdigest()[:24]


def work_dir_for(
    config: QuantizeConfig, calibration: ResponseTexts, model_path: Path, root: str
) -> Path:
    """Same recipe + same calibration ids + same model -> same folder (reuse, never mix)."""
    from rtune.components.quantize.recipes import recipe_yaml

    recipe = recipe_yaml(config) if config.method != "none" else "none"
    data = texts_digest(calibration) if config.method in CALIBRATED else ""
    key = fingerprint("quantize", recipe, config.max_seq_length, data, model_signature(model_path))
    return Path(root or cache_root() / "checkpoints") / "quantize" / key


def plan_quantization(
    config: QuantizeConfig, model_path: Path, selected_path: Path, checkpoint_root: str
) -> QuantizePlan:
    from rtune.components.common.models import load_tokenizer

    records = read_jsonl(selected_path)
    split = split_records(
        records, config.calibration_records, config.heldout_records, str(selected_path)
    )
    tokenizer = load_tokenizer(model_path)
    calibration = response_passes(
        split.calibration, tokenizer, config.template, config.max_seq_length
    )
    heldout = response_passes(split.heldout, tokenizer, config.template, config.max_seq_length)
    if not heldout.passes:
        raise InputError(
            str(selected_path),
            f"every held-out record's response was cut away by max_seq_length {config.max_seq_length}",
            "raise quantize.max_seq_length",
        )
    if config.method in CALIBRATED and not calibration.passes:
        raise InputError(
            str(selected_path),
            "no calibration text left after max_seq_length cut every response away",
            "raise quantize.max_seq_length",
        )
    work = work_dir_for(config, calibration, model_path, checkpoint_root)
    return QuantizePlan(config, model_path, split, calibration, heldout, work)


def check_group_size(model_path: Path, group_size: int) -> None:
    """int4 groups must tile every Linear input width (hidden, attention output, MLP)."""
    config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    hidden = config.get("hidden_size")
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    widths = {
        "hidden_size": hidden,
        "intermediate_size": config.get("intermediate_size"),
        "num_attention_heads*head_dim": heads * head_dim if heads and head_dim else None,
    }
    bad = {name: width for name, width in widths.items() if width and width % group_size}
    if bad:
        divisors = [g for g in (32, 64, 128) if all(w % g == 0 for w in widths.values() if w)]
        raise InputError(
            str(model_path / "config.json"),
            f"group_size {group_size} does not divide {bad}",
            f"set quantize.group_size to a common divisor, e.g. {divisors or 'a smaller power of 2'}",
            field="group_size",
        )


def finished_worker(work: Path) -> dict[str, Any] | None:
    """The summary of a quantization that already finished here (the worker writes it last)."""
    path = work / SUMMARY_FILE
    if path.exists() and (work / "model" / "config.json").exists():
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return summary
    return None


def write_job(plan: QuantizePlan) -> Path:
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
        timer.start()
        assert process.stdout is not None
        for line in process.stdout:
            sys.stderr.write(line)
            log.write(line)
            tail.append(line)
        code = process.wait()
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


def evaluate(plan: QuantizePlan, quantized: Path) -> dict[str, Perplexity]:
    """Perplexity of both models on the held-out responses (cached in the work folder)."""
    from rtune.components.quantize.perplexity import model_perplexity

    key = texts_digest(plan.heldout)
    cache = plan.work / EVALUATION_FILE
    if cache.exists():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("heldout") == key:
            return {name: Perplexity(**cached[name]) for name in ("unquantized", "quantized")}
    passes = list(plan.heldout.passes.values())
    unquantized = model_perplexity(plan.model_path, passes)
    same = quantized == plan.model_path
    result = {
        "unquantized": unquantized,
        "quantized": unquantized if same else model_perplexity(quantized, passes),
    }
    plan.work.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps({"heldout": key, **{k: asdict(v) for k, v in result.items()}}, indent=2),
        encoding="utf-8",
    )
    return result


def stage_values(
    plan: QuantizePlan,
    quantized: Path,
    perplexities: Mapping[str, Perplexity],
    worker: Mapping[str, Any],
) -> dict[str, Any]:
    before, after = weight_bytes(plan.model_path), weight_bytes(quantized)
    unquantized, compressed = perplexities["unquantized"], perplexities["quantized"]
    return {
        "method": plan.config.method,
        "size_mb_unquantized": round(before / MB, 2),
        "size_mb_quantized": round(after / MB, 2),
        "size_ratio": round(after / before, 4) if before else math.nan,
        "perplexity_unquantized": unquantized.perplexity,
        "perplexity_quantized": compressed.perplexity,
        "perplexity_increase": compressed.perplexity / unquantized.perplexity - 1,
        "max_perplexity_increase": plan.config.max_perplexity_increase,
        "heldout_records": unquantized.records,
        "heldout_tokens": unquantized.tokens,
        "calibration_records": len(plan.calibration.passes)
        if plan.config.method in CALIBRATED
        else 0,
        "calibration_short_by": plan.split.short_by,
        "oneshot_seconds": worker.get("oneshot_seconds", 0.0),
    }


def check_quality(values: Mapping[str, Any]) -> None:
    """The guard: fail when the relative perplexity increase exceeds the configured bound."""
    increase, bound = values["perplexity_increase"], values["max_perplexity_increase"]
    if not math.isfinite(increase) or increase > bound:
        raise QualityGateFailed(
            f"quantization ({values['method']}) raised the held-out response perplexity from "
            f"{values['perplexity_unquantized']:.4g} to {values['perplexity_quantized']:.4g} "
            f"(+{increase:.1%}), above the bound +{bound:.1%}. Raise "
            "quantize.max_perplexity_increase to accept it, or pick a gentler quantize.method "
            "(w8a8, fp8_dynamic) or more calibration records (quantize.calibration_records)."
        )


def figure_size_and_perplexity(values: Mapping[str, Any]) -> Any:
    """Two bars each: weight size (MB) and held-out response perplexity, before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (size_axis, ppl_axis) = plt.subplots(1, 2, figsize=(8, 3.6))
    labels = ["unquantized", values["method"]]
    sizes = [values["size_mb_unquantized"], values["size_mb_quantized"]]
    perplexities = [values["perplexity_unquantized"], values["perplexity_quantized"]]
    size_axis.bar_label(size_axis.bar(labels, sizes, color=["#a0aec0", "#2b6cb0"]), fmt="%.0f")
    size_axis.set_ylabel("weights (MB)")
    size_axis.set_title(f"Size: x{values['size_ratio']:.2f}")
    bars = ppl_axis.bar(labels, perplexities, color=["#a0aec0", "#dd6b20"])
    ppl_axis.bar_label(bars, fmt="%.2f")
    bound = values["perplexity_unquantized"] * (1 + values["max_perplexity_increase"])
    ppl_axis.axhline(bound, color="#c53030", linestyle="--", linewidth=1, label="bound")
    ppl_axis.legend()
    ppl_axis.set_ylabel("response perplexity (held-out)")
    ppl_axis.set_title(f"Perplexity: {values['perplexity_increase']:+.1%}")
    figure.tight_layout()
    return figure


def write_outputs(source: Path, outputs: QuantizeOutputs, store_uri: str, local_copy: bool) -> None:
    """The task's Model artifact: a copy of the model (local runs), and/or MODEL_URI.txt
    naming the store copy (what KServe's storageUri points at)."""
    dest = Path(outputs.model_dir)
    if dest.exists():
        shutil.rmtree(dest)
    if local_copy:
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns(MODEL_URI_FILE))
    dest.mkdir(parents=True, exist_ok=True)
    if store_uri:
        (dest / MODEL_URI_FILE).write_text(store_uri + "\n", encoding="utf-8")


def store_target(config: QuantizeConfig, remote_input: str) -> str:
    """Where the quantized model goes in the store: the configured prefix, or beside the input
    model when that came from the store (cluster runs always store their models)."""
    if config.model_store:
        return config.model_store.rstrip("/") + "/quantized"
    return f"{remote_input.rstrip('/')}-{config.method}" if remote_input else ""


def publish_outputs(
    config: QuantizeConfig, source: Path, outputs: QuantizeOutputs, remote_input: str
) -> str:
    """Upload (when configured or when the input came from the store), then fill the output."""
    target = store_target(config, remote_input)
    uri = ""
    if target:
        from rtune.components.common.model_store import upload_model

        uri = upload_model(source, target, progress=False).uri
    write_outputs(source, outputs, uri, local_copy=not remote_input)
    return uri


def passthrough_remote(
    config: QuantizeConfig, remote: str, outputs: QuantizeOutputs, run: Any, metrics: Any
) -> dict[str, Any]:
    """``none`` on a model in the store: nothing to load, the same URI goes on."""
    write_outputs(Path(), outputs, remote, local_copy=False)
    values = {"method": "none", "size_ratio": 1.0, "perplexity_increase": 0.0}
    publish_metrics(run, metrics, values, to_parent=True)
    run.set_tags({"rtune.quantization": "none", "rtune.quantized_uri": remote}, to_parent=True)
    return {**values, "model_store_uri": remote}


def run_quantize(
    model_dir: Path,
    selected_path: Path,
    quantize: Mapping[str, Any] | None,
    tracking: Mapping[str, Any] | None,
    kfp_run_id: str,
    outputs: QuantizeOutputs,
    checkpoint_root: str = "",
    metrics: MetricsSink | None = None,
) -> dict[str, Any]:
    """Quantize the model, measure what it cost, guard quality; returns the stage summary."""
    from rtune.components.common.models import resolve_model

    started = time.perf_counter()
    config = from_dict(QuantizeConfig, quantize, "quantize")
    remote = read_model_uri(Path(model_dir))
    with tracked_stage("quantize", kfp_run_id, tracking, config) as run:
        if remote and config.method == "none":
            return passthrough_remote(config, remote, outputs, run, metrics)
        model_path = resolve_model(remote) if remote else Path(model_dir)
        plan = plan_quantization(config, model_path, Path(selected_path), checkpoint_root)
        _log_datasets(run, plan, selected_path)
        quantized, worker, reused = quantized_model(plan)
        values = stage_values(plan, quantized, evaluate(plan, quantized), worker)
        values["seconds"] = round(time.perf_counter() - started, 2)
        publish_metrics(run, metrics, values, to_parent=True)
        _log_artifacts(run, plan, values, worker, reused, outputs)
        check_quality(values)
        uri = publish_outputs(config, quantized, outputs, remote)
        location = uri or str(outputs.model_dir)
        run.set_tags(
            {"rtune.quantization": config.method, "rtune.quantized_uri": location}, to_parent=True
        )
    return {**values, "reused": reused, **({"model_store_uri": uri} if uri else {})}


def _log_datasets(run: Any, plan: QuantizePlan, selected_path: Path) -> None:
    source = str(selected_path)
    if plan.split.calibration and plan.config.method in CALIBRATED:
        run.log_dataset(plan.split.calibration, source, name="calibration", context="calibration")
    run.log_dataset(plan.split.heldout, source, name="heldout", context="evaluation")


def _log_artifacts(
    run: Any,
    plan: QuantizePlan,
    values: Mapping[str, Any],
    worker: Mapping[str, Any],
    reused: bool,
    outputs: QuantizeOutputs,
) -> None:
    figure = figure_size_and_perplexity(values)
    run.log_figure(figure, "figures/quantize_size_perplexity.png")
    run.log_json({**values, "reused": reused, "worker": worker}, "quantize/quantize_summary.json")
    if (plan.work / "recipe.yaml").exists():
        run.log_text(
            (plan.work / "recipe.yaml").read_text(encoding="utf-8"), "quantize/recipe.yaml"
        )
    page = reports.html_report(
        f"Quantize ({values['method']}): size and quality of the compressed model",
        {**values, "reused": reused},
        {"size and perplexity": figure},
        [{"split": "held-out", "id": i} for i in plan.split.heldout_ids]
        + [{"split": "calibration", "id": i} for i in plan.split.calibration_ids],
        "Records per split",
    )
    run.log_text(page, "reports/quantize.html")
    if outputs.report_path is not None:
        Path(outputs.report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(outputs.report_path).write_text(page, encoding="utf-8")
