"""A cluster job's rank 0 uploads what it trained to the job's ``s3://`` output prefix.

The 70B rehearsal caught this: the worker turned the output URI into a ``Path`` (``s3:/b/k``), so
rank 0 saved the model into a local folder of that name, uploaded nothing, and the finetune task
failed reading ``train_summary.json`` after a TrainJob that had completed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtune.components.finetune.worker import TrainingJob, train
from tests.finetune_helpers.records import worker_job
from tests.servers import moto_s3, use_s3

BUCKET = "rtune-models"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


def test_rank0_uploads_the_model_and_summary_to_the_jobs_s3_output(
    s3_server: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_model_dir: Path,
) -> None:
    s3: Any = use_s3(monkeypatch, s3_server, tmp_path / "cache", BUCKET)
    work = tmp_path / "work"
    work.mkdir()
    job = TrainingJob.load(str(worker_job(tiny_model_dir, work, 2, method="full", max_steps=1)))
    job.output_dir = f"s3://{BUCKET}/finetuned/runs/r1/finetune-x/output"
    monkeypatch.chdir(work)  # a stray local "s3:" folder would land here
    train(job)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="finetuned/runs/r1/finetune-x/output/")
    keys = {item["Key"].rsplit("output/", 1)[1] for item in listed.get("Contents", [])}
    assert {"train_summary.json", "model/config.json"} <= keys, keys
    assert not (work / "s3:").exists() and "s3:" not in os.listdir(work)
