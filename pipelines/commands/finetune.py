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
import uuid
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune the student on selected records",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--selected", type=Path, required=True, help="training records (JSONL)")
    parser.add_argument("--output-dir", type=Path, required=True, help="adapter/, model/, report")
    parser.add_argument("--config", default=None, help="pipeline config (its finetune section)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--checkpoint-root", default="", help="default $RTUNE_CACHE/checkpoints")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from components.finetune.task import FinetuneOutputs, run_finetune
    from pipelines.config import load_pipeline_config

    config = load_pipeline_config(args.config, args.overrides)
    tracking = {**config.tracking, **({"enabled": False} if args.no_tracking else {})}
    out = args.output_dir
    summary = run_finetune(
        args.selected,
        config.finetune,
        tracking,
        f"cli-{uuid.uuid4().hex[:12]}",
        FinetuneOutputs(out / "adapter", out / "model", out / "report.html"),
        args.checkpoint_root,
        last_stage=False,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0
