"""The compiled pipeline, rehearsed under pod rules (``rtune rehearse``), and the fixes it proves.

Each test runs ``rtune rehearse`` as a subprocess: it enters its own network and mount namespaces
(needs root), stands up S3 (credentials checked), MLflow, the teacher and the Kubernetes API on
loopback, and runs every task of the compiled YAML as UID 10001 with only its declared env and
volumes. The revert tests compile a pipeline with one fix undone and show the rehearsal catches it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rtune.pipelines.config import load_run_config
from rtune.pipelines.packaging import compile_ir
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
REHEARSAL_CONFIG = ROOT / "pipelines" / "configs" / "rehearsal.yaml"
REHEARSAL_70B = ROOT / "pipelines" / "configs" / "rehearsal-70b.yaml"
COMMITTED = ROOT / "pipelines" / "compiled" / "reflection_tuning.yaml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the rehearsal needs root (namespaces)"),
]


def rehearse(
    work: Path, *args: str, compiled: Path = COMMITTED, config: Path = REHEARSAL_CONFIG
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "rtune.pipelines.cli", "rehearse",
        "--compiled", str(compiled), "--config", str(config), "--work", str(work), *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)


def line_of(output: str, task: str) -> str:
    return next(line for line in output.splitlines() if line[5:].startswith(task + " "))


def compiled_without(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, undo: str) -> Path:
    """The 8B pipeline compiled with one of the cluster fixes undone."""
    from rtune.pipelines import reflection_tuning

    if undo == "s3":  # the S3 Secret only on finetune and quantize, as before the fix
        original = reflection_tuning.Wiring.task

        def task(self, task, size=None, *, work=True, s3=False):  # type: ignore[no-untyped-def]
            keep = task.name in ("finetune", "quantize")
            return original(self, task, size, work=work, s3=s3 and keep)

        monkeypatch.setattr(reflection_tuning.Wiring, "task", task)
        config = load_run_config(ROOT / "pipelines/configs/llama3-8b.yaml")
    else:  # no work volume: checkpoints on the pod's own disk
        config = load_run_config(
            ROOT / "pipelines/configs/llama3-8b.yaml", ["cluster.work_volume="]
        )
    out = tmp_path / f"without-{undo}.yaml"
    from rtune.pipelines import config as config_module

    monkeypatch.setattr(config_module, "check_for_cluster", lambda _config: None)
    return compile_ir(config, out)


@pytest.mark.timeout(3000)  # the whole DAG on 2 CPU cores: ~15-30 min
def test_the_70b_path_runs_to_the_end_through_a_trainjob_and_an_inferenceservice(
    tmp_path: Path,
) -> None:
    """``make rehearse``: the IR compiled from rehearsal-70b.yaml, every task as a pod; the
    TrainJob's nodes as pods (the finetune task's pod killed once mid-training: its retry adopts
    the job, which trained on), the model served by an InferenceService, evaluated against the
    served base student, registered in MLflow."""
    kill = "finetune:pvcs/rtune-work/checkpoints/finetune/*/checkpoints/checkpoint-*/trainer_state.json"
    result = rehearse(tmp_path, "--compile", "--kill", kill, config=REHEARSAL_70B)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    out = result.stdout
    for task in ("preflight", "prepare", "select-rifd", "quantize", "serve", "evaluate"):
        assert line_of(out, task).startswith("ok "), line_of(out, task)
    finetune = line_of(out, "finetune")
    assert finetune.startswith("ok ") and " x2" in finetune  # killed once, then adopted the job
    retried = next(tmp_path.glob("run-0/tasks/*finetune/attempt-1/log.txt")).read_text()
    assert "adopting existing TrainJob" in retried
    assert out.count("2 node(s) x 1 process(es) done") == 1  # the job ran once, never twice
    (job,) = (tmp_path / "trainjobs").iterdir()
    assert sorted(p.name for p in job.iterdir()) == [f"{job.name}-node-0-0", f"{job.name}-node-0-1"]
    assert "storage initializer fetched" in out and "as rtune-serving" in out
    serve = next(tmp_path.glob("run-0/tasks/*serve/attempt-0/log.txt")).read_text()
    assert "predictor.kubeflow.svc.cluster.local" in serve  # the per-run service's own address
    # the fine-tuned model (before quantization) served like the candidate for the evaluation
    sibling = re.search(
        r"InferenceService (kubeflow/rtune-student-\w+-ft): storage initializer", out
    )
    assert sibling is not None, out[-3000:]
    assert f"InferenceService {sibling[1]} deleted" in out
    evaluate = next(tmp_path.glob("run-0/tasks/*evaluate/attempt-0/log.txt")).read_text()
    assert "served the fine-tuned model for this evaluation" in evaluate
    assert "finetuned_skipped" not in evaluate and "finetuned answers" in evaluate
    assert "registered in the rehearsal's MLflow: rtune-student v1" in out
    assert "PASSED" in out


def test_without_s3_credentials_on_every_task_the_first_s3_task_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Secret only on finetune and quantize (as before the fix): preflight, the first task
    that reads s3://, names the missing keys; nothing after it runs."""
    compiled = compiled_without(tmp_path, monkeypatch, "s3")
    result = rehearse(tmp_path / "work", "--until", "prepare", compiled=compiled)
    assert result.returncode == 1
    assert line_of(result.stdout, "preflight").startswith("FAIL")
    assert line_of(result.stdout, "prepare").startswith("skip")
    log = next((tmp_path / "work").glob("run-0/tasks/*preflight/attempt-0/log.txt")).read_text()
    assert "FAIL s3 credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY not set in the pod" in log


def test_without_the_work_volume_checkpoints_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = compiled_without(tmp_path, monkeypatch, "volume")
    result = rehearse(tmp_path / "work", "--until", "reflect-instruction", compiled=compiled)
    assert result.returncode == 1
    assert line_of(result.stdout, "preflight").startswith("FAIL")  # caught in seconds
    log = next((tmp_path / "work").glob("run-0/tasks/*preflight/attempt-0/log.txt")).read_text()
    assert "FAIL checkpoint_root: /mnt/rtune/checkpoints is not writable by UID 10001" in log


def test_a_second_run_takes_cacheable_work_from_the_cache(tmp_path: Path) -> None:
    """The run id is not an input of cacheable work: identical inputs hit KFP's cache."""
    result = rehearse(tmp_path, "--until", "prepare", "--runs", "2")
    assert result.returncode == 0, result.stdout[-3000:]
    second = result.stdout.split("run 2 of 2")[1]
    assert line_of(second, "prepare").startswith("hit")
    assert line_of(second, "preflight").startswith("ok ")  # never cached: it checks the cluster now
