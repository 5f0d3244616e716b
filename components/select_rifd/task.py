"""Phase-2 selection as a pipeline task: r-IFD rule, final cut, selected dataset, report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtune.components.common import reports
from rtune.components.common.config import from_dict
from rtune.components.common.records import read_jsonl
from rtune.components.common.stage import StageContext
from rtune.components.select_ifd.stage import SelectionSummary
from rtune.components.select_ifd.task import score_rows
from rtune.components.select_rifd.rules import SelectionConfig


@dataclass
class SelectRifdStage:
    """Phase-2 candidates and their scores in; every record decided + the training set out."""

    config: SelectionConfig
    candidates: Path
    scores: Sequence[Path]
    decisions: Path
    selected: Path
    report: Path | None = None
    name: str = "select_rifd"

    @classmethod
    def from_parameters(
        cls,
        selection: Mapping[str, Any] | None,
        candidates: Path,
        scores: Sequence[Path],
        decisions: Path,
        selected: Path,
        report: Path | None = None,
    ) -> SelectRifdStage:
        config = from_dict(SelectionConfig, selection, "selection")
        return cls(config, candidates, scores, decisions, selected, report)

    def run(self, context: StageContext) -> SelectionSummary:
        from rtune.components.select_rifd.stage import select_rifd

        summary = select_rifd(
            Path(self.candidates),
            [Path(p) for p in self.scores],
            Path(self.decisions),
            Path(self.selected),
            self.config,
        )
        records, selected = read_jsonl(self.decisions), read_jsonl(self.selected)
        run = context.run
        run.log_dataset(selected, source=str(self.selected), name="selected", context="selected")
        rows = score_rows(records)
        run.log_table(rows, "scores/select_rifd.json")
        figures = {
            "r-IFD before/after response reflection": reports.figure_rifd_old_vs_new(records),
            "decisions": reports.figure_decisions(records),
        }
        run.log_figure(
            figures["r-IFD before/after response reflection"], "figures/rifd_old_vs_new.png"
        )
        run.log_figure(figures["decisions"], "figures/decisions.png")
        if self.report is not None:
            page = reports.html_report(
                "Selective Reflection-Tuning: what the student kept",
                summary.as_dict(),
                figures,
                rows[:300],
                "Per-record scores and decisions (first 300)",
            )
            Path(self.report).write_text(page, encoding="utf-8")
            run.log_text(page, "reports/selection.html")
        return summary
