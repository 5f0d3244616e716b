"""Phase-1 selection as a pipeline task: merge shard scores, pick ori or Q, report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtune.components.common import reports
from rtune.components.common.record_schema import (
    candidate_names,
    candidate_scores,
    latest_decision,
)
from rtune.components.common.records import Record, read_jsonl
from rtune.components.common.stage import StageContext
from rtune.components.select_ifd.stage import SelectionSummary

SCORE_COLUMNS = ("ifd", "rifd", "ifd_loss", "rifd_loss", "reason")


def score_rows(records: Sequence[Record], source: str = "records") -> list[dict[str, Any]]:
    """One row per scored candidate: id, candidate, scores, and the record's decision/reason so far."""
    rows = []
    for record in records:
        decision, reason = latest_decision(record)
        for name in candidate_names(record, source):
            scores = candidate_scores(record, name, source)
            if scores is None:
                continue
            rows.append(
                {
                    "id": record["id"],
                    "candidate": name,
                    **{c: scores.get(c) for c in SCORE_COLUMNS},
                    "decision": decision,
                    "reason": reason,
                }
            )
    return rows


@dataclass
class SelectIfdStage:
    """Phase-1 candidates and their shard scores in; records with the phase-1 winner out."""

    candidates: Path
    scores: Sequence[Path]
    selected: Path
    report: Path | None = None
    name: str = "select_ifd"
    config: dict[str, str] = field(default_factory=lambda: {"rule": "IFD(Q) > IFD(ori) -> Q"})

    def run(self, context: StageContext) -> SelectionSummary:
        from rtune.components.select_ifd.stage import select_ifd

        summary = select_ifd(
            Path(self.candidates), [Path(p) for p in self.scores], Path(self.selected)
        )
        records = read_jsonl(self.selected)
        rows = score_rows(records, str(self.selected))
        context.run.log_table(rows, "scores/select_ifd.json")
        figure = reports.figure_ifd_ori_vs_q(records)
        context.run.log_figure(figure, "figures/ifd_ori_vs_q.png")
        if self.report is not None:
            page = reports.html_report(
                "select_ifd: does reflection make instructions harder?",
                summary.as_dict(),
                {"IFD(ori) vs IFD(Q)": figure},
                rows[:200],
                "Scores (first 200)",
            )
            Path(self.report).write_text(page, encoding="utf-8")
            context.run.log_text(page, "reports/select_ifd.html")
        return summary
