"""The quantization itself, run in llm-compressor's own interpreter (not the project's).

    <llm-compressor python> -I components/quantize/worker.py --job <work>/job.json

llm-compressor pins an older transformers than the project, so it lives in its own virtualenv
(``.venv-quantize`` locally, ``/opt/llmcompressor`` in the rtune-quantize image) and this file
imports only the standard library at module level: the project is not installed there. ``-I``
keeps the project's own packages (and ``PYTHONPATH``) off ``sys.path``. The task hands over
everything in the job file (``QuantizeJob`` fields as JSON): the model folder, the recipe YAML,
the calibration token ids, the output folder.

The model loads on the CPU; llm-compressor's sequential pipeline moves one decoder layer at a
time to the GPU when there is one. Outputs, in order:

    <output>.partial/          model + tokenizer in compressed-tensors format, renamed to <output>
    <summary>                  quantize_summary.json: written LAST, the done-marker

A killed run leaves no summary: the task removes the leftovers and runs again; a finished one
is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any


def load_job(path: Path) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return job


def calibration_dataset(path: Path) -> Any:
    """The task's token ids as a datasets.Dataset (already tokenized: no text column)."""
    from datasets import Dataset

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    ids = [row["input_ids"] for row in rows]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})


def quantize(job: dict[str, Any]) -> dict[str, Any]:
    """oneshot(recipe, calibration) on the model, then save it compressed; returns the summary."""
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype="auto")
    tokenizer = job_tokenizer(job)
    dataset = calibration_dataset(Path(job["calibration"]))
    _log(f"oneshot: {len(dataset)} calibration texts, recipe {job['recipe']}")
    started = time.perf_counter()
    oneshot(
        model=model,
        tokenizer=tokenizer,
        recipe=job["recipe"],
        dataset=dataset,
        max_seq_length=job["max_seq_length"],
        num_calibration_samples=len(dataset),
        shuffle_calibration_samples=False,
    )
    seconds = time.perf_counter() - started
    save_model(model, tokenizer, Path(job["output"]))
    return {
        "method": job["method"],
        "oneshot_seconds": round(seconds, 2),
        "calibration_texts": len(dataset),
        "calibration_tokens": sum(len(ids) for ids in dataset["input_ids"]),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": _versions(),
    }


def job_tokenizer(job: dict[str, Any]) -> Any:
    """The model's tokenizer with the job's chat template (the training format, so the quantized
    model is served as the student was trained, whatever template the input folder held)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    if job.get("chat_template"):
        tokenizer.chat_template = job["chat_template"]
    return tokenizer


def save_model(model: Any, tokenizer: Any, output: Path) -> None:
    """Compressed-tensors checkpoint + tokenizer, written aside and renamed into place."""
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), save_compressed=True)
    tokenizer.save_pretrained(str(staging))
    shutil.rmtree(output, ignore_errors=True)
    os.replace(staging, output)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("llmcompressor", "compressed-tensors", "transformers", "torch")
    return {name: version(name) for name in names}


def write_summary(summary: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _log(message: str) -> None:
    print(f"[rtune quantize worker] {message}", file=sys.stderr, flush=True)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="rtune quantize worker (llm-compressor oneshot)")
    parser.add_argument("--job", type=Path, required=True, help="job JSON written by the task")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    job = load_job(args.job)
    summary = quantize(job)
    write_summary(summary, Path(job["summary"]))
    _log(f"done in {summary['oneshot_seconds']} s: {job['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
