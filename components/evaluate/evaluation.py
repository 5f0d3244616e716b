"""From answers and verdicts to the evaluation's numbers, tables and decision (no I/O here).

Metric names: ``<metric>_candidate`` / ``<metric>_base`` for what both models are scored on
(``suite_accuracy``, ``suite_accuracy_<category>``, ``lm_eval/<task>/<metric>``), ``judge_*``
for the pairwise comparison (wins, ties, losses, unparseable, items, win_rate, winning_score).

The decision on ``primary_metric``: the candidate beats the base when its value exceeds the
reference by more than ``min_improvement``; the reference is the base's value, or for the judge
the value of a draw (win rate 0.5, winning score 1). A metric that could not be computed (every
verdict unparseable, no suite item) is no evidence: the candidate does not beat the base.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtune.components.common.checkpoint import fingerprint
from rtune.components.evaluate.answers import Question, answer_key, user_turn
from rtune.components.evaluate.config import JUDGE_METRICS, EvaluateConfig
from rtune.components.evaluate.judge import (
    HeldoutItem,
    JudgeSummary,
    judge_rows,
    question_text,
    summarize,
)
from rtune.components.evaluate.suite import (
    CATEGORIES,
    SuiteItem,
    Verdict,
    check_answer,
    score_suite,
    scored_text,
    suite_rows,
)

ROLES = ("candidate", "base")
DRAW = {"judge_win_rate": 0.5, "judge_winning_score": 1.0}


def questions(
    suite: Sequence[SuiteItem], heldout: Sequence[HeldoutItem], role: str, identity: str
) -> list[Question]:
    """Every question one model is asked. A key carries a digest of the model's identity and
    the exact messages, so a changed prompt or model is asked again, never served stale."""
    asked = [("suite", item.id, user_turn(item.prompt)) for item in suite]
    asked += [("heldout", item.id, user_turn(question_text(item))) for item in heldout]
    return [
        Question(
            f"{answer_key(role, kind, item_id)}#{fingerprint(identity, messages)[:12]}", messages
        )
        for kind, item_id, messages in asked
    ]


def answer_texts(
    asked: Sequence[Question], done: Mapping[str, Any], reasoning_format: str
) -> dict[str, dict[str, str]]:
    """kind -> item id -> the scored text of the answer (the ``<output>`` part under the
    reflection format)."""
    texts: dict[str, dict[str, str]] = {"suite": {}, "heldout": {}}
    for question in asked:
        _, kind, item_id = question.key.split("#", 1)[0].split("/", 2)
        texts[kind][item_id] = scored_text(done[question.key]["content"], reasoning_format)
    return texts


def mean_latency(asked: Sequence[Question], done: Mapping[str, Any]) -> float:
    values = [done[q.key]["latency_s"] for q in asked]
    return sum(values) / len(values) if values else math.nan


@dataclass
class Evaluation:
    metrics: dict[str, float]
    suite_rows: list[dict[str, Any]]
    judge_rows: list[dict[str, Any]]
    judge: JudgeSummary | None
    paired: dict[str, tuple[float, float]]  # metric -> (candidate, base), for the figure


def assemble(
    suite: Sequence[SuiteItem],
    heldout: Sequence[HeldoutItem],
    texts: Mapping[str, Mapping[str, Mapping[str, str]]],
    verdicts: Mapping[str, Mapping[str, Any]],
    lm_eval: Mapping[str, Mapping[str, float]],
    judge: str = "",
) -> Evaluation:
    """``texts``: role -> kind -> item id -> scored answer; ``verdicts``: judge key -> verdict
    (``judge`` = the judge's identity in those keys); ``lm_eval``: role -> lm-eval metrics."""
    metrics: dict[str, float] = {}
    paired: dict[str, tuple[float, float]] = {}
    rows: list[dict[str, Any]] = []
    if suite:
        rows, suite_pairs = _suite_part(suite, texts, metrics)
        paired.update(suite_pairs)
    for name in sorted(set(lm_eval.get("candidate", {})) | set(lm_eval.get("base", {}))):
        pair = tuple(lm_eval.get(role, {}).get(name, math.nan) for role in ROLES)
        metrics.update({f"{name}_{role}": value for role, value in zip(ROLES, pair, strict=True)})
        paired[name] = (pair[0], pair[1])
    judged: list[dict[str, Any]] = []
    summary = None
    if heldout:
        candidate, base = (texts[role]["heldout"] for role in ROLES)
        judged, outcomes = judge_rows(heldout, candidate, base, verdicts, judge)
        summary = summarize(outcomes)
        metrics.update(summary.metrics())
    return Evaluation(metrics, rows, judged, summary, paired)


def _suite_part(
    suite: Sequence[SuiteItem],
    texts: Mapping[str, Mapping[str, Mapping[str, str]]],
    metrics: dict[str, float],
) -> tuple[list[dict[str, Any]], dict[str, tuple[float, float]]]:
    verdicts: dict[str, dict[str, Verdict]] = {}
    scores = {}
    for role in ROLES:
        given = texts[role]["suite"]
        verdicts[role] = {item.id: check_answer(item, given[item.id]) for item in suite}
        scores[role] = score_suite(suite, verdicts[role])
    paired = {"suite_accuracy": (scores["candidate"].accuracy, scores["base"].accuracy)}
    for category in CATEGORIES:
        if category in scores["candidate"].by_category:
            paired[f"suite_accuracy_{category}"] = (
                scores["candidate"].category_accuracy(category),
                scores["base"].category_accuracy(category),
            )
    for name, (candidate, base) in paired.items():
        metrics[f"{name}_candidate"], metrics[f"{name}_base"] = candidate, base
    metrics["suite_items"] = len(suite)
    answers = {role: texts[role]["suite"] for role in ROLES}
    return suite_rows(suite, answers, verdicts), paired


@dataclass(frozen=True)
class Decision:
    metric: str
    candidate: float
    reference: float
    beats: bool
    note: str


def decide(config: EvaluateConfig, metrics: Mapping[str, float]) -> Decision:
    """Does the candidate beat the base on ``config.primary_metric``? (see the module doc)"""
    metric = config.primary_metric
    if metric in JUDGE_METRICS:
        value, reference = metrics.get(metric, math.nan), DRAW[metric]
    else:
        value = metrics.get(f"{metric}_candidate", math.nan)
        reference = metrics.get(f"{metric}_base", math.nan)
    if math.isnan(value) or math.isnan(reference):
        return Decision(metric, value, reference, False, f"{metric} could not be computed")
    beats = value > reference + config.min_improvement
    relation = "beats" if beats else "does not beat"
    margin = f" by more than {config.min_improvement:g}" if config.min_improvement else ""
    return Decision(
        metric,
        value,
        reference,
        beats,
        f"candidate {relation} base{margin} on {metric}: {value:.4g} vs {reference:.4g}",
    )
