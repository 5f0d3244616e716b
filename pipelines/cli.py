"""``rtune``: one CLI for the whole pipeline and for each stage on its own.

    rtune run [--config pipelines/configs/local.yaml] [--set key=value ...]   # whole DAG, kfp.local
    rtune compile -o pipeline.yaml                                           # KFP IR YAML
    rtune compile -o k8s.yaml --kubernetes-manifest --image-tag 0.1.0        # Pipeline(Version) CRs
    rtune submit --host URL --config F [--wait]                              # run on Kubeflow
    rtune prepare --input F --output F                                       # one stage at a time
    rtune reflect --stage instruction|response --input F --output F --teacher transformers
    rtune import --records F --source DIR|F --output F    # reflections made elsewhere, no teacher
    rtune score --input F --output F --model default --template vicuna
    rtune select --phase ifd|rifd --records F --scores F --output F
    rtune finetune --selected F --output-dir D [--set finetune.method=full]    # SFT (LoRA/full)
    rtune quantize --model D --selected F --output-dir D [--set quantize.method=w8a8]
    rtune serve --model D [--port 8000] [--reasoning-format reflection]      # OpenAI API on loopback
    rtune evaluate --model-path D --output-dir D                             # vs the base student
    rtune models pull | rtune models path default
    rtune plan --model-size 70B --gpus-per-node 8 --nodes 2 --method full    # memory per GPU

Each subcommand lives in ``pipelines/commands/<name>.py`` as ``register(subparsers)`` that sets
``func`` (heavy imports happen inside ``func``). Bad input exits with code 2 and one message.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = (
    "prepare",
    "reflect",
    "import_reflections",  # `rtune import` (``import`` cannot name a module)
    "score",
    "select",
    "finetune",
    "quantize",
    "serve",
    "evaluate",
    "run",
    "compile",
    "submit",
    "models",
    "plan",
    "rehearse",
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtune", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"rtune.pipelines.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a failure that is the user's to fix is one message and exit code 2
    (``pipelines/cli_errors.py`` says which); anything else is a bug and keeps its traceback."""
    from rtune.pipelines.cli_errors import check_s3_arguments, explain, user_error_types

    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        check_s3_arguments(args)
        return int(args.func(args) or 0)
    except user_error_types() as err:
        message = explain(err, args)
        if message is None:
            raise
        print(f"rtune {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
