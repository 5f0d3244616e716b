"""IFD / r-IFD formulas on hand-checkable losses, and how missing scores are reported."""

from __future__ import annotations

import math

import pytest

from rtune.components.scoring.formulas import (
    NON_FINITE,
    NOT_SCORED,
    SCORE_FIELDS,
    CandidateLosses,
    combine_reasons,
    loss_ratio,
    perplexity_ratio,
    scores_from_losses,
)


def test_perplexity_ratio_is_exp_of_the_loss_difference() -> None:
    assert perplexity_ratio(3.0, 2.0) == pytest.approx(math.e)
    assert perplexity_ratio(2.0, 2.0) == 1.0
    assert perplexity_ratio(1.0, 1.0 + math.log(4)) == pytest.approx(0.25)


def test_loss_ratio_divides_conditioned_by_alone() -> None:
    assert loss_ratio(1.5, 2.0) == 0.75
    assert loss_ratio(1.0, 0.0) is None  # undefined, never 0 or inf


@pytest.mark.parametrize("missing", [(None, 1.0), (1.0, None), (math.nan, 1.0), (1.0, math.inf)])
def test_ratios_of_missing_or_non_finite_losses_are_none(missing: tuple[float, float]) -> None:
    assert perplexity_ratio(*missing) is None
    assert loss_ratio(*missing) is None


def test_scores_from_known_losses() -> None:
    scores = scores_from_losses(
        CandidateLosses(
            output=2.0,
            output_given_instruction=1.0,
            instruction=4.0,
            instruction_given_output=3.0,
        )
    )
    assert set(scores) == {*SCORE_FIELDS, "reason"}
    assert scores["ifd"] == pytest.approx(math.exp(-1.0))  # exp(L(y|P(x)) - L(y))
    assert scores["rifd"] == pytest.approx(math.exp(-1.0))  # exp(L(x|R(y)) - L(x))
    assert scores["ifd_loss"] == 0.5
    assert scores["rifd_loss"] == 0.75
    assert scores["loss_output"] == 2.0
    assert scores["loss_output_given_instruction"] == 1.0
    assert scores["loss_instruction"] == 4.0
    assert scores["loss_instruction_given_output"] == 3.0
    assert scores["reason"] is None


def test_an_instruction_that_hurts_gives_ifd_above_one() -> None:
    scores = scores_from_losses(
        CandidateLosses(
            output=1.0, output_given_instruction=1.5, instruction=1.0, instruction_given_output=1.0
        )
    )
    assert scores["ifd"] == pytest.approx(math.exp(0.5))
    assert scores["ifd_loss"] == 1.5
    assert scores["rifd"] == 1.0


def test_truncated_rifd_keeps_ifd_and_says_which_score_is_missing() -> None:
    scores = scores_from_losses(
        CandidateLosses(output=2.0, output_given_instruction=1.0, rifd_problem="truncated")
    )
    assert scores["ifd"] == pytest.approx(math.exp(-1.0))
    assert scores["rifd"] is None and scores["rifd_loss"] is None
    assert scores["loss_instruction"] is None and scores["loss_instruction_given_output"] is None
    assert scores["reason"] == "rifd: truncated"


def test_a_problem_shared_by_both_scores_is_one_reason() -> None:
    scores = scores_from_losses(
        CandidateLosses(ifd_problem="empty_output", rifd_problem="empty_output")
    )
    assert all(scores[name] is None for name in SCORE_FIELDS)
    assert scores["reason"] == "empty_output"


def test_a_non_finite_loss_is_null_with_a_reason_never_zero() -> None:
    scores = scores_from_losses(
        CandidateLosses(
            output=math.nan,
            output_given_instruction=1.0,
            instruction=1.0,
            instruction_given_output=0.5,
        )
    )
    assert scores["ifd"] is None and scores["loss_output"] is None
    assert scores["rifd"] == pytest.approx(math.exp(-0.5))
    assert scores["reason"] == f"ifd: {NON_FINITE}"


def test_missing_losses_without_a_known_cause_are_reported() -> None:
    assert scores_from_losses(CandidateLosses())["reason"] == NOT_SCORED


def test_combine_reasons() -> None:
    assert combine_reasons(None, None) is None
    assert combine_reasons("truncated", "truncated") == "truncated"
    assert combine_reasons("truncated", None) == "ifd: truncated"
    assert combine_reasons("truncated", "too_short") == "ifd: truncated; rifd: too_short"
