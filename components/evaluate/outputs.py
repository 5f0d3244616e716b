"""What the evaluate stage leaves behind: its inputs as MLflow datasets, metrics' tables, the
comparison figure, the results JSON and the HTML report."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rtune.components.evaluate.config import EvaluateConfig
from rtune.components.evaluate.evaluation import Evaluation
from rtune.components.evaluate.judge import HeldoutItem
from rtune.components.evaluate.suite import SuiteItem


def log_inputs(
    run: Any, config: EvaluateConfig, suite: Sequence[SuiteItem], heldout: Sequence[HeldoutItem]
) -> None:
    """The evaluation data as MLflow ``eval`` datasets (source: the file, or the user's s3:// URI)."""
    if suite:
        rows = [{"id": i.id, "category": i.category, "prompt": i.prompt} for i in suite]
        source = _dataset_source(config.suite, "builtin:suite")
        run.log_dataset(rows, source=source, name="eval-suite", context="eval")
    if heldout:
        rows = [{"id": i.id, "instruction": i.instruction, "input": i.input} for i in heldout]
        source = _dataset_source(config.heldout, "builtin:heldout")
        run.log_dataset(rows, source=source, name="eval-heldout", context="eval")


def _dataset_source(spec: str, builtin_example: str) -> str:
    """MLflow resolves file paths and s3:// URIs, not ``builtin:`` names: give it the shipped file."""
    if spec.startswith("builtin:"):
        from rtune.components.evaluate.datafiles import resolve_data_file

        return str(resolve_data_file(spec, builtin_example))
    return spec


def publish(
    run: Any,
    summary: Mapping[str, Any],
    evaluation: Evaluation,
    report_path: Path | None,
    results_path: Path | None,
) -> None:
    """Metrics (MLflow parent + KFP), tables, figure, report page and results JSON."""
    from rtune.components.evaluate.report import figure_comparison, html_page

    run.set_tags(
        {
            "rtune.evaluation": summary["decision"],
            "rtune.champion_version": summary["champion_version"],
        },
        to_parent=True,
    )
    run.log_table(evaluation.suite_rows, "evaluate/suite_items.json")
    run.log_table(evaluation.judge_rows, "evaluate/judge_items.json")
    counts = _judge_counts(evaluation)
    figure = figure_comparison(evaluation.paired, counts, evaluation.finetuned)
    run.log_figure(figure, "figures/evaluation.png")
    results = {
        "summary": dict(summary),
        "suite": evaluation.suite_rows,
        "judge": evaluation.judge_rows,
    }
    run.log_json(results, "evaluate/results.json")
    if results_path is not None:
        Path(results_path).parent.mkdir(parents=True, exist_ok=True)
        Path(results_path).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    if report_path is not None:
        page = html_page(
            "Evaluation: the fine-tuned candidate against the base student",
            str(summary["decision"]),
            summary,
            evaluation.paired,
            counts,
            figure,
            [
                ("suite-items", "Verifiable suite, item by item", evaluation.suite_rows),
                (
                    "judge-items",
                    "Pairwise judge, instruction by instruction",
                    evaluation.judge_rows,
                ),
            ],
            evaluation.finetuned,
        )
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(page, encoding="utf-8")
        run.log_text(page, "reports/evaluate.html")


def _judge_counts(evaluation: Evaluation) -> dict[str, int] | None:
    judge = evaluation.judge
    if judge is None:
        return None
    return {
        "win": judge.wins,
        "tie": judge.ties,
        "loss": judge.losses,
        "unparseable": judge.unparseable,
    }
