"""The evaluate stage's config, its thin KFP component and the ``rtune evaluate`` command.

The component (a plain function the DAG wraps with its image) is compiled without importing
torch/transformers/mlflow, then called directly (the first tier of component tests); the CLI
runs against loopback servers."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.config import from_dict
from rtune.components.common.records import InputError
from rtune.components.evaluate.config import JUDGE_MAX_NEW_TOKENS, EvaluateConfig
from tests.integration.test_evaluate_task import HELDOUT, SUITE, judge_reply, student
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT


def test_defaults_run_locally_and_validate() -> None:
    config = EvaluateConfig()
    assert config.suite == "builtin:suite" and config.heldout == "builtin:heldout"
    assert config.base_model == "default" and config.benchmarks == []
    judge = config.judge_config()
    assert judge.backend == "transformers" and judge.model == "default"
    assert judge.max_new_tokens == JUDGE_MAX_NEW_TOKENS["transformers"] == 8
    remote = EvaluateConfig(judge={"backend": "openai", "model": "teacher"}).judge_config()
    assert remote.max_new_tokens == JUDGE_MAX_NEW_TOKENS["openai"]


def test_kfp_floats_lists_as_text_and_judge_overrides() -> None:
    config = from_dict(
        EvaluateConfig,
        {"suite_limit": 12.0, "judge": {"max_new_tokens": 32.0}, "benchmarks": "gsm8k, ifeval"},
        "evaluate",
    )
    assert config.suite_limit == 12 and isinstance(config.suite_limit, int)
    assert config.judge_config().max_new_tokens == 32
    assert config.benchmarks == ["gsm8k", "ifeval"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"primary_metric": "accuracy"}, "primary_metric 'accuracy' is unknown"),
        ({"primary_metric": "judge_win_rate", "judge_limit": 0}, "needs the judge"),
        ({"primary_metric": "suite_accuracy", "suite_limit": 0}, "needs the suite"),
        ({"primary_metric": "lm_eval/gsm8k/exact_match_strict-match"}, "not in benchmarks"),
        ({"suite_limit": -1}, "suite_limit must be >= 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be > 0"),
        ({"concurrency": 0}, "concurrency must be > 0"),
        ({"reasoning_format": "cot"}, "reasoning_format"),
        ({"server": "llama.cpp"}, "server"),
        ({"base_url": "host:8000"}, "http"),
        ({"base_url": "http://h/v1"}, "base_served_model"),
        ({"base_url": "http://h/v1", "base_served_model": "b", "base_api_key_env": "sk-1"}, "NAME"),
        ({"judge": {"backend": "claude"}}, "backend"),
        ({"judge": {"temprature": 0}}, "temprature"),
        ({"min_improvement": -0.1}, "min_improvement"),
        ({"judge_limt": 3}, "judge_limt"),
    ],
)
def test_bad_values_are_clear_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        from_dict(EvaluateConfig, values, "evaluate")


def test_answer_concurrency_is_one_on_a_local_transformers_server() -> None:
    assert EvaluateConfig().answer_concurrency("transformers") == 1
    assert EvaluateConfig().answer_concurrency("vllm") == 8
    assert EvaluateConfig().answer_concurrency(None) == 8  # a served endpoint
    assert EvaluateConfig(concurrency=3).answer_concurrency("transformers") == 3


def test_lm_eval_primary_metric_needs_its_task() -> None:
    config = from_dict(
        EvaluateConfig,
        {
            "benchmarks": ["gsm8k"],
            "loglikelihood_benchmarks": ["mmlu"],
            "primary_metric": "lm_eval/mmlu/acc",
        },
        "evaluate",
    )
    assert config.lm_eval_tasks == ["gsm8k", "mmlu"]


def test_component_compiles_without_heavy_imports(tmp_path: Path) -> None:
    code = (
        "import sys; from kfp import compiler; "
        "from rtune.components.common.images import Images; "
        "from rtune.pipelines.reflection_tuning import stage_components; "
        "evaluate = stage_components(Images()).evaluate; "
        f"compiler.Compiler().compile(evaluate, {str(tmp_path / 'c.yaml')!r}); "
        "bad = [m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)
    text = (tmp_path / "c.yaml").read_text()
    assert "rtune-base" in text and "EvaluateStage" in text


class Artifact:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.metadata: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}

    def log_metric(self, metric: str, value: float) -> None:
        self.metrics[metric] = value


def _files(folder: Path) -> tuple[Path, Path]:
    suite, heldout = folder / "suite.jsonl", folder / "heldout.jsonl"
    suite.write_text("".join(json.dumps(r) + "\n" for r in SUITE))
    heldout.write_text("".join(json.dumps(r) + "\n" for r in HELDOUT))
    return suite, heldout


@pytest.mark.integration
def test_component_function_fills_its_outputs(tmp_path: Path) -> None:
    from rtune.components.evaluate.component import evaluate
    from rtune.components.serve.endpoint import EndpointSpec
    from tests.fakes.openai_server import FakeOpenAIServer

    suite, heldout = _files(tmp_path)
    with (
        FakeOpenAIServer(reply=student(0), model="cand") as cand,
        FakeOpenAIServer(reply=student(1), model="base") as base,
        FakeOpenAIServer(reply=judge_reply) as judge,
    ):
        spec = EndpointSpec(kind="kserve", base_url=cand.url, model="cand").save(tmp_path / "ep")
        config = {
            "suite": str(suite),
            "heldout": str(heldout),
            "base_url": base.url,
            "base_served_model": "base",
            "judge": {"backend": "openai", "url": judge.url, "model": "judge"},
        }
        results, metrics, report = (
            Artifact(tmp_path / n) for n in ("results", "metrics", "report")
        )
        evaluate(
            endpoint=Artifact(spec), finetuned=Artifact(tmp_path / "no-model"), student={},
            evaluate=config, tracking={"enabled": False}, checkpoint_root=str(tmp_path / "ck"), results=results, metrics=metrics,
            report=report,
        )  # fmt: skip
    assert json.loads(Path(results.path).read_text())["summary"]["judge_wins"] == 3
    assert metrics.metrics["suite_accuracy_candidate"] == pytest.approx(0.8)
    assert "<img id='comparison'" in Path(report.path).read_text()
    assert results.metadata["candidate_beats_base"] is True
    assert (
        "config.json missing"
        in json.loads(Path(results.path).read_text())["summary"]["finetuned_skipped"]
    )


def _cli(argv: list[str]) -> argparse.Namespace:
    from rtune.pipelines.commands import evaluate

    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["evaluate", *argv])


def test_cli_needs_a_model_name_with_an_endpoint_url(tmp_path: Path) -> None:
    from rtune.pipelines.commands.evaluate import endpoint_spec

    args = _cli(["--endpoint-url", "http://h/v1", "--output-dir", str(tmp_path)])
    with pytest.raises(InputError, match="--model"):
        endpoint_spec(args)
    with pytest.raises(SystemExit):
        _cli(["--endpoint-url", "http://h/v1", "--model-path", "m", "--output-dir", "o"])
    local = endpoint_spec(_cli(["--model-path", "out/model", "--output-dir", str(tmp_path)]))
    assert (local.kind, local.model_path, local.server) == ("local", "out/model", "auto")


@pytest.mark.integration
def test_cli_evaluates_a_running_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer

    suite, heldout = _files(tmp_path)
    out = tmp_path / "eval"
    with (
        FakeOpenAIServer(reply=student(0), model="cand") as cand,
        FakeOpenAIServer(reply=student(1), model="base") as base,
        FakeOpenAIServer(reply=judge_reply) as judge,
    ):
        args = _cli(
            [
                "--endpoint-url", cand.url, "--model", "cand", "--output-dir", str(out),
                "--base-url", base.url, "--base-served-model", "base",
                "--suite", str(suite), "--heldout", str(heldout), "--judge-limit", "2",
                "--judge-backend", "openai", "--judge-url", judge.url, "--judge-model", "judge",
                "--checkpoint-root", str(tmp_path / "ck"), "--no-tracking", "--no-progress",
            ]
        )  # fmt: skip
        assert args.func(args) == 0
        assert len(judge.completions) == 4  # --judge-limit 2, both orders
    captured = capsys.readouterr()  # the runner's line on stderr; the result (JSON) on stdout
    assert captured.err.startswith("rtune-summary evaluate: suite accuracy 0.80 vs base 0.20")
    summary = json.loads(captured.out)
    assert summary["judge_wins"] == 2 and summary["candidate_beats_base"] is True
    assert json.loads((out / "endpoint.json").read_text())["base_url"] == cand.url
    assert (out / "report.html").exists() and (out / "results.json").exists()
