"""A scoring shard stopped by an out-of-memory error resumes when re-run with a lower batch_tokens.

Lowering ``batch_tokens`` is what a user does after an OOM, so the shard's checkpoint (its file
name in the runner's checkpoint folder and its fingerprint) must not depend on it. The device is
real torch on CPU; the "out of memory" is ``torch.OutOfMemoryError`` raised by a global forward
hook once the shard has checkpointed some candidates, as a GPU raises it from inside a forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from rtune.components.common.checkpoint import read_checkpoint_lines
from rtune.components.common.records import read_jsonl, write_jsonl
from rtune.components.common.stage import StageSettings, run_stage
from rtune.components.scoring.config import ScoringConfig
from rtune.components.scoring.stage import candidate_key
from rtune.components.scoring.task import ScoreShardStage

STOP_AFTER = 3  # checkpointed candidates before the device "runs out of memory"
RECORDS = [
    {
        "id": f"r{n}",
        "instruction": f"Name {n} colours of the rainbow.",
        "input": "",
        "output": "Red, orange, yellow, green, blue, indigo and violet."[: 10 + 6 * n],
        "flags": [],
        "candidates": {
            "ori": {"instruction": f"Name {n} colours.", "input": "", "output": "Red and blue."},
            "Q": {
                "instruction": f"Name {n} colours of the rainbow, in order.",
                "input": "",
                "output": "Red, orange, yellow, green, blue, indigo, violet.",
            },
        },
        "teacher": {"instruction": {"parse_status": "ok"}},
    }
    for n in range(1, 6)
]


def result_lines(folder: Path) -> list[dict[str, Any]]:
    """The result lines of the one checkpoint file in ``folder`` (header and torn lines out)."""
    files = list(folder.glob("*.partial.jsonl"))
    if not files:
        return []
    (path,) = files
    return [line for line in read_checkpoint_lines(path) if line and "key" in line]


@contextmanager
def out_of_memory_once_checkpointed(folder: Path) -> Iterator[None]:
    """Every model forward raises ``torch.OutOfMemoryError`` once ``folder`` holds a checkpoint
    with ``STOP_AFTER`` results (as a GPU does when a batch no longer fits)."""

    def forward(module: torch.nn.Module, args: Any) -> None:
        if len(result_lines(folder)) >= STOP_AFTER:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(forward)
    try:
        yield
    finally:
        handle.remove()


def score_shard(tmp_path: Path, model: Path, batch_tokens: int, output: Path) -> Any:
    records = tmp_path / "reflected.jsonl"
    if not records.exists():
        write_jsonl(records, RECORDS)
    config = ScoringConfig(
        model=str(model), template="vicuna", max_length=256, batch_tokens=batch_tokens
    )
    stage = ScoreShardStage(config, "ifd", 0, records, output, progress=False)
    settings = StageSettings(
        tracking={"enabled": False}, checkpoint_root=str(tmp_path / "checkpoints"), run_id="kfp-1"
    )
    return run_stage(stage, settings)


def test_a_shard_stopped_by_out_of_memory_resumes_with_a_lower_batch_tokens(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    output, folder = tmp_path / "scores.jsonl", tmp_path / "checkpoints" / "score_ifd"
    with out_of_memory_once_checkpointed(folder), pytest.raises(torch.OutOfMemoryError):
        score_shard(tmp_path, tiny_model_dir, batch_tokens=4096, output=output)
    done = {line["key"]: line["result"] for line in result_lines(folder)}
    assert STOP_AFTER <= len(done) < 2 * len(RECORDS) and not output.exists()

    summary = score_shard(tmp_path, tiny_model_dir, batch_tokens=64, output=output)

    assert summary.resumed == len(done) and summary.candidates == 2 * len(RECORDS)
    rows = {candidate_key(r["id"], r["candidate"]): r["scores"] for r in read_jsonl(output)}
    assert len(rows) == 2 * len(RECORDS)
    assert all(rows[key] == scores for key, scores in done.items())  # taken, not re-scored
    assert not list(folder.glob("*.partial.jsonl"))  # removed once the output is written
