"""Stage ``select_ifd``: merge the student's scores into the candidates and pick ``ori`` or ``Q``.

Input: the records of ``reflect_instruction`` (candidates ``ori`` and ``Q``) and one or more score
files (one per scoring shard; rows ``{"id", "candidate", "scores"}``). Output: the same records,
each candidate with its ``scores`` and each record with ``phase1`` = ``{"winner", "reason"}``.
A record without a score for ``ori`` or ``Q`` is an error: no record is decided on missing data.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtune.components.common.record_schema import (
    Phase1,
    candidate_names,
    candidate_scores,
    teacher_status,
    with_phase1,
    with_scores,
)
from rtune.components.common.records import (
    InputError,
    Record,
    index_by_id,
    iter_jsonl,
    read_jsonl,
    write_jsonl,
)
from rtune.components.select_ifd.rules import ORI, Q, choose_phase1

log = logging.getLogger(__name__)

SCORES_FIX = "score every record of this shard set with `rtune score --candidates ...` first"
DECISIONS = ("ori", "Q", "A", "QA", "dropped")
ScoreIndex = dict[tuple[str, str], dict[str, Any]]


@dataclass
class SelectionSummary:
    """Counts of one selection stage; ``as_dict`` gives numbers for MLflow metrics.

    ``phase1_q_rate``: share of records whose winner is ``Q``. For phase ``rifd`` also
    ``phase2_response_rate`` (share whose reflected response passed the r-IFD rule, before any
    final cut) and ``kept_rate`` (share not dropped). Reasons are counted as ``reason_<slug>``.
    ``unused_score_rows``: score rows that no record's candidate asked for (see
    ``count_unused_scores``).
    """

    phase: str
    records: int = 0
    winners: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    response_kept: int = 0
    unused_score_rows: int = 0

    def as_dict(self) -> dict[str, float]:
        values: dict[str, float] = {"records": float(self.records)}
        values["unused_score_rows"] = float(self.unused_score_rows)
        values["winner_ori"] = float(self.winners[ORI])
        values["winner_Q"] = float(self.winners[Q])
        values["phase1_q_rate"] = self._rate(self.winners[Q])
        if self.phase == "rifd":
            for decision in DECISIONS:
                values[f"decision_{decision}"] = float(self.decisions[decision])
            values["phase2_response_rate"] = self._rate(self.response_kept)
            values["kept_rate"] = self._rate(self.records - self.decisions["dropped"])
        for reason, count in sorted(self.reasons.items()):
            values[f"reason_{slug(reason)}"] = float(count)
        return values

    def line(self) -> str:
        """One human line for the CLI and logs."""
        text = (
            f"{self.records} records; Q won {self.winners[Q]} ({self._rate(self.winners[Q]):.1%})"
        )
        if self.phase == "rifd":
            counts = ", ".join(f"{d} {self.decisions[d]}" for d in DECISIONS)
            text += f"; decisions: {counts}; kept {self._rate(self.records - self.decisions['dropped']):.1%}"
        return text

    def _rate(self, count: int) -> float:
        return count / self.records if self.records else 0.0


def slug(text: str) -> str:
    """``"Q unscorable (truncated)"`` -> ``"q_unscorable_truncated"`` (safe as a metric name)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def load_scores(score_paths: Sequence[Path]) -> ScoreIndex:
    """``(id, candidate) -> scores`` from one or more score files.

    The same candidate in two files is fine when the scores agree (a retried shard) and an error
    when they differ (two runs with different settings mixed up).
    """
    index: ScoreIndex = {}
    for path in score_paths:
        for number, row in enumerate(iter_jsonl(path), start=1):
            key = _row_key(row, str(path), number)
            if key in index and index[key] != row["scores"]:
                raise InputError(
                    str(path),
                    f"candidate {key[1]!r} is scored twice with different results",
                    "give the score files of one scoring run only",
                    record=key[0],
                    field="scores",
                )
            index[key] = row["scores"]
    return index


def attach_scores(record: Record, names: Iterable[str], scores: ScoreIndex, source: str) -> Record:
    """The record with ``candidates[name].scores`` set for each name (all must be scored)."""
    for name in names:
        if name not in candidate_names(record, source):
            raise InputError(
                source,
                f"record has no candidate {name!r}",
                "run the reflection stage that adds it first",
                record=record.get("id"),
                field=f"candidates.{name}",
            )
        key = (record["id"], name)
        if key not in scores:
            raise InputError(
                source,
                f"no score for candidate {name!r}",
                SCORES_FIX,
                record=record["id"],
                field=f"candidates.{name}.scores",
            )
        record = with_scores(record, name, scores[key])
    return record


def count_unused_scores(
    scores: ScoreIndex, used: Iterable[tuple[str, str]], records: Sequence[Record], source: str
) -> int:
    """Score rows no record used, logged as one warning with their count (never dropped in
    silence): ids not in the records mean score files of another run or dataset were mixed in."""
    unused = sorted(set(scores) - set(used))
    if not unused:
        return 0
    known = {record["id"] for record in records}
    strangers = [key for key in unused if key[0] not in known]
    example = (strangers or unused)[0]
    log.warning(
        "%d score rows were ignored: no record in %s has their candidate (ids not in the records: "
        "%d; e.g. id %r candidate %r); check that the score files belong to these records",
        len(unused),
        source,
        len({rid for rid, _ in strangers}),
        example[0],
        example[1],
    )
    return len(unused)


def select_ifd(
    records_path: Path, score_paths: Sequence[Path], output_path: Path
) -> SelectionSummary:
    """Phase 1 over all records: merge scores, set ``phase1`` = ``{"winner", "reason"}``."""
    source = str(records_path)
    scores = load_scores([Path(p) for p in score_paths])
    summary = SelectionSummary(phase="ifd")
    out: list[Record] = []
    records = read_jsonl(records_path)
    index_by_id(records, source)
    for record in records:
        record = attach_scores(record, (ORI, Q), scores, source)
        winner, reason = choose_phase1(
            candidate_scores(record, ORI, source),
            candidate_scores(record, Q, source),
            teacher_status(record, "instruction"),
        )
        out.append(with_phase1(record, Phase1(winner, reason)))
        summary.records += 1
        summary.winners[winner] += 1
        summary.reasons[reason] += 1
    used = [(record["id"], name) for record in records for name in (ORI, Q)]
    summary.unused_score_rows = count_unused_scores(scores, used, records, source)
    write_jsonl(output_path, out)
    return summary


def _row_key(row: Record, source: str, line: int) -> tuple[str, str]:
    rid, name, scores = row.get("id"), row.get("candidate"), row.get("scores")
    if not isinstance(rid, str) or not isinstance(name, str) or not isinstance(scores, dict):
        raise InputError(
            source,
            'expected a score row {"id": str, "candidate": str, "scores": {...}}',
            "give the files written by `rtune score --candidates ...`",
            line=line,
        )
    return rid, name
