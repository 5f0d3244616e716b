"""The quantize stage end to end: a real GPTQ W4A16 quantization of the embedded model in
llm-compressor's own interpreter, the compressed model loading and generating in the project's
environment, MLflow/KFP outputs, the quality guard, reuse of finished work, a killed worker
redone, ``none`` passing through, and the cluster path (model in the store -> model in the store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.stage import SUMMARY_MARK, MetricsSink, StageSettings, run_stage
from rtune.components.quantize import worker_control
from rtune.components.quantize.outputs import MODEL_URI_FILE
from rtune.components.quantize.task import QualityGateFailed, QuantizeOutputs, QuantizeStage
from tests.conftest import RecordingMetrics
from tests.finetune_helpers.records import training_records

pytestmark = pytest.mark.slow

NO_TRACKING = {"enabled": False}


def run_quantize(
    model: Path,
    selected: Path,
    quantize: dict[str, Any],
    tracking: dict[str, Any],
    run_id: str,
    outputs: QuantizeOutputs,
    checkpoint_root: str = "",
    metrics: MetricsSink | None = None,
) -> dict[str, Any]:
    """The stage as the pipeline's quantize task runs it (section as plain data, metrics also on
    the parent run); returns the summary's numbers."""
    stage = QuantizeStage.from_parameters(None, quantize, model, selected, outputs)
    settings = StageSettings(
        tracking=tracking,
        checkpoint_root=checkpoint_root,
        metrics=metrics,
        run_id=run_id,
        to_parent=True,
    )
    return run_stage(stage, settings).as_dict()


def _selected(folder: Path, count: int) -> Path:
    path = folder / "selected.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in training_records(count)))
    return path


@pytest.fixture(scope="module")
def stage(embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("quantize-stage")
    tracking = {"experiment": "quantize-test", "tracking_uri": f"sqlite:///{work / 'mlflow.db'}"}
    quantize = {
        "method": "w4a16",
        "calibration_records": 16,
        "max_seq_length": 256,
        "heldout_records": 6,
        "max_perplexity_increase": 1.0,
    }
    outputs = QuantizeOutputs(work / "quantized", work / "report.html")
    metrics = RecordingMetrics()
    summary = run_quantize(
        embedded_model_dir,
        _selected(work, 30),
        quantize,
        tracking,
        "kfp-quantize-1",
        outputs,
        str(work / "ck"),
        metrics,
    )
    return {
        "work": work,
        "model": embedded_model_dir,
        "summary": summary,
        "metrics": metrics,
        "tracking": tracking,
        "quantize": quantize,
        "outputs": outputs,
    }


def test_w4a16_compresses_the_embedded_model_at_a_measured_cost(stage: dict[str, Any]) -> None:
    summary = stage["summary"]
    assert summary["method"] == "w4a16" and summary["reused"] is False
    assert summary["size_ratio"] < 0.5  # 4-bit Linear weights (embeddings stay fp32)
    assert summary["size_mb_unquantized"] > 500 > summary["size_mb_quantized"] > 100
    assert 1 < summary["perplexity_unquantized"] < 100
    assert 1 < summary["perplexity_quantized"] < 100
    increase = summary["perplexity_quantized"] / summary["perplexity_unquantized"] - 1
    assert summary["perplexity_increase"] == pytest.approx(increase)
    assert summary["perplexity_increase"] != 0  # the weights really changed
    assert summary["calibration_records"] == 16 and summary["heldout_records"] == 6
    assert summary["oneshot_seconds"] > 0 and summary["seconds"] >= summary["oneshot_seconds"]


def test_output_is_int4_compressed_tensors_that_loads_and_generates(stage: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = stage["outputs"].model_dir
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    assert config["config_groups"]["group_0"]["weights"]["group_size"] == 64
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    up_proj = model.model.layers[0].mlp.up_proj
    assert up_proj.weight_packed.dtype == torch.int32  # stored packed: 8 int4 values per int32
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("What is 2 + 3?", return_tensors="pt")
    generated = model.generate(**prompt, min_new_tokens=4, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4
    weight = up_proj.weight.detach()  # decompressed by the first forward
    distinct = [len(torch.unique(group)) for group in weight.reshape(-1, 64)[:200]]
    assert max(distinct) <= 16  # every group of 64 weights takes at most 2^4 values


def test_quantized_tokenizer_prompts_as_the_student_was_trained(stage: dict[str, Any]) -> None:
    """The worker saves the training format's chat template (here vicuna, the stage's default),
    not the base tokenizer's own: /v1/chat/completions prompts the quantized model as trained."""
    from transformers import AutoTokenizer

    from rtune.components.finetune.data import tokenize_record
    from rtune.components.scoring.passes import resolve_start_ids

    tokenizer = AutoTokenizer.from_pretrained(stage["outputs"].model_dir)
    record = {"id": "x", "instruction": "What is 2 + 3?", "input": "", "output": "5"}
    start = resolve_start_ids(tokenizer, "auto")
    example, _ = tokenize_record(record, tokenizer, "vicuna", 256, start)
    assert example is not None
    prompt = [
        i for i, label in zip(example.input_ids, example.labels, strict=True) if label == -100
    ]
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": record["instruction"]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert tokenizer.encode(rendered, add_special_tokens=False) == prompt


def _client(stage: dict[str, Any]) -> Any:
    import mlflow

    mlflow.set_tracking_uri(stage["tracking"]["tracking_uri"])
    return mlflow.MlflowClient()


def test_mlflow_stage_run_and_parent_hold_metrics_tags_and_artifacts(stage: dict[str, Any]) -> None:
    client = _client(stage)
    experiment = client.get_experiment_by_name("quantize-test")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`rtune.stage` = 'quantize'")
    summary = stage["summary"]
    assert run.data.params["method"] == "w4a16" and run.data.params["group_size"] == "64"
    for key in ("size_ratio", "perplexity_unquantized", "perplexity_quantized"):
        assert run.data.metrics[key] == pytest.approx(summary[key])
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["perplexity_increase"] == pytest.approx(
        summary["perplexity_increase"]
    )
    assert parent.data.tags["rtune.quantization"] == "w4a16"
    assert parent.data.tags["rtune.quantized_uri"] == str(stage["outputs"].model_dir)
    artifacts = {
        item.path
        for folder in ("figures", "quantize", "reports")
        for item in client.list_artifacts(run.info.run_id, folder)
    }
    assert {
        "figures/quantize_size_perplexity.png",
        "quantize/recipe.yaml",
        "quantize/quantize_summary.json",
        "reports/quantize.html",
    } <= artifacts
    contexts = {
        tag.value
        for item in run.inputs.dataset_inputs
        for tag in item.tags
        if tag.key == "mlflow.data.context"
    }
    assert contexts == {"calibration", "evaluation"}


def test_kfp_metrics_and_report(stage: dict[str, Any]) -> None:
    metrics = stage["metrics"].values
    assert metrics["size_ratio"] == pytest.approx(stage["summary"]["size_ratio"])
    assert "method" not in metrics  # strings are not metrics
    page = stage["outputs"].report_path.read_text()
    assert "data:image/png;base64," in page and "perplexity_increase" in page


def test_finished_quantization_is_reused_not_redone(
    stage: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (marker,) = (Path(stage["work"]) / "ck" / "quantize").glob(f"*/{worker_control.SUMMARY_FILE}")
    written = marker.stat().st_mtime_ns

    def no_worker(*args: Any) -> dict[str, Any]:
        raise AssertionError("the worker ran again")

    monkeypatch.setattr(worker_control, "run_worker", no_worker)
    again = run_quantize(
        stage["model"],
        Path(stage["work"]) / "selected.jsonl",
        stage["quantize"],
        NO_TRACKING,
        "kfp-quantize-2",
        QuantizeOutputs(tmp_path / "quantized"),
        str(Path(stage["work"]) / "ck"),
    )
    assert again["reused"] is True and marker.stat().st_mtime_ns == written
    assert again["perplexity_quantized"] == stage["summary"]["perplexity_quantized"]
    assert (tmp_path / "quantized" / "model.safetensors").exists()


def test_quality_guard_fails_the_stage_naming_the_numbers_and_the_key(
    stage: dict[str, Any], tmp_path: Path
) -> None:
    summary = stage["summary"]
    assert summary["perplexity_increase"] > 0.01
    with pytest.raises(QualityGateFailed) as caught:
        run_quantize(
            stage["model"],
            Path(stage["work"]) / "selected.jsonl",
            {**stage["quantize"], "max_perplexity_increase": 0.01},
            NO_TRACKING,
            "kfp-quantize-3",
            QuantizeOutputs(tmp_path / "quantized"),
            str(Path(stage["work"]) / "ck"),
        )
    message = str(caught.value)
    assert f"{summary['perplexity_unquantized']:.4g}" in message
    assert f"{summary['perplexity_quantized']:.4g}" in message
    assert "+1.0%" in message and "quantize.max_perplexity_increase" in message
    assert not (tmp_path / "quantized").exists()  # a failed gate publishes no model


# --- the tiny model: failure paths and pass-through -------------------------------------------

TINY = {"calibration_records": 8, "heldout_records": 4, "max_seq_length": 128}


def test_a_killed_worker_fails_with_its_output_and_the_rerun_redoes_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    selected, root = _selected(tmp_path, 12), str(tmp_path / "ck")
    with pytest.raises(worker_control.QuantizationFailed, match="exited with code -9") as caught:
        run_quantize(
            tiny_model_dir,
            selected,
            {**TINY, "worker_timeout_s": 1},
            NO_TRACKING,
            "kfp-killed",
            QuantizeOutputs(tmp_path / "out"),
            root,
        )
    assert "worker.log" in str(caught.value)
    (work,) = (tmp_path / "ck" / "quantize").iterdir()
    assert not (work / worker_control.SUMMARY_FILE).exists()
    (work / "model").mkdir()
    (work / "model" / "config.json").write_text("{}")  # what a kill mid-save leaves
    summary = run_quantize(
        tiny_model_dir,
        selected,
        TINY,
        NO_TRACKING,
        "kfp-rerun",
        QuantizeOutputs(tmp_path / "out"),
        root,
    )
    assert summary["reused"] is False and (work / worker_control.SUMMARY_FILE).exists()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"


def test_none_passes_the_model_through_without_llm_compressor(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_interpreter(config: Any) -> Path:
        raise AssertionError("method none needs no llm-compressor")

    monkeypatch.setattr(worker_control, "quantize_python", no_interpreter)
    summary = run_quantize(
        tiny_model_dir,
        _selected(tmp_path, 12),
        {**TINY, "method": "none", "max_perplexity_increase": 0.0},
        NO_TRACKING,
        "kfp-none",
        QuantizeOutputs(tmp_path / "out"),
        str(tmp_path / "ck"),
    )
    assert summary["perplexity_quantized"] == summary["perplexity_unquantized"] > 1
    assert summary["perplexity_increase"] == 0 and summary["size_ratio"] == 1
    original = (tiny_model_dir / "model.safetensors").read_bytes()
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == original


def test_none_on_a_stored_model_passes_its_uri_on(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / MODEL_URI_FILE).write_text("s3://models/run-1/model\n")
    summary = run_quantize(
        model,
        _selected(tmp_path, 3),
        {"method": "none"},
        NO_TRACKING,
        "kfp-none-remote",
        QuantizeOutputs(tmp_path / "out"),
    )
    assert summary["model_store_uri"] == "s3://models/run-1/model"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [MODEL_URI_FILE]
    assert (tmp_path / "out" / MODEL_URI_FILE).read_text().strip() == "s3://models/run-1/model"


@pytest.mark.integration
def test_a_model_in_the_store_is_quantized_back_into_the_store(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtune.components.common.model_store import upload_model
    from rtune.components.common.model_verify import verify_model
    from tests.servers import moto_s3, use_s3

    with moto_s3() as endpoint:
        use_s3(monkeypatch, endpoint, tmp_path / "cache", "models")
        source = upload_model(tiny_model_dir, "s3://models/run-7/model", progress=False).uri
        handed_over = tmp_path / "finetuned"
        handed_over.mkdir()
        (handed_over / MODEL_URI_FILE).write_text(source + "\n")
        summary = run_quantize(
            handed_over,
            _selected(tmp_path, 12),
            TINY,
            NO_TRACKING,
            "kfp-cluster",
            QuantizeOutputs(tmp_path / "out"),
            str(tmp_path / "ck"),
        )
        stored = summary["model_store_uri"]
        assert stored == "s3://models/run-7/model-w4a16"
        verify_model(stored)  # every file arrived intact, manifest written last
    assert [p.name for p in (tmp_path / "out").iterdir()] == [MODEL_URI_FILE]
    assert (tmp_path / "out" / MODEL_URI_FILE).read_text().strip() == stored


def test_cli_writes_model_and_report_and_exits_1_when_the_guard_fails(
    stage: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from rtune.pipelines import cli

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"quantize": stage["quantize"]}))
    command = [
        "quantize",
        "--model",
        str(stage["model"]),
        "--selected",
        str(Path(stage["work"]) / "selected.jsonl"),
        "--config",
        str(config),
        "--checkpoint-root",
        str(Path(stage["work"]) / "ck"),
        "--no-tracking",
    ]
    assert cli.main([*command, "--output-dir", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out.splitlines()
    printed = json.loads("\n".join(line for line in out if not line.startswith(SUMMARY_MARK)))
    assert printed["method"] == "w4a16" and printed["reused"] is True
    assert (tmp_path / "ok" / "model" / "config.json").exists()
    assert (tmp_path / "ok" / "report.html").exists()
    strict = [*command, "--set", "quantize.max_perplexity_increase=0.01"]
    assert cli.main([*strict, "--output-dir", str(tmp_path / "strict")]) == 1
    error = capsys.readouterr().err
    assert "quality gate failed" in error and "quantize.max_perplexity_increase" in error
