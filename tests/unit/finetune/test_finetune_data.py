"""Training examples and packing: response-only labels, truncation, no attention across records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtune.components.common.records import InputError
from rtune.components.finetune.data import (
    IGNORE,
    build_examples,
    load_rows,
    pack_examples,
    save_rows,
    tokenize_record,
)
from rtune.components.scoring.scorer import resolve_start_ids
from rtune.components.scoring.templates import get_template, render_prompt
from tests.finetune_helpers.records import training_records


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from rtune.components.common.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


RECORD = {"id": "r1", "instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5."}


def test_labels_cover_the_response_and_eos_only(tokenizer) -> None:
    start = resolve_start_ids(tokenizer, "auto")
    example, truncated = tokenize_record(RECORD, tokenizer, "vicuna", 512, start)
    assert example is not None and not truncated
    prompt = render_prompt(get_template("vicuna"), RECORD["instruction"])
    n_prompt = len(start) + len(tokenizer.encode(prompt))
    assert all(label == IGNORE for label in example.labels[:n_prompt])
    targets = [t for t in example.labels if t != IGNORE]
    assert targets[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(targets[:-1]) == " " + RECORD["output"]  # the space is the answer's
    # the text the scorer scores, tokenized whole, with FastChat's space after "ASSISTANT:"
    assert list(example.input_ids[:-1]) == start + tokenizer.encode(prompt + " " + RECORD["output"])


def test_a_response_cut_to_nothing_is_dropped_and_counted(tokenizer) -> None:
    long_prompt = {**RECORD, "id": "long", "instruction": "word " * 300}
    examples, stats = build_examples([RECORD, long_prompt], tokenizer, "vicuna", 64)
    assert [e.id for e in examples] == ["r1"]
    assert stats.dropped_truncated == 1 and stats.dropped_ids == ["long"]
    partly = {**RECORD, "id": "partly", "output": "five " * 100}
    examples, stats = build_examples([partly], tokenizer, "vicuna", 64)
    assert stats.truncated == 1 and stats.dropped_truncated == 0
    assert len(examples[0].input_ids) == 64 and examples[0].n_targets > 0


def test_bad_record_names_file_record_and_field(tokenizer) -> None:
    with pytest.raises(InputError) as err:
        build_examples(
            [RECORD, {"id": "x2", "instruction": "hi", "output": ""}],
            tokenizer,
            "vicuna",
            64,
            source="sel.jsonl",
        )
    text = str(err.value)
    assert "sel.jsonl" in text and "x2" in text and "output" in text


def test_packing_keeps_records_whole_and_restarts_positions(tokenizer) -> None:
    examples, _ = build_examples(training_records(20), tokenizer, "vicuna", 256)
    rows = pack_examples(examples, 512)
    assert sorted(i for row in rows for i in row.example_ids) == sorted(e.id for e in examples)
    assert all(len(row.input_ids) <= 512 for row in rows)
    assert len(rows) < len(examples)
    by_id = {e.id: e for e in examples}
    for row in rows:
        offset = 0
        for example_id in row.example_ids:
            example = by_id[example_id]
            n = len(example.input_ids)
            assert row.position_ids[offset : offset + n] == tuple(range(n))
            assert row.input_ids[offset : offset + n] == example.input_ids
            # the last token of a record predicts nothing (never the next record's first token)
            assert row.shift_labels[offset + n - 1] == IGNORE
            assert row.shift_labels[offset : offset + n - 1] == example.labels[1:]
            offset += n
    assert sum(row.n_targets for row in rows) == sum(
        e.n_targets - (e.labels[0] != IGNORE) for e in examples
    )


def test_a_record_longer_than_the_row_budget_gets_its_own_row(tokenizer) -> None:
    examples, _ = build_examples(training_records(12), tokenizer, "vicuna", 512)
    budget = sorted(len(e.input_ids) for e in examples)[len(examples) // 2]
    rows = pack_examples(examples, budget)
    for row in rows:
        assert len(row.input_ids) <= budget or len(row.example_ids) == 1
    assert sorted(i for row in rows for i in row.example_ids) == sorted(e.id for e in examples)


def test_rows_round_trip(tokenizer, tmp_path: Path) -> None:
    examples, _ = build_examples(training_records(6), tokenizer, "alpaca", 256)
    rows = pack_examples(examples, 512)
    save_rows(rows, tmp_path / "rows.jsonl")
    assert load_rows(tmp_path / "rows.jsonl") == rows


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_gives_each_record_the_logits_it_has_alone(
    tiny_model_dir: Path, tokenizer, attn: str
) -> None:
    """No record attends to another: packed logits equal each record's own forward pass."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    examples, _ = build_examples(training_records(5), tokenizer, "vicuna", 256)
    (row,) = pack_examples(examples, 2048)
    with torch.inference_mode():
        # use_cache=False as in training: with a KV cache transformers does not look for packing
        packed = model(
            input_ids=torch.tensor([row.input_ids]),
            position_ids=torch.tensor([row.position_ids]),
            use_cache=False,
        ).logits[0]
        offset = 0
        by_id = {e.id: e for e in examples}
        for example_id in row.example_ids:
            ids = by_id[example_id].input_ids
            alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            torch.testing.assert_close(
                packed[offset : offset + len(ids)], alone, atol=2e-5, rtol=1e-4
            )
            offset += len(ids)


def test_trainer_loss_on_a_packed_row_equals_per_record_hf_losses(
    tiny_model_dir: Path, tokenizer, tmp_path: Path
) -> None:
    """Logits only at targets + packing = the same token-mean CE as HF's loss record by record."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    from rtune.components.finetune.trainer import PackedRowDataset, PackedSFTTrainer, collate_packed

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    examples, _ = build_examples(training_records(4), tokenizer, "vicuna", 256)
    rows = pack_examples(examples, 2048)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], per_device_train_batch_size=1)
    trainer = PackedSFTTrainer(
        model=model, args=args, train_dataset=PackedRowDataset(rows), data_collator=collate_packed
    )
    batch = collate_packed([PackedRowDataset(rows)[0]])
    with torch.no_grad():
        ours = trainer.compute_loss(model, batch)
        total, count = 0.0, 0
        for example in examples:
            labels = torch.tensor([example.labels])
            n = int((labels[0, 1:] != IGNORE).sum())
            hf = model(input_ids=torch.tensor([example.input_ids]), labels=labels).loss
            total, count = total + float(hf) * n, count + n
    assert float(ours) == pytest.approx(total / count, rel=1e-5)
