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

from rtune.components.common.stage import StageContext
from rtune.components.common.student import stage_config
from rtune.components.quantize.config import QuantizeConfig
from rtune.components.quantize.guard import QualityGateFailed, check_quality, evaluate
from rtune.components.quantize.outputs import passthrough_remote, publish_outputs, read_model_uri
from rtune.components.quantize.plan import plan_quantization
from rtune.components.quantize.report import log_artifacts, log_datasets, stage_values
from rtune.components.quantize.worker_control import quantized_model

# What the component and the CLI import from here; QualityGateFailed is what a caller catches.
__all__ = ["QualityGateFailed", "QuantizeOutputs", "QuantizeStage"]


@dataclass
class QuantizeOutputs:
    """Where the task writes: the Model artifact folder and the KFP HTML report (if any)."""

    model_dir: Path
    report_path: Path | None = None


@dataclass
class QuantizeSummary:
    values: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return self.values

    def line(self) -> str:
        v = self.values
        if v.get("method") == "none":
            return "method none: the fine-tuned model goes on unchanged"
        return (
            f"{v['method']} {v.get('size_mb_quantized', 0):.0f} MB (was "
            f"{v.get('size_mb_unquantized', 0):.0f} MB, x{v.get('size_ratio', 0):.2f}), response "
            f"perplexity {v.get('perplexity_unquantized', float('nan')):.2f} -> "
            f"{v.get('perplexity_quantized', float('nan')):.2f}"
        )

    def artifact_metadata(self) -> dict[str, Any]:
        return {k: v for k, v in self.values.items() if isinstance(v, str | int | float)}


@dataclass
class QuantizeStage:
    """The merged model and the selected records in; the compressed model out, quality guarded."""

    config: QuantizeConfig
    model: Path
    selected: Path
    outputs: QuantizeOutputs
    name: str = "quantize"

    @classmethod
    def from_parameters(
        cls,
        student: Mapping[str, Any] | None,
        quantize: Mapping[str, Any] | None,
        model: Path,
        selected: Path,
        outputs: QuantizeOutputs,
    ) -> QuantizeStage:
        config = stage_config(QuantizeConfig, "quantize", quantize, student)
        return cls(config, model, selected, outputs)

    def run(self, context: StageContext) -> QuantizeSummary:
        """Quantize the model, measure what it cost, guard quality (raises QualityGateFailed)."""
        from rtune.components.common.models import resolve_model

        started = time.perf_counter()
        config, run, outputs = self.config, context.run, self.outputs
        remote = read_model_uri(Path(self.model))
        if remote and config.method == "none":
            return QuantizeSummary(passthrough_remote(config, remote, outputs.model_dir, run))
        model_path = resolve_model(remote) if remote else Path(self.model)
        plan = plan_quantization(config, model_path, Path(self.selected), context.checkpoint_dir)
        log_datasets(run, plan, self.selected)
        quantized, worker, reused = quantized_model(plan)
        values = stage_values(plan, quantized, evaluate(plan, quantized), worker)
        values["seconds"] = round(time.perf_counter() - started, 2)
        context.publish(values)  # the numbers also when the guard fails next
        log_artifacts(run, plan, values, worker, reused, outputs.report_path)
        check_quality(values)
        uri = publish_outputs(config, quantized, outputs.model_dir, remote, context.run_id)
        location = uri or str(outputs.model_dir)
        run.set_tags(
            {"rtune.quantization": config.method, "rtune.quantized_uri": location}, to_parent=True
        )
        return QuantizeSummary(
            {**values, "reused": reused, **({"model_store_uri": uri} if uri else {})}
        )
