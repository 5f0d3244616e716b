"""Phase-2 rule (reflected response) and the optional Cherry-style final cut.

With ``old`` the phase-1 winner (``ori`` or ``Q``) and ``new`` its reflected response (``A`` =
ori's instruction + new answer, ``QA`` = Q's instruction + new answer), the reference keeps the
new response when all three hold:

    r-IFD(new) < r-IFD(old)   the new answer points back to its instruction more clearly
    r-IFD(new) < 1            the answer helps to guess the instruction at all
    IFD(new)   < 1            the instruction helps to produce the answer at all

Otherwise the policy decides what becomes of the record:

``reference``              drop it: ``get_select_data.py`` keeps only records whose response was
                           reflected (the paper's rule, 37,114 of 52,002 on Alpaca).
``reference_alternative``  the reference's commented-out alternative: keep the phase-1 winner
                           when the new r-IFD is *not* lower and the winner itself has
                           r-IFD < 1 and IFD < 1; otherwise drop (a lower r-IFD that fails a
                           "< 1" test keeps nothing, as there).
``keep_phase1_winner``     always keep the phase-1 winner (nothing is dropped by the rule; a
                           small student whose rewrites rarely pass still gets data to train on).
                           Its old name ``fallback`` is accepted with a DeprecationWarning.

A null score makes its condition fail (never a 0); a teacher fallback (the new answer copies the
old) or an unscorable new answer is never kept and counts as "not lower".

The optional final cut (Cherry LLM) runs on the records still kept: drop ``IFD >= drop_ifd_above``,
then keep the ``keep_top`` fraction with the highest IFD.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rtune.components.common.record_schema import DROPPED, NEW_CANDIDATE
from rtune.components.select_ifd.rules import OK_STATUS, ifd_of, reason_of, rifd_of

POLICIES = ("reference", "reference_alternative", "keep_phase1_winner")
DEPRECATED_POLICIES = {"fallback": "keep_phase1_winner"}

RESPONSE_KEPT = "reflected response kept"
RIFD_NOT_LOWER = "new r-IFD not below old r-IFD"
RIFD_NOT_BELOW_1 = "new r-IFD not below 1"
IFD_NOT_BELOW_1 = "new IFD not below 1"
OLD_RIFD_UNSCORABLE = "old r-IFD unscorable"
OLD_NOT_BELOW_1 = "phase-1 winner's r-IFD or IFD not below 1"
CUT_UNSCORABLE = "cut: IFD unscorable"


@dataclass
class SelectionConfig:
    """How phase 2 decides and whether a Cherry-style cut follows."""

    policy: str = field(
        default="reference",
        metadata={
            "help": "when the reflected response is not kept: 'reference' drops the record; "
            "'reference_alternative' keeps the phase-1 winner when the new r-IFD is not lower "
            "and the winner has r-IFD < 1 and IFD < 1; 'keep_phase1_winner' always keeps it "
            "('fallback' is its deprecated name)"
        },
    )
    drop_ifd_above: float | None = field(
        default=None, metadata={"help": "final cut: drop kept records with IFD >= this (e.g. 1.0)"}
    )
    keep_top: float | None = field(
        default=None,
        metadata={
            "help": "final cut: keep this fraction (0, 1] of kept records, highest IFD first"
        },
    )

    def __post_init__(self) -> None:
        self.policy = canonical_policy(self.policy)
        if self.drop_ifd_above is not None and not (
            isinstance(self.drop_ifd_above, int | float)
            and math.isfinite(self.drop_ifd_above)
            and self.drop_ifd_above > 0
        ):
            raise ValueError(
                f"drop_ifd_above must be a positive number, got {self.drop_ifd_above!r}"
            )
        if self.keep_top is not None and not (
            isinstance(self.keep_top, int | float) and 0 < self.keep_top <= 1
        ):
            raise ValueError(f"keep_top must be a fraction in (0, 1], got {self.keep_top!r}")


def canonical_policy(policy: str) -> str:
    """The policy's current name: a deprecated name warns and maps, an unknown one is an error."""
    if policy in DEPRECATED_POLICIES:
        new = DEPRECATED_POLICIES[policy]
        warnings.warn(
            f"selection policy {policy!r} was renamed {new!r} (it keeps the phase-1 winner "
            f"whenever the reflected response is not kept); write policy: {new}",
            DeprecationWarning,
            stacklevel=3,
        )
        return new
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; valid policies are {list(POLICIES)}")
    return policy


def phase2_failures(
    old_scores: Mapping[str, Any] | None, new_scores: Mapping[str, Any] | None
) -> list[str]:
    """The phase-2 conditions that do not hold (empty: keep the reflected response)."""
    new_ifd, new_rifd, old_rifd = ifd_of(new_scores), rifd_of(new_scores), rifd_of(old_scores)
    if new_ifd is None or new_rifd is None:
        return [f"new response unscorable ({reason_of(new_scores)})"]
    failures = []
    if old_rifd is None:
        failures.append(OLD_RIFD_UNSCORABLE)
    elif not new_rifd < old_rifd:
        failures.append(RIFD_NOT_LOWER)
    if not new_rifd < 1:
        failures.append(RIFD_NOT_BELOW_1)
    if not new_ifd < 1:
        failures.append(IFD_NOT_BELOW_1)
    return failures


def decide_phase2(
    winner: str,
    old_scores: Mapping[str, Any] | None,
    new_scores: Mapping[str, Any] | None,
    policy: str = "reference",
    new_status: str | None = OK_STATUS,
) -> tuple[str, str]:
    """``(decision, reason)``: ``A``/``QA`` when the reflected response is kept, else what the
    policy makes of the record: ``dropped`` or the phase-1 winner (see the module docstring)."""
    if winner not in NEW_CANDIDATE:
        raise ValueError(f"phase-1 winner must be 'ori' or 'Q', got {winner!r}")
    policy = canonical_policy(policy)
    if new_status not in (None, OK_STATUS):
        failures = [f"teacher fallback ({new_status})"]
    else:
        failures = phase2_failures(old_scores, new_scores)
    if not failures:
        return NEW_CANDIDATE[winner], RESPONSE_KEPT
    why = ", ".join(failures)
    if policy == "keep_phase1_winner":
        return winner, f"phase-1 winner kept: {why}"
    if policy == "reference_alternative" and not _rifd_lowered(old_scores, new_scores, new_status):
        if _below_1(old_scores):
            return winner, f"phase-1 winner kept: {why}"
        return DROPPED, f"dropped: {why}, {OLD_NOT_BELOW_1}"
    return DROPPED, f"dropped: {why}"


def _rifd_lowered(
    old_scores: Mapping[str, Any] | None,
    new_scores: Mapping[str, Any] | None,
    new_status: str | None,
) -> bool:
    """The reference's branch test ``rifd(new) < rifd(old)``; a teacher copy or a null on either
    side is "not lower" (the reference's NaN comparison is False too)."""
    old_rifd, new_rifd = rifd_of(old_scores), rifd_of(new_scores)
    if new_status not in (None, OK_STATUS) or old_rifd is None or new_rifd is None:
        return False
    return new_rifd < old_rifd


def _below_1(scores: Mapping[str, Any] | None) -> bool:
    """The reference alternative's test on the phase-1 winner: r-IFD < 1 and IFD < 1."""
    ifd, rifd = ifd_of(scores), rifd_of(scores)
    return ifd is not None and rifd is not None and rifd < 1 and ifd < 1


def apply_cherry_cut(
    ifd_by_id: Mapping[str, float | None],
    drop_ifd_above: float | None = None,
    keep_top: float | None = None,
) -> dict[str, str]:
    """``id -> reason`` for the kept records the final cut removes.

    First every record with ``IFD >= drop_ifd_above``; then, of those left, all but the
    ``ceil(keep_top * n)`` with the highest IFD (ties broken by id, so the cut is deterministic).
    A record whose IFD is null cannot be ranked or compared and is cut when any cut is set.
    """
    if drop_ifd_above is None and keep_top is None:
        return {}
    cut = {rid: CUT_UNSCORABLE for rid, ifd in ifd_by_id.items() if ifd is None}
    left = {rid: ifd for rid, ifd in ifd_by_id.items() if ifd is not None}
    if drop_ifd_above is not None:
        for rid, ifd in left.items():
            if ifd >= drop_ifd_above:
                cut[rid] = f"cut: IFD at or above {drop_ifd_above:g}"
        left = {rid: ifd for rid, ifd in left.items() if rid not in cut}
    if keep_top is not None:
        ranked = sorted(left, key=lambda rid: (-left[rid], rid))
        keep = math.ceil(round(keep_top * len(ranked), 9))
        for rid in ranked[keep:]:
            cut[rid] = f"cut: outside top {keep_top:g} by IFD"
    return cut
