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

# flag dest -> ScoringConfig field; flags left unset keep the config's defaults.
CONFIG_FLAGS = {
    "model": "model",
    "template": "template",
    "max_length": "max_length",
    "reverse_prompt": "reverse_prompt",
    "batch_tokens": "batch_tokens",
    "dtype": "dtype",
    "start_token": "start_token",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "score",
        help="student IFD / r-IFD scores",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ScoringConfig()
    parser.add_argument("--input", type=Path, required=True, help="JSONL (or JSON array) records")
    parser.add_argument("--output", type=Path, required=True, help="output JSONL")
    parser.add_argument("--model", help=f"student model (default {defaults.model!r})")
    parser.add_argument(
        "--template", help=f"vicuna|alpaca|wizardlm|chat|none (default {defaults.template})"
    )
    parser.add_argument(
        "--max-length", type=int, metavar="N", help=f"default {defaults.max_length}"
    )
    parser.add_argument(
        "--reverse-prompt", metavar="TEXT", help="r-IFD request wording; {output} marks y"
    )
    parser.add_argument(
        "--batch-tokens",
        type=int,
        metavar="N",
        help=f"token budget per forward batch (default {defaults.batch_tokens})",
    )
    parser.add_argument("--dtype", help=f"model dtype (default {defaults.dtype}; keep it on CPU)")
    parser.add_argument(
        "--start-token", help="'auto' (default), 'none', or a token prepended to every pass"
    )
    parser.add_argument(
        "--candidates",
        metavar="PHASE",
        help="score DAG candidates instead of flat records: ifd (ori, Q) or rifd (A or QA)",
    )
    parser.add_argument("--shard-index", type=int, default=0, metavar="I", help="default 0")
    parser.add_argument("--num-shards", type=int, default=1, metavar="N", help="default 1")
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint (default: <output>.partial.jsonl)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.config import from_dict
    from rtune.components.common.records import InputError
    from rtune.components.scoring.stage import PHASE_CANDIDATES, score_candidates, score_file

    values = {field: getattr(args, flag) for flag, field in CONFIG_FLAGS.items()}
    config = from_dict(
        ScoringConfig,
        {field: value for field, value in values.items() if value is not None},
        source="rtune score flags",
    )
    progress = not args.no_progress
    if args.candidates is None:
        summary = score_file(args.input, args.output, config, progress=progress)
    else:
        if args.candidates not in PHASE_CANDIDATES:
            raise InputError(
                "rtune score flags",
                f"unknown --candidates {args.candidates!r}",
                f"use one of {sorted(PHASE_CANDIDATES)}",
                field="--candidates",
            )
        if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
            raise InputError(
                "rtune score flags",
                f"shard {args.shard_index} of {args.num_shards} does not exist",
                "use --num-shards N >= 1 and 0 <= --shard-index < N",
                field="--shard-index",
            )
        summary = score_candidates(
            args.input,
            args.output,
            config,
            args.candidates,
            shard_index=args.shard_index,
            num_shards=args.num_shards,
            checkpoint_path=args.checkpoint,
            progress=progress,
        )
    print(f"score: {summary.line()} -> {args.output}")
    return 0
