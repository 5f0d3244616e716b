"""The quantize stage's parts: config, recipes (parsed by llm-compressor itself), the
calibration/held-out split, texts, perplexity against a direct HF forward, model identity,
the group-size check, interpreter resolution and the quality guard's message."""

from __future__ import annotations

import ast
import json
import math
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtune.components.common.config import from_dict
from rtune.components.common.records import InputError
from rtune.components.quantize.config import METHODS, QuantizeConfig
from rtune.components.quantize.data import response_passes, split_records
from rtune.components.quantize.guard import QualityGateFailed, check_quality
from rtune.components.quantize.plan import check_group_size, model_signature
from rtune.components.quantize.recipes import recipe_stages, recipe_yaml
from rtune.components.quantize.worker_control import (
    WORKER_SCRIPT,
    quantize_python,
    run_worker,
    worker_command,
)
from tests.finetune_helpers.records import training_records
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
QUANTIZE_PYTHON = ROOT / ".venv-quantize" / "bin" / "python"


def _modifiers(method: str, **config: Any) -> dict[str, dict[str, Any]]:
    """Modifier class -> args, in recipe order, across stages."""
    recipe = yaml.safe_load(recipe_yaml(QuantizeConfig(method=method, **config)))
    found: dict[str, dict[str, Any]] = {}
    for stage in recipe.values():
        for group in stage.values():
            found.update(group)
    return found


# --- config -----------------------------------------------------------------------------------


def test_defaults_quantize_the_embedded_model_with_gptq_w4a16() -> None:
    config = QuantizeConfig()
    assert config.method == "w4a16" and config.template == "vicuna"
    assert 576 % config.group_size == 0 and 1536 % config.group_size == 0  # SmolLM2-135M widths
    assert config.ignore == ["lm_head"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("method", "int3", "method must be one of"),
        ("group_size", 0, "group_size must be > 0"),
        ("heldout_records", 0, "heldout_records must be > 0"),
        ("calibration_records", -1, "calibration_records must be > 0"),
        ("max_seq_length", 8, "max_seq_length must be >= 16"),
        ("max_perplexity_increase", -0.1, "relative bound >= 0"),
        ("template", "llama9", "template must be one of"),
        ("smoothing_strength", 1.5, "smoothing_strength"),
        ("model_store", "gs://bucket/x", "s3:// prefix"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        from_dict(QuantizeConfig, {field: value}, "quantize")


def test_config_takes_ignore_as_a_comma_list_and_ints_from_kfp_floats() -> None:
    config = from_dict(QuantizeConfig, {"ignore": "lm_head, re:.*gate", "group_size": 32.0})
    assert config.ignore == ["lm_head", "re:.*gate"] and config.group_size == 32


# --- recipes ----------------------------------------------------------------------------------


def test_w4a16_is_gptq_int4_in_groups_keeping_lm_head() -> None:
    (name, args), *rest = _modifiers("w4a16", group_size=32).items()
    assert name == "GPTQModifier" and not rest
    assert args["ignore"] == ["lm_head"]
    weights = args["config_groups"]["group_0"]["weights"]
    assert weights == {
        "num_bits": 4,
        "type": "int",
        "symmetric": True,
        "strategy": "group",
        "group_size": 32,
    }
    assert "input_activations" not in args["config_groups"]["group_0"]  # A16


def test_fp8_dynamic_is_a_calibration_free_preset() -> None:
    assert _modifiers("fp8_dynamic") == {
        "QuantizationModifier": {
            "targets": ["Linear"],
            "ignore": ["lm_head"],
            "scheme": "FP8_DYNAMIC",
        }
    }


def test_w8a8_smooths_before_gptq_int8() -> None:
    modifiers = _modifiers("w8a8", smoothing_strength=0.6)
    assert list(modifiers) == ["SmoothQuantModifier", "GPTQModifier"]
    assert modifiers["SmoothQuantModifier"]["smoothing_strength"] == 0.6
    assert modifiers["GPTQModifier"]["scheme"] == "W8A8"


def test_sparse_2of4_prunes_decoder_layers_with_a_2_of_4_mask() -> None:
    ((name, args),) = _modifiers("sparse_2of4").items()
    assert name == "SparseGPTModifier"
    assert args["sparsity"] == 0.5 and args["mask_structure"] == "2:4"  # a string, not 124
    assert args["targets"] == [r"re:.*layers\.\d+$"]  # never lm_head (tied to the embeddings)


def test_sparse_2of4_w4a16_prunes_then_rounds_to_nearest_int4() -> None:
    stages = recipe_stages(QuantizeConfig(method="sparse_2of4_w4a16"))
    assert list(stages) == ["sparsity_stage", "quantization_stage"]
    modifiers = _modifiers("sparse_2of4_w4a16")
    assert list(modifiers) == ["SparseGPTModifier", "QuantizationModifier"]
    weights = modifiers["QuantizationModifier"]["config_groups"]["group_0"]["weights"]
    assert weights["num_bits"] == 4 and weights["symmetric"] is True  # 0 -> 0: zeros stay


def test_none_has_no_recipe() -> None:
    with pytest.raises(ValueError, match="no llm-compressor recipe"):
        recipe_yaml(QuantizeConfig(method="none"))


PARSE_RECIPES = """
import json, sys
from llmcompressor.recipe import Recipe
out = {}
for method, text in json.loads(sys.stdin.read()).items():
    recipe = Recipe.create_instance(text)
    out[method] = [
        [type(m).__name__, m.model_dump(include={"group_size", "scheme", "mask_structure"})]
        for m in recipe.modifiers
    ]
    if method == "w4a16":
        scheme = recipe.modifiers[0].resolve_quantization_config().config_groups["group_0"]
        out["w4a16_group_size"] = scheme.weights.group_size
print(json.dumps(out))
"""


@pytest.mark.slow
def test_every_recipe_parses_in_llm_compressor() -> None:
    assert QUANTIZE_PYTHON.exists(), "run `make setup` (it creates .venv-quantize)"
    texts = {
        m: recipe_yaml(QuantizeConfig(method=m, group_size=32)) for m in METHODS if m != "none"
    }
    result = subprocess.run(
        [str(QUANTIZE_PYTHON), "-I", "-c", PARSE_RECIPES],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    names = {m: [name for name, _ in parsed[m]] for m in texts}
    assert names == {
        "w4a16": ["GPTQModifier"],
        "fp8_dynamic": ["QuantizationModifier"],
        "w8a8": ["SmoothQuantModifier", "GPTQModifier"],
        "sparse_2of4": ["SparseGPTModifier"],
        "sparse_2of4_w4a16": ["SparseGPTModifier", "QuantizationModifier"],
    }
    assert parsed["w4a16_group_size"] == 32
    assert parsed["sparse_2of4"][0][1]["mask_structure"] == "2:4"
    assert parsed["fp8_dynamic"][0][1]["scheme"] == "FP8_DYNAMIC"


# --- split and texts --------------------------------------------------------------------------


def test_split_is_disjoint_and_independent_of_file_order() -> None:
    records = training_records(40)
    split = split_records(records, calibration=20, heldout=8, source="sel.jsonl")
    assert len(split.heldout) == 8 and len(split.calibration) == 20 and split.short_by == 0
    assert not set(split.heldout_ids) & set(split.calibration_ids)
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    again = split_records(shuffled, calibration=20, heldout=8, source="sel.jsonl")
    assert again.heldout_ids == split.heldout_ids
    assert again.calibration_ids == split.calibration_ids


def test_fewer_records_than_asked_calibrate_on_what_is_left_and_say_so() -> None:
    split = split_records(training_records(10), calibration=32, heldout=4, source="sel.jsonl")
    assert len(split.calibration) == 6 and split.short_by == 26
    assert not set(split.heldout_ids) & set(split.calibration_ids)


def test_too_few_records_to_hold_out_is_an_error_naming_the_numbers_and_the_key() -> None:
    with pytest.raises(InputError) as caught:
        split_records(training_records(8), calibration=32, heldout=8, source="sel.jsonl")
    message = str(caught.value)
    assert "8 selected record(s)" in message and "hold out 8" in message
    assert "quantize.heldout_records" in message and message.startswith("sel.jsonl")


def test_bad_records_are_named() -> None:
    records = training_records(4)
    records[2] = {**records[2], "output": ""}
    with pytest.raises(InputError, match=r"line 3.*'output'"):
        split_records(records, 2, 1, "sel.jsonl")
    records = training_records(4)
    records[3] = {**records[3], "id": records[0]["id"]}
    with pytest.raises(InputError, match="duplicate id"):
        split_records(records, 2, 1, "sel.jsonl")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from rtune.components.common.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.mark.parametrize("template", ["vicuna", "alpaca"])
def test_texts_are_the_fine_tuning_texts(tokenizer: Any, template: str) -> None:
    """Calibration sees exactly what the model was fine-tuned on (vicuna: FastChat's space after
    ``ASSISTANT:``), without the end token."""
    from rtune.components.finetune.data import tokenize_record
    from rtune.components.scoring.passes import resolve_start_ids

    (record,) = training_records(1)
    token_pass = response_passes([record], tokenizer, template, max_length=512).passes[record["id"]]
    start = resolve_start_ids(tokenizer, "auto")
    example, _ = tokenize_record(record, tokenizer, template, 512, start)
    assert example is not None
    assert list(token_pass.ids) == list(example.input_ids[:-1])
    assert example.labels[token_pass.start - 1] == -100 != example.labels[token_pass.start]


def test_texts_are_the_scorers_prompt_then_the_response(tokenizer: Any) -> None:
    (record,) = training_records(1)
    texts = response_passes([record], tokenizer, "vicuna", max_length=512)
    token_pass = texts.passes[record["id"]]
    assert token_pass.ids[0] == tokenizer.convert_tokens_to_ids("<|endoftext|>")  # start token
    prompt = tokenizer.decode(token_pass.ids[1 : token_pass.start])
    assert prompt.startswith("A chat between") and prompt.endswith(
        f"USER: {record['instruction']} ASSISTANT:"
    )
    assert tokenizer.decode(token_pass.ids[token_pass.start :]) == " " + record["output"]


def test_a_response_cut_away_by_max_length_is_counted_not_kept(tokenizer: Any) -> None:
    records = training_records(2)
    texts = response_passes(records, tokenizer, "vicuna", max_length=20)  # < the vicuna prompt
    assert texts.passes == {} and texts.cut_away == [r["id"] for r in records]


# --- perplexity and sizes ---------------------------------------------------------------------


def test_perplexity_is_exp_of_the_token_weighted_response_loss(
    tiny_model_dir: Path, tokenizer: Any
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from rtune.components.quantize.perplexity import model_perplexity

    passes = list(response_passes(training_records(3), tokenizer, "vicuna", 512).passes.values())
    measured = model_perplexity(tiny_model_dir, passes)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    total, tokens = 0.0, 0
    for token_pass in passes:
        ids = torch.tensor([token_pass.ids])
        labels = ids.clone()
        labels[0, : token_pass.start] = -100  # the prompt is not scored
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss  # mean over response tokens
        total += float(loss) * token_pass.n_targets
        tokens += token_pass.n_targets
    assert measured.tokens == tokens and measured.records == 3
    assert measured.perplexity == pytest.approx(math.exp(total / tokens), rel=1e-5)


@pytest.mark.parametrize("template", ["vicuna", "chat"])
def test_the_worker_job_carries_the_training_chat_template(
    tiny_model_dir: Path, tmp_path: Path, template: str
) -> None:
    """The worker (its own older transformers) is told the chat template of the training format,
    whatever template the input folder holds (it saves it: test_quantize_stage)."""
    from rtune.components.common.models import load_tokenizer
    from rtune.components.common.records import write_jsonl
    from rtune.components.quantize.plan import plan_quantization
    from rtune.components.quantize.worker_control import write_job
    from rtune.components.scoring.chat_templates import serving_chat_template

    selected = tmp_path / "selected.jsonl"
    write_jsonl(selected, training_records(6))
    config = QuantizeConfig(template=template, calibration_records=2, heldout_records=2)
    plan = plan_quantization(config, tiny_model_dir, selected, tmp_path / "work")
    job = json.loads(write_job(plan).read_text())
    expected = serving_chat_template(template, load_tokenizer(tiny_model_dir))
    assert job["chat_template"] == expected
    assert expected != load_tokenizer(tiny_model_dir).chat_template


def test_the_worker_saves_the_jobs_chat_template_with_its_transformers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The tokenizer the worker saves (in llm-compressor's interpreter, an older transformers)
    prompts the model with the training prompt's ids when read back here."""
    from transformers import AutoTokenizer

    from rtune.components.finetune.data import tokenize_record
    from rtune.components.quantize.worker_control import WORKER_SCRIPT, quantize_python
    from rtune.components.scoring.chat_templates import serving_chat_template
    from rtune.components.scoring.passes import resolve_start_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    job = {
        "model": str(tiny_model_dir),
        "chat_template": serving_chat_template("vicuna", tokenizer),
    }
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('worker', {str(WORKER_SCRIPT)!r})\n"
        "worker = importlib.util.module_from_spec(spec); spec.loader.exec_module(worker)\n"
        "worker.job_tokenizer(json.loads(sys.argv[1])).save_pretrained(sys.argv[2])\n"
    )
    python = quantize_python(QuantizeConfig())
    saved = tmp_path / "saved"
    result = subprocess.run(
        [str(python), "-I", "-c", code, json.dumps(job), str(saved)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reloaded = AutoTokenizer.from_pretrained(saved)
    record = {"id": "x", "instruction": "What is 2 + 3?", "input": "", "output": "5"}
    example, _ = tokenize_record(
        record, reloaded, "vicuna", 256, resolve_start_ids(reloaded, "auto")
    )
    assert example is not None
    prompt = [
        i for i, label in zip(example.input_ids, example.labels, strict=True) if label == -100
    ]
    rendered = reloaded.apply_chat_template(
        [{"role": "user", "content": record["instruction"]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert reloaded.encode(rendered, add_special_tokens=False) == prompt


def test_weight_bytes_count_weight_files_only(tmp_path: Path) -> None:
    from rtune.components.quantize.perplexity import weight_bytes

    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x" * 50)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_text("{}")
    assert weight_bytes(tmp_path) == 150


# --- model identity, group size, interpreter, guard -------------------------------------------


def test_model_signature_follows_content_not_location(tmp_path: Path) -> None:
    model = tmp_path / "a"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 64}')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 4000)
    copy = tmp_path / "b"
    shutil.copytree(model, copy)
    assert model_signature(model) == model_signature(copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[500_000] ^= 1  # one flipped bit in the middle of the weights
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert model_signature(model) != model_signature(copy)


def test_a_group_size_that_does_not_tile_the_model_is_refused_with_divisors(
    embedded_model_dir: Path,
) -> None:
    check_group_size(embedded_model_dir, 64)
    with pytest.raises(InputError) as caught:
        check_group_size(embedded_model_dir, 128)
    message = str(caught.value)
    assert "'hidden_size': 576" in message and "quantize.group_size" in message
    assert "[32, 64]" in message


def test_missing_interpreter_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTUNE_QUANTIZE_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(InputError) as caught:
        quantize_python(QuantizeConfig())
    message = str(caught.value)
    assert str(tmp_path / "nope" / "python") in message and "RTUNE_QUANTIZE_PYTHON" in message
    assert "make setup" in message


def test_an_interpreter_without_llm_compressor_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTUNE_QUANTIZE_PYTHON", raising=False)
    with pytest.raises(
        InputError, match=r"llm-compressor is not installed there \(quantize.python\)"
    ):
        quantize_python(QuantizeConfig(python=sys.executable))  # the project's own env


def test_interpreter_order_config_then_env_then_repo_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    assert QUANTIZE_PYTHON.exists(), "run `make setup` (it creates .venv-quantize)"
    monkeypatch.delenv("RTUNE_QUANTIZE_PYTHON", raising=False)
    assert quantize_python(QuantizeConfig()) == QUANTIZE_PYTHON
    monkeypatch.setenv("RTUNE_QUANTIZE_PYTHON", "/nonexistent/python")
    with pytest.raises(InputError):
        quantize_python(QuantizeConfig())
    assert quantize_python(QuantizeConfig(python=str(QUANTIZE_PYTHON))) == QUANTIZE_PYTHON


def test_worker_imports_only_the_standard_library_at_module_level() -> None:
    tree = ast.parse(WORKER_SCRIPT.read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert top <= set(sys.stdlib_module_names) | {"__future__"}, top
    command = worker_command(Path("/py"), Path("/w/job.json"))
    assert command[:2] == ["/py", "-I"] and str(WORKER_SCRIPT) in command


class Stopped(RuntimeError):
    """Stands in for Ctrl-C or a task timeout while the worker's output is read."""


class StoppingStream:
    def write(self, text: str) -> int:
        raise Stopped("stopped while reading the worker's output")


def test_a_stopped_worker_run_leaves_no_kill_timer_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's kill timer (worker_timeout_s, a day by default) must not outlive an
    interrupted run: a live timer thread keeps the interpreter from exiting until it fires."""
    worker = tmp_path / "python"
    worker.write_text("#!/bin/sh\necho 'worker started'\n")
    worker.chmod(0o755)
    before = set(threading.enumerate())
    monkeypatch.setattr(sys, "stderr", StoppingStream())
    with pytest.raises(Stopped):
        run_worker(worker, tmp_path / "job.json", 24 * 3600)
    monkeypatch.undo()
    timers = [t for t in set(threading.enumerate()) - before if isinstance(t, threading.Timer)]
    assert all(timer.finished.is_set() for timer in timers), "a kill timer is still waiting"


def _values(unquantized: float, quantized: float, bound: float) -> dict[str, Any]:
    return {
        "method": "w4a16",
        "perplexity_unquantized": unquantized,
        "perplexity_quantized": quantized,
        "perplexity_increase": quantized / unquantized - 1,
        "max_perplexity_increase": bound,
    }


def test_quality_guard_names_both_perplexities_the_bound_and_the_key() -> None:
    check_quality(_values(4.0, 5.0, 0.25))  # +25 % exactly: allowed
    with pytest.raises(QualityGateFailed) as caught:
        check_quality(_values(6.8, 8.61, 0.25))
    message = str(caught.value)
    for part in ("6.8", "8.61", "+26.6%", "+25.0%", "quantize.max_perplexity_increase"):
        assert part in message, part
    with pytest.raises(QualityGateFailed):
        check_quality(_values(6.8, math.nan, 0.25))
