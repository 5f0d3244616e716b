"""The whole DAG end to end through kfp.local on 8 seed records with the embedded model.

Student and teacher are both the real embedded default (SmolLM2-135M-Instruct); MLflow is a sqlite
store. This is the test a newcomer's `make demo` mirrors, on a smaller slice.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rtune.components.common.records import read_jsonl

# the module fixture runs the whole DAG (three-way evaluate included) inside the first test
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

DECISIONS = {"ori", "Q", "A", "QA", "dropped"}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path):
    from rtune.pipelines.commands.run import run_locally

    work = tmp_path_factory.mktemp("local-run")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    overrides = [
        "prepare.limit=8",
        "teacher.max_new_tokens=48",
        "teacher.batch_size=8",
        "scoring.num_shards=2",
        "selection.policy=keep_phase1_winner",
        "finetune.max_steps=2",
        "student.max_length=512",
        "finetune.registered_model=local-student",
        "quantize.calibration_records=8",
        "quantize.max_seq_length=128",
        "quantize.heldout_records=2",
        "quantize.max_perplexity_increase=10",
        "evaluate.suite_limit=3",
        "evaluate.judge_limit=1",
        "evaluate.max_new_tokens=24",
        f"local.pipeline_root={work / 'runs'}",
        f"checkpoint_root={work / 'checkpoints'}",
    ]
    try:
        yield run_locally(None, overrides)
    finally:
        monkeypatch.undo()


def test_every_seed_record_ends_with_a_decision_and_reason(local_run) -> None:
    decisions = read_jsonl(local_run.decisions)
    assert len(decisions) == 8
    assert len({r["id"] for r in decisions}) == 8
    for record in decisions:
        assert record["decision"] in DECISIONS and record["reason"]
        assert record["phase1"]["winner"] in {"ori", "Q"}
        assert {"ori", "Q"} <= set(record["candidates"])
        assert set(record["candidates"]) & {"A", "QA"}
        assert record["teacher"]["instruction"]["parse_status"]
        assert (
            record["candidates"]["ori"]["scores"]["reason"]
            or record["candidates"]["ori"]["scores"]["ifd"] > 0
        )


def test_selected_dataset_is_the_kept_records(local_run) -> None:
    decisions = {r["id"]: r for r in read_jsonl(local_run.decisions)}
    selected = read_jsonl(local_run.selected)
    kept = {i for i, r in decisions.items() if r["decision"] != "dropped"}
    assert {r["id"] for r in selected} == kept
    for row in selected:
        chosen = decisions[row["id"]]["candidates"][row["candidate"]]
        assert row["output"] == chosen["output"] and row["instruction"] == chosen["instruction"]
    assert "<img" in local_run.report.read_text()


def test_mlflow_has_one_parent_and_a_nested_run_per_stage(local_run) -> None:
    import mlflow

    client = mlflow.MlflowClient(local_run.tracking_uri)
    parent = client.get_run(local_run.mlflow_run_id)
    assert parent.data.tags["rtune.role"] == "pipeline" and parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    names = Counter(r.info.run_name for r in children)
    assert {
        "prepare",
        "reflect_instruction",
        "select_ifd",
        "reflect_response",
        "select_rifd",
        "finetune",
        "quantize",
        "serve",
        "evaluate",
    } <= set(names)
    assert names["score_ifd-shard-0"] == 1 and names["score_ifd-shard-1"] == 1
    contexts = {
        tag.value
        for run in children
        for dataset_input in run.inputs.dataset_inputs
        for tag in dataset_input.tags
        if tag.key == "mlflow.data.context"
    }
    assert {"seed", "candidates", "selected"} <= contexts
    select = next(r for r in children if r.info.run_name == "select_rifd")
    artifacts = {a.path for a in client.list_artifacts(select.info.run_id, "figures")}
    assert {"figures/decisions.png", "figures/rifd_old_vs_new.png"} <= artifacts
    assert any(key.startswith("decision_") for key in parent.data.metrics)


def test_finetune_trains_on_the_selected_records_and_registers_the_candidate(local_run) -> None:
    import mlflow

    assert (local_run.model / "model.safetensors").exists()
    assert (local_run.adapter / "adapter_config.json").exists()
    assert "training loss" in local_run.training_report.read_text()
    client = mlflow.MlflowClient(local_run.tracking_uri)
    version = client.get_model_version_by_alias("local-student", "candidate")
    assert version.tags["rtune.training_dataset.source"].endswith("selected")
    summary = local_run.summary.read_text()  # finalize's run summary: each stage's own line
    assert "| finetune |" in summary and "over 2 steps" in summary


def test_quantize_serve_evaluate_finish_the_dag(local_run) -> None:
    import json

    import mlflow

    client = mlflow.MlflowClient(local_run.tracking_uri)
    parent = client.get_run(local_run.mlflow_run_id)
    metrics = parent.data.metrics
    # a real int4 model: well under half the fp32 size, perplexity measured on both
    assert 0 < metrics["size_ratio"] < 0.5
    assert metrics["perplexity_quantized"] > 0 and metrics["perplexity_unquantized"] > 0
    assert (local_run.quantized / "config.json").exists()
    spec = json.loads(local_run.endpoint.read_text())
    assert spec["kind"] == "local" and spec["base_url"].startswith("http://127.0.0.1:")
    assert metrics["smoke_ok"] == 1 and parent.data.tags["rtune.endpoint"]
    results = json.loads(local_run.evaluation.read_text())
    summary = results.get("summary", results)
    assert 0 <= summary["suite_accuracy_candidate"] <= 1
    assert summary["judge_wins"] + summary["judge_ties"] + summary["judge_losses"] == 1
    assert "<img" in local_run.evaluation_report.read_text()
    summary = local_run.summary.read_text()
    for stage in ("quantize", "serve", "evaluate"):
        assert f"| {stage} |" in summary
    assert "smoke test ok" in summary and "suite accuracy" in summary


def test_the_run_closes_finished_with_its_config_and_a_quiet_log(local_run) -> None:
    import mlflow

    client = mlflow.MlflowClient(local_run.tracking_uri)
    parent = client.get_run(local_run.mlflow_run_id)
    assert local_run.succeeded and parent.info.status == "FINISHED"
    assert parent.data.tags["rtune.failed_stages"] == ""
    # the run's config is on the parent run, each stage's settings under its name
    assert parent.data.params["finetune.max_steps"] == "2"
    assert parent.data.params["prepare.limit"] == "8"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert any(i.dataset.name == "seed" for i in parent.inputs.dataset_inputs)
    # every task's full log is a file; the summary names every stage once
    logs = {p.stem for p in local_run.logs.glob("*.log")}
    assert {"prepare", "finetune", "evaluate", "finalize", "pipeline"} <= logs
    assert "executor_input" in (local_run.logs / "prepare.log").read_text()
