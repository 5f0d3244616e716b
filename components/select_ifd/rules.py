"""Phase-1 rule: does the reflected instruction ``Q`` replace the original ``ori``?

The reference keeps ``Q`` when ``IFD(Q) > IFD(ori)``: the new instruction leaves more of the
response's difficulty unexplained, i.e. it is the harder, more informative instruction for the
student. Ties keep ``ori``. A score that is missing (null, with a reason) is never read as 0:

* the teacher fell back (``Q`` is a copy of ``ori``)          -> ori
* ``Q`` unscorable                                           -> ori
* ``ori`` unscorable but ``Q`` scorable                      -> Q (the only candidate with a score)
* both unscorable                                            -> ori

Reasons are short fixed phrases (no numbers) so that they can be counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rtune.components.common.record_schema import ORI, Q

OK_STATUS = "ok"

Q_HIGHER = "Q has higher IFD"
ORI_HIGHER_OR_EQUAL = "ori has higher or equal IFD"
BOTH_UNSCORABLE = "both unscorable"


def choose_phase1(
    ori_scores: Mapping[str, Any] | None,
    q_scores: Mapping[str, Any] | None,
    q_status: str | None = OK_STATUS,
) -> tuple[str, str]:
    """``(winner, reason)`` for one record; ``q_status`` is the teacher's ``parse_status``."""
    if q_status not in (None, OK_STATUS):
        return ORI, f"teacher fallback ({q_status})"
    ori_ifd, q_ifd = ifd_of(ori_scores), ifd_of(q_scores)
    if ori_ifd is None and q_ifd is None:
        return ORI, BOTH_UNSCORABLE
    if q_ifd is None:
        return ORI, f"Q unscorable ({reason_of(q_scores)})"
    if ori_ifd is None:
        return Q, f"ori unscorable ({reason_of(ori_scores)})"
    return (Q, Q_HIGHER) if q_ifd > ori_ifd else (ORI, ORI_HIGHER_OR_EQUAL)


def ifd_of(scores: Mapping[str, Any] | None) -> float | None:
    """The candidate's IFD, or None when it has no scores or its IFD is null."""
    return _score(scores, "ifd")


def rifd_of(scores: Mapping[str, Any] | None) -> float | None:
    return _score(scores, "rifd")


def reason_of(scores: Mapping[str, Any] | None) -> str:
    """Why a candidate's score is missing, in a word (``"not scored"`` without scores)."""
    if not scores:
        return "not scored"
    return str(scores.get("reason") or "null score")


def _score(scores: Mapping[str, Any] | None, name: str) -> float | None:
    if not scores:
        return None
    value = scores.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)
