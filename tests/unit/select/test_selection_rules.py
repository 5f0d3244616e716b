"""Selection rules: phase 1 (IFD), the full phase-2 truth table, the Cherry cut, the config."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import pytest

from rtune.components.common.config import from_dict
from rtune.components.common.records import InputError
from rtune.components.select_ifd.rules import (
    BOTH_UNSCORABLE,
    ORI_HIGHER_OR_EQUAL,
    Q_HIGHER,
    choose_phase1,
)
from rtune.components.select_ifd.stage import SelectionSummary, slug
from rtune.components.select_rifd.rules import (
    CUT_UNSCORABLE,
    IFD_NOT_BELOW_1,
    OLD_NOT_BELOW_1,
    OLD_RIFD_UNSCORABLE,
    POLICIES,
    RESPONSE_KEPT,
    RIFD_NOT_BELOW_1,
    RIFD_NOT_LOWER,
    SelectionConfig,
    apply_cherry_cut,
    decide_phase2,
    phase2_failures,
)


def scores(ifd: float | None = 0.5, rifd: float | None = 0.5, reason: str | None = None) -> dict:
    return {"ifd": ifd, "rifd": rifd, "reason": reason}


# --- phase 1 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ori_ifd", "q_ifd", "expected"),
    [
        (0.6, 0.9, ("Q", Q_HIGHER)),
        (0.9, 0.6, ("ori", ORI_HIGHER_OR_EQUAL)),
        (0.75, 0.75, ("ori", ORI_HIGHER_OR_EQUAL)),  # a tie keeps the original
        (1.4, 1.5, ("Q", Q_HIGHER)),
    ],
)
def test_phase1_q_wins_only_with_strictly_higher_ifd(
    ori_ifd: float, q_ifd: float, expected: tuple[str, str]
) -> None:
    assert choose_phase1(scores(ori_ifd), scores(q_ifd)) == expected


def test_phase1_unscorable_candidates_are_never_zero() -> None:
    truncated = scores(None, None, "truncated")
    assert choose_phase1(scores(0.5), truncated) == ("ori", "Q unscorable (truncated)")
    assert choose_phase1(truncated, scores(0.01)) == ("Q", "ori unscorable (truncated)")
    assert choose_phase1(truncated, truncated) == ("ori", BOTH_UNSCORABLE)
    assert choose_phase1(None, None) == ("ori", BOTH_UNSCORABLE)
    assert choose_phase1(scores(0.5), scores(math.nan)) == ("ori", "Q unscorable (null score)")


def test_phase1_teacher_fallback_keeps_ori_whatever_the_scores() -> None:
    winner = choose_phase1(scores(0.1), scores(0.9), q_status="fallback_parse")
    assert winner == ("ori", "teacher fallback (fallback_parse)")
    assert choose_phase1(scores(0.1), scores(0.9), q_status=None) == ("Q", Q_HIGHER)


# --- phase 2: every combination of the three conditions, every policy, both winners ----------

# (old r-IFD, new r-IFD) making "r-IFD(new) < r-IFD(old)" and "r-IFD(new) < 1" true or false
RIFD_CASES = {
    (True, True): (0.8, 0.5),
    (True, False): (1.5, 1.2),
    (False, True): (0.8, 0.9),
    (False, False): (0.8, 1.2),
}
IFD_CASES = {True: 0.7, False: 1.3}


def test_policies_are_named_for_what_they_do() -> None:
    assert POLICIES == ("reference", "reference_alternative", "keep_phase1_winner")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("winner", ["ori", "Q"])
@pytest.mark.parametrize("old_ifd_below_1", [True, False])
@pytest.mark.parametrize(
    ("lower", "rifd_below_1", "ifd_below_1"), list(itertools.product([True, False], repeat=3))
)
def test_phase2_truth_table(
    policy: str,
    winner: str,
    old_ifd_below_1: bool,
    lower: bool,
    rifd_below_1: bool,
    ifd_below_1: bool,
) -> None:
    """Per policy, what a record becomes when the reflected response fails its conditions.

    ``reference`` drops it; ``keep_phase1_winner`` keeps the old candidate; the reference's
    commented-out alternative keeps the old candidate only when the new r-IFD is *not* lower and
    the old candidate has r-IFD < 1 and IFD < 1 (``get_select_data.py``: ``count_2``/``count_4``),
    and drops it otherwise (a lower r-IFD that fails a "< 1" test keeps nothing there).
    """
    old_rifd, new_rifd = RIFD_CASES[(lower, rifd_below_1)]
    old = scores(IFD_CASES[old_ifd_below_1], old_rifd)
    new = scores(IFD_CASES[ifd_below_1], new_rifd)
    decision, reason = decide_phase2(winner, old, new, policy)
    failed = [
        text
        for text, holds in (
            (RIFD_NOT_LOWER, lower),
            (RIFD_NOT_BELOW_1, rifd_below_1),
            (IFD_NOT_BELOW_1, ifd_below_1),
        )
        if not holds
    ]
    why = ", ".join(failed)
    old_below_1 = old_rifd < 1 and old_ifd_below_1
    if not failed:
        assert (decision, reason) == ({"ori": "A", "Q": "QA"}[winner], RESPONSE_KEPT)
    elif policy == "reference":
        assert (decision, reason) == ("dropped", "dropped: " + why)
    elif policy == "keep_phase1_winner" or (not lower and old_below_1):
        assert (decision, reason) == (winner, "phase-1 winner kept: " + why)
    elif not lower:
        assert (decision, reason) == ("dropped", f"dropped: {why}, {OLD_NOT_BELOW_1}")
    else:
        assert (decision, reason) == ("dropped", "dropped: " + why)


def test_reference_alternative_on_nulls_and_teacher_fallback() -> None:
    """A copied or unscorable new response is "not better": the old one stays only when it
    passes both "< 1" tests itself; an unscorable old r-IFD never passes them."""
    good_old, poor_old = scores(0.5, 0.9), scores(1.2, 0.9)
    unscorable = scores(None, None, "truncated")
    policy = "reference_alternative"
    assert decide_phase2("Q", good_old, scores(), policy, "fallback_parse") == (
        "Q",
        "phase-1 winner kept: teacher fallback (fallback_parse)",
    )
    assert decide_phase2("ori", poor_old, unscorable, policy) == (
        "dropped",
        f"dropped: new response unscorable (truncated), {OLD_NOT_BELOW_1}",
    )
    assert decide_phase2("ori", scores(0.5, None), scores(0.5, 0.4), policy) == (
        "dropped",
        f"dropped: {OLD_RIFD_UNSCORABLE}, {OLD_NOT_BELOW_1}",
    )


def test_fallback_is_a_deprecated_name_of_keep_phase1_winner() -> None:
    with pytest.warns(DeprecationWarning, match="renamed 'keep_phase1_winner'"):
        config = SelectionConfig(policy="fallback")
    assert config.policy == "keep_phase1_winner"
    with pytest.warns(DeprecationWarning):
        assert decide_phase2("Q", scores(0.5, 0.9), scores(0.5, 0.95), "fallback")[0] == "Q"


@pytest.mark.parametrize(
    ("old", "new", "failure"),
    [
        (scores(0.9, 0.6), scores(0.5, 0.6), RIFD_NOT_LOWER),  # equal r-IFD is not lower
        (scores(0.9, 1.5), scores(0.5, 1.0), RIFD_NOT_BELOW_1),  # r-IFD exactly 1
        (scores(0.9, 0.8), scores(1.0, 0.5), IFD_NOT_BELOW_1),  # IFD exactly 1
    ],
)
def test_phase2_ties_fail_their_condition(old: dict, new: dict, failure: str) -> None:
    assert phase2_failures(old, new) == [failure]


def test_phase2_nulls_and_teacher_fallback_never_keep_the_response() -> None:
    good_new = scores(0.5, 0.4)
    unscorable = scores(None, None, "truncated")
    assert decide_phase2("ori", scores(), unscorable) == (
        "dropped",
        "dropped: new response unscorable (truncated)",
    )
    assert phase2_failures(scores(0.5, None, "rifd: truncated"), good_new) == [OLD_RIFD_UNSCORABLE]
    keep = "keep_phase1_winner"
    assert decide_phase2("Q", scores(0.5, 0.9), good_new, keep, "fallback_error") == (
        "Q",
        "phase-1 winner kept: teacher fallback (fallback_error)",
    )
    assert decide_phase2("Q", scores(0.5, 0.9), good_new, keep, None) == ("QA", RESPONSE_KEPT)


def test_phase2_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="winner"):
        decide_phase2("A", scores(), scores())
    with pytest.raises(ValueError, match="policy"):
        decide_phase2("ori", scores(), scores(), policy="lenient")


# --- final cut -------------------------------------------------------------------------------


def test_no_cut_without_settings() -> None:
    assert apply_cherry_cut({"a": 3.0, "b": None}) == {}


def test_drop_ifd_above_cuts_at_and_above_the_threshold() -> None:
    cut = apply_cherry_cut({"a": 0.5, "b": 1.0, "c": 1.7, "d": None}, drop_ifd_above=1.0)
    assert cut == {
        "b": "cut: IFD at or above 1",
        "c": "cut: IFD at or above 1",
        "d": CUT_UNSCORABLE,
    }


def test_keep_top_keeps_the_highest_ifd_first_with_deterministic_ties() -> None:
    ifd = {"a": 0.2, "b": 0.9, "c": 0.5, "d": 0.9}
    assert apply_cherry_cut(ifd, keep_top=0.5) == {
        "a": "cut: outside top 0.5 by IFD",
        "c": "cut: outside top 0.5 by IFD",
    }
    # 0.3 * 10 is 3.0000000000000004 in floating point: still 3 records, not 4
    ten = {f"r{i}": i / 10 for i in range(10)}
    kept = set(ten) - set(apply_cherry_cut(ten, keep_top=0.3))
    assert kept == {"r9", "r8", "r7"}
    assert apply_cherry_cut(ten, keep_top=1.0) == {}


def test_keep_top_applies_to_what_the_threshold_left() -> None:
    ifd = {"a": 1.2, "b": 0.9, "c": 0.5, "d": 0.1}
    cut = apply_cherry_cut(ifd, drop_ifd_above=1.0, keep_top=0.34)  # ceil(0.34 * 3) = 2
    assert set(cut) == {"a", "d"}
    assert cut["a"].startswith("cut: IFD at or above") and cut["d"].startswith("cut: outside top")


# --- config and summary ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"policy": "lenient"},
        {"keep_top": 0},
        {"keep_top": 1.5},
        {"drop_ifd_above": -1.0},
        {"drop_ifd_above": math.nan},
    ],
)
def test_selection_config_validation(values: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SelectionConfig(**values)
    with pytest.raises(InputError):
        from_dict(SelectionConfig, values, "selection")


def test_selection_config_defaults_are_the_reference() -> None:
    config = SelectionConfig()
    assert (config.policy, config.drop_ifd_above, config.keep_top) == ("reference", None, None)


def test_summary_numbers_and_metric_safe_reason_keys() -> None:
    summary = SelectionSummary(phase="rifd", records=4)
    summary.winners.update({"ori": 3, "Q": 1})
    summary.decisions.update({"A": 1, "QA": 1, "dropped": 2})
    summary.reasons.update({RESPONSE_KEPT: 2, "dropped: new IFD not below 1": 2})
    summary.response_kept = 2
    values = summary.as_dict()
    assert (
        values["records"] == 4 and values["decision_dropped"] == 2 and values["decision_ori"] == 0
    )
    assert values["phase1_q_rate"] == 0.25
    assert values["phase2_response_rate"] == 0.5 and values["kept_rate"] == 0.5
    assert values["reason_reflected_response_kept"] == 2
    assert values["reason_dropped_new_ifd_not_below_1"] == 2
    assert slug("Q unscorable (rifd: truncated)") == "q_unscorable_rifd_truncated"
    phase1 = SelectionSummary(phase="ifd", records=2, winners=Counter(Q=2))
    assert "kept_rate" not in phase1.as_dict() and phase1.as_dict()["phase1_q_rate"] == 1.0
