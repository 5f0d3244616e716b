"""The three-way comparison from fixed answers (no server): every model is checked on the same
suite items, the effects are differences of those per-item results, and the champion decision
reads the served candidate and the base only."""

from __future__ import annotations

import math

import pytest

from rtune.components.evaluate.config import EvaluateConfig
from rtune.components.evaluate.evaluation import assemble, decide, effects
from rtune.components.evaluate.suite import SuiteItem

SUITE = [
    SuiteItem("a1", "arithmetic", "What is 2 + 3?", answer=5),
    SuiteItem("a2", "arithmetic", "What is 7 * 6?", answer=42),
    SuiteItem("f1", "format", "Reply in lowercase.", checks=({"type": "lowercase"},)),
    SuiteItem("f2", "format", "Reply in lowercase too.", checks=({"type": "lowercase"},)),
]
ANSWERS = {  # item -> (served candidate, fine-tuned, base)
    "a1": ("Answer: 5", "Answer: 5", "Answer: 6"),
    "a2": ("Answer: 41", "Answer: 42", "Answer: 42"),
    "f1": ("Loud.", "quiet.", "Loud."),
    "f2": ("quiet.", "quiet.", "Loud."),
}


def _texts(roles: tuple[str, ...]) -> dict[str, dict[str, dict[str, str]]]:
    index = {"candidate": 0, "finetuned": 1, "base": 2}
    return {
        role: {"suite": {i: a[index[role]] for i, a in ANSWERS.items()}, "heldout": {}}
        for role in roles
    }


def test_effects_are_differences_of_the_per_item_results() -> None:
    evaluation = assemble(SUITE, [], _texts(("candidate", "finetuned", "base")), {}, {})
    rows = evaluation.suite_rows
    assert [row["id"] for row in rows] == ["a1", "a2", "f1", "f2"]
    assert [(r["candidate_passed"], r["finetuned_passed"], r["base_passed"]) for r in rows] == [
        (True, True, False),
        (False, True, True),
        (False, True, False),
        (True, True, False),
    ]
    m = evaluation.metrics
    assert (m["suite_accuracy_base"], m["suite_accuracy_finetuned"]) == (0.25, 1.0)
    assert m["suite_accuracy_candidate"] == 0.5
    assert m["suite_accuracy_training_effect"] == pytest.approx(0.75)
    assert m["suite_accuracy_quantization_effect"] == pytest.approx(-0.5)
    assert m["suite_accuracy_format_quantization_effect"] == pytest.approx(-0.5)
    assert evaluation.finetuned["suite_accuracy"] == 1.0
    assert evaluation.paired["suite_accuracy"] == (0.5, 0.25)  # (served, base), as before


def test_two_models_have_no_effects() -> None:
    evaluation = assemble(SUITE, [], _texts(("candidate", "base")), {}, {})
    assert not [k for k in evaluation.metrics if "finetuned" in k or "effect" in k]
    assert "finetuned_passed" not in evaluation.suite_rows[0]
    assert evaluation.finetuned == {}


def test_a_judge_rate_nobody_computed_has_no_effect() -> None:
    values = effects({"judge_win_rate": 0.25}, ["judge_win_rate"])  # no fine-tuned verdicts
    assert values == {}
    values = effects({"judge_win_rate": 0.25, "judge_win_rate_finetuned": 0.75}, ["judge_win_rate"])
    assert values == {"judge_win_rate_training_effect": 0.25, "judge_win_rate_quantization_effect": -0.5}  # fmt: skip


def test_the_champion_decision_ignores_the_unquantized_model() -> None:
    evaluation = assemble(SUITE, [], _texts(("candidate", "finetuned", "base")), {}, {})
    decision = decide(EvaluateConfig(), evaluation.metrics)
    assert decision.candidate == 0.5 and decision.reference == 0.25 and decision.beats
    worse = {**evaluation.metrics, "suite_accuracy_candidate": 0.25}  # fine-tuned still 1.0
    assert not decide(EvaluateConfig(), worse).beats
    assert not math.isnan(worse["suite_accuracy_finetuned"])
