"""The two teacher phases as pipeline tasks (tracking off): outputs, checkpoints and metrics."""

from __future__ import annotations

from pathlib import Path

from rtune.components.common.records import read_jsonl, write_jsonl
from rtune.components.common.stage import StageSettings, run_stage
from rtune.components.reflect_instruction.task import ReflectStage
from tests.fakes.openai_server import FakeOpenAIServer


class _Sink:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def log_metric(self, metric: str, value: float) -> None:
        self.values[metric] = value


def test_both_phases_run_as_tasks_against_a_served_teacher(tmp_path: Path) -> None:
    prepared = tmp_path / "prepared.jsonl"
    write_jsonl(
        prepared,
        [
            {
                "id": f"r{i}",
                "instruction": f"Add {i} and 2.",
                "input": "",
                "output": f"{i + 2}",
                "flags": [],
            }
            for i in range(3)
        ],
    )
    tracking = {"enabled": False}
    with FakeOpenAIServer() as server:
        teacher = {"backend": "openai", "url": server.url, "model": "m", "concurrency": 2}
        sink = _Sink()
        phase1 = run_stage(
            ReflectStage.from_parameters("instruction", teacher, prepared, tmp_path / "q.jsonl"),
            StageSettings(tracking, str(tmp_path / "ck"), sink, run_id="k1"),
        )
        records = read_jsonl(tmp_path / "q.jsonl")
        assert [r["id"] for r in records] == ["r0", "r1", "r2"]
        assert sink.values["records"] == 3 and phase1.as_dict()["records"] == 3
        assert (tmp_path / "ck" / "reflect_instruction").is_dir()
        write_jsonl(
            tmp_path / "w.jsonl",
            [{**r, "phase1": {"winner": "ori", "reason": "t"}} for r in records],
        )
        phase2 = run_stage(
            ReflectStage.from_parameters(
                "response", teacher, tmp_path / "w.jsonl", tmp_path / "a.jsonl"
            ),
            StageSettings(tracking, str(tmp_path / "ck"), run_id="k1"),
        )
    answered = read_jsonl(tmp_path / "a.jsonl")
    assert phase2.as_dict()["records"] == 3 and all("A" in r["candidates"] for r in answered)
    assert all(r["teacher"]["response"]["parse_status"] for r in answered)


def test_the_critique_reaches_the_mlflow_table_and_the_html_report(tmp_path: Path) -> None:
    """Each phase logs a per-record teacher table (critique, status, reasons) to MLflow and
    writes the same rows into an HTML report."""
    import json

    import mlflow

    prepared = tmp_path / "prepared.jsonl"
    write_jsonl(
        prepared,
        [{"id": "r0", "instruction": "Add 1 and 2.", "input": "", "output": "3", "flags": []}],
    )
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with FakeOpenAIServer() as server:
        teacher = {"backend": "openai", "url": server.url, "model": "m", "few_shot": False}
        stage = ReflectStage.from_parameters("instruction", teacher, prepared, tmp_path / "q.jsonl")
        stage.report = tmp_path / "report.html"
        run_stage(stage, StageSettings({"tracking_uri": store}, str(tmp_path / "ck"), run_id="k2"))
    page = (tmp_path / "report.html").read_text()
    assert "It could be more specific (Add 1 and 2.)" in page and "critique" in page
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("reflection-tuning")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`rtune.stage` = 'reflect_instruction'"
    )
    table = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "teacher/reflect_instruction.json")
        ).read_text()
    )
    row = dict(zip(table["columns"], table["data"][0], strict=True))
    assert row["id"] == "r0" and row["candidate"] == "Q" and row["parse_status"] == "ok"
    assert row["critique"] == "It could be more specific (Add 1 and 2.)"
    html = client.download_artifacts(run.info.run_id, "reports/reflect_instruction.html")
    assert "It could be more specific" in Path(html).read_text()
