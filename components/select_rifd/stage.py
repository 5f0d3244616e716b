"""Stage ``select_rifd``: decide every record (phase-2 rule, then the optional final cut).

Input: the records of ``reflect_response`` (they carry ``phase1`` and the scored ``ori``/``Q``
from ``select_ifd``, plus the new candidate ``A`` or ``QA``) and the score files of the new
candidates. Output: all records, each with ``decision`` (ori | Q | A | QA | dropped), ``reason``
and ``phase2`` (the rule's own decision before the cut); and the selected training set, flat
``{"id", "instruction", "input", "output", "candidate", "ifd", "rifd"}`` rows of every record
not dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtune.components.common.records import InputError, Record, index_by_id, read_jsonl, write_jsonl
from rtune.components.select_ifd.rules import ifd_of, rifd_of
from rtune.components.select_ifd.stage import (
    SelectionSummary,
    attach_scores,
    count_unused_scores,
    load_scores,
    teacher_status,
)
from rtune.components.select_rifd.rules import (
    DROPPED,
    NEW_CANDIDATE,
    RESPONSE_KEPT,
    SelectionConfig,
    apply_cherry_cut,
    decide_phase2,
)

PHASE1_FIX = "run phase-1 selection (`rtune select --phase ifd`) and the response reflection first"


def select_rifd(
    records_path: Path,
    score_paths: Sequence[Path],
    output_path: Path,
    selected_path: Path,
    config: SelectionConfig,
) -> SelectionSummary:
    """Phase 2 over all records; writes every record (decided) and the selected training set."""
    source = str(records_path)
    scores = load_scores([Path(p) for p in score_paths])
    records = read_jsonl(records_path)
    index_by_id(records, source)
    decided = [decide_record(record, scores, config.policy, source) for record in records]
    kept_ifd = {
        r["id"]: ifd_of(r["candidates"][r["decision"]].get("scores"))
        for r in decided
        if r["decision"] != DROPPED
    }
    cuts = apply_cherry_cut(kept_ifd, config.drop_ifd_above, config.keep_top)
    for record in decided:
        if record["id"] in cuts:
            record["decision"], record["reason"] = DROPPED, cuts[record["id"]]
    used = [(r["id"], NEW_CANDIDATE[r["phase1"]["winner"]]) for r in decided]
    write_jsonl(output_path, decided)
    write_jsonl(selected_path, (training_row(r) for r in decided if r["decision"] != DROPPED))
    summary = _summarise(decided)
    summary.unused_score_rows = count_unused_scores(scores, used, records, source)
    return summary


def decide_record(record: Record, scores: Any, policy: str, source: str) -> Record:
    """The record with the new candidate's scores, ``phase2`` and ``decision``/``reason``."""
    winner = _phase1_winner(record, source)
    new = NEW_CANDIDATE[winner]
    record = attach_scores(record, (new,), scores, source)
    candidates = record["candidates"]
    old_scores = candidates.get(winner, {}).get("scores")
    if old_scores is None:
        raise InputError(
            source,
            f"phase-1 winner {winner!r} has no scores",
            PHASE1_FIX,
            record=record["id"],
            field=f"candidates.{winner}.scores",
        )
    decision, reason = decide_phase2(
        winner, old_scores, candidates[new]["scores"], policy, teacher_status(record, "response")
    )
    phase2 = {"decision": decision, "reason": reason}
    return {**record, "phase2": phase2, "decision": decision, "reason": reason}


def training_row(record: Record) -> Record:
    """The flat training record of a kept record: its decided candidate's texts and scores."""
    name = record["decision"]
    candidate = record["candidates"][name]
    scores = candidate.get("scores")
    return {
        "id": record["id"],
        "instruction": candidate["instruction"],
        "input": candidate.get("input") or "",
        "output": candidate["output"],
        "candidate": name,
        "ifd": ifd_of(scores),
        "rifd": rifd_of(scores),
    }


def _phase1_winner(record: Record, source: str) -> str:
    winner = (record.get("phase1") or {}).get("winner")
    if winner not in NEW_CANDIDATE:
        raise InputError(
            source,
            f"phase1.winner is {winner!r}, expected 'ori' or 'Q'",
            PHASE1_FIX,
            record=record.get("id"),
            field="phase1.winner",
        )
    return str(winner)


def _summarise(records: Sequence[Record]) -> SelectionSummary:
    summary = SelectionSummary(phase="rifd", records=len(records))
    for record in records:
        summary.winners[record["phase1"]["winner"]] += 1
        summary.decisions[record["decision"]] += 1
        summary.reasons[record["reason"]] += 1
        summary.response_kept += record["phase2"]["reason"] == RESPONSE_KEPT
    return summary
