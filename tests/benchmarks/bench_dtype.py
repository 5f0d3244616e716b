"""What scoring in bf16 costs against fp32 on this CPU: IFD / r-IFD agreement and speed.

    .venv/bin/python tests/benchmarks/bench_dtype.py [--records 64]

Scores the same records with the embedded model in fp32 and in bf16 (fast path, one process) and
prints, side by side: seconds, max and mean |delta IFD| and |delta r-IFD|, and how many records
change side of 1 (the selection rule's ``< 1`` filters) — the figures the README quotes when it
says fp32 stays the CPU default and bf16 is for GPUs. No target: it is a measurement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rtune.components.common.models import (  # noqa: E402
    load_causal_lm,
    load_tokenizer,
    provision_embedded_model,
)
from rtune.components.scoring.config import ScoringConfig  # noqa: E402
from rtune.components.scoring.scorer import ScoringCandidate, StudentScorer  # noqa: E402
from tests.benchmarks.bench_scoring import load_records  # noqa: E402


def score(dtype: str, candidates: list[ScoringCandidate], model_dir: Path) -> tuple[dict, float]:
    config = ScoringConfig(model=str(model_dir), dtype=dtype)
    scorer = StudentScorer(load_causal_lm(model_dir, dtype), load_tokenizer(model_dir), config)
    started = time.perf_counter()
    results, _ = scorer.score(candidates)
    return results, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=64)
    args = parser.parse_args()
    records, source = load_records(args.records)
    model_dir = provision_embedded_model()
    candidates = [
        ScoringCandidate(str(i), r["instruction"], r.get("input") or "", r["output"])
        for i, r in enumerate(records)
    ]
    fp32, fp32_s = score("float32", candidates, model_dir)
    bf16, bf16_s = score("bfloat16", candidates, model_dir)
    print(f"{len(candidates)} records from {source}; embedded SmolLM2-135M on the CPU")
    print(f"{'':<22}{'fp32':>10}{'bf16':>10}")
    print(f"{'seconds':<22}{fp32_s:>10.1f}{bf16_s:>10.1f}   bf16 speed-up x{fp32_s / bf16_s:.2f}")
    for name in ("ifd", "rifd"):
        pairs = [
            (fp32[k][name], bf16[k][name])
            for k in fp32
            if fp32[k][name] is not None and bf16[k][name] is not None
        ]
        deltas = [abs(a - b) for a, b in pairs]
        flips = sum((a < 1) != (b < 1) for a, b in pairs)
        print(
            f"{name:<22}max |delta| {max(deltas):.3f}, mean {statistics.mean(deltas):.4f}; "
            f"{flips}/{len(pairs)} records change side of 1"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
