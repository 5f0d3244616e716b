"""Kill the fine-tune worker mid-run, run it again: it resumes from its last checkpoint and ends
at the same final step, with every step logged once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtune.components.finetune.worker import last_complete_checkpoint
from tests.finetune_helpers.records import worker_job
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
MAX_STEPS = 30
# The worker must import `rtune` from where this test does (a worktree's shim, an install).
PYTHONPATH = os.pathsep.join(filter(None, sys.path))


def _job(tiny_model_dir: Path, work: Path) -> Path:
    return worker_job(
        tiny_model_dir,
        work,
        24,
        max_steps=MAX_STEPS,
        save_steps=1,
        save_total_limit=3,
        learning_rate=1e-3,
        global_batch_size=1,
    )


def _worker(job: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    return subprocess.Popen(
        [sys.executable, "-m", "rtune.components.finetune.worker", "--job", str(job)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    job = _job(tiny_model_dir, tmp_path)
    first = _worker(job)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "checkpoints" / "checkpoint-4").exists():
        assert first.poll() is None, "the worker ended before it could be killed"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "output" / "train_summary.json").exists()
    resume_from = last_complete_checkpoint(tmp_path / "checkpoints")
    assert resume_from is not None
    killed_at = int(resume_from.rsplit("-", 1)[-1])
    assert 3 <= killed_at < MAX_STEPS

    second = subprocess.run(
        [sys.executable, "-m", "rtune.components.finetune.worker", "--job", str(job)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "output" / "train_summary.json").read_text())
    assert summary["global_step"] == MAX_STEPS
    assert summary["resumed_from_step"] >= killed_at
    steps = [entry["step"] for entry in summary["loss_history"]]
    assert steps == list(range(1, MAX_STEPS + 1)), "each step logged exactly once"
    # the resumed run did only the remaining steps
    assert summary["tokens_this_run"] < summary["rows"] * 256 * (
        MAX_STEPS - summary["resumed_from_step"] + 1
    )
    assert (tmp_path / "output" / "model" / "model.safetensors").exists()


def test_incomplete_checkpoint_is_skipped_and_removed(tmp_path: Path) -> None:
    for step, whole in ((2, True), (3, True), (4, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if whole:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        else:
            (folder / "trainer_state.json").write_text('{"global_st')
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    assert not (tmp_path / "checkpoint-4").exists()
    assert last_complete_checkpoint(tmp_path / "missing") is None
