"""Selection that scores only what its decisions read decides exactly as scoring everything.

Phase 1 reads IFD(ori) and IFD(Q) (and, only when one is missing, its full ``reason``); phase 2
reads r-IFD of the phase-1 winner and IFD, r-IFD of the new answer, whose instruction-alone pass
is the winner's. The *full* flow here scores all four passes of ori, Q and A/QA with the scorer
and applies the same rules; the *lean* flow is the stages as the pipeline runs them. On the
shipped seed sample (with derived reflections, a teacher fallback in each phase, a prompt too
long for ``max_length`` and an empty answer), with the tiny random-weight model, both give the
same phase-1 winners, decisions and reasons, and every score the lean flow computes equals the
full flow's — with far fewer passes through the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.records import read_jsonl, write_jsonl
from rtune.components.scoring.config import ScoringConfig
from rtune.components.scoring.scorer import ScoringCandidate, StudentScorer
from rtune.components.scoring.stage import score_candidates
from rtune.components.select_ifd.rules import choose_phase1
from rtune.components.select_ifd.stage import select_ifd
from rtune.components.select_rifd.rules import SelectionConfig, decide_phase2
from rtune.components.select_rifd.stage import select_rifd

SEED = Path(__file__).resolve().parents[3] / "components" / "prepare" / "data" / "seed.jsonl"
RECORDS = 14
TOLERANCE = 1e-4  # batch composition differs between the flows (see the scorer's docstring)
NEW = {"ori": "A", "Q": "QA"}


def reflected_records() -> list[dict[str, Any]]:
    """Seed records as ``reflect_instruction`` writes them, with a few hard cases."""
    seeds = [json.loads(line) for line in SEED.read_text(encoding="utf-8").splitlines()][:RECORDS]
    records = []
    for number, seed in enumerate(seeds):
        ori = {k: seed[k] for k in ("instruction", "input", "output")}
        other = seeds[(number + 1) % len(seeds)]["output"]
        q = {
            "instruction": f"{ori['instruction']} Explain each step and give an example.",
            "input": ori["input"],
            "output": f"{ori['output']} For example: {other}",
        }
        status = "ok"
        if number == 1:  # the teacher fell back: Q copies ori
            q, status = dict(ori), "fallback_parse"
        if number == 2:  # a prompt longer than max_length: IFD(Q) truncated, r-IFD(Q) not
            q["instruction"] = " ".join([q["instruction"]] * 40)
        if number == 3:  # an empty answer: ori unscorable on both scores
            ori["output"] = ""
        records.append(
            {
                "id": seed["id"],
                **ori,
                "candidates": {"ori": ori, "Q": q},
                "teacher": {"instruction": {"parse_status": status}},
            }
        )
    return records


def with_response(record: dict[str, Any], winner: str, number: int) -> dict[str, Any]:
    """The record as ``reflect_response`` writes it (record 5: the teacher fell back)."""
    base = record["candidates"][winner]
    status = "fallback_parse" if number == 5 else "ok"
    output = base["output"] if status != "ok" else f"{base['output']} In short: it checks out."
    candidates = {**record["candidates"], NEW[winner]: {**base, "output": output}}
    teacher = {**record["teacher"], "response": {"parse_status": status}}
    return {**record, "candidates": candidates, "teacher": teacher}


def full_flow(records: list[dict[str, Any]], config: ScoringConfig) -> dict[str, Any]:
    """Every candidate scored on all four passes; the rules applied to those scores."""
    scorer = StudentScorer.load(config)

    def score_all(names: dict[str, list[str]], by_id: dict[str, Any]) -> tuple[dict, int]:
        candidates = [
            ScoringCandidate(f"{rid}/{name}", **by_id[rid]["candidates"][name])
            for rid, wanted in names.items()
            for name in wanted
        ]
        results, stats = scorer.score(candidates, progress=False)
        return results, stats.unique_passes

    by_id = {r["id"]: r for r in records}
    phase1, passes1 = score_all({rid: ["ori", "Q"] for rid in by_id}, by_id)
    winners, responses = {}, {}
    for number, (rid, record) in enumerate(by_id.items()):
        winners[rid] = choose_phase1(
            phase1[f"{rid}/ori"],
            phase1[f"{rid}/Q"],
            record["teacher"]["instruction"]["parse_status"],
        )
        responses[rid] = with_response(record, winners[rid][0], number)
    phase2, passes2 = score_all({rid: [NEW[w]] for rid, (w, _) in winners.items()}, responses)
    scores = {**phase1, **phase2}
    decisions = {
        policy: {
            rid: decide_phase2(
                w,
                scores[f"{rid}/{w}"],
                scores[f"{rid}/{NEW[w]}"],
                policy,
                responses[rid]["teacher"]["response"]["parse_status"],
            )
            for rid, (w, _) in winners.items()
        }
        for policy in ("reference", "keep_phase1_winner")
    }
    return {
        "winners": winners,
        "decisions": decisions,
        "scores": scores,
        "passes": passes1 + passes2,
    }


def lean_flow(records: list[dict[str, Any]], config: ScoringConfig, tmp: Path) -> dict[str, Any]:
    """The stages as the DAG runs them: score phase 1, select, reflect, score phase 2, select."""
    reflected, scores1, chosen = tmp / "reflected.jsonl", tmp / "s1.jsonl", tmp / "p1.jsonl"
    write_jsonl(reflected, records)
    summary1 = score_candidates(reflected, scores1, config, "ifd", progress=False)
    select_ifd(reflected, [scores1], chosen)
    phase1 = read_jsonl(chosen)
    responses, scores2 = tmp / "responses.jsonl", tmp / "s2.jsonl"
    write_jsonl(
        responses, [with_response(r, r["phase1"]["winner"], n) for n, r in enumerate(phase1)]
    )
    summary2 = score_candidates(responses, scores2, config, "rifd", progress=False)
    out: dict[str, Any] = {"winners": {}, "decisions": {}, "records": {}, "phase1": phase1}
    out["winners"] = {r["id"]: (r["phase1"]["winner"], r["phase1"]["reason"]) for r in phase1}
    for policy in ("reference", "keep_phase1_winner"):
        decided = tmp / f"{policy}.jsonl"
        select_rifd(
            responses, [scores2], decided, tmp / f"{policy}-sel.jsonl", SelectionConfig(policy)
        )
        rows = read_jsonl(decided)
        out["decisions"][policy] = {r["id"]: (r["decision"], r["reason"]) for r in rows}
        out["records"][policy] = rows
    out["passes"] = sum(s.unique_passes + s.exact_passes for s in (summary1, summary2))
    out["phase1_passes"] = summary1.passes
    return out


def assert_same_scores(lean: dict[str, Any], full: dict[str, Any], where: str) -> None:
    assert lean.get("reason") == full["reason"], where
    for name, value in lean.items():
        if name == "reason":
            continue
        expected = full[name]
        assert (value is None) == (expected is None), f"{where} {name}: {value} vs {expected}"
        if value is not None:
            assert math.isclose(value, expected, rel_tol=TOLERANCE, abs_tol=TOLERANCE), where


@pytest.fixture(scope="module")
def flows(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    config = ScoringConfig(model=str(tiny_model_dir), template="vicuna", max_length=256)
    records = reflected_records()
    return {
        "full": full_flow(records, config),
        "lean": lean_flow(records, config, tmp_path_factory.mktemp("lean")),
    }


def test_lean_selection_decides_exactly_as_scoring_everything(flows: dict[str, Any]) -> None:
    full, lean = flows["full"], flows["lean"]
    assert lean["winners"] == full["winners"]
    assert lean["decisions"] == full["decisions"]
    reasons = {reason for _, reason in full["winners"].values()}
    assert {"teacher fallback (fallback_parse)", "ori unscorable (empty_output)"} <= reasons
    assert any(reason.startswith("Q unscorable (ifd: truncated") for reason in reasons)
    kept = {d for d, _ in full["decisions"]["keep_phase1_winner"].values()}
    assert len(kept) > 1  # the sample exercises more than one outcome


def test_every_score_the_lean_flow_computes_equals_the_full_flows(flows: dict[str, Any]) -> None:
    full, lean = flows["full"], flows["lean"]
    for record in lean["records"]["keep_phase1_winner"]:
        winner = record["phase1"]["winner"]
        for name, value in record["candidates"].items():
            scores = value["scores"]
            assert_same_scores(scores, full["scores"][f"{record['id']}/{name}"], record["id"])
        for name in (winner, NEW[winner]):  # what phase 2 decided on: complete
            assert {"ifd", "rifd", "reason"} <= set(record["candidates"][name]["scores"])


def test_lean_selection_runs_far_fewer_passes(flows: dict[str, Any]) -> None:
    """Phase 1 runs the two IFD passes of ori and Q (r-IFD only where IFD is missing, for its
    reason); phase 2 the winner's two r-IFD passes and the new answer's four but the
    instruction-alone pass the winner shares: at most 9 per record, where the full flow runs 12
    (and the reference 16, scoring both A and QA)."""
    full, lean = flows["full"], flows["lean"]
    assert lean["phase1_passes"] <= 2 * 2 * RECORDS
    assert lean["passes"] <= 9 * RECORDS < full["passes"]
