"""The fine-tune stage end to end on a tiny model: MLflow curves, params, the training dataset,
a registered version with alias ``candidate`` linked to that dataset, KFP outputs, report; a
re-run of finished work does not train again. Plus: every shipped training config validates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.stage import StageSettings, run_stage
from rtune.components.finetune.config import FinetuneConfig
from rtune.components.finetune.task import FinetuneOutputs, FinetuneStage
from tests.conftest import RecordingMetrics
from tests.finetune_helpers.records import training_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stage(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("finetune-task")
    selected = work / "selected.jsonl"
    selected.write_text("".join(json.dumps(r) + "\n" for r in training_records(10)))
    tracking = {"experiment": "ft-test", "tracking_uri": f"sqlite:///{work / 'mlflow.db'}"}
    finetune = FinetuneConfig(
        model=str(tiny_model_dir),
        max_steps=4,
        learning_rate=1e-3,
        global_batch_size=2,
        max_length=256,
        save_steps=2,
        registered_model="student-t",
    )
    outputs = FinetuneOutputs(work / "adapter", work / "model", work / "report.html")
    metrics = RecordingMetrics()
    settings = StageSettings(
        tracking=tracking, checkpoint_root=str(work / "ck"), metrics=metrics, run_id="kfp-run-1"
    )
    summary = run_stage(FinetuneStage(finetune, selected, outputs), settings)
    return {
        "work": work,
        "summary": summary,
        "metrics": metrics,
        "tracking": tracking,
        "finetune": finetune,
        "outputs": outputs,
        "selected": selected,
    }


def _client(stage: dict[str, Any]) -> Any:
    import mlflow

    mlflow.set_tracking_uri(stage["tracking"]["tracking_uri"])
    return mlflow.MlflowClient()


def _stage_run(stage: dict[str, Any]) -> Any:
    client = _client(stage)
    experiment = client.get_experiment_by_name("ft-test")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`rtune.stage` = 'finetune'")
    return run


def test_training_curves_params_and_dataset_in_the_stage_run(stage: dict[str, Any]) -> None:
    client, run = _client(stage), _stage_run(stage)
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert len(losses) == 4 and [m.step for m in losses] == [1, 2, 3, 4]
    for curve in ("learning_rate", "grad_norm", "tokens_per_second"):
        assert client.get_metric_history(run.info.run_id, curve), curve
    assert run.data.params["method"] == "lora"
    assert "per_device_train_batch_size" not in run.data.params  # no HF param flood
    contexts = {
        tag.value
        for item in run.inputs.dataset_inputs
        for tag in item.tags
        if tag.key == "mlflow.data.context"
    }
    assert "training" in contexts
    assert run.data.metrics["dropped_truncated"] == 0
    assert run.data.metrics["training_records"] == 10


def test_model_version_is_the_candidate_and_links_the_training_data(stage: dict[str, Any]) -> None:
    import mlflow

    client = _client(stage)
    version = client.get_model_version_by_alias("student-t", "candidate")
    assert str(version.version) == stage["summary"].registered["model_version"]
    assert version.tags["rtune.training_dataset.source"] == str(stage["selected"])
    assert version.tags["rtune.training_run"] == _stage_run(stage).info.run_id
    logged = mlflow.get_logged_model(version.tags["rtune.logged_model_id"])
    assert any(m.dataset_name == "training" for m in logged.metrics)
    model = mlflow.pyfunc.load_model("models:/student-t@candidate")
    (reply,) = model.predict(["Add 2 and 3."], params={"max_new_tokens": 3})
    assert isinstance(reply, str)


def test_kfp_outputs_metrics_and_report(stage: dict[str, Any]) -> None:
    outputs = stage["outputs"]
    assert (outputs.adapter_dir / "adapter_config.json").exists()
    assert (outputs.model_dir / "model.safetensors").exists()
    assert (outputs.model_dir / "tokenizer_config.json").exists()
    assert stage["metrics"].values["global_step"] == 4
    assert stage["metrics"].values["final_loss"] > 0
    page = outputs.report_path.read_text()
    assert "training loss" in page and "data:image/png;base64," in page


def test_finished_training_is_not_done_again(
    stage: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import rtune.components.finetune.launch as launch_module

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("training ran again")

    monkeypatch.setattr(launch_module, "launch", refuse)
    again = FinetuneOutputs(stage["work"] / "a2", stage["work"] / "m2")
    settings = StageSettings(
        tracking=stage["tracking"], checkpoint_root=str(stage["work"] / "ck"), run_id="kfp-run-2"
    )
    summary = run_stage(FinetuneStage(stage["finetune"], stage["selected"], again), settings)
    assert summary.values["global_step"] == 4
    assert (again.model_dir / "model.safetensors").exists()


def test_no_trainable_record_is_one_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    from rtune.components.common.records import InputError

    selected = tmp_path / "selected.jsonl"
    record = {"id": "long-1", "instruction": "word " * 400, "input": "", "output": "ok"}
    selected.write_text(json.dumps(record) + "\n")
    with pytest.raises(InputError, match="max_length"):
        run_stage(
            FinetuneStage(
                FinetuneConfig(model=str(tiny_model_dir), max_length=64),
                selected,
                FinetuneOutputs(tmp_path / "a", tmp_path / "m"),
            ),
            StageSettings(tracking={"enabled": False}, checkpoint_root=str(tmp_path / "ck")),
        )
