"""Phase-2 rule (reflected response) and the optional Cherry-style final cut.

With ``old`` the phase-1 winner (``ori`` or ``Q``) and ``new`` its reflected response (``A`` =
ori's instruction + new answer, ``QA`` = Q's instruction + new answer), the reference keeps the
new response when all three hold:

    r-IFD(new) < r-IFD(old)   the new answer points back to its instruction more clearly
    r-IFD(new) < 1            the answer helps to guess the instruction at all
    IFD(new)   < 1            the instruction helps to produce the answer at all

Otherwise policy ``reference`` drops the record (the reference code keeps only records whose
response was reflected) and policy ``fallback`` keeps the phase-1 winner. A null score makes its
condition fail (never a 0); a teacher fallback (the new answer copies the old) is not kept.

The optional final cut (Cherry LLM) runs on the records still kept: drop ``IFD >= drop_ifd_above``,
then keep the ``keep_top`` fraction with the highest IFD.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rtune.components.common.record_schema import DROPPED, NEW_CANDIDATE
from rtune.components.select_ifd.rules import OK_STATUS, ifd_of, reason_of, rifd_of

POLICIES = ("reference", "fallback")

RESPONSE_KEPT = "reflected response kept"
RIFD_NOT_LOWER = "new r-IFD not below old r-IFD"
RIFD_NOT_BELOW_1 = "new r-IFD not below 1"
IFD_NOT_BELOW_1 = "new IFD not below 1"
OLD_RIFD_UNSCORABLE = "old r-IFD unscorable"
CUT_UNSCORABLE = "cut: IFD unscorable"


@dataclass
class SelectionConfig:
    """How phase 2 decides and whether a Cherry-style cut follows."""

    policy: str = field(
        default="reference",
        metadata={
            "help": "when the reflected response is not kept: 'reference' drops the record, "
            "'fallback' keeps the phase-1 winner"
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
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; valid policies are {list(POLICIES)}")
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
    """``(decision, reason)``: ``A``/``QA`` when the reflected response is kept, else
    ``dropped`` (policy reference) or the phase-1 winner (policy fallback)."""
    if winner not in NEW_CANDIDATE:
        raise ValueError(f"phase-1 winner must be 'ori' or 'Q', got {winner!r}")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; valid policies are {list(POLICIES)}")
    if new_status not in (None, OK_STATUS):
        failures = [f"teacher fallback ({new_status})"]
    else:
        failures = phase2_failures(old_scores, new_scores)
    if not failures:
        return NEW_CANDIDATE[winner], RESPONSE_KEPT
    why = ", ".join(failures)
    if policy == "reference":
        return DROPPED, f"dropped: {why}"
    return winner, f"phase-1 winner kept: {why}"


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
