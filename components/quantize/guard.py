"""The quality guard: response perplexity of both models on the held-out records, and the stage
fails when ``perplexity_quantized / perplexity_unquantized - 1`` exceeds
``quantize.max_perplexity_increase`` (a NaN increase fails too)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rtune.components.quantize.data import texts_digest
from rtune.components.quantize.perplexity import Perplexity
from rtune.components.quantize.plan import QuantizePlan

EVALUATION_FILE = "evaluation.json"


class QualityGateFailed(RuntimeError):
    """The quantized model lost more quality than ``quantize.max_perplexity_increase`` allows."""


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
