"""``rtune prepare``: check, normalise and de-duplicate seed data into contract JSONL.

    rtune prepare --input builtin:seed --output work/seed.jsonl
    rtune prepare --input alpaca_data.json --output work/seed.jsonl --limit 200 --tokenizer none
    AWS_ENDPOINT_URL=http://minio:9000 rtune prepare --input s3://data/alpaca.parquet \\
        --output s3://data/prepared/seed.jsonl
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

NO_TOKENIZER = "none"


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
    parser.add_argument(
        "--max-length",
        type=int,
        metavar="N",
        default=2048,
        help="flag records longer than this many student tokens as too_long (default 2048)",
    )
    parser.add_argument(
        "--limit", type=int, metavar="N", help="keep only the first N records after dedupe"
    )
    parser.add_argument(
        "--tokenizer",
        default="default",
        metavar="MODEL",
        help="model whose tokenizer counts tokens: 'default' (embedded), a model folder, an "
        f"s3:// prefix, or '{NO_TOKENIZER}' for a chars/4 estimate",
    )
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3 endpoint URL (MinIO, moto); default $AWS_ENDPOINT_URL",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.components.common import storage
    from rtune.components.common.config import from_dict
    from rtune.components.prepare.config import PrepareConfig
    from rtune.components.prepare.prepare import prepare_dataset

    config = from_dict(
        PrepareConfig,
        {
            "max_length": args.max_length,
            "tokenizer": None if args.tokenizer == NO_TOKENIZER else args.tokenizer,
            "limit": args.limit,
            "s3_endpoint": args.s3_endpoint,
        },
        source="rtune prepare flags",
    )
    if not storage.is_s3(args.output):
        summary = prepare_dataset(args.input, Path(args.output), config)
    else:
        with tempfile.TemporaryDirectory(prefix="rtune-prepare-") as tmp:
            local = Path(tmp) / "prepared.jsonl"
            summary = prepare_dataset(args.input, local, config)
            storage.upload_file(local, args.output, config.s3_endpoint)
    print(f"prepare: {summary.one_line()} -> {args.output}")
    return 0
