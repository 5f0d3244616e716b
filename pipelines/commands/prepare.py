"""``rtune prepare``: check, normalise and de-duplicate seed data into contract JSONL.

    rtune prepare --input builtin:seed --output work/seed.jsonl
    rtune prepare --input alpaca_data.json --output work/seed.jsonl --limit 200 --count-tokens false
    AWS_ENDPOINT_URL=http://minio:9000 rtune prepare --input s3://data/alpaca.parquet \\
        --output s3://data/prepared/seed.jsonl

Tokens are counted with the student's tokenizer (``student.tokenizer``, else ``student.model``);
``--count-tokens false`` estimates chars/4 instead (``--tokenizer none`` in earlier releases).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from rtune.components.prepare.config import PrepareConfig
from rtune.pipelines.commands.config_flags import (
    DEST_PREFIX,
    add_config_options,
    load_command_config,
    stage_settings,
)

NO_TOKENIZER = "none"  # `--tokenizer none`: the old spelling of `--count-tokens false`
ALIASES = {"--tokenizer": "student.tokenizer"}  # flags of earlier releases


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="validate, normalise and de-duplicate seed data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input",
        required=True,
        metavar="URI",
        help="JSON array, JSONL, Parquet or a datasets save_to_disk folder; a local path, "
        "an s3:// URI, or builtin:seed (the shipped sample)",
    )
    parser.add_argument(
        "--output", required=True, metavar="URI", help="JSONL to write (local path or s3:// URI)"
    )
    add_config_options(parser, {"prepare": PrepareConfig}, ALIASES)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.components.common import storage
    from rtune.components.common.stage import run_stage
    from rtune.components.prepare.task import PrepareStage

    config = load_command_config(args, defaults=tokenizer_none_alias(args))
    prepare = config.section("prepare")
    settings = stage_settings(config)
    if not storage.is_s3(args.output):
        summary = run_stage(PrepareStage(prepare, args.input, Path(args.output)), settings)
    else:
        with tempfile.TemporaryDirectory(prefix="rtune-prepare-") as tmp:
            local = Path(tmp) / "prepared.jsonl"
            summary = run_stage(PrepareStage(prepare, args.input, local), settings)
            storage.upload_file(local, args.output, prepare.s3_endpoint)
    print(f"prepare: {summary.line()} -> {args.output}")
    return 0


def tokenizer_none_alias(args: argparse.Namespace) -> list[str]:
    """``--tokenizer none`` meant "no tokenizer, estimate chars/4": ``prepare.count_tokens=false``.

    Taken out of the flags (``none`` is no model) and given as a default, so an explicit
    ``--count-tokens`` or ``--set`` still wins.
    """
    dest = DEST_PREFIX + "student.tokenizer"
    if getattr(args, dest, None) != NO_TOKENIZER:
        return []
    delattr(args, dest)
    return ["prepare.count_tokens=false"]
