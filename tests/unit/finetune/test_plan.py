"""``rtune plan``: shapes, DeepSpeed's estimators, the memory model and the recommendation rule."""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from rtune.components.common.records import InputError
from rtune.components.finetune import plan_memory, plan_recommend, plan_shapes
from rtune.pipelines.cli import main
from rtune.pipelines.commands import plan as plan_command
from rtune.pipelines.commands import plan_configs
from tests.paths import REPO_ROOT

CONFIGS = REPO_ROOT / "pipelines" / "configs"
# The shipped topologies (contract of issue 3); the YAML's finetune: section wins once it exists.
SHIPPED = {
    "llama3-8b.yaml": {"method": "full", "deepspeed": "zero3", "nodes": 1, "gpus_per_node": 8},
    "llama3-70b.yaml": {
        "method": "full",
        "deepspeed": "zero3_offload",
        "nodes": 2,
        "gpus_per_node": 8,
    },
}


@pytest.fixture(scope="module")
def estimators() -> plan_memory.Estimators:
    found = plan_memory.load_estimators()
    assert found.source.startswith("deepspeed "), "deepspeed must be importable in the dev venv"
    return found


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def rows_by_key(
    shape: plan_shapes.ModelShape, inputs: plan_memory.PlanInputs, est: plan_memory.Estimators
) -> dict:
    rows = plan_memory.plan_rows(shape, plan_memory.METHODS, inputs, est)
    return {(r.method, r.zero_stage, r.offload): r for r in rows}


def test_known_shapes_match_published_parameter_counts() -> None:
    """Totals equal the safetensors totals of the real checkpoints; the embedding is largest."""
    assert plan_shapes.KNOWN_SHAPES["135M"].total_params == 134_515_008
    assert plan_shapes.KNOWN_SHAPES["8B"].total_params == 8_030_261_248
    assert plan_shapes.KNOWN_SHAPES["70B"].total_params == 70_553_706_496
    assert plan_shapes.KNOWN_SHAPES["70B"].largest_layer_params == 128256 * 8192
    assert plan_shapes.shape_for_size("70b") is plan_shapes.KNOWN_SHAPES["70B"]


def test_config_json_counts_like_deepspeed_model_to_params(tmp_path: Path) -> None:
    """A real Llama built from a config.json: same total and largest module as DeepSpeed counts."""
    import torch
    from deepspeed.runtime.zero.stage3 import model_to_params
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=512,  # the MLP, not the embedding, is the largest layer here
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    config.save_pretrained(tmp_path)
    torch.manual_seed(0)
    total, largest = model_to_params(LlamaForCausalLM(config))
    shape = plan_shapes.shape_from_config(tmp_path)
    assert (shape.total_params, shape.largest_layer_params) == (total, largest)
    assert largest == 32 * 512


def test_embedded_model_config_is_the_known_135m_shape(embedded_model_dir: Path) -> None:
    shape = plan_shapes.shape_from_config(embedded_model_dir / "config.json")
    known = plan_shapes.KNOWN_SHAPES["135M"]
    assert shape.total_params == known.total_params
    assert shape.largest_layer_params == known.largest_layer_params


@pytest.mark.parametrize(
    ("argv", "config_file"),
    [
        (["--model-size", "70B", "--gpus-per-node", "8", "--nodes", "2"], "llama3-70b.yaml"),
        (["--model-size", "8B", "--gpus-per-node", "8", "--nodes", "1"], "llama3-8b.yaml"),
    ],
)
def test_recommends_the_shipped_config(
    capsys: pytest.CaptureFixture[str], argv: list[str], config_file: str
) -> None:
    """The 70B plan is zero3_offload on 2 x 8 GPUs, the 8B plan zero3 on 1 x 8: as shipped."""
    shipped = yaml.safe_load((CONFIGS / config_file).read_text()).get("finetune")
    expected = (
        {key: shipped[key] for key in SHIPPED[config_file]} if shipped else SHIPPED[config_file]
    )
    out = run_json(capsys, *argv, "--method", "full")
    (rec,) = out["recommendations"]
    assert {key: rec[key] for key in expected} == expected
    assert rec["zero_stage"] == 3 and rec["fits"]
    if shipped:
        assert rec["pipeline_configs"] == [f"pipelines/configs/{config_file}"]


def test_70b_full_zero3_without_offload_does_not_fit_on_16_gpus(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Why the 70B config offloads: 18 bytes/param over 16 GPUs alone is > 72 GiB."""
    assert main(["plan", "--model-size", "70B", "--nodes", "2", "--method", "full"]) == 0
    text = capsys.readouterr().out
    zero3 = next(line for line in text.splitlines() if line.startswith("full      3  none"))
    assert zero3.endswith("no (GPU)")
    assert "deepspeed zero3_offload, nodes 2, gpus_per_node 8" in text
    assert "components/finetune/deepspeed/zero3_offload.json" in text
    assert (CONFIGS.parents[1] / "components/finetune/deepspeed/zero3_offload.json").is_file()


@pytest.mark.parametrize("size", ["8B", "70B", "405B"])
@pytest.mark.parametrize(("gpus", "nodes"), [(1, 1), (8, 1), (8, 2), (4, 4)])
def test_full_zero3_model_states_are_deepspeeds_estimates(
    estimators: plan_memory.Estimators, size: str, gpus: int, nodes: int
) -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    shape = plan_shapes.KNOWN_SHAPES[size]
    inputs = plan_memory.PlanInputs(gpus_per_node=gpus, nodes=nodes)
    rows = rows_by_key(shape, inputs, estimators)
    for offload in (False, True):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            shape.total_params, shape.largest_layer_params, gpus, nodes, offload, offload, True, 1.5
        )
        row = rows["full", 3, offload]
        assert (row.model_states, row.cpu_per_node) == (gpu, cpu)


def test_fallback_formulas_equal_deepspeeds() -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as z3
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs as z2

    for params, largest in ((134_515_008, 28_311_552), (70_553_706_496, 1_050_673_152)):
        for gpus, nodes in ((1, 1), (8, 1), (8, 2), (2, 16)):
            for offload in (False, True):
                assert plan_memory.fallback_zero2(params, gpus, nodes, offload) == z2(
                    params, gpus, nodes, offload
                )
                for offload_params in (False, True):
                    for zero_init in (False, True):
                        args = (params, largest, gpus, nodes, offload, offload_params, zero_init)
                        assert plan_memory.fallback_zero3(*args) == z3(*args)


def test_fallback_used_when_deepspeed_is_not_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    assert plan_memory.load_estimators() is plan_memory.FALLBACK


def test_ds_accelerator_defaults_to_cpu_but_is_not_overridden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    plan_memory.load_estimators()
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    plan_memory.load_estimators()
    assert os.environ["DS_ACCELERATOR"] == "cuda"


@pytest.mark.parametrize("size", ["8B", "70B"])
@pytest.mark.parametrize("method", plan_memory.METHODS)
def test_zero3_memory_per_gpu_falls_as_gpus_grow(
    estimators: plan_memory.Estimators, size: str, method: str
) -> None:
    """Partitioned states shrink with every GPU added; with offload only the gathered layer stays."""
    shape = plan_shapes.KNOWN_SHAPES[size]
    topologies = [(1, 1), (2, 1), (4, 1), (8, 1), (8, 2), (8, 4)]
    for offload in (False, True):
        totals = []
        for gpus, nodes in topologies:
            inputs = plan_memory.PlanInputs(gpus_per_node=gpus, nodes=nodes)
            totals.append(rows_by_key(shape, inputs, estimators)[method, 3, offload].gpu_total)
        if offload:
            assert totals == sorted(totals, reverse=True)
        else:
            assert all(a > b for a, b in itertools.pairwise(totals)), totals


@pytest.mark.parametrize(("size", "gpus", "nodes"), [("8B", 8, 1), ("70B", 8, 2), ("135M", 1, 1)])
def test_offload_lowers_gpu_memory_and_raises_cpu_memory(
    estimators: plan_memory.Estimators, size: str, gpus: int, nodes: int
) -> None:
    """ZeRO-3: strictly. ZeRO-2: GPU strictly lower; CPU never lower (DeepSpeed's ZeRO-2
    estimate counts 4 bytes/param x processes for loading either way, max(4 x all GPUs, 16) with
    the optimizer on CPU, equal on one node of >= 4 GPUs)."""
    rows = rows_by_key(
        plan_shapes.KNOWN_SHAPES[size], plan_memory.PlanInputs(gpus, nodes), estimators
    )
    for method in plan_memory.METHODS:
        for stage in (2, 3):
            on, off = rows[method, stage, True], rows[method, stage, False]
            assert on.gpu_total < off.gpu_total
            if stage == 3:
                assert on.cpu_per_node > off.cpu_per_node
            else:
                assert on.cpu_per_node >= off.cpu_per_node
    full2_multi = rows_by_key(
        plan_shapes.KNOWN_SHAPES[size], plan_memory.PlanInputs(gpus, 2), estimators
    )
    assert full2_multi["full", 2, True].cpu_per_node > full2_multi["full", 2, False].cpu_per_node


@pytest.mark.parametrize(("size", "gpus", "nodes"), [("8B", 8, 1), ("70B", 8, 2), ("135M", 1, 1)])
def test_qlora_below_lora_below_full_per_gpu(
    estimators: plan_memory.Estimators, size: str, gpus: int, nodes: int
) -> None:
    """Strict wherever the optimizer states stay on the GPU. With them offloaded, full FT keeps
    only bf16 weights there: under ZeRO-2 LoRA keeps those (frozen) plus 2 bytes per adapter
    param, and under ZeRO-3 every method keeps just the gathered working layer."""
    shape = plan_shapes.KNOWN_SHAPES[size]
    rows = rows_by_key(shape, plan_memory.PlanInputs(gpus, nodes), estimators)
    adapters = plan_memory.lora_trainable_params(shape, 16)
    for stage, offload in plan_memory.COMBINATIONS:
        q, lo, f = (rows[m, stage, offload].gpu_total for m in ("qlora", "lora", "full"))
        if not offload:
            assert q < lo < f, (stage, offload)
        elif stage == 2:
            assert q < lo == f + 2 * adapters
        else:
            assert q == lo == f


def test_embedded_model_on_one_gpu_fits_everything(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(
        capsys,
        *("--model-size", "135M", "--gpus-per-node", "1", "--nodes", "1", "--method", "all"),
        *("--gpu-memory-gib", "16", "--cpu-memory-gib-per-node", "32"),
    )
    assert len(out["rows"]) == 15
    assert all(row["fits"] for row in out["rows"])
    assert [rec["deepspeed"] for rec in out["recommendations"]] == ["zero3"] * 3
    assert out["model"]["total_params"] == 134_515_008


def test_json_output_parses_and_adds_up(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "--model-size", "8B", "--method", "lora", "--lora-r", "8")
    assert out["estimator"].startswith("deepspeed ")
    assert out["inputs"]["lora_r"] == 8
    assert [(r["zero_stage"], r["offload"]) for r in out["rows"]] == [
        (0, "none"),
        (2, "none"),
        (2, "optimizer"),
        (3, "none"),
        (3, "optimizer+params"),
    ]
    for row in out["rows"]:
        parts = row["model_states_gib"] + row["activations_gib"] + row["buffer_gib"]
        assert row["gpu_total_gib"] == pytest.approx(parts, abs=0.02)
    # r x (in + out) per linear: 8B has 32 x (8192 + 5120 + 5120 + 8192 + 3 x 18432) x r
    assert out["model"]["lora_trainable_params"] == 32 * 8 * (8192 + 5120 * 2 + 8192 + 3 * 18432)


def test_activations_follow_the_documented_formula() -> None:
    shape = plan_shapes.KNOWN_SHAPES["70B"]
    s, h, a, layers, vocab = 2048, 8192, 64, 80, 128256
    one_block = s * (34 * h + 5 * a * s)
    logits = s * vocab * 4
    checkpointed = plan_memory.activation_bytes(shape, plan_memory.PlanInputs())
    assert checkpointed == layers * 2 * s * h + one_block + logits
    full = plan_memory.activation_bytes(shape, plan_memory.PlanInputs(gradient_checkpointing=False))
    assert full == layers * one_block + logits
    doubled = plan_memory.activation_bytes(shape, plan_memory.PlanInputs(micro_batch=2))
    assert doubled == 2 * checkpointed


def test_zero2_recommended_only_when_zero3_does_not_fit() -> None:
    """With a ZeRO-3 estimate that cannot fit, the rule falls back to ZeRO-2 and says why."""

    def huge_zero3(*args: object) -> tuple[int, int, int]:
        return 10**15, 10**15, 0

    est = plan_memory.Estimators(huge_zero3, plan_memory.fallback_zero2, "test")
    shape = plan_shapes.KNOWN_SHAPES["135M"]
    rec = plan_recommend.recommend(shape, "full", plan_memory.PlanInputs(gpus_per_node=1), est)
    assert rec.row is not None and (rec.row.zero_stage, rec.row.offload) == (2, False)
    assert rec.row.deepspeed is None
    assert rec.reason.startswith("ZeRO-3 does not fit")
    assert "no shipped DeepSpeed config" in "\n".join(plan_command.format_recommendation(rec))


def test_nothing_fits_says_so_and_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model-size", "70B", "--gpu-memory-gib", "24", "--cpu-memory-gib-per-node", "256"]
    (rec,) = run_json(capsys, *argv, "--method", "full")["recommendations"]
    assert not rec["fits"] and rec["deepspeed"] is None
    assert rec["reason"].startswith("nothing fits for full")
    assert "7 nodes x 8 GPUs would fit" in rec["reason"]
    assert "--method lora / qlora" in rec["reason"]
    assert main(["plan", *argv, "--method", "full"]) == 0
    assert "recommended (full): none fits" in capsys.readouterr().out


def test_unknown_size_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model-size", "3B"]) == 2
    err = capsys.readouterr().err
    assert "unknown --model-size '3B'" in err
    assert "135M" in err and "405B" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "sft"], "unknown --method 'sft'"),
        (["--nodes", "0"], "nodes must be >= 1"),
        (["--gpu-memory-gib", "0"], "gpu_memory_gib must be > 0"),
        (["--model", "no/such/folder"], "no such config.json"),
    ],
)
def test_bad_flags_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["plan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_config_json_without_llama_fields_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "n_layer": 2}))
    with pytest.raises(InputError) as err:
        plan_shapes.shape_from_config(tmp_path)
    assert err.value.field == "num_hidden_layers"


def test_config_model_size_reads_the_student() -> None:
    assert (
        plan_configs.config_model_size(
            {"scoring": {"model": "s3://m/meta-llama/Llama-3.1-70B-Instruct"}}
        )
        == "70B"
    )
    assert plan_configs.config_model_size({"finetune": {"model": "default"}}) == "135M"
    assert plan_configs.config_model_size({"scoring": {"model": "/models/student"}}) is None


def test_matching_pipeline_configs_compares_finetune_section_and_model_size(
    tmp_path: Path, estimators: plan_memory.Estimators
) -> None:
    finetune = {"method": "full", "deepspeed": "zero3_offload", "nodes": 2, "gpus_per_node": 8}
    configs = {
        "a-70b.yaml": {"finetune": {**finetune, "model": "s3://m/Llama-3.1-70B-Instruct"}},
        "b-8b.yaml": {"finetune": {**finetune, "model": "s3://m/Llama-3.1-8B-Instruct"}},
        "c-1node.yaml": {"finetune": {**finetune, "nodes": 1}},
        "d-none.yaml": {"scoring": {"model": "s3://m/Llama-3.1-70B-Instruct"}},
    }
    for name, config in configs.items():
        (tmp_path / name).write_text(yaml.safe_dump(config))
    shape = plan_shapes.KNOWN_SHAPES["70B"]
    rec = plan_recommend.recommend(shape, "full", plan_memory.PlanInputs(nodes=2), estimators)
    found = plan_configs.matching_pipeline_configs(rec, shape.size, tmp_path)
    assert [path.name for path in found] == ["a-70b.yaml"]
