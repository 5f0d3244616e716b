"""The fine-tuned model folders (merged model, adapter, full model) carry a chat template that
prompts the model exactly as it was trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtune.components.finetune.data import tokenize_record
from rtune.components.scoring.passes import resolve_start_ids
from tests.finetune_helpers.records import training_records, worker_job


def _training_prompt_ids(folder: Path, record: dict) -> tuple[list[int], list[int]]:
    """(ids a chat client sends for ``record``'s user turn, the training prompt's ids)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    example, _ = tokenize_record(
        record, tokenizer, "vicuna", 256, resolve_start_ids(tokenizer, "auto")
    )
    assert example is not None
    prompt = [
        i for i, label in zip(example.input_ids, example.labels, strict=True) if label == -100
    ]
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": record["instruction"]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return list(tokenizer.encode(rendered, add_special_tokens=False)), prompt


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_saved_models_are_prompted_as_trained(
    tiny_model_dir: Path, tmp_path: Path, method: str
) -> None:
    from rtune.components.finetune.worker import TrainingJob, train

    job = worker_job(tiny_model_dir, tmp_path, 2, method=method, max_steps=1, global_batch_size=1)
    train(TrainingJob.load(str(job)))
    record = next(r for r in training_records(4) if not r["input"])
    folders = ["model", "adapter"] if method == "lora" else ["model"]
    for folder in folders:
        served, trained = _training_prompt_ids(tmp_path / "output" / folder, record)
        assert served == trained, folder
