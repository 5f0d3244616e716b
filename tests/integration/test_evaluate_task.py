"""The evaluate stage end to end on loopback: the candidate and the base are OpenAI-compatible
servers (FakeOpenAIServer) answering fixed texts, the judge is the real ``openai`` teacher backend
against a third one. Checks the metrics (MLflow parent + KFP), the per-item tables, the
``champion`` alias on a registered version in a sqlite MLflow (and none when the candidate
loses), resume after a SIGKILL without re-asking, no server touched when everything is done, and
the HTML report rendered in headless Chromium. The stage runs as its KFP component runs it:
plain data in, ``EvaluateStage.from_parameters``, the stage runner."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.records import InputError
from rtune.components.common.stage import StageSettings, run_stage
from rtune.components.evaluate.task import EvaluateStage
from rtune.components.serve.endpoint import EndpointSpec
from tests.conftest import RecordingMetrics
from tests.fakes.openai_server import Body, FakeOpenAIServer, Fault, last_user_message
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.integration

# `make test` passes the browser it installed (Debian's chromium; CHROMIUM=... overrides it)
CHROMIUM = os.environ.get("RTUNE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SUITE = [
    {"id": "a1", "category": "arithmetic", "prompt": "What is 2 + 3?", "answer": 5},
    {"id": "a2", "category": "arithmetic", "prompt": "What is 10% of 50?", "answer": 5},
    {"id": "a3", "category": "arithmetic", "prompt": "What is 7 * 6?", "answer": 42},
    {"id": "f1", "category": "format", "prompt": "Reply in lowercase.", "checks": [{"type": "lowercase"}]},
    {"id": "f2", "category": "format", "prompt": "JSON with key k.", "checks": [{"type": "json_keys", "keys": ["k"]}]},
]  # fmt: skip
HELDOUT = [{"id": f"h{n}", "instruction": f"Give advice number {n}."} for n in range(3)]
# prompt -> (candidate's answer, base's answer): candidate 4/5 right, base 1/5 (a3 both wrong).
ANSWERS = {
    "What is 2 + 3?": ("2 + 3 = 5.\nAnswer: 5", "Answer: 6"),
    "What is 10% of 50?": ("Ten percent of 50 is 5.", "It is 15."),
    "What is 7 * 6?": ("Answer: 48", "Answer: 36"),
    "Reply in lowercase.": ("sure, all lowercase here.", "Sure, Here It Is."),
    "JSON with key k.": ('{"k": 1}', '{"k": 1}'),
}
HOLD_UNTIL_CLOSED_S = 3600.0  # a held request is answered when its server closes
ANSWER = re.compile(r"\[The Start of Assistant (\d)'s Answer\]\n(.*?)\n\[The End", re.DOTALL)


def student(role: int) -> Callable[[Body], str]:
    def reply(body: Body) -> str:
        prompt = last_user_message(body)
        if prompt in ANSWERS:
            return ANSWERS[prompt][role]
        return f"GOOD detailed advice for: {prompt}" if role == 0 else "No idea."

    return reply


def judge_reply(body: Body) -> str:
    """8 for an answer with 'GOOD', 3 otherwise: the first line holds both scores."""
    answers = dict(ANSWER.findall(last_user_message(body)))
    first, second = (8 if "GOOD" in answers[n] else 3 for n in ("1", "2"))
    return f"{first} {second}\nAssistant {'1' if first > second else '2'} was more helpful."


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeOpenAIServer]]:
    with (
        FakeOpenAIServer(reply=student(0), model="candidate") as candidate,
        FakeOpenAIServer(reply=student(1), model="base") as base,
        FakeOpenAIServer(reply=judge_reply, model="judge") as judge,
    ):
        yield {"candidate": candidate, "base": base, "judge": judge}


def _data(folder: Path) -> tuple[Path, Path]:
    suite, heldout = folder / "suite.jsonl", folder / "heldout.jsonl"
    suite.write_text("".join(json.dumps(r) + "\n" for r in SUITE))
    heldout.write_text("".join(json.dumps(r) + "\n" for r in HELDOUT))
    return suite, heldout


def evaluate_config(
    folder: Path, servers: dict[str, FakeOpenAIServer], swap: bool = False
) -> dict[str, Any]:
    """Candidate at the spec's URL, base at ``base_url``; ``swap`` makes the base the good one."""
    suite, heldout = _data(folder)
    base = servers["candidate" if swap else "base"]
    return {
        "suite": str(suite),
        "heldout": str(heldout),
        "base_url": base.url,
        "base_served_model": base.model,
        "judge": {
            "backend": "openai",
            "url": servers["judge"].url,
            "model": "judge",
            "max_attempts": 1,
        },
        "concurrency": 2,
    }


def run_evaluate(
    spec: Path,
    config: dict[str, Any],
    tracking: dict[str, Any] | None = None,
    run_id: str = "test",
    report: Path | None = None,
    results: Path | None = None,
    metrics: RecordingMetrics | None = None,
    checkpoint_root: str = "",
    student: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The evaluate stage as its component runs it (plain data -> stage -> runner); its summary."""
    stage = EvaluateStage.from_parameters(student or {}, config, spec, results, report)
    stage.progress = False
    settings = StageSettings(
        tracking=tracking or {"enabled": False},
        checkpoint_root=checkpoint_root,
        metrics=metrics,
        run_id=run_id,
        to_parent=True,
    )
    return run_stage(stage, settings).values


def _spec(folder: Path, server: FakeOpenAIServer) -> Path:
    return EndpointSpec(kind="kserve", base_url=server.url, model=server.model).save(
        folder / "endpoint.json"
    )


def _register_version(tracking: dict[str, str], kfp_run_id: str, name: str) -> str:
    """A registered version named by the pipeline's parent run, as the fine-tune stage leaves it."""
    import mlflow

    from rtune.components.common.tracking import find_or_create_parent_run

    mlflow.set_tracking_uri(tracking["tracking_uri"])
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(tracking["experiment"])
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(tracking["experiment"])
    )
    parent = find_or_create_parent_run(client, experiment_id, kfp_run_id, "reflection-tuning")
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source="s3://models/student/model", run_id=parent)
    client.set_tag(parent, "rtune.registered_model", name)
    client.set_tag(parent, "rtune.model_version", str(version.version))
    return str(version.version)


@pytest.fixture(scope="module")
def won(
    servers: dict[str, FakeOpenAIServer], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("evaluate-won")
    tracking = {"experiment": "eval-test", "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"}
    version = _register_version(tracking, "kfp-won", "student-eval")
    metrics = RecordingMetrics()
    before = {role: len(server.completions) for role, server in servers.items()}
    summary = run_evaluate(
        _spec(folder, servers["candidate"]),
        evaluate_config(folder, servers),
        tracking,
        "kfp-won",
        folder / "report.html",
        folder / "results.json",
        metrics,
        checkpoint_root=str(folder / "ck"),
    )
    asked = {role: len(server.completions) - before[role] for role, server in servers.items()}
    return {"folder": folder, "tracking": tracking, "version": version, "summary": summary, "metrics": metrics, "asked": asked}  # fmt: skip


def _client(tracking: dict[str, str]) -> Any:
    import mlflow

    mlflow.set_tracking_uri(tracking["tracking_uri"])
    return mlflow.MlflowClient()


def _runs(tracking: dict[str, str], kfp_run_id: str) -> tuple[Any, Any]:
    client = _client(tracking)
    experiment = client.get_experiment_by_name(tracking["experiment"])
    query = f"tags.`kfp.run_id` = '{kfp_run_id}'"
    runs = client.search_runs([experiment.experiment_id], query)
    parent = next(r for r in runs if r.data.tags.get("rtune.role") == "pipeline")
    stage = next(r for r in runs if r.data.tags.get("rtune.stage") == "evaluate")
    return parent, stage


def test_metrics_of_a_winning_candidate(won: dict[str, Any]) -> None:
    summary = won["summary"]
    assert summary["suite_accuracy_candidate"] == pytest.approx(4 / 5)
    assert summary["suite_accuracy_base"] == pytest.approx(1 / 5)
    assert summary["suite_accuracy_arithmetic_candidate"] == pytest.approx(2 / 3)
    assert summary["suite_accuracy_format_base"] == pytest.approx(1 / 2)
    assert (summary["judge_wins"], summary["judge_ties"], summary["judge_losses"]) == (3, 0, 0)
    assert summary["judge_win_rate"] == 1.0 and summary["judge_winning_score"] == 2.0
    assert summary["primary_metric"] == "suite_accuracy"
    assert summary["candidate_beats_base"] is True
    assert won["asked"] == {"candidate": 8, "base": 8, "judge": 6}  # 5 + 3 answers; 3 x 2 orders
    assert won["metrics"].values["judge_wins"] == 3.0  # the KFP Metrics artifact
    assert won["metrics"].values["candidate_beats_base"] == 1.0


def test_champion_alias_and_mlflow_records(won: dict[str, Any]) -> None:
    client = _client(won["tracking"])
    assert won["summary"]["champion_version"] == won["version"]
    champion = client.get_model_version_by_alias("student-eval", "champion")
    assert str(champion.version) == won["version"]
    assert champion.tags["rtune.eval.suite_accuracy"] == "0.8"
    parent, stage = _runs(won["tracking"], "kfp-won")
    assert parent.data.metrics["suite_accuracy_candidate"] == pytest.approx(0.8)
    assert parent.data.metrics["judge_win_rate"] == 1.0
    assert parent.data.tags["rtune.champion_version"] == won["version"]
    assert stage.data.params["primary_metric"] == "suite_accuracy"
    assert "judge.url" in stage.data.params and "judge.api_key_env" not in stage.data.params
    artifacts = {a.path for a in client.list_artifacts(stage.info.run_id, "evaluate")}
    assert {
        "evaluate/suite_items.json",
        "evaluate/judge_items.json",
        "evaluate/results.json",
    } <= artifacts
    table = json.loads(
        Path(client.download_artifacts(stage.info.run_id, "evaluate/suite_items.json")).read_text()
    )
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [r["id"] for r in rows] == ["a1", "a2", "a3", "f1", "f2"]
    assert rows[0]["candidate_passed"] is True and rows[0]["base_extracted"] == "6"
    assert {a.path for a in client.list_artifacts(stage.info.run_id, "figures")} == {
        "figures/evaluation.png"
    }
    contexts = {i.tags[0].value for i in stage.inputs.dataset_inputs}
    assert contexts == {"eval"}


def test_finalize_not_the_evaluation_closes_the_pipeline_run(won: dict[str, Any]) -> None:
    """The exit handler closes the parent run the evaluation reported to, with its line."""
    from rtune.components.common.tracking import TrackingConfig
    from rtune.components.finalize.finalize import finalize_run

    parent, stage = _runs(won["tracking"], "kfp-won")
    assert parent.info.status == "RUNNING"  # no stage closes it
    outcome = finalize_run("SUCCEEDED", "kfp-won", TrackingConfig(**won["tracking"]))
    parent, _ = _runs(won["tracking"], "kfp-won")
    assert outcome.status == parent.info.status == "FINISHED" and outcome.failed_stages == []
    line = stage.data.tags["rtune.summary"]
    assert line.startswith("suite accuracy 0.80 vs base 0.20; judge wins/ties/losses 3/0/0")
    assert ("evaluate", line) in outcome.lines


def test_finalize_names_a_failed_evaluation(
    servers: dict[str, FakeOpenAIServer], tmp_path: Path
) -> None:
    tracking = {"experiment": "eval-test", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    bad_heldout = tmp_path / "bad.jsonl"
    bad_heldout.write_text('{"instruction": ""}\n')
    config = {**evaluate_config(tmp_path, servers), "heldout": str(bad_heldout)}
    with pytest.raises(InputError, match="line 1"):
        run_evaluate(_spec(tmp_path, servers["candidate"]), config, tracking, "kfp-failed")
    from rtune.components.common.tracking import TrackingConfig
    from rtune.components.finalize.finalize import finalize_run

    outcome = finalize_run("FAILED", "kfp-failed", TrackingConfig(**tracking))
    parent = _client(tracking).get_run(_runs(tracking, "kfp-failed")[0].info.run_id)
    assert outcome.status == parent.info.status == "FAILED"
    assert outcome.failed_stages == ["evaluate"] and "FAILED in evaluate" in outcome.line()
    assert parent.data.tags["rtune.failed_stages"] == "evaluate"


def test_results_file_has_the_per_item_tables(won: dict[str, Any]) -> None:
    results = json.loads((won["folder"] / "results.json").read_text())
    assert results["summary"]["judge_wins"] == 3
    judge = {row["id"]: row for row in results["judge"]}
    assert judge["h0"]["outcome"] == "win"
    assert (
        judge["h0"]["scores_candidate_first"] == "8 3" and judge["h0"]["scores_base_first"] == "3 8"
    )
    assert judge["h1"]["base_answer"] == "No idea."
    assert len(results["suite"]) == 5


def test_no_champion_when_the_candidate_loses(
    servers: dict[str, FakeOpenAIServer], tmp_path: Path
) -> None:
    tracking = {"experiment": "eval-test", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    _register_version(tracking, "kfp-lost", "student-loser")
    config = {**evaluate_config(tmp_path, servers, swap=True), "primary_metric": "judge_win_rate"}
    summary = run_evaluate(
        _spec(tmp_path, servers["base"]), config, tracking, "kfp-lost", None, None,
        checkpoint_root=str(tmp_path / "ck"),
    )  # fmt: skip
    assert summary["judge_losses"] == 3 and summary["judge_win_rate"] == 0.0
    assert summary["candidate_beats_base"] is False and summary["champion_version"] == ""
    assert "does not beat" in summary["decision"]
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        _client(tracking).get_model_version_by_alias("student-loser", "champion")


def test_a_finished_evaluation_asks_nobody_again(
    won: dict[str, Any], servers: dict[str, FakeOpenAIServer]
) -> None:
    folder = won["folder"]
    before = {role: len(server.completions) for role, server in servers.items()}
    summary = run_evaluate(
        folder / "endpoint.json", evaluate_config(folder, servers), {"enabled": False}, "again",
        None, None, checkpoint_root=str(folder / "ck"),
    )  # fmt: skip
    assert {role: len(s.completions) - before[role] for role, s in servers.items()} == {
        "candidate": 0,
        "base": 0,
        "judge": 0,
    }
    assert summary["judge_wins"] == 3 and summary["suite_accuracy_candidate"] == pytest.approx(0.8)


RUN_IN_CHILD = """
import json, sys
from pathlib import Path
from tests.integration.test_evaluate_task import run_evaluate
args = json.loads(sys.argv[1])
run_evaluate(Path(args["spec"]), args["config"], {"enabled": False}, "child", None, None,
             checkpoint_root=args["root"])
"""


def test_resume_after_sigkill_does_not_re_ask_answered_items(
    servers: dict[str, FakeOpenAIServer], tmp_path: Path
) -> None:
    """The candidate's server answers three questions and holds the fourth until the child
    asking it is killed: exactly three answers are checkpointed, and the resumed run asks only
    the five it lacks (the held one again)."""
    with FakeOpenAIServer(reply=student(0), model="held") as held:
        held.inject(Fault(), Fault(), Fault(), Fault(hang_s=HOLD_UNTIL_CLOSED_S))
        config = {**evaluate_config(tmp_path, servers), "concurrency": 1}
        args = {"spec": str(_spec(tmp_path, held)), "config": config, "root": str(tmp_path / "ck")}
        child = subprocess.Popen(
            [sys.executable, "-c", RUN_IN_CHILD, json.dumps(args)], cwd=REPO_ROOT
        )
        try:
            held.wait_for_completions(4)
            assert child.poll() is None, "the child ended instead of waiting for its 4th answer"
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        checkpoint = next((tmp_path / "ck" / "evaluate").glob("*/evaluation.partial.jsonl"))
        answered = sum('"key": "candidate/' in line for line in checkpoint.read_text().splitlines())
        assert answered == 3
        summary = run_evaluate(
            tmp_path / "endpoint.json", config, {"enabled": False}, "resumed", None, None,
            checkpoint_root=str(tmp_path / "ck"),
        )  # fmt: skip
        asked = [r.body["messages"][-1]["content"] for r in held.completions]
    assert len(asked) == 4 + 5 and len(set(asked)) == 8  # only the held question twice
    assert asked[4] == asked[3]
    assert summary["suite_accuracy_candidate"] == pytest.approx(0.8) and summary["judge_wins"] == 3


def test_bad_config_and_inputs_fail_before_any_request(
    servers: dict[str, FakeOpenAIServer], tmp_path: Path
) -> None:
    spec = _spec(tmp_path, servers["candidate"])
    config = evaluate_config(tmp_path, servers)
    before = len(servers["candidate"].completions)
    bad_heldout = tmp_path / "bad.jsonl"
    bad_heldout.write_text('{"instruction": "ok"}\n{"instruction": ""}\n')
    cases: list[tuple[dict[str, Any], str]] = [
        ({**config, "primary_metric": "bleu"}, "primary_metric"),
        ({**config, "primary_metric": "lm_eval/gsm8k/exact_match"}, "not in benchmarks"),
        ({**config, "judge_limit": -1}, "judge_limit"),
        ({**config, "heldout": str(bad_heldout)}, "line 2"),
        ({**config, "judge": {"backend": "openai", "api_key_env": "sk-123"}}, "api_key_env"),
        ({**config, "base_served_model": ""}, "base_served_model"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            run_evaluate(spec, bad, {"enabled": False}, "bad", None, None)
    assert len(servers["candidate"].completions) == before


def _chromium() -> str:
    found = (CHROMIUM if Path(CHROMIUM).exists() else None) or shutil.which("chromium")
    if not found:
        pytest.fail("headless Chromium is missing: `make test` installs Debian's chromium package")
    return found


def _render(page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="rtune-chromium-") as profile:
        command = [
            _chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            *extra,
            page.as_uri(),
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_report_renders_in_headless_chromium(won: dict[str, Any], tmp_path: Path) -> None:
    page = won["folder"] / "report.html"
    dom = _render(page, "--dump-dom").stdout
    assert re.search(r"id=\"judge-wins\">3<", dom) and re.search(r"id=\"judge-ties\">0<", dom)
    assert re.search(r"id=\"judge-losses\">0<", dom)
    assert re.search(r"<img id=\"comparison\"[^>]*src=\"data:image/png;base64,", dom)
    assert "candidate beats base on suite_accuracy" in dom
    for table, ids in (
        ("suite-items", ["a1", "a2", "a3", "f1", "f2"]),
        ("judge-items", ["h0", "h1", "h2"]),
    ):
        body = dom.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
        assert re.findall(r"<tr><td>([^<]+)</td>", body) == ids
    shot = tmp_path / "report.png"
    _render(page, f"--screenshot={shot}", "--window-size=1200,900")
    from PIL import Image

    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, table lines and the figure drawn


def test_reflection_format_scores_only_the_output_part(
    servers: dict[str, FakeOpenAIServer], tmp_path: Path
) -> None:
    """A candidate trained to the Reflection-70B format: its reasoning holds a wrong number and a
    bullet list, its <output> the right answer; only the <output> part is scored and shown."""

    def reflective(body: Body) -> str:
        right = student(0)(body)
        return f"<thinking>Maybe 99.\n- draft\n<reflection>No.</reflection></thinking><output>{right}</output>"

    with FakeOpenAIServer(reply=reflective, model="reflective") as candidate:
        spec = EndpointSpec(
            kind="kserve", base_url=candidate.url, model="reflective", reasoning_format="reflection"
        ).save(tmp_path / "endpoint.json")
        config = {**evaluate_config(tmp_path, servers), "reasoning_format": "reflection"}
        summary = run_evaluate(
            spec, config, {"enabled": False}, "reflect", None, tmp_path / "results.json",
            checkpoint_root=str(tmp_path / "ck"),
        )  # fmt: skip
    assert summary["suite_accuracy_candidate"] == pytest.approx(0.8)  # as without the reasoning
    rows = json.loads((tmp_path / "results.json").read_text())["suite"]
    assert rows[0]["candidate_answer"] == "2 + 3 = 5.\nAnswer: 5"
    assert "<thinking>" not in json.dumps(rows)
