"""``rtune score``: IFD and reversed IFD of records with the student model.

    rtune score --input alpaca_data.json --output scored.jsonl            # flat records
    rtune score --input phase1.jsonl --output scores-0.jsonl --candidates ifd \\
        --shard-index 0 --num-shards 4                                  # DAG candidates, one shard
    rtune score --input data.jsonl --output s.jsonl --model ./llama --template alpaca \\
        --max-length 2048 --batch-tokens 4096

Without --candidates each record (instruction, input, output) gains ifd, rifd, ifd_loss,
rifd_loss, the four mean losses and reason. With --candidates ifd|rifd the output has one row
{"id", "candidate", "scores"} per scored candidate (ori and Q | A or QA) of the shard; a killed
run resumes from <output>.partial.jsonl (or --checkpoint) when re-run unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rtune.components.scoring.config import ScoringConfig
from rtune.pipelines.commands.config_flags import (
    add_config_options,
    load_command_config,
    stage_settings,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "score",
        help="student IFD / r-IFD scores",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input",
        type=Path,
        required=True,
        help="records with instruction, input, output (JSONL or JSON array; any file); with "
        "--candidates: the reflect stage's output (phase ifd: reflect_instruction, rifd: "
        "reflect_response)",
    )
    parser.add_argument("--output", type=Path, required=True, help="output JSONL")
    parser.add_argument(
        "--candidates",
        metavar="PHASE",
        help="score DAG candidates instead of flat records: ifd (ori, Q) or rifd (A or QA)",
    )
    parser.add_argument("--shard-index", type=int, default=0, metavar="I", help="default 0")
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint (default: <output>.partial.jsonl)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_options(parser, {"scoring": ScoringConfig})
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.records import InputError
    from rtune.components.common.stage import run_stage
    from rtune.components.scoring.stage import PHASE_CANDIDATES
    from rtune.components.scoring.task import ScoreFileStage, ScoreShardStage

    config = load_command_config(args)
    scoring = config.section("scoring")
    progress = not args.no_progress
    stage: Any
    if args.candidates is None:
        stage = ScoreFileStage(scoring, args.input, args.output, progress)
    else:
        if args.candidates not in PHASE_CANDIDATES:
            raise InputError(
                "rtune score flags",
                f"unknown --candidates {args.candidates!r}",
                f"use one of {sorted(PHASE_CANDIDATES)}",
                field="--candidates",
            )
        if not 0 <= args.shard_index < scoring.num_shards:
            raise InputError(
                "rtune score flags",
                f"shard {args.shard_index} of {scoring.num_shards} does not exist",
                "use --num-shards N >= 1 and 0 <= --shard-index < N",
                field="--shard-index",
            )
        checkpoint = args.checkpoint or args.output.with_name(args.output.name + ".partial.jsonl")
        stage = ScoreShardStage(
            scoring,
            args.candidates,
            args.shard_index,
            args.input,
            args.output,
            checkpoint,
            progress,
        )
    summary = run_stage(stage, stage_settings(config))
    print(f"score: {summary.line()} -> {args.output}")
    return 0
