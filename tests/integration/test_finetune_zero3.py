"""ZeRO-3 really runs: 2 ranks on CPU (gloo), parameters partitioned, one consolidated model.

DeepSpeed's CPU accelerator (``DS_ACCELERATOR=cpu``) falls back to gloo without oneCCL and
JIT-builds its shared-memory op on first use, so the first run takes longer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtune.components.common.ports import free_port
from tests.finetune_helpers.records import training_records, worker_job
from tests.paths import REPO_ROOT

pytestmark = [pytest.mark.slow]
ROOT = REPO_ROOT
# The ranks must import `rtune` from where this test does (a worktree's shim, an install).
PYTHONPATH = os.pathsep.join(filter(None, sys.path))


@pytest.fixture(scope="module")
def zero3_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("zero3")
    worker_job(
        tiny_model_dir,
        work,
        16,
        method="full",
        deepspeed="zero3",
        max_steps=2,
        learning_rate=1e-3,
        global_batch_size=8,
        save_steps=100,
        nproc_per_node=2,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        "tests/finetune_helpers/zero3_rank.py",
        str(work / "job.json"),
        str(work),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work


def test_parameters_are_partitioned_across_the_two_ranks(zero3_run: Path) -> None:
    ranks = [json.loads((zero3_run / f"partition-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    split = 0
    for name, part in ranks[0].items():
        other = ranks[1][name]
        assert part["local"] + other["local"] >= part["full"], name
        # ZeRO-3 keeps parameters below stage3_param_persistence_threshold (10 x hidden) whole
        if part["full"] > 10 * 64:
            assert part["now"] == 0, f"{name} still holds its full weight outside a gather"
            assert part["local"] <= part["full"] // 2 + 1, f"{name} is not split in two"
            split += 1
    assert split >= 2 * 7, "the attention and MLP matrices of both layers must be partitioned"


def test_consolidated_model_equals_the_gathered_parameters_and_generates(zero3_run: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gathered = torch.load(zero3_run / "gathered.pt")
    saved = {}
    for shard in (zero3_run / "output" / "model").glob("*.safetensors"):
        saved.update(load_file(shard))
    assert saved, "no consolidated weights were written"
    compared = 0
    for name, tensor in gathered.items():
        if name in saved:
            torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0)
            compared += 1
    assert compared == len(saved)
    model = AutoModelForCausalLM.from_pretrained(zero3_run / "output" / "model")
    tokenizer = AutoTokenizer.from_pretrained(zero3_run / "output" / "model")
    for name, tensor in model.state_dict().items():
        if name in gathered:
            torch.testing.assert_close(tensor, gathered[name], rtol=0, atol=0)
    ids = tokenizer("Hello", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_stage_with_torchrun_launcher_trains_zero3_and_logs_curves_to_its_run(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The task launches 2 ranks with torchrun; rank 0's Trainer logs into the stage's MLflow run."""
    import mlflow

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.finetune.config import FinetuneConfig
    from rtune.components.finetune.task import FinetuneOutputs, FinetuneStage

    selected = tmp_path / "selected.jsonl"
    selected.write_text("".join(json.dumps(r) + "\n" for r in training_records(12)))
    tracking = {"experiment": "ft-torchrun", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    finetune = FinetuneConfig(
        model=str(tiny_model_dir),
        method="lora",
        deepspeed="zero3",
        launcher="torchrun",
        nproc_per_node=2,
        max_steps=2,
        global_batch_size=2,
        max_length=256,
        registered_model="student-zero3",
    )
    outputs = FinetuneOutputs(tmp_path / "adapter", tmp_path / "model")
    settings = StageSettings(
        tracking=tracking, checkpoint_root=str(tmp_path / "ck"), run_id="kfp-z3"
    )
    summary = run_stage(FinetuneStage(finetune, selected, outputs), settings)
    assert summary.values["global_step"] == 2
    assert (outputs.adapter_dir / "adapter_model.safetensors").exists()
    assert (outputs.model_dir / "model.safetensors").exists()
    mlflow.set_tracking_uri(tracking["tracking_uri"])
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("ft-torchrun")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`rtune.stage` = 'finetune'")
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2
    assert client.get_model_version_by_alias("student-zero3", "candidate")
