"""Stage ``select_rifd``: decide every record (phase-2 rule, then the optional final cut).

Input: the records of ``reflect_response`` (they carry ``phase1`` and the scored ``ori``/``Q``
from ``select_ifd``, plus the new candidate ``A`` or ``QA``) and the phase-2 score files: the new
candidates' and the phase-1 winners' completed scores (their r-IFD, which phase 1 leaves out). Output: all records, each with ``decision`` (ori | Q | A | QA | dropped), ``reason``
and ``phase2`` (the rule's own decision before the cut); and the selected training set, flat
``{"id", "instruction", "input", "output", "candidate", "ifd", "rifd"}`` rows of every record
not dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtune.components.common.record_schema import (
    DROPPED,
    NEW_CANDIDATE,
    Decision,
    candidate,
    candidate_scores,
    decision_of,
    phase1_winner,
    phase2_of,
    teacher_status,
    with_decision,
    with_scores,
)
from rtune.components.common.records import InputError, Record, index_by_id, read_jsonl, write_jsonl
from rtune.components.select_ifd.rules import ifd_of, rifd_of
from rtune.components.select_ifd.stage import (
    SelectionSummary,
    attach_scores,
    count_unused_scores,
    load_scores,
)
from rtune.components.select_rifd.rules import (
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
    decided = apply_final_cut(decided, config, source)
    used = [
        (r["id"], name)
        for r in decided
        for name in (phase1_winner(r, source), NEW_CANDIDATE[phase1_winner(r, source)])
        if (r["id"], name) in scores
    ]
    write_jsonl(output_path, decided)
    kept = (r for r in decided if decision_of(r, source).decision != DROPPED)
    write_jsonl(selected_path, (training_row(r, source) for r in kept))
    summary = _summarise(decided, source)
    summary.unused_score_rows = count_unused_scores(scores, used, records, source)
    return summary


def decide_record(record: Record, scores: Any, policy: str, source: str) -> Record:
    """The record with the new candidate's scores, ``phase2`` and ``decision``/``reason``.

    Phase-2 scoring also completes the winner's scores (phase 1 computed its IFD only): when
    the score files hold a row for the winner, it replaces the phase-1 scores; files written
    before that, whose phase-1 scores were complete, have none and the phase-1 scores stay.
    """
    winner = phase1_winner(record, source, PHASE1_FIX)
    new = NEW_CANDIDATE[winner]
    record = attach_scores(record, (new,), scores, source)
    if (record["id"], winner) in scores:
        record = with_scores(record, winner, scores[(record["id"], winner)])
    old_scores = candidate_scores(record, winner, source)
    if old_scores is None:
        raise InputError(
            source,
            f"phase-1 winner {winner!r} has no scores",
            PHASE1_FIX,
            record=record["id"],
            field=f"candidates.{winner}.scores",
        )
    new_scores = candidate_scores(record, new, source)
    status = teacher_status(record, "response")
    outcome = Decision(*decide_phase2(winner, old_scores, new_scores, policy, status))
    return with_decision(record, outcome, phase2=outcome)


def apply_final_cut(records: list[Record], config: SelectionConfig, source: str) -> list[Record]:
    """The records with the optional Cherry-style cut applied to the kept ones (``phase2`` stays
    as the rule decided, for review)."""
    kept_ifd: dict[str, float | None] = {}
    for record in records:
        name = decision_of(record, source).decision
        if name != DROPPED:
            kept_ifd[record["id"]] = ifd_of(candidate_scores(record, name, source))
    cuts = apply_cherry_cut(kept_ifd, config.drop_ifd_above, config.keep_top)
    return [
        with_decision(r, Decision(DROPPED, cuts[r["id"]])) if r["id"] in cuts else r
        for r in records
    ]


def training_row(record: Record, source: str = "records") -> Record:
    """The flat training record of a kept record: its decided candidate's texts and scores."""
    name = decision_of(record, source).decision
    chosen = candidate(record, name, source)
    return {
        "id": record["id"],
        "instruction": chosen.instruction,
        "input": chosen.input,
        "output": chosen.output,
        "candidate": name,
        "ifd": ifd_of(chosen.scores),
        "rifd": rifd_of(chosen.scores),
    }


def _summarise(records: Sequence[Record], source: str) -> SelectionSummary:
    summary = SelectionSummary(phase="rifd", records=len(records))
    for record in records:
        final = decision_of(record, source)
        summary.winners[phase1_winner(record, source)] += 1
        summary.decisions[final.decision] += 1
        summary.reasons[final.reason] += 1
        summary.response_kept += phase2_of(record, source).reason == RESPONSE_KEPT
    return summary
