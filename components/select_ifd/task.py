"""Phase-1 selection as a pipeline task: merge shard scores, pick ori or Q, report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rtune.components.common import reports
from rtune.components.common.records import Record, read_jsonl
from rtune.components.common.stage import MetricsSink, publish_metrics, tracked_stage

SCORE_COLUMNS = ("ifd", "rifd", "ifd_loss", "rifd_loss", "reason")


def score_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per scored candidate: id, candidate, scores, and the record's decision/reason so far."""
    rows = []
    for record in records:
        decision = record.get("decision", record.get("phase1", {}).get("winner"))
        reason = record.get("reason", record.get("phase1", {}).get("reason"))
        for name, candidate in record.get("candidates", {}).items():
            scores = candidate.get("scores")
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


def run_select_ifd(
    candidates_path: Path,
    score_paths: Sequence[Path],
    tracking: Mapping[str, Any] | None,
    kfp_run_id: str,
    output_path: Path,
    report_path: Path | None = None,
    metrics: MetricsSink | None = None,
) -> dict[str, float]:
    from rtune.components.select_ifd.stage import select_ifd

    with tracked_stage(
        "select_ifd", kfp_run_id, tracking, {"rule": "IFD(Q) > IFD(ori) -> Q"}
    ) as run:
        summary = select_ifd(
            Path(candidates_path), [Path(p) for p in score_paths], Path(output_path)
        )
        records = read_jsonl(output_path)
        rows = score_rows(records)
        run.log_table(rows, "scores/select_ifd.json")
        figure = reports.figure_ifd_ori_vs_q(records)
        run.log_figure(figure, "figures/ifd_ori_vs_q.png")
        values = summary.as_dict()
        publish_metrics(run, metrics, values)
        if report_path is not None:
            page = reports.html_report(
                "select_ifd: does reflection make instructions harder?",
                values,
                {"IFD(ori) vs IFD(Q)": figure},
                rows[:200],
                "Scores (first 200)",
            )
            Path(report_path).write_text(page, encoding="utf-8")
            run.log_text(page, "reports/select_ifd.html")
    return values
