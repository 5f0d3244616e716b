"""Training throughput and memory: our packed trainer vs a plain padded HF ``Trainer``.

    .venv/bin/python tests/benchmarks/bench_training.py [--records 64] [--batch 8] [--epochs 1]

Both fine-tune the embedded default (SmolLM2-135M-Instruct, LoRA r=16 on every projection, fp32,
CPU) for the same epochs over the same seed records with the same template and the same records
per optimizer step:

* ours: ``PackedSFTTrainer`` — whole records packed into padding-free rows (position ids restart
  per record), logits and loss only at response positions;
* baseline: stock ``transformers.Trainer`` on padded batches of ``--batch`` records
  (``DataCollatorForSeq2Seq``, labels -100 on prompt and padding), the model's own full-logits loss.

Each runs in its own process so peak RSS (``ru_maxrss``) is its own. Throughput counts the real
(non-padding) tokens of the records, identical for both, per second of ``trainer.train()``. Target
on this CPU: >= 1.5x the baseline's tokens/s at equal or lower peak memory. Exits 1 when missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TARGET_SPEEDUP = 1.5
LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0}


def _examples(records: int, max_length: int) -> tuple[list, object, Path]:
    from rtune.components.common.models import load_tokenizer, provision_embedded_model
    from rtune.components.finetune.data import build_examples
    from tests.finetune_helpers.records import training_records

    model_dir = provision_embedded_model()
    tokenizer = load_tokenizer(model_dir)
    examples, _ = build_examples(training_records(records), tokenizer, "vicuna", max_length)
    return examples, tokenizer, model_dir


def run_ours(args: argparse.Namespace, out: Path) -> dict:
    from rtune.components.finetune.config import FinetuneConfig
    from rtune.components.finetune.data import pack_examples
    from rtune.components.finetune.trainer import (
        PackedRowDataset,
        PackedSFTTrainer,
        collate_packed,
        gradient_accumulation,
        load_student,
        training_arguments,
    )

    examples, _, model_dir = _examples(args.records, args.max_length)
    config = FinetuneConfig(
        epochs=args.epochs,
        global_batch_size=args.batch,
        max_length=args.max_length,
        max_tokens_per_batch=args.row_tokens,
        save_steps=10**6,
        learning_rate=2e-4,
        **LORA,
    )
    rows = pack_examples(examples, config.row_tokens)
    accumulation = gradient_accumulation(config, rows, 1)
    hf_args = training_arguments(config, str(out), accumulation, ["none"])
    hf_args.disable_tqdm = True
    model = load_student(config, str(model_dir))
    trainer = PackedSFTTrainer(
        model=model,
        args=hf_args,
        train_dataset=PackedRowDataset(rows),
        data_collator=collate_packed,
    )
    return _timed(
        trainer,
        sum(len(e.input_ids) for e in examples) * args.epochs,
        {
            "rows": len(rows),
            "accumulation": accumulation,
            "computed_tokens": sum(len(r.input_ids) for r in rows) * args.epochs,
        },
    )


def run_baseline(args: argparse.Namespace, out: Path) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from rtune.components.finetune.config import FinetuneConfig
    from rtune.components.finetune.trainer import load_student

    records, batch, epochs = args.records, args.batch, args.epochs
    examples, tokenizer, model_dir = _examples(records, args.max_length)
    dataset = Dataset.from_list(
        [{"input_ids": list(e.input_ids), "labels": list(e.labels)} for e in examples]
    )
    model = load_student(FinetuneConfig(**LORA), str(model_dir))
    hf_args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        num_train_epochs=epochs,
        learning_rate=2e-4,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=42,
        dataloader_pin_memory=False,
        logging_steps=1,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=hf_args, train_dataset=dataset, data_collator=collator)
    padded = 0
    for start in range(0, len(examples), batch):
        ids = [e.input_ids for e in examples[start : start + batch]]
        padded += max(map(len, ids)) * len(ids)
    return _timed(
        trainer,
        sum(len(e.input_ids) for e in examples) * epochs,
        {
            "computed_tokens": padded * epochs,
        },
    )


def _timed(trainer: object, real_tokens: float, extra: dict) -> dict:
    started = time.perf_counter()
    trainer.train()  # type: ignore[attr-defined]
    seconds = time.perf_counter() - started
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]  # type: ignore[attr-defined]
    return {
        "seconds": round(seconds, 2),
        "real_tokens": real_tokens,
        "tokens_per_second": round(real_tokens / seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "steps": trainer.state.global_step,  # type: ignore[attr-defined]
        "final_loss": losses[-1] if losses else None,
        **extra,
    }


def child(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as out:
        runner = run_ours if args.child == "ours" else run_baseline
        print("RESULT " + json.dumps(runner(args, Path(out))))


def measure(kind: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--records",
        str(args.records),
        "--batch",
        str(args.batch),
        "--epochs",
        str(args.epochs),
        "--max-length",
        str(args.max_length),
        "--row-tokens",
        str(args.row_tokens),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="records per optimizer step")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--row-tokens", type=int, default=512, help="ours: packed row budget")
    parser.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    load = os.getloadavg()[0]
    baseline = measure("baseline", args)
    ours = measure("ours", args)
    speedup = ours["tokens_per_second"] / baseline["tokens_per_second"]
    memory = ours["peak_rss_mib"] / baseline["peak_rss_mib"]
    print(
        f"training bench: {args.records} seed records, LoRA r=16, fp32, {args.batch} records/step, "
        f"{args.epochs:g} epoch(s), max_length {args.max_length}, our packed rows <= {args.row_tokens} "
        f"tokens, load average at start {load:.2f}"
    )
    print(
        f"{'':>10} {'tokens/s':>9} {'seconds':>8} {'steps':>6} {'computed tok':>13} {'peak RSS MiB':>13} {'final loss':>11}"
    )
    for name, result in (("baseline", baseline), ("ours", ours)):
        print(
            f"{name:>10} {result['tokens_per_second']:>9.1f} {result['seconds']:>8.1f} {result['steps']:>6} "
            f"{result['computed_tokens']:>13.0f} {result['peak_rss_mib']:>13.1f} {result['final_loss'] or 0:>11.3f}"
        )
    print(
        f"speed-up {speedup:.2f}x (target >= {TARGET_SPEEDUP}x), peak memory ratio {memory:.2f} (target <= 1.00)"
    )
    return 0 if speedup >= TARGET_SPEEDUP and memory <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
