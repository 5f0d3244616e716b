"""What the quantize stage reports: its numbers (size and perplexity before and after), the
figure, and what goes to MLflow and the KFP HTML output (datasets, summary, recipe, report page)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rtune.components.common import reports
from rtune.components.quantize.config import CALIBRATED
from rtune.components.quantize.perplexity import MB, Perplexity, weight_bytes
from rtune.components.quantize.plan import QuantizePlan


def stage_values(
    plan: QuantizePlan,
    quantized: Path,
    perplexities: Mapping[str, Perplexity],
    worker: Mapping[str, Any],
) -> dict[str, Any]:
    """The stage's numbers: weight sizes and held-out perplexities before and after, the bound
    the guard checks them against, and what the split and the worker measured."""
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


def log_datasets(run: Any, plan: QuantizePlan, selected_path: Path) -> None:
    """The held-out records (and the calibration records, when the method calibrates) as MLflow
    datasets, so a run names exactly what it was calibrated and judged on."""
    source = str(selected_path)
    if plan.split.calibration and plan.config.method in CALIBRATED:
        run.log_dataset(plan.split.calibration, source, name="calibration", context="calibration")
    run.log_dataset(plan.split.heldout, source, name="heldout", context="evaluation")


def log_artifacts(
    run: Any,
    plan: QuantizePlan,
    values: Mapping[str, Any],
    worker: Mapping[str, Any],
    reused: bool,
    report_path: Path | None,
) -> None:
    """The figure, the summary (with the worker's), the recipe and the HTML report to MLflow;
    the report also to the KFP HTML output when there is one."""
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
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(page, encoding="utf-8")
