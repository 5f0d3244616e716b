"""The training entrypoint every rank runs: one process, torchrun, or each node of a TrainJob.

    python -m rtune.components.finetune.worker --job job.json                       # one process
    torchrun --nproc-per-node 2 -m rtune.components.finetune.worker --job job.json  # ZeRO-3 over 2 ranks

The job file (``TrainingJob``) names the packed rows, the base model, the checkpoint folder and
the output folder (local, or ``s3://`` for cluster jobs). A re-run with the same job resumes from
the newest checkpoint in ``checkpoint_dir`` and ends at the same final step. Rank 0 writes:

    <output>/adapter/            LoRA adapter (lora/qlora)
    <output>/model/              full model: base + adapter merged, or the ZeRO-3-consolidated weights
    <output>/train_summary.json  steps, losses, tokens/s, peak RSS, where it resumed from
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("rtune.finetune")


@dataclass
class TrainingJob:
    """Everything a rank needs; JSON-serialisable so it can travel to a TrainJob pod."""

    config: dict[str, Any]
    rows: str
    model: str
    checkpoint_dir: str
    output_dir: str
    report_to: list[str] = field(default_factory=lambda: ["mlflow"])

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, uri: str) -> TrainingJob:
        from rtune.components.common.storage import localize

        return cls(**json.loads(localize(uri, "jobs").read_text(encoding="utf-8")))


@dataclass
class Trained:
    trainer: Any
    summary: dict[str, Any]


def configure_runtime(uses_deepspeed: bool) -> None:
    """CPU runs: DeepSpeed's CPU accelerator (gloo when oneCCL is absent), single-rank defaults.

    DeepSpeed in a plain ``python`` process looks for MPI unless the torch.distributed variables
    are set, so a one-process DeepSpeed run gets them here, with a free port (torchrun and
    TrainJobs set their own). Runs without DeepSpeed get none: they must not start a process group.
    """
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if uses_deepspeed and "WORLD_SIZE" not in os.environ:
        from rtune.components.common.ports import free_port

        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
    # The stage logs its own config; the HF callback's params would collide with it.
    os.environ.setdefault("MLFLOW_MAX_LOG_PARAMS", "0")


def is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train(job: TrainingJob) -> Trained:
    """Build model and Trainer, resume from the last checkpoint if any, train, save outputs."""
    from rtune.components.common.config import from_dict
    from rtune.components.common.models import load_tokenizer, resolve_model
    from rtune.components.common.storage import localize
    from rtune.components.finetune.config import FinetuneConfig
    from rtune.components.finetune.data import load_rows
    from rtune.components.finetune.trainer import (
        PackedRowDataset,
        PackedSFTTrainer,
        collate_packed,
        gradient_accumulation,
        load_student,
        training_arguments,
    )
    from rtune.components.scoring.chat_templates import install_chat_template

    config = from_dict(FinetuneConfig, job.config, "finetune")
    configure_runtime(bool(config.deepspeed))
    rows = load_rows(localize(job.rows, "inputs"))
    model_path = resolve_model(job.model)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = gradient_accumulation(config, rows, world)
    args = training_arguments(config, job.checkpoint_dir, accumulation, job.report_to or ["none"])
    model = load_student(config, str(model_path))
    tokenizer = install_chat_template(
        load_tokenizer(model_path), config.template, config.response_format
    )
    trainer = PackedSFTTrainer(
        model=model,
        args=args,
        train_dataset=PackedRowDataset(rows),
        data_collator=collate_packed,
        processing_class=tokenizer,
    )
    last = last_complete_checkpoint(Path(job.checkpoint_dir))
    if last:
        log.info("resuming from %s", last)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - started
    summary = train_summary(trainer, result, rows, accumulation, world, last, seconds)
    save_outputs(trainer, config, model_path, job.output_dir, summary)
    return Trained(trainer, summary)


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (written last) is whole.

    A kill while a checkpoint was being written leaves a folder without (or with a torn) trainer
    state: it is removed, and training resumes from the one before.
    """
    if not checkpoint_dir.is_dir():
        return None
    found = sorted(
        (p for p in checkpoint_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for folder in found:
        try:
            json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
            return str(folder)
        except (OSError, ValueError):
            if is_main_rank():
                log.warning("removing incomplete checkpoint %s", folder)
                shutil.rmtree(folder, ignore_errors=True)
    return None


def train_summary(
    trainer: Any,
    result: Any,
    rows: list[Any],
    accumulation: int,
    world: int,
    resumed_from: str | None,
    seconds: float,
) -> dict[str, Any]:
    """What the stage reports: final step, losses, this run's throughput and peak memory."""
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "train_loss": float(result.training_loss),
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "rows": len(rows),
        "records": sum(len(row.example_ids) for row in rows),
        "gradient_accumulation_steps": accumulation,
        "world_size": world,
        "tokens_this_run": trainer.tokens_seen * world,
        "target_tokens_this_run": trainer.target_tokens_seen * world,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(trainer.tokens_seen * world / max(seconds, 1e-9), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "resumed_from_step": _step_of(resumed_from),
        "loss_history": [
            {"step": entry["step"], "loss": entry["loss"], "lr": entry.get("learning_rate")}
            for entry in history
        ],
    }


def _step_of(checkpoint: str | None) -> int:
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else 0


def save_outputs(
    trainer: Any, config: Any, model_path: Path, output: str, summary: dict[str, Any]
) -> None:
    """Adapter and/or full model. ``save_model`` gathers ZeRO-3 partitions on every rank.

    ``output`` is a folder or an ``s3://`` prefix (a cluster job's): kept a string, since
    ``Path("s3://b/k")`` is ``s3:/b/k`` — a local folder nobody uploads."""
    from rtune.components.common.storage import is_s3

    local = _staging_dir(output) if is_s3(output) else Path(output)
    if config.method in ("lora", "qlora"):
        trainer.save_model(str(local / "adapter"))
    else:
        trainer.save_model(str(local / "model"))
    if not is_main_rank():
        return
    if config.method in ("lora", "qlora") and config.merge:
        merge_adapter(model_path, local / "adapter", local / "model", trainer.processing_class)
    (local / "train_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if is_s3(output):
        from rtune.components.common.model_store import upload_model

        upload_model(local, output)


def _staging_dir(output: str) -> Path:
    from rtune.components.common.storage import uri_cache_dir

    return uri_cache_dir(output, "outputs")


def merge_adapter(base_path: Path, adapter_dir: Path, merged_dir: Path, tokenizer: Any) -> Path:
    """Base + LoRA folded into plain weights (what quantize and vLLM load), with the training
    tokenizer (its chat template renders the training format).

    Rank 0 does this alone after training, so ZeRO-3's partitioned loading (a collective) is
    switched off first.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(merged_dir)
    return merged_dir


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="rtune fine-tune worker (one rank)")
    parser.add_argument("--job", required=True, help="job JSON (path or s3://)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    trained = train(TrainingJob.load(args.job))
    if is_main_rank():
        print(json.dumps({k: v for k, v in trained.summary.items() if k != "loss_history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
