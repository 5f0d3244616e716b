"""From answers and verdicts to the evaluation's numbers, tables and decision (no I/O here).

Metric names: ``<metric>_candidate`` / ``<metric>_base`` for what both models are scored on
(``suite_accuracy``, ``suite_accuracy_<category>``, ``lm_eval/<task>/<metric>``), ``judge_*``
for the pairwise comparison (wins, ties, losses, unparseable, items, win_rate, winning_score).

The candidate is the model that ships: fine-tuned, then quantized. When the fine-tuned model
before quantization is evaluated too (role ``finetuned``, same items, same prompts), its values
are ``<metric>_finetuned`` (``judge_*_finetuned``: the judge on fine-tuned vs base) and the two
effects read apart: ``<metric>_training_effect`` = finetuned - base (for the judge's rates:
finetuned - a draw) and ``<metric>_quantization_effect`` = candidate - finetuned.

The decision on ``primary_metric``: the candidate beats the base when its value exceeds the
reference by more than ``min_improvement``; the reference is the base's value, or for the judge
the value of a draw (win rate 0.5, winning score 1). A metric that could not be computed (every
verdict unparseable, no suite item) is no evidence: the candidate does not beat the base.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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

ROLES = ("candidate", "base")  # the pair the decision and the judge's main verdicts are about
FINETUNED = "finetuned"  # the fine-tuned model before quantization, when it is evaluated too
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
    finetuned: dict[str, float] = field(default_factory=dict)  # metric -> fine-tuned's value


def assemble(
    suite: Sequence[SuiteItem],
    heldout: Sequence[HeldoutItem],
    texts: Mapping[str, Mapping[str, Mapping[str, str]]],
    verdicts: Mapping[str, Mapping[str, Any]],
    lm_eval: Mapping[str, Mapping[str, float]],
    judge: str = "",
) -> Evaluation:
    """``texts``: role -> kind -> item id -> scored answer (roles ``candidate``, ``base`` and,
    when it was evaluated, ``finetuned``); ``verdicts``: judge key -> verdict (``judge`` = the
    judge's identity in those keys); ``lm_eval``: role -> lm-eval metrics."""
    roles = [role for role in (ROLES[0], FINETUNED, ROLES[1]) if role in texts]
    metrics: dict[str, float] = {}
    paired: dict[str, tuple[float, float]] = {}
    rows: list[dict[str, Any]] = []
    if suite:
        rows = _suite_part(suite, texts, roles, metrics)
    names = sorted(set().union(*(lm_eval.get(role, {}) for role in roles)))
    for name in names:
        for role in roles:
            metrics[f"{name}_{role}"] = lm_eval.get(role, {}).get(name, math.nan)
    for name in [*_suite_names(metrics), *names]:
        paired[name] = (metrics[f"{name}_candidate"], metrics[f"{name}_base"])
    judged: list[dict[str, Any]] = []
    summary = None
    if heldout:
        candidate, base = (texts[role]["heldout"] for role in ROLES)
        judged, outcomes = judge_rows(heldout, candidate, base, verdicts, judge)
        summary = summarize(outcomes)
        metrics.update(summary.metrics())
        if FINETUNED in texts:
            _judge_finetuned(heldout, texts, verdicts, judge, judged, metrics)
    finetuned = {}
    if FINETUNED in texts:
        finetuned = {name: metrics[f"{name}_finetuned"] for name in paired}
        metrics.update(effects(metrics, [*paired, *JUDGE_METRICS]))
    return Evaluation(metrics, rows, judged, summary, paired, finetuned)


def effects(metrics: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """``<name>_training_effect`` (fine-tuned - base) and ``<name>_quantization_effect``
    (served - fine-tuned) for each metric the three models were scored on. The judge compares
    each model with the base, so a rate's training effect is measured from a draw."""
    values: dict[str, float] = {}
    for name in names:
        keys = [f"{name}_{role}" for role in ("candidate", FINETUNED, "base")]
        if name in JUDGE_METRICS:
            keys = [name, f"{name}_finetuned"]
        served, tuned, *rest = (metrics.get(key) for key in keys)
        base = DRAW[name] if name in JUDGE_METRICS else rest[0]
        if served is None or tuned is None or base is None:
            continue  # not computed (no judged item): no effect either, never a made-up one
        values[f"{name}_training_effect"] = tuned - base
        values[f"{name}_quantization_effect"] = served - tuned
    return values


def _judge_finetuned(
    heldout: Sequence[HeldoutItem],
    texts: Mapping[str, Mapping[str, Mapping[str, str]]],
    verdicts: Mapping[str, Mapping[str, Any]],
    judge: str,
    rows: list[dict[str, Any]],
    metrics: dict[str, float],
) -> None:
    """The judge on fine-tuned vs base, the same items: ``judge_*_finetuned`` and per row the
    fine-tuned answer and its outcome against the base."""
    tuned, base = texts[FINETUNED]["heldout"], texts["base"]["heldout"]
    tuned_rows, outcomes = judge_rows(heldout, tuned, base, verdicts, judge)
    for row, tuned_row in zip(rows, tuned_rows, strict=True):
        row["finetuned_answer"] = tuned_row["candidate_answer"]
        row["finetuned_scores_finetuned_first"] = tuned_row["scores_candidate_first"]
        row["finetuned_scores_base_first"] = tuned_row["scores_base_first"]
        row["finetuned_outcome"] = tuned_row["outcome"]
    metrics.update({f"{k}_finetuned": v for k, v in summarize(outcomes).metrics().items()})


def _suite_names(metrics: Mapping[str, float]) -> list[str]:
    """The suite's metrics in report order: overall accuracy, then by category."""
    names = ["suite_accuracy", *(f"suite_accuracy_{c}" for c in CATEGORIES)]
    return [name for name in names if f"{name}_candidate" in metrics]


def _suite_part(
    suite: Sequence[SuiteItem],
    texts: Mapping[str, Mapping[str, Mapping[str, str]]],
    roles: Sequence[str],
    metrics: dict[str, float],
) -> list[dict[str, Any]]:
    """Every role's answers checked item by item; ``suite_accuracy[_<category>]_<role>``."""
    verdicts: dict[str, dict[str, Verdict]] = {}
    for role in roles:
        given = texts[role]["suite"]
        verdicts[role] = {item.id: check_answer(item, given[item.id]) for item in suite}
        score = score_suite(suite, verdicts[role])
        metrics[f"suite_accuracy_{role}"] = score.accuracy
        for category in CATEGORIES:
            if category in score.by_category:
                metrics[f"suite_accuracy_{category}_{role}"] = score.category_accuracy(category)
    metrics["suite_items"] = len(suite)
    answers = {role: texts[role]["suite"] for role in roles}
    return suite_rows(suite, answers, verdicts)


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
