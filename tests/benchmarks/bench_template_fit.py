"""How well a prompt template fits an instruct student: the share of records with IFD > 1.

    .venv/bin/python tests/benchmarks/bench_template_fit.py [--data seed|shared|FILE] [--records 0]

Scores the same records with the embedded SmolLM2-135M-Instruct (fp32, CPU) under ``vicuna`` (the
reference's template) and ``chat`` (the student's own chat template) and prints, side by side, the
share of scorable records with IFD > 1 (the instruction makes the answer *harder* to predict: the
student does not read the prompt as a prompt), with r-IFD > 1 and the median IFD. An unfamiliar
template pushes IFD above 1 (Cherry LLM's issue tracker); the figures are the README's reason for
``chat`` on instruct students.

Records: ``seed`` is the sample the demo runs on (components/prepare/data/seed.jsonl);
``shared`` is ../shared/data/alpaca_sample_300.json beside the repository (real Alpaca records
from the Cherry-selected 5 %), when present; or any JSON / JSONL file. ``--records 0`` takes them all. No target: it is a
measurement.
"""

from __future__ import annotations

import argparse
import json
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

SEED = ROOT / "components" / "prepare" / "data" / "seed.jsonl"
SHARED = ROOT.parent / "shared" / "data" / "alpaca_sample_300.json"
TEMPLATES = ("vicuna", "chat")


def load_records(data: str, count: int) -> tuple[list[dict[str, str]], Path]:
    """The first ``count`` records with an output (all of them for 0) and their file."""
    path = {"seed": SEED, "shared": SHARED}.get(data, Path(data))
    if not path.exists():
        raise SystemExit(f"{path} not found: run with --data seed")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = [r for r in rows if r.get("output")]
    return (rows[:count] if count else rows), path


def fit(template: str, candidates: list[ScoringCandidate], model_dir: Path) -> dict[str, float]:
    """Shares of IFD > 1 and r-IFD > 1 among the scorable records, the median IFD, seconds."""
    config = ScoringConfig(model=str(model_dir), template=template, dtype="float32")
    tokenizer = load_tokenizer(model_dir)
    scorer = StudentScorer(load_causal_lm(model_dir, "float32"), tokenizer, config)
    started = time.perf_counter()
    results, _ = scorer.score(candidates, progress=False)
    seconds = time.perf_counter() - started
    ifd = [r["ifd"] for r in results.values() if r["ifd"] is not None]
    rifd = [r["rifd"] for r in results.values() if r["rifd"] is not None]
    return {
        "scorable": len(ifd),
        "ifd_above_1": sum(v > 1 for v in ifd) / len(ifd),
        "rifd_above_1": sum(v > 1 for v in rifd) / len(rifd),
        "median_ifd": statistics.median(ifd),
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="seed", help="seed | shared | a JSON/JSONL file")
    parser.add_argument("--records", type=int, default=0, help="0 = every record")
    args = parser.parse_args()
    records, path = load_records(args.data, args.records)
    model_dir = provision_embedded_model()
    candidates = [
        ScoringCandidate(str(i), r["instruction"], r.get("input") or "", r["output"])
        for i, r in enumerate(records)
    ]
    figures = {template: fit(template, candidates, model_dir) for template in TEMPLATES}
    print(f"{len(candidates)} records from {path.name}; embedded SmolLM2-135M-Instruct, fp32 CPU")
    print(f"{'':<22}" + "".join(f"{t:>10}" for t in TEMPLATES))
    rows = (
        ("records with IFD > 1", "ifd_above_1", "{:>9.1%} "),
        ("records with r-IFD > 1", "rifd_above_1", "{:>9.1%} "),
        ("median IFD", "median_ifd", "{:>10.3f}"),
        ("scorable records", "scorable", "{:>10d}"),
        ("seconds", "seconds", "{:>10.1f}"),
    )
    for label, key, fmt in rows:
        print(f"{label:<22}" + "".join(fmt.format(figures[t][key]) for t in TEMPLATES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
