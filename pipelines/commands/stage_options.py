"""What every one-stage command (``rtune finetune|quantize|evaluate``) shares: the pipeline config
it reads its section from, ``--set`` overrides, the checkpoint root, MLflow on or off, and a run
id of its own (a CLI run is its own pipeline run in MLflow)."""

from __future__ import annotations

import argparse
import uuid
from typing import Any


def add_stage_options(parser: argparse.ArgumentParser, section: str) -> None:
    parser.add_argument("--config", default=None, help=f"pipeline config (its {section} section)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--checkpoint-root", default="", help="default $RTUNE_CACHE/checkpoints")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def load_stage_config(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The validated pipeline config and the tracking section (``enabled: false`` on request)."""
    from rtune.pipelines.config import load_pipeline_config

    config = load_pipeline_config(args.config, args.overrides)
    tracking = {**config.tracking, **({"enabled": False} if args.no_tracking else {})}
    return config, tracking


def cli_run_id() -> str:
    return f"cli-{uuid.uuid4().hex[:12]}"
