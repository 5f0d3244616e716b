"""``rtune evaluate``: the fine-tuned model against the base student (the pipeline's last stage).

    rtune evaluate --model-path out/model --output-dir eval/          # serves it on loopback
    rtune evaluate --endpoint-url http://127.0.0.1:8000/v1 --model rtune-student \\
        --output-dir eval/ --judge-backend openai --judge-url http://teacher:8000/v1 \\
        --judge-model llama-70b
    rtune evaluate --model-path out/model --output-dir eval/ --suite-limit 12 --judge-limit 6

Writes eval/endpoint.json (what was evaluated), eval/results.json and eval/report.html. The base
student is ``evaluate.base_model`` (the embedded default) served on loopback, or a running
server (``--base-url`` + ``--base-served-model``). Settings come from the ``evaluate`` (and
``tracking``) section of a pipeline config, then ``--set`` and the flags below. A killed run
resumes: answers and verdicts already received are not asked again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rtune.pipelines.commands.config_flags import (
    add_config_options,
    load_command_config,
    stage_settings,
)

# flags of earlier releases -> the settings they set
ALIASES = {
    "--base-model": "student.model",
    "--judge-backend": "evaluate.judge.backend",
    "--judge-url": "evaluate.judge.url",
    "--judge-model": "evaluate.judge.model",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare the fine-tuned model with the base (suite, judge, lm-eval)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint-url", help="a running OpenAI-compatible server (…/v1)")
    target.add_argument("--model-path", type=Path, help="a model folder to serve on loopback")
    parser.add_argument("--model", help="the model name at --endpoint-url")
    parser.add_argument("--api-key-env", default="", help="NAME of the env var with its API key")
    parser.add_argument("--server", default="auto", choices=("auto", "transformers", "vllm"))
    parser.add_argument("--output-dir", type=Path, required=True, help="results and report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    from rtune.components.evaluate.config import EvaluateConfig

    add_config_options(parser, {"evaluate": EvaluateConfig}, ALIASES)
    parser.set_defaults(func=run)


def endpoint_spec(args: argparse.Namespace, reasoning: str = "none") -> Any:
    """What to evaluate: a running server, or a model folder the stage serves itself."""
    from rtune.components.common.records import InputError
    from rtune.components.serve.endpoint import EndpointSpec

    if args.model_path is not None:
        return EndpointSpec(
            kind="local",
            base_url="",
            model=str(args.model_path),
            model_path=str(args.model_path),
            server=args.server,
            reasoning_format=reasoning,
        )
    if not args.model:
        raise InputError(
            "rtune evaluate flags", "--endpoint-url needs --model", "add --model <served name>"
        )
    return EndpointSpec(
        kind="kserve",
        base_url=args.endpoint_url,
        model=args.model,
        reasoning_format=reasoning,
        api_key_env=args.api_key_env,
    )


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.stage import run_stage
    from rtune.components.evaluate.task import EvaluateStage

    config = load_command_config(args)
    out = args.output_dir
    evaluation = config.section("evaluate")
    spec_path = endpoint_spec(args, evaluation.reasoning_format).save(out / "endpoint.json")
    stage = EvaluateStage(
        evaluation,
        spec_path,
        out / "results.json",
        out / "report.html",
        progress=not args.no_progress,
    )
    summary = run_stage(stage, stage_settings(config))
    print(json.dumps(summary.values, indent=2, default=str))  # as_dict() is the metrics view
    return 0
