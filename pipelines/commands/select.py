"""``rtune select``: the student's choices, phase 1 (ori vs Q) or phase 2 (reflected response).

    rtune select --phase ifd --records reflected.jsonl --scores s-0.jsonl s-1.jsonl \\
        --output phase1.jsonl
    rtune select --phase rifd --records responses.jsonl --scores r-0.jsonl \\
        --output decisions.jsonl --selected train.jsonl --policy keep_phase1_winner \\
        --drop-ifd-above 1.0 --keep-top 0.5

Phase ifd sets phase1 = {winner, reason} (Q wins when IFD(Q) > IFD(ori)). Phase rifd keeps the
reflected response when r-IFD(new) < r-IFD(old), r-IFD(new) < 1 and IFD(new) < 1; otherwise the
record is dropped (policy reference), keeps its phase-1 winner when that one has r-IFD < 1 and
IFD < 1 and the new r-IFD is not lower (policy reference_alternative), or always keeps its
phase-1 winner (policy keep_phase1_winner). Every record gets decision and reason; --selected receives the flat training records (default:
<output stem>.selected.jsonl).
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

PHASES = ("ifd", "rifd")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "select",
        help="phase-1 (IFD) or phase-2 (r-IFD) selection",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--phase", required=True, help="ifd or rifd")
    parser.add_argument(
        "--records",
        type=Path,
        required=True,
        help="records JSONL: phase ifd takes the reflect_instruction output, rifd the "
        "reflect_response output",
    )
    parser.add_argument(
        "--scores", type=Path, nargs="+", required=True, help="score files (one per shard)"
    )
    parser.add_argument("--output", type=Path, required=True, help="records out (JSONL)")
    parser.add_argument("--selected", type=Path, help="rifd: flat training records out (JSONL)")
    parser.add_argument("--report", type=Path, help="an HTML report of scores and decisions")
    from rtune.components.select_rifd.rules import SelectionConfig

    add_config_options(parser, {"selection": SelectionConfig})
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.records import InputError
    from rtune.components.common.stage import run_stage
    from rtune.components.select_ifd.task import SelectIfdStage
    from rtune.components.select_rifd.task import SelectRifdStage

    if args.phase not in PHASES:
        raise InputError(
            "rtune select flags",
            f"unknown --phase {args.phase!r}",
            f"use one of {list(PHASES)}",
            field="--phase",
        )
    phase2_flags = [d for d in vars(args) if d.startswith("config:selection.")] + (
        ["--selected"] if args.selected else []
    )
    if args.phase == "ifd" and phase2_flags:
        flag = phase2_flags[0].replace("config:selection.", "--").replace("_", "-")
        raise InputError(
            "rtune select flags",
            f"{flag} only applies to --phase rifd",
            "drop it, or use --phase rifd",
            field=flag,
        )
    config = load_command_config(args)
    if args.phase == "ifd":
        stage: Any = SelectIfdStage(args.records, args.scores, args.output, args.report)
        summary = run_stage(stage, stage_settings(config))
        print(f"select ifd: {summary.line()} -> {args.output}")
        return 0
    selected = args.selected or args.output.with_name(f"{args.output.stem}.selected.jsonl")
    stage = SelectRifdStage(
        config.section("selection"), args.records, args.scores, args.output, selected, args.report
    )
    summary = run_stage(stage, stage_settings(config))
    print(f"select rifd: {summary.line()} -> {args.output}, selected -> {selected}")
    return 0
