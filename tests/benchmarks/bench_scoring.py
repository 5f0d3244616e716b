"""Student scoring speed: the fast scorer vs the per-sample oracle on the embedded model.

    .venv/bin/python tests/benchmarks/bench_scoring.py [--records 64] [--template vicuna]
        [--max-length 2048] [--batch-tokens 1024] [--rounds 2]

Both score the same records (IFD and r-IFD: four passes per record) with the same model object in
one process. To be fair on a shared machine they take turns: the records are split into
``--rounds`` chunks and each chunk is scored by the fast scorer, then by the oracle, so both see
the same background load. Records: ../shared/data/alpaca_sample_300.json (beside the repository) when present (real
Alpaca lengths), else the shipped seed data, else generated records.

Work is counted as matmul FLOPs, 2 x parameters x rows (attention-score FLOPs are left out; at
these lengths they are a few percent):

* decoder: 2 x N_decoder per token run through it (N_decoder = all parameters but the
  embedding/output matrix; padding counts, tokens read from the prefix cache do not);
* output layer: 2 x vocab x hidden per projected row — every position for the oracle (HF computes
  full-vocabulary logits everywhere), only target-predicting rows for the fast scorer.

Target: speed-up >= 2x (median of the rounds) with max |delta| <= 1e-4 on ifd and rifd; exits 1
when either fails. Run it on a quiet machine: other processes competing for the 2 cores slow the
oracle (bs 1, 49k-wide fp32 logits at every position) far more than the fast scorer, which
inflates the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `components` and `tests` importable

import torch  # noqa: E402

from rtune.components.common.models import (  # noqa: E402
    load_causal_lm,
    load_tokenizer,
    provision_embedded_model,
)
from rtune.components.scoring.config import ScoringConfig  # noqa: E402
from rtune.components.scoring.scorer import ScoringCandidate, StudentScorer  # noqa: E402
from tests.scoring_oracle import oracle_scores  # noqa: E402

ALPACA_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "alpaca_sample_300.json"
SEED = ROOT / "components" / "prepare" / "data" / "seed.jsonl"
TARGET_SPEEDUP = 2.0
TOLERANCE = 1e-4


@dataclass
class Side:
    """One scorer's totals over all rounds."""

    wall: float = 0.0
    cpu: float = 0.0
    round_walls: list[float] = field(default_factory=list)
    decoder_tokens: int = 0
    head_rows: int = 0
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_records(count: int) -> tuple[list[dict[str, str]], str]:
    """``count`` (instruction, input, output) records and where they came from."""
    if ALPACA_SAMPLE.exists():
        rows, source = json.loads(ALPACA_SAMPLE.read_text(encoding="utf-8")), str(ALPACA_SAMPLE)
    elif SEED.exists():
        rows = [json.loads(line) for line in SEED.read_text(encoding="utf-8").splitlines() if line]
        source = str(SEED)
    else:
        rows, source = generated_records(count), "generated"
    rows = [r for r in rows if r.get("output")]
    picked = (rows * (count // max(len(rows), 1) + 1))[:count]
    return [
        {"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]}
        for r in picked
    ], source


def generated_records(count: int) -> list[dict[str, str]]:
    rng = random.Random(0)
    words = [
        "the",
        "model",
        "reads",
        "a",
        "short",
        "text",
        "and",
        "writes",
        "a",
        "clear",
        "helpful",
        "answer",
        "about",
        "it",
    ]
    return [
        {
            "instruction": " ".join(rng.choices(words, k=rng.randint(5, 25))),
            "input": " ".join(rng.choices(words, k=rng.randint(0, 20))),
            "output": " ".join(rng.choices(words, k=rng.randint(20, 200))),
        }
        for _ in range(count)
    ]


def oracle_work(scorer: StudentScorer, records: list[dict[str, str]]) -> int:
    """Tokens of the oracle's four passes per record (each also gets full-vocabulary logits)."""
    total = 0
    for index, record in enumerate(records):
        plan = scorer.plan(ScoringCandidate(str(index), **record))
        total += sum(len(p.ids) for p in plan.passes.values())
    return total


def run_rounds(
    scorer: StudentScorer, records: list[dict[str, str]], rounds: int
) -> tuple[Side, Side]:
    """Fast, then oracle, on each chunk in turn; totals per side."""
    fast, oracle = Side(), Side()
    size = -(-len(records) // rounds)
    for begin in range(0, len(records), size):
        chunk = records[begin : begin + size]
        candidates = [ScoringCandidate(str(begin + i), **r) for i, r in enumerate(chunk)]
        began = (fast.wall, oracle.wall)
        wall, cpu = time.perf_counter(), time.process_time()
        results, stats = scorer.score(candidates, progress=False)
        fast.wall += time.perf_counter() - wall
        fast.cpu += time.process_time() - cpu
        fast.decoder_tokens += stats.forward_tokens + stats.exact_tokens
        fast.head_rows += stats.target_tokens + stats.exact_tokens
        fast.scores.update(results)
        wall, cpu = time.perf_counter(), time.process_time()
        for candidate in candidates:
            oracle.scores[candidate.key] = oracle_scores(
                scorer.model,
                scorer.tokenizer,
                scorer.config,
                candidate.instruction,
                candidate.input,
                candidate.output,
            )
        oracle.wall += time.perf_counter() - wall
        oracle.cpu += time.process_time() - cpu
        work = oracle_work(scorer, chunk)
        oracle.decoder_tokens += work
        oracle.head_rows += work
        quick, slow = fast.wall - began[0], oracle.wall - began[1]
        fast.round_walls.append(quick)
        oracle.round_walls.append(slow)
        print(
            f"  round {begin // size + 1}: {len(chunk)} records  fast {quick:6.1f} s  "
            f"oracle {slow:6.1f} s  speed-up {slow / quick:.2f}x  "
            f"(load average {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    return fast, oracle


def max_deltas(fast: Side, oracle: Side) -> dict[str, float]:
    """Largest |fast - oracle| per score; a null on one side only counts as infinite."""
    deltas = {"ifd": 0.0, "rifd": 0.0}
    for key, slow in oracle.scores.items():
        for name in deltas:
            a, b = fast.scores[key][name], slow[name]
            if (a is None) != (b is None):
                deltas[name] = float("inf")
            elif a is not None:
                deltas[name] = max(deltas[name], abs(a - b))
    return deltas


def parameter_counts(model: Any) -> tuple[int, int]:
    """(decoder parameters without the embedding/output matrices, vocab x hidden)."""
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    matrices = {id(head): head.numel(), id(embed): embed.numel()}
    total = sum(p.numel() for p in model.parameters())
    return total - sum(matrices.values()), head.numel()


def report(
    fast: Side, oracle: Side, n_records: int, logical_tokens: int, params: tuple[int, int]
) -> float:
    decoder, head = params
    rows = []

    def flops(side: Side) -> float:
        return 2.0 * decoder * side.decoder_tokens + 2.0 * head * side.head_rows

    for label, getter in (
        ("wall seconds", lambda s: s.wall),
        ("CPU seconds", lambda s: s.cpu),
        ("records / s", lambda s: n_records / s.wall),
        ("tokens / s (4 passes/record)", lambda s: logical_tokens / s.wall),
        ("decoder tokens run", lambda s: s.decoder_tokens),
        ("vocab-projected rows", lambda s: s.head_rows),
        ("model GFLOP executed", lambda s: flops(s) / 1e9),
        ("achieved GFLOP/s", lambda s: flops(s) / 1e9 / s.wall),
    ):
        rows.append((label, getter(oracle), getter(fast)))
    print(f"\n{'':30s} {'oracle':>12s} {'fast':>12s} {'fast/oracle':>12s}")
    for label, slow, quick in rows:
        print(f"{label:30s} {slow:12.2f} {quick:12.2f} {quick / slow:12.3f}")
    overall = oracle.wall / fast.wall
    speedup = statistics.median(
        o / f for o, f in zip(oracle.round_walls, fast.round_walls, strict=True)
    )
    print(
        f"\nspeed-up: median over rounds {speedup:.2f}x (judged: a load spike in one round "
        f"cannot fake it), overall {overall:.2f}x, CPU time {oracle.cpu / fast.cpu:.2f}x"
    )
    return speedup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--template", default="vicuna")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch-tokens", type=int, default=ScoringConfig().batch_tokens)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    records, source = load_records(args.records)
    path = provision_embedded_model()
    config = ScoringConfig(
        template=args.template, max_length=args.max_length, batch_tokens=args.batch_tokens
    )
    scorer = StudentScorer(load_causal_lm(path), load_tokenizer(path), config)
    params = parameter_counts(scorer.model)
    logical_tokens = oracle_work(scorer, records)
    print(
        f"{len(records)} records from {source}; template {config.template}, max_length "
        f"{config.max_length}, batch_tokens {config.batch_tokens}; torch threads "
        f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}\n"
        f"model: {params[0] / 1e6:.1f} M decoder parameters + {params[1] / 1e6:.1f} M output "
        f"matrix; {logical_tokens} tokens in the 4 passes of all records"
    )
    fast, oracle = run_rounds(scorer, records, args.rounds)
    speedup = report(fast, oracle, len(records), logical_tokens, params)
    deltas = max_deltas(fast, oracle)
    print(f"max |delta ifd| = {deltas['ifd']:.2e}   max |delta rifd| = {deltas['rifd']:.2e}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    ok = speedup >= TARGET_SPEEDUP and max(deltas.values()) <= TOLERANCE
    print(
        f"target: >= {TARGET_SPEEDUP:.0f}x at max |delta| <= {TOLERANCE:g}: "
        f"{'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
