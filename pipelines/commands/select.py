"""``rtune select``: the student's choices, phase 1 (ori vs Q) or phase 2 (reflected response).

    rtune select --phase ifd --records reflected.jsonl --scores s-0.jsonl s-1.jsonl \\
        --output phase1.jsonl
    rtune select --phase rifd --records responses.jsonl --scores r-0.jsonl \\
        --output decisions.jsonl --selected train.jsonl --policy fallback \\
        --drop-ifd-above 1.0 --keep-top 0.5

Phase ifd sets phase1 = {winner, reason} (Q wins when IFD(Q) > IFD(ori)). Phase rifd keeps the
reflected response when r-IFD(new) < r-IFD(old), r-IFD(new) < 1 and IFD(new) < 1; otherwise the
record is dropped (policy reference) or keeps its phase-1 winner (policy fallback). Every record
gets decision and reason; --selected receives the flat training records (default:
<output stem>.selected.jsonl).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PHASES = ("ifd", "rifd")
PHASE2_FLAGS = ("selected", "policy", "drop_ifd_above", "keep_top")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "select",
        help="phase-1 (IFD) or phase-2 (r-IFD) selection",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--phase", required=True, help="ifd or rifd")
    parser.add_argument("--records", type=Path, required=True, help="records JSONL")
    parser.add_argument(
        "--scores", type=Path, nargs="+", required=True, help="score files (one per shard)"
    )
    parser.add_argument("--output", type=Path, required=True, help="records out (JSONL)")
    parser.add_argument("--selected", type=Path, help="rifd: flat training records out (JSONL)")
    parser.add_argument("--policy", help="rifd: reference (default) or fallback")
    parser.add_argument(
        "--drop-ifd-above", type=float, metavar="X", help="rifd: final cut, drop IFD >= X"
    )
    parser.add_argument(
        "--keep-top", type=float, metavar="FRACTION", help="rifd: final cut, keep top IFD share"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.config import from_dict
    from rtune.components.common.records import InputError
    from rtune.components.select_ifd.stage import select_ifd
    from rtune.components.select_rifd.rules import SelectionConfig
    from rtune.components.select_rifd.stage import select_rifd

    if args.phase not in PHASES:
        raise InputError(
            "rtune select flags",
            f"unknown --phase {args.phase!r}",
            f"use one of {list(PHASES)}",
            field="--phase",
        )
    if args.phase == "ifd":
        extra = [f"--{name.replace('_', '-')}" for name in PHASE2_FLAGS if getattr(args, name)]
        if extra:
            raise InputError(
                "rtune select flags",
                f"{', '.join(extra)} only apply to --phase rifd",
                "drop them, or use --phase rifd",
                field=extra[0],
            )
        summary = select_ifd(args.records, args.scores, args.output)
        print(f"select ifd: {summary.line()} -> {args.output}")
        return 0
    options = {
        "policy": args.policy,
        "drop_ifd_above": args.drop_ifd_above,
        "keep_top": args.keep_top,
    }
    config = from_dict(
        SelectionConfig,
        {key: value for key, value in options.items() if value is not None},
        source="rtune select flags",
    )
    selected = args.selected or args.output.with_name(f"{args.output.stem}.selected.jsonl")
    summary = select_rifd(args.records, args.scores, args.output, selected, config)
    print(f"select rifd: {summary.line()} -> {args.output}, selected -> {selected}")
    return 0
