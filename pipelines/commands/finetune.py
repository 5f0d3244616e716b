"""``rtune finetune``: fine-tune the student on selected records (the pipeline's finetune stage).

    rtune finetune --selected train.jsonl --output-dir out/                 # LoRA, embedded model
    rtune finetune --selected train.jsonl --output-dir out/ \\
        --config pipelines/configs/local.yaml --set finetune.max_steps=20
    rtune finetune ... --set finetune.launcher=torchrun --set finetune.nproc_per_node=2 \\
        --set finetune.deepspeed=zero3

Writes out/adapter/ (LoRA), out/model/ (merged full model), out/report.html. Settings come from
the ``finetune`` (and ``tracking``) section of a pipeline config plus ``--set`` overrides. Running
it again resumes from the last checkpoint under --checkpoint-root.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rtune.pipelines.commands.stage_options import add_stage_options, cli_run_id, load_stage_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune the student on selected records",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--selected", type=Path, required=True, help="training records (JSONL)")
    parser.add_argument("--output-dir", type=Path, required=True, help="adapter/, model/, report")
    add_stage_options(parser, "finetune")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.components.finetune.task import FinetuneOutputs, run_finetune

    config, tracking = load_stage_config(args)
    out = args.output_dir
    summary = run_finetune(
        args.selected,
        config.finetune,
        tracking,
        cli_run_id(),
        FinetuneOutputs(out / "adapter", out / "model", out / "report.html"),
        args.checkpoint_root,
        last_stage=False,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0
