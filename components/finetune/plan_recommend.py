"""Which fine-tuning config to run: the preferred fitting row of a method, and why.

**Recommendation** (``recommend``): among the fitting rows of the requested method, prefer ZeRO-3
without offload (the distributed default, no PCIe traffic), then ZeRO-3 with optimizer+parameter
offload (slower, but the way a large model fits on few GPUs). ZeRO-2 and ZeRO-0 are shown for
comparison and recommended only when no ZeRO-3 row fits and one of them does (ZeRO-3 needs the
least GPU memory, so this happens only through CPU RAM). If nothing fits, the recommendation says
so and names how many nodes would make a ZeRO-3 row fit and which lighter methods fit now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rtune.components.finetune.plan_memory import (
    METHODS,
    Estimators,
    PlanInputs,
    PlanRow,
    in_gib,
    plan_rows,
)
from rtune.components.finetune.plan_shapes import ModelShape

PREFERENCE = ((3, False), (3, True), (2, False), (2, True), (0, False))
MAX_SUGGESTED_NODES = 64


@dataclass
class Recommendation:
    """The chosen row of one method (None when nothing fits), why, and where it is shipped."""

    method: str
    row: PlanRow | None
    reason: str
    nodes: int
    gpus_per_node: int
    pipeline_configs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        row = self.row
        return {
            "method": self.method,
            "fits": row is not None,
            "zero_stage": row.zero_stage if row else None,
            "offload": row.offload_label if row else None,
            "deepspeed": row.deepspeed if row else None,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "gpu_total_gib": in_gib(row.gpu_total) if row else None,
            "cpu_per_node_gib": in_gib(row.cpu_per_node) if row else None,
            "pipeline_configs": self.pipeline_configs,
            "reason": self.reason,
        }


def recommend(
    shape: ModelShape, method: str, inputs: PlanInputs, estimators: Estimators
) -> Recommendation:
    """Apply the preference order (see top) to ``method``'s rows; explain the choice."""
    rows = {(r.zero_stage, r.offload): r for r in plan_rows(shape, [method], inputs, estimators)}
    chosen = next((rows[key] for key in PREFERENCE if rows[key].fits), None)
    base = Recommendation(method, chosen, "", inputs.nodes, inputs.gpus_per_node)
    if chosen is None:
        base.reason = _nothing_fits(shape, method, inputs, estimators, rows)
    elif chosen.zero_stage == 3 and not chosen.offload:
        base.reason = "ZeRO-3 without offload fits: the distributed default, no CPU<->GPU traffic"
    elif chosen.zero_stage == 3:
        base.reason = (
            f"ZeRO-3 without offload needs {_need(rows[3, False], inputs)}; offloading the "
            f"optimizer states and parameters to CPU brings it to {in_gib(chosen.gpu_total)} GiB "
            f"per GPU at {in_gib(chosen.cpu_per_node)} GiB CPU per node"
        )
    else:
        base.reason = (
            f"ZeRO-3 does not fit (without offload: {_need(rows[3, False], inputs)}; with "
            f"offload: {_need(rows[3, True], inputs)}), {chosen.describe()} does"
        )
    return base


def _need(row: PlanRow, inputs: PlanInputs) -> str:
    """What a row needs against the limits, for a reason sentence."""
    parts = [f"{in_gib(row.gpu_total)} GiB per GPU (limit {in_gib(inputs.gpu_limit_bytes)})"]
    if not row.fits_cpu:
        parts.append(
            f"{in_gib(row.cpu_per_node)} GiB CPU per node (have {inputs.cpu_memory_gib_per_node:g})"
        )
    return " and ".join(parts)


def _nothing_fits(
    shape: ModelShape,
    method: str,
    inputs: PlanInputs,
    estimators: Estimators,
    rows: Mapping[Any, PlanRow],
) -> str:
    """Say that nothing fits, the smallest need, how many nodes would fit, and lighter methods."""
    smallest = min(rows.values(), key=lambda r: r.gpu_total)
    advice = [
        f"nothing fits for {method}: the smallest per-GPU need is {smallest.describe()}, {_need(smallest, inputs)}"
    ]
    for nodes in range(inputs.nodes + 1, MAX_SUGGESTED_NODES + 1):
        bigger = replace(inputs, nodes=nodes)
        fitting = [
            r
            for r in plan_rows(shape, [method], bigger, estimators)
            if r.fits and r.zero_stage == 3
        ]
        if fitting:
            advice.append(
                f"{nodes} nodes x {inputs.gpus_per_node} GPUs would fit {fitting[0].describe()}"
            )
            break
    else:
        advice.append(f"no ZeRO-3 row fits even on {MAX_SUGGESTED_NODES} nodes: use larger GPUs")
    lighter = [m for m in METHODS if _lighter(m, method)]
    fits_now = [
        m for m in lighter if any(r.fits for r in plan_rows(shape, [m], inputs, estimators))
    ]
    if fits_now:
        advice.append(f"or use --method {' / '.join(fits_now)}, which fits on this hardware")
    elif lighter:
        advice.append(f"--method {' / '.join(lighter)} does not fit either")
    return "; ".join(advice)


def _lighter(candidate: str, method: str) -> bool:
    order = {"qlora": 0, "lora": 1, "full": 2}
    return order[candidate] < order[method]
