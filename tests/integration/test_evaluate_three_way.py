"""Base, fine-tuned and fine-tuned + quantized side by side, on loopback: four
OpenAI-compatible servers (FakeOpenAIServer) - the served (quantized) candidate, the unquantized
fine-tuned model at ``finetuned_url``, the base at ``base_url`` and the judge. Checks that all
three models answer the same prompts in the same order, that ``<metric>_training_effect`` and
``<metric>_quantization_effect`` come from their per-item results, that the champion decision
reads only the served model, that ``compare_finetuned: false`` asks two models, and that a
fine-tuned model nobody can serve is a recorded skip (never a number)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtune.components.serve.endpoint import EndpointSpec
from tests.fakes.openai_server import Body, FakeOpenAIServer, last_user_message
from tests.integration.test_evaluate_task import (
    ANSWERS,
    evaluate_config,
    judge_reply,
    run_evaluate,
    student,
)

pytestmark = pytest.mark.integration

# The fine-tuned model before quantization: every suite item right, good held-out advice.
FINETUNED_ANSWERS = {
    "What is 2 + 3?": "Answer: 5",
    "What is 10% of 50?": "Answer: 5",
    "What is 7 * 6?": "Answer: 42",
    "Reply in lowercase.": "all lowercase.",
    "JSON with key k.": '{"k": 2}',
}


def finetuned_reply(body: Body) -> str:
    prompt = last_user_message(body)
    return FINETUNED_ANSWERS.get(prompt, f"GOOD thorough advice for: {prompt}")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeOpenAIServer]]:
    with (
        FakeOpenAIServer(reply=student(0), model="candidate") as candidate,
        FakeOpenAIServer(reply=finetuned_reply, model="finetuned") as finetuned,
        FakeOpenAIServer(reply=student(1), model="base") as base,
        FakeOpenAIServer(reply=judge_reply, model="judge") as judge,
    ):
        yield {"candidate": candidate, "finetuned": finetuned, "base": base, "judge": judge}


def three_way_config(
    folder: Path, servers: dict[str, FakeOpenAIServer], **overrides: Any
) -> dict[str, Any]:
    config = evaluate_config(folder, servers)
    config.update(
        finetuned_url=servers["finetuned"].url,
        finetuned_served_model="finetuned",
        concurrency=1,  # one request at a time: the order the prompts arrive in is the item order
    )
    return {**config, **overrides}


def _spec(folder: Path, server: FakeOpenAIServer) -> Path:
    return EndpointSpec(kind="kserve", base_url=server.url, model=server.model).save(
        folder / "endpoint.json"
    )


def _evaluate(
    folder: Path, servers: dict[str, FakeOpenAIServer], candidate: str = "candidate", **config: Any
) -> tuple[dict[str, Any], dict[str, int], dict[str, list[str]]]:
    """The stage's summary, how many answers each server gave, and the prompts it was asked."""
    before = {role: len(server.completions) for role, server in servers.items()}
    summary = run_evaluate(
        _spec(folder, servers[candidate]),
        three_way_config(folder, servers, **config),
        {"enabled": False},
        "three-way",
        folder / "report.html",
        folder / "results.json",
        checkpoint_root=str(folder / "ck"),
    )
    asked = {role: len(s.completions) - before[role] for role, s in servers.items()}
    prompts = {
        role: [last_user_message(r.body) for r in s.completions[before[role] :]]
        for role, s in servers.items()
    }
    return summary, asked, prompts


@pytest.fixture(scope="module")
def three_way(
    servers: dict[str, FakeOpenAIServer], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("evaluate-three-way")
    summary, asked, prompts = _evaluate(folder, servers)
    return {"folder": folder, "summary": summary, "asked": asked, "prompts": prompts}


def test_three_models_answer_the_same_items_in_the_same_order(three_way: dict[str, Any]) -> None:
    asked, prompts = three_way["asked"], three_way["prompts"]
    assert asked == {"candidate": 8, "finetuned": 8, "base": 8, "judge": 12}  # 2 pairs x 3 x 2
    assert prompts["candidate"] == prompts["finetuned"] == prompts["base"]
    assert prompts["base"][:5] == list(ANSWERS)


def test_effects_come_from_the_per_item_results(three_way: dict[str, Any]) -> None:
    summary = three_way["summary"]
    results = json.loads((three_way["folder"] / "results.json").read_text())
    rows = results["suite"]
    passed = {
        role: sum(row[f"{role}_passed"] for row in rows) / len(rows)
        for role in ("candidate", "finetuned", "base")
    }
    assert passed == {"candidate": 0.8, "finetuned": 1.0, "base": 0.2}
    assert summary["suite_accuracy_finetuned"] == pytest.approx(passed["finetuned"])
    assert summary["suite_accuracy_training_effect"] == pytest.approx(0.8)  # 1.0 - 0.2
    assert summary["suite_accuracy_quantization_effect"] == pytest.approx(-0.2)  # 0.8 - 1.0
    assert summary["suite_accuracy_arithmetic_quantization_effect"] == pytest.approx(-1 / 3)
    assert [row["id"] for row in rows] == ["a1", "a2", "a3", "f1", "f2"]
    judged = results["judge"]
    assert [row["finetuned_outcome"] for row in judged] == ["win"] * 3
    assert summary["judge_win_rate_finetuned"] == 1.0
    assert summary["judge_win_rate_training_effect"] == pytest.approx(0.5)  # 1.0 vs a draw
    assert summary["judge_win_rate_quantization_effect"] == pytest.approx(0.0)
    assert results["summary"]["suite_accuracy_training_effect"] == pytest.approx(0.8)


def test_report_shows_three_columns(three_way: dict[str, Any]) -> None:
    page = (three_way["folder"] / "report.html").read_text()
    table = re.search(r"<table id='side-by-side'.*?</table>", page, re.DOTALL)
    assert table is not None
    head = re.findall(r"<th>(.*?)</th>", table.group(0))
    assert head == [
        "metric",
        "base",
        "fine-tuned",
        "fine-tuned + quantized (served)",
        "training effect",
        "quantization effect",
    ]
    assert re.search(r"<td>suite_accuracy</td><td>0.2</td><td>1</td><td>0.8</td>", page)


def test_champion_decision_ignores_the_unquantized_model(
    servers: dict[str, FakeOpenAIServer], tmp_path: Path
) -> None:
    """The base is the served model here (as good as the candidate of the other tests): the
    perfect fine-tuned model must not make the served one a winner."""
    summary, _, _ = _evaluate(tmp_path, servers, candidate="base")
    assert summary["suite_accuracy_finetuned"] == 1.0
    assert summary["suite_accuracy_candidate"] == summary["suite_accuracy_base"] == 0.2
    assert summary["primary_candidate"] == 0.2
    assert summary["candidate_beats_base"] is False
    assert "does not beat" in summary["decision"]


def test_compare_finetuned_false_asks_two_models(
    servers: dict[str, FakeOpenAIServer], tmp_path: Path
) -> None:
    summary, asked, _ = _evaluate(tmp_path, servers, compare_finetuned=False)
    assert asked == {"candidate": 8, "finetuned": 0, "base": 8, "judge": 6}
    assert not [key for key in summary if "finetuned" in key or "effect" in key]
    page = (tmp_path / "report.html").read_text()
    assert "fine-tuned + quantized" not in page


def test_a_finetuned_model_nobody_serves_is_a_recorded_skip(
    servers: dict[str, FakeOpenAIServer], tmp_path: Path
) -> None:
    summary, asked, _ = _evaluate(tmp_path, servers, finetuned_url="", finetuned_served_model="")
    assert asked["finetuned"] == 0 and asked["candidate"] == 8
    assert "no fine-tuned model" in summary["finetuned_skipped"]
    assert not [key for key in summary if key.endswith(("_finetuned", "_effect"))]
    page = (tmp_path / "report.html").read_text()
    assert "no fine-tuned model" in page


def test_a_finetuned_folder_without_a_model_is_a_recorded_skip(
    servers: dict[str, FakeOpenAIServer], tmp_path: Path
) -> None:
    """A Model artifact without config.json (nothing to serve) is skipped, not guessed at."""
    from rtune.components.evaluate.task import EvaluateStage

    empty = tmp_path / "finetuned-model"
    empty.mkdir()
    config = three_way_config(tmp_path, servers, finetuned_url="", finetuned_served_model="")
    stage = EvaluateStage.from_parameters({}, config, _spec(tmp_path, servers["candidate"]), None, None, finetuned=empty)  # fmt: skip
    assert stage.finetuned_skip() == f"no model in {empty} (config.json missing, no MODEL_URI.txt)"


@pytest.mark.slow
def test_the_finetune_stages_model_is_served_on_loopback(
    servers: dict[str, FakeOpenAIServer], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """No ``finetuned_url``: the Model artifact's folder is served by the base's local server
    (``transformers serve``); the candidate and the base stay on their loopback fakes."""
    from tests.integration.test_evaluate_local import Activity

    config = {
        **three_way_config(tmp_path, servers, finetuned_url="", finetuned_served_model=""),
        "suite_limit": 2,
        "judge_limit": 0,
        "max_new_tokens": 8,
        "server": "transformers",
    }
    activity = Activity(tiny_model_dir)
    stage_summary: dict[str, Any]
    with activity.recording():
        from rtune.components.common.stage import StageSettings, run_stage
        from rtune.components.evaluate.task import EvaluateStage

        spec = _spec(tmp_path, servers["candidate"])
        stage = EvaluateStage.from_parameters({}, config, spec, tmp_path / "results.json", None, finetuned=tiny_model_dir)  # fmt: skip
        stage.progress = False
        settings = StageSettings(tracking={"enabled": False}, checkpoint_root=str(tmp_path / "ck"), run_id="local-ft")  # fmt: skip
        stage_summary = run_stage(stage, settings).values
    assert activity.started == ["transformers"]  # only the fine-tuned model needed a server
    rows = json.loads((tmp_path / "results.json").read_text())["suite"]
    assert [row["id"] for row in rows] == ["a1", "a2"]
    assert all(isinstance(row["finetuned_answer"], str) for row in rows)
    assert "finetuned_skipped" not in stage_summary
    assert stage_summary["suite_accuracy_quantization_effect"] == pytest.approx(
        stage_summary["suite_accuracy_candidate"] - stage_summary["suite_accuracy_finetuned"]
    )
