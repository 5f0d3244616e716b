"""Run a ``TrainingJob`` where the config says: this process, torchrun in this pod, or a cluster job.

* ``local``: in this process (one rank) — the laptop/CI path and single-device pods.
* ``torchrun``: ``torch.distributed.run`` over ``nproc_per_node`` ranks of this pod; each rank is
  ``python -m rtune.components.finetune.worker``; a failing rank fails the stage with its output tail.
* ``trainjob`` / ``pytorchjob``: the same worker on ``nodes`` pods through the Kubeflow Trainer
  (``distributed_job``); job and rows travel through ``s3://``, outputs come back the same way.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rtune.components.common.ports import free_port
from rtune.components.finetune.cluster import DEFAULT_WORK_VOLUME, WorkVolume
from rtune.components.finetune.config import FinetuneConfig
from rtune.components.finetune.worker import TrainingJob


class TrainingFailed(RuntimeError):
    """A training process or cluster job ended in failure (message carries its own error)."""


def run_local(job: TrainingJob) -> dict[str, Any]:
    from rtune.components.finetune.worker import train

    return train(job).summary


def torchrun_command(job_path: Path, nproc_per_node: int, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc_per_node}",
        "--nnodes=1",
        f"--master-port={port}",
        "-m",
        "rtune.components.finetune.worker",
        "--job",
        str(job_path),
    ]


def run_torchrun(
    job: TrainingJob, job_path: Path, nproc_per_node: int, env: Mapping[str, str]
) -> dict[str, Any]:
    """All ranks in this pod; the stage fails with the tail of the output when a rank fails."""
    job.save(job_path)
    command = torchrun_command(job_path, nproc_per_node, free_port())
    child_env = {**os.environ, **env}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        child_env.pop(key, None)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(
        command,
        env=child_env,
        cwd=str(Path(__file__).resolve().parents[2]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            tail.append(line)
        code = process.wait()
    if code != 0:
        raise TrainingFailed(
            f"torchrun with {nproc_per_node} ranks exited with code {code}; last output:\n"
            + "".join(tail)
        )
    return read_summary(Path(job.output_dir))


def read_summary(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "train_summary.json"
    if not path.exists():
        raise TrainingFailed(f"training ended without writing {path}")
    summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return summary


def launch(
    config: FinetuneConfig,
    job: TrainingJob,
    work_dir: Path,
    env: Mapping[str, str],
    kfp_run_id: str = "",
    image: str = "",
    volume: WorkVolume = DEFAULT_WORK_VOLUME,
) -> dict[str, Any]:
    """Dispatch on ``config.launcher``; returns the worker's ``train_summary``.

    ``image`` is the train image a cluster job runs (the task's own; '' = the default), and
    ``volume`` the work volume its nodes mount.

    ``env`` reaches the ranks of other processes (MLflow run id and tracking URI, so rank 0's
    Trainer callback logs the curves into this stage's run).
    """
    if config.launcher == "local":
        return run_local(job)  # the stage's MLflow run is active in this process
    if config.launcher == "torchrun":
        return run_torchrun(job, work_dir / "job.json", config.nproc_per_node, env)
    from rtune.components.finetune.cluster import run_cluster_job

    return run_cluster_job(config, job, work_dir, env, kfp_run_id, image=image, volume=volume)
