"""Figures and HTML reports that answer the run's questions at a glance.

- Does reflection make instructions harder? IFD(ori) vs IFD(Q), one point per seed record.
- Do reflected responses fit their instruction better? r-IFD of old vs new response.
- How many records did each rule keep? Decision and reason counts.

Figures go to MLflow (``log_figure``) and, embedded as PNG, into an HTML report that the Kubeflow
UI shows as the stage's HTML artifact.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rtune.components.common.record_schema import NEW_CANDIDATE, candidate_scores, phase1_winner
from rtune.components.common.records import Record


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _score(record: Record, candidate: str, field: str) -> float | None:
    value = (candidate_scores(record, candidate, "records") or {}).get(field)
    return float(value) if isinstance(value, int | float) else None


def figure_ifd_ori_vs_q(records: Sequence[Record]) -> Any:
    """Scatter IFD(ori) vs IFD(Q): points above the diagonal are instructions reflection made harder."""
    plt = _pyplot()
    pairs = [(_score(r, "ori", "ifd"), _score(r, "Q", "ifd")) for r in records]
    points = [(a, b) for a, b in pairs if a is not None and b is not None]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if points:
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, s=18, alpha=0.7, color="#2b6cb0")
        high = max(max(xs), max(ys), 1.0) * 1.05
        ax.plot([0, high], [0, high], "--", color="#888", linewidth=1)
        ax.set_xlim(0, high)
        ax.set_ylim(0, high)
        above = sum(1 for x, y in points if y > x)
        ax.set_title(
            f"IFD original vs reflected instruction\n{above}/{len(points)} harder after reflection"
        )
    else:
        ax.set_title("IFD original vs reflected instruction (no scored pairs)")
    ax.set_xlabel("IFD(ori)")
    ax.set_ylabel("IFD(Q)")
    fig.tight_layout()
    return fig


def figure_rifd_old_vs_new(records: Sequence[Record]) -> Any:
    """Histograms of r-IFD for the phase-1 winner's response and the reflected response."""
    plt = _pyplot()
    old, new = [], []
    for record in records:
        winner = phase1_winner(record, "records")
        old_value, new_value = (
            _score(record, winner, "rifd"),
            _score(record, NEW_CANDIDATE[winner], "rifd"),
        )
        if old_value is not None:
            old.append(old_value)
        if new_value is not None:
            new.append(new_value)
    fig, ax = plt.subplots(figsize=(6, 4))
    if old or new:
        ax.hist(
            [old, new],
            bins=20,
            label=["winner's response", "reflected response"],
            color=["#a0aec0", "#dd6b20"],
        )
        ax.axvline(1.0, color="#c53030", linestyle="--", linewidth=1, label="r-IFD = 1")
        ax.legend()
    ax.set_xlabel("r-IFD (lower: the response points to its instruction better)")
    ax.set_ylabel("records")
    ax.set_title("Reversed IFD before and after response reflection")
    fig.tight_layout()
    return fig


def figure_decisions(records: Iterable[Record]) -> Any:
    """Bar chart: how many seed records ended as ori, Q, A, QA or dropped."""
    plt = _pyplot()
    counts = Counter(str(r.get("decision", "undecided")) for r in records)
    order = [d for d in ("ori", "Q", "A", "QA", "dropped") if d in counts] + sorted(
        d for d in counts if d not in {"ori", "Q", "A", "QA", "dropped"}
    )
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(
        order,
        [counts[d] for d in order],
        color=["#c53030" if d == "dropped" else "#2f855a" for d in order],
    )
    ax.bar_label(bars)
    ax.set_ylabel("records")
    ax.set_title("Final decision per seed record")
    fig.tight_layout()
    return fig


def figure_training_loss(history: Sequence[Mapping[str, Any]]) -> Any:
    """Training loss (and learning rate) per optimizer step: did the student learn?"""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.6))
    steps = [entry["step"] for entry in history]
    axis.plot(steps, [entry["loss"] for entry in history], marker="o", color="#1f77b4")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss (response tokens)")
    rates = [entry.get("lr") for entry in history]
    if any(rate is not None for rate in rates):
        twin = axis.twinx()
        twin.plot(steps, [r or 0.0 for r in rates], color="#ff7f0e", alpha=0.6, linestyle="--")
        twin.set_ylabel("learning rate", color="#ff7f0e")
    axis.set_title("Fine-tuning loss")
    figure.tight_layout()
    return figure


def figure_png_base64(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return base64.b64encode(buffer.getvalue()).decode()


def html_report(
    title: str,
    summary: Mapping[str, Any],
    figures: Mapping[str, Any],
    table: Sequence[Mapping[str, Any]] = (),
    table_title: str = "Records",
) -> str:
    """A self-contained HTML page (inline PNGs, no external assets) for the Kubeflow UI."""
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in summary.items()
    )
    images = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{figure_png_base64(fig)}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, fig in figures.items()
    )
    detail = _html_table(table, table_title) if table else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table class='summary'>{rows}</table>"
        f"<div class='figures'>{images}</div>{detail}</body></html>"
    )


def _html_table(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    columns = list(rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<h2>{html.escape(title)}</h2><table class='records'><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:24px;color:#1a202c}"
    "table{border-collapse:collapse;margin:12px 0}th,td{border:1px solid #cbd5e0;padding:4px 8px;"
    "text-align:left;vertical-align:top;max-width:420px}"
    "table.records td{font-size:12px}.figures{display:flex;flex-wrap:wrap;gap:16px}"
    "figure{margin:0}img{max-width:560px}"
)
