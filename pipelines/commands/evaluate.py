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

from rtune.pipelines.commands.stage_options import add_stage_options, cli_run_id, load_stage_config

# flag dest -> EvaluateConfig field; flags left unset keep the config's values.
CONFIG_FLAGS = {
    "base_model": "base_model",
    "base_url": "base_url",
    "base_served_model": "base_served_model",
    "suite": "suite",
    "heldout": "heldout",
    "suite_limit": "suite_limit",
    "judge_limit": "judge_limit",
    "reasoning_format": "reasoning_format",
    "primary_metric": "primary_metric",
    "max_new_tokens": "max_new_tokens",
}
JUDGE_FLAGS = {"judge_backend": "backend", "judge_url": "url", "judge_model": "model"}


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
    parser.add_argument("--base-model", help="base student: default | folder | s3://")
    parser.add_argument("--base-url", help="a served base model instead (…/v1)")
    parser.add_argument("--base-served-model", help="the model name at --base-url")
    parser.add_argument("--suite", help="verifiable items: builtin:suite | JSONL | s3://")
    parser.add_argument("--heldout", help="judged instructions: builtin:heldout | JSONL | s3://")
    parser.add_argument("--suite-limit", type=int, help="suite items (0 = no suite)")
    parser.add_argument("--judge-limit", type=int, help="judged instructions (0 = no judge)")
    parser.add_argument("--reasoning-format", choices=("none", "reflection"))
    parser.add_argument("--primary-metric", help="suite_accuracy | judge_win_rate | lm_eval/…")
    parser.add_argument("--max-new-tokens", type=int, help="answer budget per item")
    parser.add_argument("--judge-backend", choices=("transformers", "openai", "vllm"))
    parser.add_argument("--judge-url", help="the judge's OpenAI-compatible base URL")
    parser.add_argument("--judge-model", help="judge model: default | folder | served name")
    add_stage_options(parser, "evaluate")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def endpoint_spec(args: argparse.Namespace) -> Any:
    """What to evaluate: a running server, or a model folder the stage serves itself."""
    from rtune.components.common.records import InputError
    from rtune.components.serve.endpoint import EndpointSpec

    reasoning = args.reasoning_format or "none"
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


def evaluate_section(args: argparse.Namespace, section: dict[str, Any]) -> dict[str, Any]:
    """The config's evaluate section with the flags that were given on top."""
    values = dict(section)
    values.update(
        {f: getattr(args, a) for a, f in CONFIG_FLAGS.items() if getattr(args, a) is not None}
    )
    judge = {f: getattr(args, a) for a, f in JUDGE_FLAGS.items() if getattr(args, a) is not None}
    if judge:
        values["judge"] = {**values.get("judge", {}), **judge}
    return values


def run(args: argparse.Namespace) -> int:
    from rtune.components.evaluate.task import run_evaluate

    config, tracking = load_stage_config(args)
    out = args.output_dir
    spec_path = endpoint_spec(args).save(out / "endpoint.json")
    summary = run_evaluate(
        spec_path,
        evaluate_section(args, config.evaluate),
        tracking,
        cli_run_id(),
        out / "report.html",
        out / "results.json",
        last_stage=True,  # the DAG's last stage: its own pipeline run ends here
        checkpoint_root=args.checkpoint_root,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0
