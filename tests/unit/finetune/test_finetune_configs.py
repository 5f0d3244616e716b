"""Every shipped training config loads and validates: the pipeline YAMLs' ``finetune`` sections
and the DeepSpeed JSONs (``zero3``, ``zero3_offload``) as DeepSpeed itself reads them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rtune.components.common.config import from_dict
from rtune.components.common.records import InputError
from rtune.components.finetune.config import DEEPSPEED_DIR, SHIPPED_DEEPSPEED, FinetuneConfig
from rtune.pipelines.config import CONFIG_DIR, load_run_config

REFERENCE = {
    "learning_rate": 2e-5,
    "epochs": 3,
    "global_batch_size": 128,
    "warmup_ratio": 0.03,
    "max_length": 2048,
}


@pytest.mark.parametrize("name", ["local", "llama3-8b", "llama3-70b"])
def test_pipeline_training_sections_validate(name: str) -> None:
    finetune = load_run_config(CONFIG_DIR / f"{name}.yaml").section("finetune")
    assert isinstance(finetune, FinetuneConfig)
    if name == "local":
        assert (
            finetune.method == "lora" and finetune.deepspeed == "" and finetune.launcher == "local"
        )
    else:
        assert finetune.method == "full" and finetune.deepspeed.startswith("zero3")
        for key, value in REFERENCE.items():
            assert getattr(finetune, key) == value, key
        assert finetune.deepspeed_config_path().exists()


def test_cluster_configs_pick_the_topology_plan_recommends() -> None:
    """The fine-tune task's own pod has GPUs only when it trains itself (no TrainJob)."""
    big = load_run_config(CONFIG_DIR / "llama3-70b.yaml")
    finetune = big.section("finetune")
    assert (finetune.deepspeed, finetune.launcher, finetune.nodes, finetune.gpus_per_node) == (
        "zero3_offload",
        "trainjob",
        2,
        8,
    )
    assert big.cluster.finetune.gpus == 0
    assert load_run_config(CONFIG_DIR / "llama3-8b.yaml").cluster.finetune.gpus == 8


@pytest.mark.parametrize("name", sorted(SHIPPED_DEEPSPEED))
def test_deepspeed_configs_resolve_and_validate(name: str, tmp_path: Path) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    path = DEEPSPEED_DIR / SHIPPED_DEEPSPEED[name]
    raw = json.loads(path.read_text())
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        gradient_accumulation_steps=4,
        per_device_train_batch_size=1,
    )
    resolved = HfTrainerDeepSpeedConfig(raw)
    resolved.trainer_config_process(args)
    config = resolved.config
    assert config["gradient_accumulation_steps"] == 4
    assert config["train_micro_batch_size_per_gpu"] == 1
    zero = DeepSpeedZeroConfig(**config["zero_optimization"])
    assert zero.stage == 3
    assert zero.gather_16bit_weights_on_model_save, "the final save must consolidate ZeRO-3 shards"
    offloaded = name == "zero3_offload"
    assert (
        zero.offload_optimizer is not None and zero.offload_optimizer.device == "cpu"
    ) == offloaded
    assert (zero.offload_param is not None and zero.offload_param.device == "cpu") == offloaded


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"method": "dora"}, "method"),
        ({"launcher": "slurm"}, "launcher"),
        ({"deepspeed": "zero9"}, "deepspeed"),
        ({"max_tokens_per_batch": -1}, "max_tokens_per_batch"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"template": "llama"}, "template"),
    ],
)
def test_bad_values_are_one_clear_error(values: dict, field: str) -> None:
    with pytest.raises(InputError, match=field):
        from_dict(FinetuneConfig, values, "finetune")
