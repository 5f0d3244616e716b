"""Training records for the fine-tune tests: the shipped seed records (real instructions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtune.components.common.records import read_jsonl

SEED = Path(__file__).resolve().parents[2] / "components" / "prepare" / "data" / "seed.jsonl"


def training_records(count: int) -> list[dict[str, Any]]:
    return [dict(r) for r in read_jsonl(SEED)[:count]]


def worker_job(model_dir: Path, work: Path, records: int, **config: Any) -> Path:
    """Pack ``records`` seed records (vicuna, 256 tokens) and write a worker job file in ``work``."""
    from rtune.components.common.models import load_tokenizer
    from rtune.components.finetune.config import FinetuneConfig
    from rtune.components.finetune.data import build_examples, pack_examples, save_rows
    from rtune.components.finetune.worker import TrainingJob

    tokenizer = load_tokenizer(model_dir)
    examples, _ = build_examples(training_records(records), tokenizer, "vicuna", 256)
    save_rows(pack_examples(examples, 256), work / "rows.jsonl")
    job = TrainingJob(
        config=FinetuneConfig(max_length=256, **config).__dict__,
        rows=str(work / "rows.jsonl"),
        model=str(model_dir),
        checkpoint_dir=str(work / "checkpoints"),
        output_dir=str(work / "output"),
        report_to=["none"],
    )
    return job.save(work / "job.json")
