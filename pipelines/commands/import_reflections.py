"""``rtune import``: reflections made elsewhere instead of the teacher (no teacher call).

    rtune import --records prepared.jsonl --source examples/import/reference \\
        --output reflected.jsonl                     # phase 1: ori + Q (+ reflected.responses.jsonl)
    rtune import --stage response --records phase1.jsonl \\
        --responses reflected.responses.jsonl --output responses.jsonl   # phase 2: A or QA

--source (default: the config's teacher.import_uri) is a folder or s3:// prefix holding the
reference pipeline's four aligned files ori.json, Q.json, A.json, QA.json (.jsonl too), or one
JSONL with {"id"?, "candidates": {"ori", "Q", "A", "QA"}} per line. Phase 1 writes what
`rtune reflect --stage instruction` writes, phase 2 what `rtune reflect --stage response` writes,
so `rtune score` and `rtune select` run on them unchanged. README: "Bring your own reflections".
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rtune.pipelines.commands.config_flags import (
    add_config_options,
    load_command_config,
    stage_settings,
)

STAGES = ("instruction", "response")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "import",
        help="imported reflections instead of the teacher (phase 1 or 2)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default="instruction",
        help="instruction: ori + Q for prepared records; response: A or QA for the phase-1 "
        "winners (default instruction)",
    )
    parser.add_argument(
        "--records",
        type=Path,
        required=True,
        help="instruction: `rtune prepare` output; response: `rtune select --phase ifd` output",
    )
    parser.add_argument("--output", type=Path, required=True, help="records out (JSONL)")
    parser.add_argument(
        "--source",
        metavar="URI",
        help="the reflections (default: teacher.import_uri); phase 1 reads them",
    )
    parser.add_argument(
        "--responses",
        type=Path,
        help="A/QA by id: written by phase 1 (default <output stem>.responses.jsonl), "
        "read by phase 2 (required there)",
    )
    add_config_options(parser, {})
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.records import InputError
    from rtune.components.common.stage import run_stage
    from rtune.components.importer.task import AttachStage, ImportConfig, ImportStage

    config = load_command_config(args)
    source = args.source or config.section("teacher").import_uri or ""
    stage: Any
    if args.stage == "instruction":
        if not source:
            raise InputError(
                "rtune import flags",
                "no reflections to import",
                "give --source (a folder with ori/Q/A/QA .json files, or a JSONL) or "
                "--set teacher.import_uri=...",
                field="--source",
            )
        responses = args.responses or args.output.with_name(args.output.stem + ".responses.jsonl")
        stage = ImportStage(ImportConfig(source), args.records, args.output, responses)
    else:
        if args.responses is None:
            raise InputError(
                "rtune import flags",
                "--stage response needs --responses",
                "give the .responses.jsonl file `rtune import` (phase 1) wrote",
                field="--responses",
            )
        response_format = config.section("teacher").response_format
        stage = AttachStage(
            ImportConfig(source, response_format), args.records, args.responses, args.output
        )
    summary = run_stage(stage, stage_settings(config))
    print(f"import: {summary.line()} -> {args.output}")
    return 0
