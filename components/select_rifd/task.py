"""Phase-2 selection as a pipeline task: r-IFD rule, final cut, selected dataset, report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rtune.components.common import reports
from rtune.components.common.config import from_dict
from rtune.components.common.records import read_jsonl
from rtune.components.common.stage import MetricsSink, publish_metrics, tracked_stage
from rtune.components.select_ifd.task import score_rows
from rtune.components.select_rifd.rules import SelectionConfig


def run_select_rifd(
    records_path: Path,
    score_paths: Sequence[Path],
    selection: Mapping[str, Any] | None,
    tracking: Mapping[str, Any] | None,
    kfp_run_id: str,
    decisions_path: Path,
    selected_path: Path,
    report_path: Path | None = None,
    metrics: MetricsSink | None = None,
    last_stage: bool = True,
) -> dict[str, float]:
    from rtune.components.select_rifd.stage import select_rifd

    config = from_dict(SelectionConfig, selection, "selection")
    with tracked_stage("select_rifd", kfp_run_id, tracking, config) as run:
        summary = select_rifd(
            Path(records_path),
            [Path(p) for p in score_paths],
            Path(decisions_path),
            Path(selected_path),
            config,
        )
        records, selected = read_jsonl(decisions_path), read_jsonl(selected_path)
        run.log_dataset(selected, source=str(selected_path), name="selected", context="selected")
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
        values = summary.as_dict()
        publish_metrics(run, metrics, values, to_parent=True)
        if report_path is not None:
            page = reports.html_report(
                "Selective Reflection-Tuning: what the student kept",
                values,
                figures,
                rows[:300],
                "Per-record scores and decisions (first 300)",
            )
            Path(report_path).write_text(page, encoding="utf-8")
            run.log_text(page, "reports/selection.html")
        if last_stage:
            run.finish_pipeline()
    return values
