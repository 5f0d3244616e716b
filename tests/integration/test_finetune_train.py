"""Training on the embedded default model: the loss goes down on a repeated batch, every
trainable LoRA parameter changes and every frozen one does not, the merged model generates."""

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
from rtune.components.finetune.worker import merge_adapter
from tests.finetune_helpers.records import training_records

pytestmark = pytest.mark.slow
STEPS = 6


@pytest.fixture(scope="module")
def trained(embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from rtune.components.common.models import load_tokenizer

    work = tmp_path_factory.mktemp("lora")
    tokenizer = load_tokenizer(embedded_model_dir)
    examples, _ = build_examples(training_records(4), tokenizer, "vicuna", 512)
    rows = pack_examples(examples, 1024)
    assert len(rows) == 1, "one repeated batch"
    config = FinetuneConfig(
        max_steps=STEPS,
        learning_rate=2e-3,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        global_batch_size=4,
        save_steps=1000,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
    )
    args = training_arguments(config, str(work / "checkpoints"), 1, ["none"])
    model = load_student(config, str(embedded_model_dir))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = PackedSFTTrainer(
        model=model,
        args=args,
        train_dataset=PackedRowDataset(rows * STEPS),
        data_collator=collate_packed,
        processing_class=tokenizer,  # as the worker builds it: merge_adapter saves it
    )
    trainer.train()
    model.save_pretrained(work / "adapter")
    return trainer, before, work


def test_loss_goes_down_on_a_repeated_batch(trained) -> None:
    trainer, _, _ = trained
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == STEPS
    assert losses[-1] < 0.7 * losses[0], losses


def test_every_lora_parameter_changed_and_every_frozen_one_did_not(trained) -> None:
    trainer, before, _ = trained
    trainable = frozen = 0
    for name, param in trainer.model.named_parameters():
        if param.requires_grad:
            assert "lora_" in name, f"{name} is trainable but not a LoRA weight"
            assert not torch.equal(param, before[name]), f"{name} did not change"
            trainable += 1
        else:
            torch.testing.assert_close(param, before[name], rtol=0, atol=0)
            frozen += 1
    assert trainable == 30 * 7 * 2  # 30 layers x 7 projections x (A, B)
    assert frozen == 272  # every tensor of the base model (embedding tied to the head)


def test_merged_model_matches_the_adapter_and_generates(trained, embedded_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer, _, work = trained
    merged_dir = merge_adapter(
        embedded_model_dir, work / "adapter", work / "merged", trainer.processing_class
    )
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids = tokenizer("Name three primary colors.", return_tensors="pt")
    peft_model = trainer.model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(
            merged(**ids).logits, peft_model(**ids).logits, atol=2e-4, rtol=1e-4
        )
        out = merged.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1] :]).strip()
