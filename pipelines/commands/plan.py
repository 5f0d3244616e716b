"""``rtune plan``: per-GPU memory of each method x ZeRO stage x offload, and the config that fits.

    rtune plan --model-size 70B --gpus-per-node 8 --nodes 2 --method full
    rtune plan --model-size 8B --gpus-per-node 8 --nodes 1 --method all --json
    rtune plan --model path/to/model/config.json --gpus-per-node 4 --gpu-memory-gib 24 --method qlora

Model states come from DeepSpeed's own estimators (ZeRO-2/3; ZeRO-0 = nothing partitioned);
activations from Korthikanti et al.'s per-block formula; the formulas are in
components/finetune/plan_memory.py, the recommendation rule in plan_recommend.py. The
recommendation prefers ZeRO-3, then ZeRO-3 with optimizer and parameter offload, and names the
shipped DeepSpeed config (zero3, zero3_offload) and the pipelines/configs file whose finetune:
section it is (plan_configs.py). The table, header and JSON are rendered here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

# stdlib-only and small (~15 ms): cheap enough to load with the CLI's parser
from rtune.components.common.records import InputError
from rtune.components.finetune.plan_memory import (
    GPU_HEADROOM,
    METHODS,
    Estimators,
    PlanInputs,
    PlanRow,
    in_gib,
    load_estimators,
    lora_trainable_params,
    plan_rows,
)
from rtune.components.finetune.plan_recommend import Recommendation, recommend
from rtune.components.finetune.plan_shapes import ModelShape, shape_for_size, shape_from_config

METHOD_CHOICES = ("lora", "qlora", "full", "all")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="per-GPU memory plan for fine-tuning (method x ZeRO stage x offload)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument(
        "--model-size", default=None, help="135M (default) | 8B | 70B | 405B (Llama-3.1 shapes)"
    )
    model.add_argument("--model", type=Path, help="a Hugging Face config.json or its model folder")
    parser.add_argument("--method", default="lora", help="lora (default) | qlora | full | all")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="default 8")
    parser.add_argument("--nodes", type=int, default=1, help="default 1")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="per GPU, default 80")
    parser.add_argument(
        "--cpu-memory-gib-per-node", type=float, default=1024.0, help="CPU RAM, default 1024"
    )
    parser.add_argument("--max-length", type=int, default=2048, help="tokens per row, default 2048")
    parser.add_argument("--micro-batch", type=int, default=1, help="rows per GPU step, default 1")
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="checkpoint every decoder layer (default on)",
    )
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank, default 16")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.pipelines.commands.plan_configs import CONFIG_DIR, matching_pipeline_configs, shown

    if args.method not in METHOD_CHOICES:
        raise InputError(
            "rtune plan",
            f"unknown --method {args.method!r}",
            f"use one of {list(METHOD_CHOICES)}",
            field="--method",
        )
    shape = (
        shape_from_config(args.model) if args.model else shape_for_size(args.model_size or "135M")
    )
    inputs = PlanInputs(
        gpus_per_node=args.gpus_per_node,
        nodes=args.nodes,
        gpu_memory_gib=args.gpu_memory_gib,
        cpu_memory_gib_per_node=args.cpu_memory_gib_per_node,
        max_length=args.max_length,
        micro_batch=args.micro_batch,
        gradient_checkpointing=args.gradient_checkpointing,
        lora_r=args.lora_r,
    )
    methods = list(METHODS) if args.method == "all" else [args.method]
    estimators = load_estimators()
    rows = plan_rows(shape, methods, inputs, estimators)
    recommendations = [recommend(shape, method, inputs, estimators) for method in methods]
    for rec in recommendations:
        found = matching_pipeline_configs(rec, shape.size, CONFIG_DIR)
        rec.pipeline_configs = [shown(path) for path in found]
    if args.json:
        print(json.dumps(plan_json(shape, inputs, estimators, rows, recommendations), indent=2))
        return 0
    lines = [*header_lines(shape, methods, inputs, estimators), "", *format_table(rows)]
    for rec in recommendations:
        lines += ["", *format_recommendation(rec)]
    print("\n".join(lines))
    return 0


def plan_json(
    shape: ModelShape,
    inputs: PlanInputs,
    estimators: Estimators,
    rows: list[PlanRow],
    recommendations: list[Recommendation],
) -> dict[str, Any]:
    """The plan as JSON-ready data (``rtune plan --json``): GiB rounded, bytes exact."""
    return {
        "model": {
            "name": shape.name,
            "size": shape.size or None,
            "total_params": shape.total_params,
            "largest_layer_params": shape.largest_layer_params,
            "lora_trainable_params": lora_trainable_params(shape, inputs.lora_r),
        },
        "inputs": asdict(inputs),
        "gpu_limit_gib": in_gib(inputs.gpu_limit_bytes),
        "estimator": estimators.source,
        "rows": [row.to_dict() for row in rows],
        "recommendations": [rec.to_dict() for rec in recommendations],
    }


def header_lines(
    shape: ModelShape, methods: Iterable[str], inputs: PlanInputs, estimators: Estimators
) -> list[str]:
    """The model, the hardware and the assumptions, above the table."""
    lines = [
        f"model: {shape.name}: {shape.total_params / 1e9:.2f} B params, largest layer "
        f"{shape.largest_layer_params / 1e6:.1f} M (hidden {shape.hidden}, {shape.layers} layers, "
        f"vocab {shape.vocab})",
        f"hardware: {inputs.nodes} node(s) x {inputs.gpus_per_node} GPU(s) of {inputs.gpu_memory_gib:g} GiB "
        f"(fits if <= {GPU_HEADROOM:.0%} = {in_gib(inputs.gpu_limit_bytes)} GiB), "
        f"{inputs.cpu_memory_gib_per_node:g} GiB CPU RAM per node",
        f"run: max_length {inputs.max_length}, micro batch {inputs.micro_batch}, gradient checkpointing "
        f"{'on' if inputs.gradient_checkpointing else 'off'}, buffer {inputs.buffer_gib:g} GiB per GPU "
        "(CUDA context, NCCL, fragmentation)",
        f"model states: {estimators.source}",
    ]
    if any(m != "full" for m in methods):
        trainable = lora_trainable_params(shape, inputs.lora_r)
        lines.append(
            f"lora/qlora: r={inputs.lora_r} on q,k,v,o,gate,up,down: {trainable / 1e6:.1f} M trainable; "
            f"frozen base bf16 (lora) or NF4 (qlora)"
        )
    return lines


def format_table(rows: list[PlanRow]) -> list[str]:
    """One line per row, memory in GiB."""
    head = f"{'method':<6} {'zero':>4}  {'offload':<16} {'states':>9} {'activ.':>8} {'buffer':>7} {'GPU total':>10} {'CPU/node':>10}  fits"
    lines = [head, "-" * len(head)]
    for r in rows:
        fits = (
            "yes"
            if r.fits
            else "no ("
            + ", ".join(part for part, ok in (("GPU", r.fits_gpu), ("CPU", r.fits_cpu)) if not ok)
            + ")"
        )
        lines.append(
            f"{r.method:<6} {r.zero_stage:>4}  {r.offload_label:<16} {in_gib(r.model_states):>9.2f} "
            f"{in_gib(r.activations):>8.2f} {in_gib(r.buffer):>7.2f} {in_gib(r.gpu_total):>10.2f} "
            f"{in_gib(r.cpu_per_node):>10.2f}  {fits}"
        )
    return lines


def format_recommendation(rec: Recommendation) -> list[str]:
    """The recommended config, the shipped names it maps to, and why."""
    row = rec.row
    if row is None:
        return [f"recommended ({rec.method}): none fits", f"  why: {rec.reason}"]
    if row.deepspeed:
        shipped = f"DeepSpeed config: components/finetune/deepspeed/{row.deepspeed}.json"
    else:
        shipped = (
            f"no shipped DeepSpeed config: write a JSON with zero_optimization.stage {row.zero_stage}"
            + (" and offload_optimizer cpu" if row.offload else "")
        )
    lines = [
        f"recommended ({rec.method}): ZeRO-{row.zero_stage}, offload {row.offload_label} -> "
        f"finetune: method {rec.method}, deepspeed {row.deepspeed or '(none shipped)'}, "
        f"nodes {rec.nodes}, gpus_per_node {rec.gpus_per_node}",
        f"  {shipped}",
    ]
    if rec.pipeline_configs:
        lines.append(f"  matches: {', '.join(rec.pipeline_configs)}")
    lines.append(f"  why: {rec.reason}")
    return lines
