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

This module is the glue; each step lives in its own module: ``plan`` (split, token passes, work
folder), ``worker_control`` (the llm-compressor worker), ``guard`` (perplexities, quality bound),
``report`` (numbers, figure, MLflow, HTML), ``outputs`` (Model artifact, model store).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtune.components.common.config import from_dict
from rtune.components.common.stage import MetricsSink, publish_metrics, tracked_stage
from rtune.components.quantize.config import QuantizeConfig
from rtune.components.quantize.guard import QualityGateFailed, check_quality, evaluate
from rtune.components.quantize.outputs import passthrough_remote, publish_outputs, read_model_uri
from rtune.components.quantize.plan import plan_quantization
from rtune.components.quantize.report import log_artifacts, log_datasets, stage_values
from rtune.components.quantize.worker_control import quantized_model

# What the component and the CLI import from here; QualityGateFailed is what a caller catches.
__all__ = ["QualityGateFailed", "QuantizeOutputs", "run_quantize"]


@dataclass
class QuantizeOutputs:
    """Where the task writes: the Model artifact folder and the KFP HTML report (if any)."""

    model_dir: Path
    report_path: Path | None = None


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
            return passthrough_remote(config, remote, outputs.model_dir, run, metrics)
        model_path = resolve_model(remote) if remote else Path(model_dir)
        plan = plan_quantization(config, model_path, Path(selected_path), checkpoint_root)
        log_datasets(run, plan, selected_path)
        quantized, worker, reused = quantized_model(plan)
        values = stage_values(plan, quantized, evaluate(plan, quantized), worker)
        values["seconds"] = round(time.perf_counter() - started, 2)
        publish_metrics(run, metrics, values, to_parent=True)
        log_artifacts(run, plan, values, worker, reused, outputs.report_path)
        check_quality(values)
        uri = publish_outputs(config, quantized, outputs.model_dir, remote)
        location = uri or str(outputs.model_dir)
        run.set_tags(
            {"rtune.quantization": config.method, "rtune.quantized_uri": location}, to_parent=True
        )
    return {**values, "reused": reused, **({"model_store_uri": uri} if uri else {})}
