"""Config switches: gradient checkpointing gives the same gradients; GPU-only choices fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtune.components.finetune.config import FinetuneConfig
from rtune.components.finetune.data import build_examples, pack_examples
from rtune.components.finetune.trainer import (
    PackedRowDataset,
    PackedSFTTrainer,
    collate_packed,
    load_student,
    training_arguments,
)
from tests.finetune_helpers.records import training_records


def _lora_grads(model_dir: Path, tmp_path: Path, checkpointing: bool) -> dict[str, torch.Tensor]:
    from rtune.components.common.models import load_tokenizer

    config = FinetuneConfig(
        gradient_checkpointing=checkpointing, lora_dropout=0.0, max_length=256, max_steps=1
    )
    examples, _ = build_examples(training_records(4), load_tokenizer(model_dir), "vicuna", 256)
    rows = pack_examples(examples, 1024)
    torch.manual_seed(0)
    model = load_student(config, str(model_dir))
    args = training_arguments(config, str(tmp_path / str(checkpointing)), 1, ["none"])
    trainer = PackedSFTTrainer(
        model=model, args=args, train_dataset=PackedRowDataset(rows), data_collator=collate_packed
    )
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainer.compute_loss(model, collate_packed([PackedRowDataset(rows)[0]])).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_gives_the_same_lora_gradients(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    plain = _lora_grads(tiny_model_dir, tmp_path, False)
    checkpointed = _lora_grads(tiny_model_dir, tmp_path, True)
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5)
    assert any(float(g.abs().sum()) > 0 for g in plain.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_gpu_only_choices_fail_with_a_clear_message(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="CUDA GPU"):
        load_student(FinetuneConfig(method="qlora"), str(tiny_model_dir))
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ValueError, match="flash-attn"):
            load_student(
                FinetuneConfig(attn_implementation="flash_attention_2"), str(tiny_model_dir)
            )
