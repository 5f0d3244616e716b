"""Training records for the fine-tune tests: the shipped seed records (real instructions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.common.records import read_jsonl

SEED = Path(__file__).resolve().parents[2] / "components" / "prepare" / "data" / "seed.jsonl"


def training_records(count: int) -> list[dict[str, Any]]:
    return [dict(r) for r in read_jsonl(SEED)[:count]]
