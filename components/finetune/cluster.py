"""Training on N nodes: the worker in a Kubeflow Trainer ``TrainJob`` (or a ``PyTorchJob``).

The task pod only orchestrates. The packed rows and the job file go to the model store
(``finetune.model_store``, an ``s3://`` prefix), the job runs ``torchrun -m
rtune.components.finetune.worker`` in the train image on every node (the Trainer's torch runtime sets
``PET_NNODES``/``PET_NODE_RANK``/... which torchrun reads), rank 0 uploads its outputs next to the
job, and the task reads back the training summary. The model itself stays in the store (a 70B
model is not copied into a KFP artifact): the task's Model artifacts point at it.

``checkpoint_dir`` must be a path every node sees, so that a retried job resumes: the work
volume (a ReadWriteMany PVC, :class:`WorkVolume`) is mounted in every node at the path the task
pod has it, and ``checkpoint_root`` is on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rtune.components.common.images import Images
from rtune.components.common.model_store import run_prefix
from rtune.components.common.storage import download_file, is_s3, upload_file
from rtune.components.finetune.config import FinetuneConfig
from rtune.components.finetune.worker import TrainingJob

WORKER_COMMAND = ["torchrun"]


@dataclass(frozen=True)
class WorkVolume:
    """The ReadWriteMany PVC the task pod has at ``mount`` (``cluster.work_volume`` /
    ``cluster.work_mount``); the nodes mount it at the same path. ``claim`` '' = none."""

    claim: str = "rtune-work"
    mount: str = "/mnt/rtune"


DEFAULT_WORK_VOLUME = WorkVolume()  # rtune-work at /mnt/rtune, as manifests/ and the pipeline


WORKER_ARGS = ["-m", "rtune.components.finetune.worker", "--job"]


def cluster_prefix(config: FinetuneConfig, work_dir: Path, run_id: str) -> str:
    """Where this training's job, rows and outputs live: the run's folder of the model store,
    one subfolder per training (a retried step finds its own job there again)."""
    if not is_s3(config.model_store):
        raise ValueError(
            f"launcher {config.launcher} needs finetune.model_store = s3://bucket/prefix: the "
            "training pods read the rows and write the model there"
        )
    return f"{run_prefix(config.model_store, run_id or 'local')}/finetune-{work_dir.name[:12]}"


def stage_job(
    config: FinetuneConfig, job: TrainingJob, work_dir: Path, run_id: str = ""
) -> tuple[TrainingJob, str]:
    """Upload rows + job file; returns the remote job and the job file's URI."""
    prefix = cluster_prefix(config, work_dir, run_id)
    rows_uri = upload_file(Path(job.rows), f"{prefix}/rows.jsonl")
    remote = replace(job, rows=rows_uri, output_dir=f"{prefix}/output")
    local_job = remote.save(work_dir / "cluster-job.json")
    return remote, upload_file(local_job, f"{prefix}/job.json")


def job_spec(
    config: FinetuneConfig,
    job_uri: str,
    kfp_run_id: str,
    env: Mapping[str, str],
    image: str = "",
    volume: WorkVolume = DEFAULT_WORK_VOLUME,
) -> Any:
    """The job every node runs: ``torchrun`` of the worker on the staged job file, with the S3
    credentials (and MLflow's login, when the task has one) by reference and the work volume
    (the checkpoints) mounted."""
    import os

    from rtune.components.common.k8s_workload import pod_namespace
    from rtune.components.finetune.training_jobs import (
        DistributedJobSpec,
        job_name,
        s3_secret_env,
        tracking_secret_env,
    )

    return DistributedJobSpec(
        name=job_name(kfp_run_id or "local", "finetune"),
        namespace=config.namespace or pod_namespace(),
        image=image or Images().reference("train"),
        command=list(WORKER_COMMAND),
        args=[*WORKER_ARGS, job_uri],
        nodes=config.nodes,
        procs_per_node=config.nproc_per_node,
        gpus_per_node=config.gpus_per_node,
        env=dict(env),
        secret_env={**s3_secret_env(), **tracking_secret_env(os.environ)},
        kind="PyTorchJob" if config.launcher == "pytorchjob" else "TrainJob",
        kfp_run_id=kfp_run_id,
        work_volume=volume.claim,
        work_mount=volume.mount,
    )


def run_cluster_job(
    config: FinetuneConfig,
    job: TrainingJob,
    work_dir: Path,
    env: Mapping[str, str],
    kfp_run_id: str = "",
    api_client: Any = None,
    poll_interval_s: float = 10.0,
    image: str = "",
    volume: WorkVolume = DEFAULT_WORK_VOLUME,
) -> dict[str, Any]:
    """Create (or adopt) the job, follow it to the end, return rank 0's training summary."""
    from rtune.components.common.k8s_workload import load_api_client
    from rtune.components.finetune.distributed_job import run_distributed_job

    remote, job_uri = stage_job(config, job, work_dir, kfp_run_id)
    spec = job_spec(config, job_uri, kfp_run_id, env, image, volume)
    run_distributed_job(
        spec,
        api_client or load_api_client(),
        poll_interval_s=poll_interval_s,
        timeout_s=config.job_timeout_s,
    )
    summary_path = download_file(
        f"{remote.output_dir}/train_summary.json", work_dir / "cluster-summary.json"
    )
    summary: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["output_uri"] = remote.output_dir
    return summary
