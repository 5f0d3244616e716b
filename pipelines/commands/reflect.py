"""``rtune reflect``: run one teacher reflection stage on a JSONL file (resumable).

    rtune reflect --stage instruction --input prepared.jsonl --output reflected.jsonl \\
        --teacher transformers                                  # embedded default, CPU
    rtune reflect --stage response --input phase1.jsonl --output phase2.jsonl \\
        --teacher openai --teacher-url http://vllm:8000/v1 --concurrency 32
    rtune reflect --stage response --input prepared.jsonl --output better.jsonl  # plain input

Input: JSONL records with a string ``id``, ``instruction``, ``output`` and optional ``input`` (what
``rtune prepare`` writes). ``--stage instruction`` reflects each record's own sample.
``--stage response`` reflects the phase-1 winner's answer when the records carry ``phase1`` (the
output of ``rtune select --phase ifd``), and each record's own answer when they carry no phase-1
output at all (winner ``ori``), as the reference reflects any file.

Teacher settings come from the run config's ``teacher:`` section (--config, --set teacher.KEY=V)
and the flags below. A killed run resumes from ``<output>.partial.jsonl`` (or --checkpoint) when re-run with the same
teacher model and generation settings (concurrency, timeouts and batch size may change); records
edited since are asked again. When more than --max-error-rate of the records failed for good (a
dead or refusing teacher) the command exits 1 without writing the output and keeps the checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from rtune.pipelines.commands.config_flags import (
    add_config_options,
    load_command_config,
    stage_settings,
)

STAGES = ("instruction", "response")
CHATTY_LOGGERS = ("httpx", "httpx2", "openai")  # one INFO line per request drowns the progress bar
# flags of earlier releases -> the settings they set
ALIASES = {
    "--teacher": "teacher.backend",
    "--teacher-url": "teacher.url",
    "--teacher-model": "teacher.model",  # the teacher's own errors name this flag
    "--timeout": "teacher.timeout_s",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reflect",
        help="teacher reflection (phase 1 or 2)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stage",
        choices=STAGES,
        required=True,
        help="instruction: new instruction + answer (Q); response: better answer "
        "for the phase-1 winner (A or QA)",
    )
    parser.add_argument(
        "--input",
        type=Path,
        required=True,
        help="JSONL records (id, instruction, input, output): prepared records, or for "
        "--stage response also `rtune select --phase ifd` output",
    )
    parser.add_argument("--output", type=Path, required=True, help="output JSONL")
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint file (default: <output>.partial.jsonl)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--report", type=Path, help="an HTML report of the teacher's critiques and rewrites"
    )
    from rtune.components.teacher.config import TeacherConfig

    add_config_options(parser, {"teacher": TeacherConfig}, ALIASES)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.stage import run_stage
    from rtune.components.reflect_instruction.task import ReflectStage
    from rtune.components.teacher.health import TeacherUnavailable

    if not getattr(args, "verbose", False):
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    config = load_command_config(args)
    checkpoint = args.checkpoint or args.output.with_name(args.output.name + ".partial.jsonl")
    stage = ReflectStage(
        args.stage,
        config.section("teacher"),
        args.input,
        args.output,
        checkpoint_path=checkpoint,
        progress=not args.no_progress,
        report=args.report,
    )
    try:
        summary = run_stage(stage, stage_settings(config))
    except TeacherUnavailable as err:  # not bad input (exit 2): the teacher is down
        print(f"rtune reflect: error: {err}", file=sys.stderr)
        return 1
    print(f"{summary.line()} -> {args.output}")
    return 0
