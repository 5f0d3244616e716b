"""``rtune compile -o pipeline.yaml [--config F] [--set k=v]``: the KFP IR YAML for a cluster.

The config's values become the compiled parameter defaults, so the Kubeflow UI's run form starts
from them. Compiling never imports torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    parser.add_argument("-o", "--output", default="pipeline.yaml", help="where to write the YAML")
    parser.add_argument(
        "--config", default=None, help="run config whose values become the defaults"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.set_defaults(func=run)


def compile_pipeline(
    output: Path, config_path: str | None = None, overrides: list[str] | None = None
) -> Path:
    from kfp import compiler

    from pipelines.config import load_pipeline_config
    from pipelines.reflection_tuning import build_reflection_tuning

    config = load_pipeline_config(config_path, overrides)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        build_reflection_tuning(config.scoring_gpus()),
        package_path=str(output),
        pipeline_parameters=config.pipeline_arguments(),
    )
    return output


def run(args: argparse.Namespace) -> int:
    path = compile_pipeline(Path(args.output), args.config, args.overrides)
    print(f"compiled reflection-tuning -> {path}")
    return 0
