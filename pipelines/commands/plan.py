"""``rtune plan``: per-GPU memory of each method x ZeRO stage x offload, and the config that fits.

    rtune plan --model-size 70B --gpus-per-node 8 --nodes 2 --method full
    rtune plan --model-size 8B --gpus-per-node 8 --nodes 1 --method all --json
    rtune plan --model path/to/model/config.json --gpus-per-node 4 --gpu-memory-gib 24 --method qlora

Model states come from DeepSpeed's own estimators (ZeRO-2/3; ZeRO-0 = nothing partitioned);
activations from Korthikanti et al.'s per-block formula; the formulas and the recommendation rule
are in components/finetune/plan.py. The recommendation prefers ZeRO-3, then ZeRO-3 with optimizer
and parameter offload, and names the shipped DeepSpeed config (zero3, zero3_offload) and the
pipelines/configs file whose finetune: section it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
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
    import json

    from rtune.components.common.records import InputError
    from rtune.components.finetune import plan

    if args.method not in METHOD_CHOICES:
        raise InputError(
            "rtune plan",
            f"unknown --method {args.method!r}",
            f"use one of {list(METHOD_CHOICES)}",
            field="--method",
        )
    shape = (
        plan.shape_from_config(args.model)
        if args.model
        else plan.shape_for_size(args.model_size or "135M")
    )
    inputs = plan.PlanInputs(
        gpus_per_node=args.gpus_per_node,
        nodes=args.nodes,
        gpu_memory_gib=args.gpu_memory_gib,
        cpu_memory_gib_per_node=args.cpu_memory_gib_per_node,
        max_length=args.max_length,
        micro_batch=args.micro_batch,
        gradient_checkpointing=args.gradient_checkpointing,
        lora_r=args.lora_r,
    )
    methods = list(plan.METHODS) if args.method == "all" else [args.method]
    estimators = plan.load_estimators()
    rows = plan.plan_rows(shape, methods, inputs, estimators)
    recommendations = [plan.recommend(shape, method, inputs, estimators) for method in methods]
    for rec in recommendations:
        found = plan.matching_pipeline_configs(rec, shape.size, CONFIG_DIR)
        rec.pipeline_configs = [_shown(path) for path in found]
    if args.json:
        print(
            json.dumps(plan.plan_json(shape, inputs, estimators, rows, recommendations), indent=2)
        )
        return 0
    lines = [*plan.header_lines(shape, methods, inputs, estimators), "", *plan.format_table(rows)]
    for rec in recommendations:
        lines += ["", *plan.format_recommendation(rec)]
    print("\n".join(lines))
    return 0


def _shown(path: Path) -> str:
    """The config's path relative to the repository (pipelines/configs/x.yaml)."""
    return str(path.relative_to(CONFIG_DIR.parents[1]))
