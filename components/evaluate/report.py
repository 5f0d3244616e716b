"""Does the fine-tuned model beat the base? The comparison figure and the HTML report.

The report is one self-contained page (inline CSS, the figure as a base64 PNG, no external
assets) for the Kubeflow UI's HTML artifact and MLflow: the verdict on the primary metric, the
judge's wins/ties/losses, the metrics side by side, then every suite item and every judged
instruction with both answers.

When the fine-tuned model before quantization was evaluated too, the side-by-side table has
three columns - base, fine-tuned, fine-tuned + quantized (what is served) - and the two effects
(``training effect`` = fine-tuned - base, ``quantization effect`` = served - fine-tuned), so a
reader sees which step cost or earned the points; a fine-tuned model that could not be served
is named as skipped, with the reason.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from rtune.components.common.reports import figure_png_base64

CANDIDATE_COLOR, BASE_COLOR, FINETUNED_COLOR = "#2b6cb0", "#a0aec0", "#90cdf4"
DRAW = {"judge_win_rate": 0.5, "judge_winning_score": 1.0}  # the base against itself
OUTCOME_COLORS = {"win": "#2f855a", "tie": "#d69e2e", "loss": "#c53030", "unparseable": "#718096"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_comparison(
    paired: Mapping[str, tuple[float, float]],
    judge: Mapping[str, int] | None,
    finetuned: Mapping[str, float] | None = None,
) -> Any:
    """Left: candidate vs base per metric (suite accuracy overall and by category, lm-eval
    metrics), with the fine-tuned model before quantization between them when it was evaluated.
    Right: the judge's wins/ties/losses (and unparseable verdicts) for the candidate."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]}
    )
    names = list(paired)
    positions = range(len(names))
    series = [("base", BASE_COLOR, [paired[name][1] for name in names])]
    if finetuned:
        series.append(("fine-tuned", FINETUNED_COLOR, [finetuned[name] for name in names]))
    label = "fine-tuned + quantized (served)" if finetuned else "candidate (fine-tuned)"
    series.append((label, CANDIDATE_COLOR, [paired[name][0] for name in names]))
    width = 0.8 / len(series)
    for index, (label, color, values) in enumerate(series):
        offset = (index - (len(series) - 1) / 2) * width
        bars = left.bar([p + offset for p in positions], values, width, label=label, color=color)
        left.bar_label(bars, fmt="%.2f", fontsize=8)
    left.set_xticks(list(positions), [n.replace("lm_eval/", "") for n in names], rotation=20)
    left.set_ylim(0, max([1.0, *(v for pair in paired.values() for v in pair)]) * 1.15)
    left.set_ylabel("score (higher is better)")
    left.set_title("Candidate vs base")
    left.legend(loc="upper right", fontsize=8)
    _judge_panel(right, judge)
    figure.tight_layout()
    return figure


def _judge_panel(axis: Any, judge: Mapping[str, int] | None) -> None:
    if not judge:
        axis.set_title("Pairwise judge: not run")
        axis.axis("off")
        return
    kinds = [k for k in ("win", "tie", "loss", "unparseable") if judge.get(k)]
    left = 0
    for kind in kinds:
        axis.barh([0], [judge[kind]], left=left, color=OUTCOME_COLORS[kind], label=kind)
        axis.text(left + judge[kind] / 2, 0, str(judge[kind]), ha="center", va="center")
        left += judge[kind]
    axis.set_yticks([])
    axis.set_xlabel("held-out instructions")
    judged = sum(judge.get(k, 0) for k in ("win", "tie", "loss"))
    rate = (judge.get("win", 0) + 0.5 * judge.get("tie", 0)) / judged if judged else None
    shown = f"win rate {rate:.2f}" if rate is not None else "nothing judged"
    axis.set_title(f"Pairwise judge, both orders: {shown}")
    axis.set_ylim(-1, 1)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4, fontsize=8)


def html_page(
    title: str,
    headline: str,
    summary: Mapping[str, Any],
    paired: Mapping[str, tuple[float, float]],
    judge_counts: Mapping[str, int] | None,
    figure: Any,
    tables: Sequence[tuple[str, str, Sequence[Mapping[str, Any]]]],
    finetuned: Mapping[str, float] | None = None,
) -> str:
    """The report page: verdict, judge counts, metrics side by side (three models when
    ``finetuned`` holds the unquantized model's values), figure, every summary value, then
    ``tables`` = (element id, heading, rows)."""
    if finetuned:
        side_by_side = three_way_rows(summary, paired, finetuned)
    else:
        side_by_side = [
            {"metric": name, "candidate": pair[0], "base": pair[1]} for name, pair in paired.items()
        ]
    details = [{"key": key, "value": value} for key, value in summary.items()]
    image = (
        "<figure><img id='comparison' alt='candidate vs base' "
        f"src='data:image/png;base64,{figure_png_base64(figure)}'>"
        "<figcaption>Candidate vs base per metric; the judge's wins, ties and losses</figcaption>"
        "</figure>"
    )
    sections = [
        _table("side-by-side", "Candidate vs base", side_by_side) if side_by_side else "",
        image,
        *(_table(table_id, heading, rows) for table_id, heading, rows in tables if rows),
        _table("summary", "Every number of the stage", details),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p id='headline' class='headline'>{html.escape(headline)}</p>"
        f"{_judge_line(summary, judge_counts)}{_skip_line(summary)}{''.join(sections)}"
        "</body></html>"
    )


def three_way_rows(
    summary: Mapping[str, Any],
    paired: Mapping[str, tuple[float, float]],
    finetuned: Mapping[str, float],
) -> list[dict[str, Any]]:
    """One row per metric: base, fine-tuned, fine-tuned + quantized and the two effects; the
    judge's rates too (each model against the base, so the base's column is a draw)."""
    rows = []
    for name, (served, base) in paired.items():
        rows.append(_three_way_row(summary, name, base, finetuned[name], served))
    for name, draw in DRAW.items():
        if name in summary and f"{name}_finetuned" in summary:
            tuned = summary[f"{name}_finetuned"]
            rows.append(_three_way_row(summary, f"{name} (vs base)", draw, tuned, summary[name]))
    return rows


def _three_way_row(
    summary: Mapping[str, Any], name: str, base: float, tuned: float, served: float
) -> dict[str, Any]:
    key = name.removesuffix(" (vs base)")
    return {
        "metric": name,
        "base": base,
        "fine-tuned": tuned,
        "fine-tuned + quantized (served)": served,
        "training effect": summary.get(f"{key}_training_effect"),
        "quantization effect": summary.get(f"{key}_quantization_effect"),
    }


def _skip_line(summary: Mapping[str, Any]) -> str:
    reason = summary.get("finetuned_skipped")
    if not reason:
        return ""
    return (
        "<p id='finetuned-skipped'>Fine-tuned model before quantization: not evaluated "
        f"({html.escape(str(reason))}), so training and quantization effects are not "
        "separated</p>"
    )


def _judge_line(summary: Mapping[str, Any], counts: Mapping[str, int] | None) -> str:
    if counts is None:
        return "<p class='wtl'>Pairwise judge: not run</p>"
    spans = "".join(
        f"<span class='{kind}'>{label}: <b id='judge-{label}'>{counts.get(kind, 0)}</b></span>"
        for kind, label in (
            ("win", "wins"),
            ("tie", "ties"),
            ("loss", "losses"),
            ("unparseable", "unparseable"),
        )
    )
    rates = "".join(
        f"<span>{label}: <b id='{key.replace('_', '-')}'>{_fmt(summary[key])}</b></span>"
        for key, label in (("judge_win_rate", "win rate"), ("judge_winning_score", "winning score"))
        if key in summary
    )
    return f"<p class='wtl'>Pairwise judge, candidate vs base: {spans}{rates}</p>"


def _table(table_id: str, heading: str, rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return (
        f"<h2>{html.escape(heading)}</h2>"
        f"<table id='{table_id}' class='records'><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


CSS = (
    "body{font-family:system-ui,sans-serif;margin:24px;color:#1a202c}"
    ".headline{font-size:18px;font-weight:600}.wtl span{margin-right:16px;font-size:16px}"
    ".wtl span{margin-left:12px}.wtl .win b{color:#2f855a}.wtl .tie b{color:#b7791f}.wtl .loss b{color:#c53030}"
    "table{border-collapse:collapse;margin:12px 0}th,td{border:1px solid #cbd5e0;padding:4px 8px;"
    "text-align:left;vertical-align:top;max-width:420px;white-space:pre-wrap}"
    "table.records td{font-size:12px}table.records th{font-size:13px}figure{margin:0}img{max-width:100%}"
)
