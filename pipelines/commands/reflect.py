"""``rtune reflect``: run one teacher reflection stage on a JSONL file (resumable).

    rtune reflect --stage instruction --input prepared.jsonl --output reflected.jsonl \\
        --teacher transformers                                  # embedded default, CPU
    rtune reflect --stage response --input phase1.jsonl --output phase2.jsonl \\
        --teacher openai --teacher-url http://vllm:8000/v1 --concurrency 32

A killed run resumes from ``<output>.partial.jsonl`` (or --checkpoint) when re-run with the same
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

STAGES = ("instruction", "response")
CHATTY_LOGGERS = ("httpx", "httpx2", "openai")  # one INFO line per request drowns the progress bar
# flag dest -> TeacherConfig field; flags left unset keep the config's defaults.
CONFIG_FLAGS = {
    "teacher": "backend",
    "teacher_url": "url",
    "teacher_model": "model",
    "concurrency": "concurrency",
    "api_key_env": "api_key_env",
    "max_new_tokens": "max_new_tokens",
    "timeout": "timeout_s",
    "max_attempts": "max_attempts",
    "batch_size": "batch_size",
    "temperature": "temperature",
    "structured_output": "structured_output",
    "max_error_rate": "max_error_rate",
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
    parser.add_argument("--input", type=Path, required=True, help="input JSONL")
    parser.add_argument("--output", type=Path, required=True, help="output JSONL")
    parser.add_argument(
        "--teacher",
        choices=("transformers", "openai", "vllm"),
        default="transformers",
        help="teacher backend (default: transformers)",
    )
    parser.add_argument(
        "--teacher-url", help="OpenAI-compatible base URL, e.g. http://host:8000/v1"
    )
    parser.add_argument(
        "--teacher-model", help="model: 'default', a local folder/s3:// prefix, or a served name"
    )
    parser.add_argument("--api-key-env", help="NAME of the env var holding the API key")
    parser.add_argument("--concurrency", type=int, help="requests in flight (openai)")
    parser.add_argument("--batch-size", type=int, help="records per batch (local backends)")
    parser.add_argument("--max-new-tokens", type=int, help="generation budget per record")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default)")
    parser.add_argument("--timeout", type=float, help="seconds per request attempt")
    parser.add_argument("--max-attempts", type=int, help="attempts per record incl. the first")
    parser.add_argument(
        "--structured-output",
        action="store_true",
        default=None,
        help="ask for JSON via response_format (openai backend)",
    )
    parser.add_argument(
        "--max-error-rate",
        type=float,
        help="largest fraction of records whose request failed for good that still counts as "
        "success (default 0.2); above it: exit 1, no output, the checkpoint kept for a rerun",
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint file (default: <output>.partial.jsonl)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def teacher_config(args: argparse.Namespace) -> Any:
    """A ``TeacherConfig`` from the flags that were given (bad values -> InputError)."""
    from rtune.components.common.config import from_dict
    from rtune.components.teacher.config import TeacherConfig

    values = {
        field: getattr(args, flag)
        for flag, field in CONFIG_FLAGS.items()
        if getattr(args, flag) is not None
    }
    return from_dict(TeacherConfig, values, "rtune reflect flags")


def run(args: argparse.Namespace) -> int:
    from rtune.components.reflect_instruction.reflect import reflect_instructions
    from rtune.components.reflect_response.reflect import reflect_responses
    from rtune.components.teacher.health import TeacherUnavailable

    if not getattr(args, "verbose", False):
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    stage = reflect_instructions if args.stage == "instruction" else reflect_responses
    try:
        summary = stage(
            args.input,
            args.output,
            teacher_config(args),
            checkpoint_path=args.checkpoint,
            progress=not args.no_progress,
        )
    except TeacherUnavailable as err:  # not bad input (exit 2): the teacher is down
        print(f"rtune reflect: error: {err}", file=sys.stderr)
        return 1
    print(f"{summary.line(args.stage)} -> {args.output}")
    return 0
