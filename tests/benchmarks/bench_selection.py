"""Student scoring for the whole selection: the lean stages vs the reference flow.

    .venv/bin/python tests/benchmarks/bench_selection.py [--records 16] [--rounds 2]
        [--template vicuna] [--max-length 2048]

Both decide the same records with the embedded model (fp32) in one process:

* reference flow (the reference code's computation): IFD and r-IFD of ``ori``, ``Q``, ``A`` and
  ``QA`` — four passes each, sixteen per record — one record at a time, each pass an HF forward
  scored by ``outputs.loss`` (``tests/scoring_oracle.py``); then the phase-1 and phase-2 rules;
* lean flow (ours): the real stages as the DAG runs them — ``score_candidates`` phase ``ifd``
  (IFD of ori and Q), ``select_ifd``, the winner's reflected answer added, ``score_candidates``
  phase ``rifd`` (the new answer, the winner's r-IFD, its IFD losses carried forward), and
  ``select_rifd`` — batched across the records of a round.

Reflections are derived from each record (``Q`` asks for reasons and an example and its answer
gains one; the new answers gain a summary sentence), so they are longer than the original as a
teacher's are. Rounds alternate lean and reference on the same chunk, so both see the same
background load. The time compared is student scoring (model loading excluded, the reference's
model is loaded once before timing too); the lean flow's wall time with loading and selection IO
is printed beside it.

Target: the lean flow's scoring at least 2.5x faster (median of the rounds) with every phase-1
winner, decision and reason equal to the reference's; exits 1 when either fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `components` and `tests` importable

from rtune.components.common.models import (  # noqa: E402
    load_causal_lm,
    load_tokenizer,
    provision_embedded_model,
)
from rtune.components.common.records import read_jsonl, write_jsonl  # noqa: E402
from rtune.components.scoring.config import ScoringConfig  # noqa: E402
from rtune.components.scoring.stage import score_candidates  # noqa: E402
from rtune.components.select_ifd.rules import choose_phase1  # noqa: E402
from rtune.components.select_ifd.stage import select_ifd  # noqa: E402
from rtune.components.select_rifd.rules import SelectionConfig, decide_phase2  # noqa: E402
from rtune.components.select_rifd.stage import select_rifd  # noqa: E402
from tests.scoring_oracle import oracle_scores  # noqa: E402

# the shared sample beside the repository (or beside the folder of worktrees), when present
ALPACA_SAMPLE = next(
    (
        p
        for p in (d / "shared" / "data" / "alpaca_sample_300.json" for d in ROOT.parents)
        if p.exists()
    ),
    ROOT / "no-shared-sample",
)
SEED = ROOT / "components" / "prepare" / "data" / "seed.jsonl"
TARGET_SPEEDUP = 2.5
NEW = {"ori": "A", "Q": "QA"}
POLICY = "keep_phase1_winner"  # every record keeps a decision, so all decisions are compared


@dataclass
class Side:
    """One flow's totals over all rounds."""

    scoring: float = 0.0
    wall: float = 0.0
    round_scoring: list[float] = field(default_factory=list)
    passes: int = 0
    decisions: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)


def load_seeds(count: int) -> tuple[list[dict[str, str]], str]:
    """``count`` original records (real Alpaca lengths when the shared sample is there)."""
    if ALPACA_SAMPLE.exists():
        rows, source = json.loads(ALPACA_SAMPLE.read_text(encoding="utf-8")), str(ALPACA_SAMPLE)
    else:
        text = SEED.read_text(encoding="utf-8")
        rows, source = [json.loads(line) for line in text.splitlines() if line], str(SEED)
    rows = [r for r in rows if r.get("output")]
    picked = (rows * (count // len(rows) + 1))[:count]
    return [
        {
            "id": f"{r.get('id', 'r')}-{n}",
            "instruction": r["instruction"],
            "input": r.get("input") or "",
            "output": r["output"],
        }
        for n, r in enumerate(picked)
    ], source


def first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".") + "."


def reflections(seeds: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Records as ``reflect_instruction`` writes them, plus both possible new answers (``A``
    and ``QA``) that ``reflect_response`` would write for either phase-1 winner."""
    records = []
    for number, seed in enumerate(seeds):
        ori = {k: seed[k] for k in ("instruction", "input", "output")}
        other = seeds[(number + 1) % len(seeds)]["output"]
        q = {
            "instruction": f"{ori['instruction']} Explain the reasoning behind your answer and "
            "give a concrete example.",
            "input": ori["input"],
            "output": f"{ori['output']} For example: {first_sentence(other)}",
        }
        new = {
            name: {
                **base,
                "output": f"{base['output']} In summary: {first_sentence(base['output'])}",
            }
            for name, base in (("A", ori), ("QA", q))
        }
        records.append(
            {
                "id": seed["id"],
                **ori,
                "candidates": {"ori": ori, "Q": q},
                "teacher": {"instruction": {"parse_status": "ok"}},
                "answers": new,
            }
        )
    return records


def with_response(record: dict[str, Any], winner: str) -> dict[str, Any]:
    name = NEW[winner]
    candidates = {**record["candidates"], name: record["answers"][name]}
    teacher = {**record["teacher"], "response": {"parse_status": "ok"}}
    return {**record, "candidates": candidates, "teacher": teacher}


def reference_flow(model: Any, tokenizer: Any, config: ScoringConfig, records: list, side: Side):
    """Four oracle passes for each of ori, Q, A, QA, one record at a time; then the rules."""
    began = time.perf_counter()
    for record in records:
        texts = {**record["candidates"], **record["answers"]}
        scores = {
            name: oracle_scores(model, tokenizer, config, t["instruction"], t["input"], t["output"])
            for name, t in texts.items()
        }
        winner, why = choose_phase1(scores["ori"], scores["Q"], "ok")
        decision, reason = decide_phase2(winner, scores[winner], scores[NEW[winner]], POLICY)
        side.decisions[record["id"]] = (winner, why, decision, reason)
        side.passes += 16
    spent = time.perf_counter() - began
    side.scoring += spent
    side.wall += spent
    side.round_scoring.append(spent)


def lean_flow(config: ScoringConfig, records: list, side: Side, folder: Path) -> None:
    """The stages as the DAG runs them, on one chunk of records."""
    began = time.perf_counter()
    reflected, scores1, chosen = (
        folder / "reflected.jsonl",
        folder / "s1.jsonl",
        folder / "p1.jsonl",
    )
    write_jsonl(reflected, [{k: v for k, v in r.items() if k != "answers"} for r in records])
    summary1 = score_candidates(reflected, scores1, config, "ifd", progress=False)
    select_ifd(reflected, [scores1], chosen)
    answers = {r["id"]: r["answers"] for r in records}
    responses, scores2 = folder / "responses.jsonl", folder / "s2.jsonl"
    write_jsonl(
        responses,
        [
            with_response({**r, "answers": answers[r["id"]]}, r["phase1"]["winner"])
            for r in read_jsonl(chosen)
        ],
    )
    summary2 = score_candidates(responses, scores2, config, "rifd", progress=False)
    decided = folder / "decided.jsonl"
    select_rifd(responses, [scores2], decided, folder / "selected.jsonl", SelectionConfig(POLICY))
    for r in read_jsonl(decided):
        side.decisions[r["id"]] = (
            r["phase1"]["winner"],
            r["phase1"]["reason"],
            r["decision"],
            r["reason"],
        )
    spent = summary1.seconds + summary2.seconds
    side.scoring += spent
    side.round_scoring.append(spent)
    side.wall += time.perf_counter() - began
    side.passes += sum(s.unique_passes + s.exact_passes for s in (summary1, summary2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--template", default="vicuna")
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args()

    seeds, source = load_seeds(args.records)
    records = reflections(seeds)
    path = provision_embedded_model()
    config = ScoringConfig(model=str(path), template=args.template, max_length=args.max_length)
    model, tokenizer = load_causal_lm(path), load_tokenizer(path)
    print(
        f"selection scoring: {len(records)} records from {source}; template {config.template}, "
        f"max_length {config.max_length}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    lean, reference = Side(), Side()
    size = -(-len(records) // args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        for number, begin in enumerate(range(0, len(records), size), start=1):
            chunk = records[begin : begin + size]
            folder = Path(tmp) / f"round-{number}"
            folder.mkdir()
            lean_flow(config, chunk, lean, folder)
            reference_flow(model, tokenizer, config, chunk, reference)
            quick, slow = lean.round_scoring[-1], reference.round_scoring[-1]
            print(
                f"  round {number}: {len(chunk)} records  lean {quick:6.1f} s  reference "
                f"{slow:6.1f} s  speed-up {slow / quick:.2f}x  (load average "
                f"{os.getloadavg()[0]:.2f})",
                flush=True,
            )
    ratio = statistics.median(
        r / q for r, q in zip(reference.round_scoring, lean.round_scoring, strict=True)
    )
    same = lean.decisions == reference.decisions
    differing = sum(lean.decisions[k] != v for k, v in reference.decisions.items())
    print(
        f"selection scoring (both phases, {len(records)} records): reference "
        f"{reference.scoring:.1f} s ({reference.passes} passes, one record at a time), lean "
        f"{lean.scoring:.1f} s ({lean.passes} passes; {lean.wall:.1f} s with model loading "
        f"and selection IO); speed-up {ratio:.2f}x (median of rounds), overall "
        f"{reference.scoring / lean.scoring:.2f}x; decisions equal: {same}"
        + ("" if same else f" ({differing} differ)")
    )
    ok = ratio >= TARGET_SPEEDUP and same
    print(
        f"target: >= {TARGET_SPEEDUP}x with equal decisions: {'met' if ok else 'NOT met'}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
