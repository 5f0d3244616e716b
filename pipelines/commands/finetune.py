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

from rtune.pipelines.commands.config_flags import (
    add_config_options,
    load_command_config,
    stage_settings,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune the student on selected records",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--selected",
        type=Path,
        required=True,
        help="flat training records (JSONL: instruction, input, output), e.g. the --selected "
        "file of `rtune select --phase rifd`",
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="adapter/, model/, report")
    from rtune.components.finetune.config import FinetuneConfig

    add_config_options(parser, {"finetune": FinetuneConfig})
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.stage import run_stage
    from rtune.components.finetune.task import FinetuneOutputs, FinetuneStage

    config = load_command_config(args)
    out = args.output_dir
    outputs = FinetuneOutputs(out / "adapter", out / "model", out / "report.html")
    stage = FinetuneStage(config.section("finetune"), args.selected, outputs)
    summary = run_stage(stage, stage_settings(config))
    print(json.dumps(summary.as_dict(), indent=2, default=str))
    return 0
