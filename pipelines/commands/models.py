"""``rtune models pull`` / ``rtune models path default``: the embedded default model's cache."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="provision or locate models")
    actions = parser.add_subparsers(dest="action", required=True)
    pull = actions.add_parser(
        "pull", help="provision the embedded default (SmolLM2-135M-Instruct) into the cache"
    )
    pull.set_defaults(func=run_pull)
    path = actions.add_parser("path", help="print the local folder of a model spec")
    path.add_argument(
        "spec", nargs="?", default="default", help="'default', a folder, or an s3:// prefix"
    )
    path.set_defaults(func=run_path)


def run_pull(args: argparse.Namespace) -> int:
    from rtune.components.common.models import provision_embedded_model

    print(provision_embedded_model(install=True))
    return 0


def run_path(args: argparse.Namespace) -> int:
    from rtune.components.common.models import resolve_model

    print(resolve_model(args.spec))
    return 0
