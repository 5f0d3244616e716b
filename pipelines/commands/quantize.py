"""``rtune quantize``: compress a fine-tuned model with llm-compressor (the pipeline's quantize stage).

    rtune quantize --model out/model --selected train.jsonl --output-dir q/          # GPTQ W4A16
    rtune quantize --model out/model --selected train.jsonl --output-dir q/ \\
        --set quantize.method=w8a8 --set quantize.max_perplexity_increase=0.1
    rtune quantize ... --set quantize.method=sparse_2of4_w4a16 --set quantize.group_size=64

Writes q/model/ (compressed-tensors, loads in vLLM and transformers) and q/report.html. The
held-out records of --selected measure perplexity before and after; the command fails (exit 1)
when the increase exceeds quantize.max_perplexity_increase. llm-compressor runs in its own
interpreter (.venv-quantize from `make setup`, or $RTUNE_QUANTIZE_PYTHON). Running it again
reuses the finished quantization under --checkpoint-root.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rtune.pipelines.commands.config_flags import (
    add_config_options,
    load_command_config,
    stage_settings,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="quantize a fine-tuned model (llm-compressor) behind a perplexity guard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="merged model folder")
    parser.add_argument(
        "--selected", type=Path, required=True, help="records for calibration + held-out (JSONL)"
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="model/ and report.html")
    from rtune.components.quantize.config import QuantizeConfig

    add_config_options(parser, {"quantize": QuantizeConfig})
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.stage import run_stage
    from rtune.components.quantize.task import QualityGateFailed, QuantizeOutputs, QuantizeStage

    config = load_command_config(args)
    out = args.output_dir
    outputs = QuantizeOutputs(out / "model", out / "report.html")
    stage = QuantizeStage(config.section("quantize"), args.model, args.selected, outputs)
    try:
        summary = run_stage(stage, stage_settings(config))
    except QualityGateFailed as err:
        print(f"rtune quantize: quality gate failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary.as_dict(), indent=2, default=str))
    return 0
