"""IFD and reversed IFD from mean token losses (pure Python; no model needed).

Notation: ``L(t | c)`` is the mean token cross-entropy (nats) of the tokens of ``t`` when the
student reads ``c`` then ``t``; ``L(t)`` the same with ``t`` alone. With ``x`` the instruction
(+ input), ``y`` the response, ``P`` the prompt template and ``R`` the reverse prompt:

* ``IFD(x, y)   = exp(L(y | P(x)) - L(y))``  = PPL(y | P(x)) / PPL(y)
* ``r-IFD(x, y) = exp(L(x | R(y)) - L(x))``  = PPL(x | R(y)) / PPL(x)
* ``ifd_loss = L(y | P(x)) / L(y)``, ``rifd_loss = L(x | R(y)) / L(x)`` (Cherry LLM's loss ratio)

All four are below 1 exactly when the condition helps. A score that cannot be computed is
``None`` with a ``reason`` — never a silent 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LOSS_FIELDS = (
    "loss_output",
    "loss_output_given_instruction",
    "loss_instruction",
    "loss_instruction_given_output",
)
SCORE_FIELDS = ("ifd", "rifd", "ifd_loss", "rifd_loss", *LOSS_FIELDS)
REASON_FIELD = "reason"

IFD, RIFD = "ifd", "rifd"
BOTH_SCORES = (IFD, RIFD)
# the fields each score owns; a score not asked for leaves its fields out (absent, not null)
OWN_FIELDS = {
    IFD: ("ifd", "ifd_loss", "loss_output", "loss_output_given_instruction"),
    RIFD: ("rifd", "rifd_loss", "loss_instruction", "loss_instruction_given_output"),
}
# pass role (``scoring.passes``) -> the loss field that records it
LOSS_FIELD_OF_ROLE = {
    "output": "loss_output",
    "output_given_instruction": "loss_output_given_instruction",
    "instruction": "loss_instruction",
    "instruction_given_output": "loss_instruction_given_output",
}

NON_FINITE = "non_finite_loss"
NOT_SCORED = "not_scored"

Scores = dict[str, float | str | None]


def perplexity_ratio(conditioned: float | None, alone: float | None) -> float | None:
    """``exp(conditioned - alone)``: the ratio of the two perplexities; None if either is missing."""
    if not _usable(conditioned) or not _usable(alone):
        return None
    assert conditioned is not None and alone is not None
    return math.exp(conditioned - alone)


def loss_ratio(conditioned: float | None, alone: float | None) -> float | None:
    """``conditioned / alone``; None if either is missing or the alone loss is exactly 0."""
    if not _usable(conditioned) or not _usable(alone) or alone == 0:
        return None
    assert conditioned is not None and alone is not None
    return conditioned / alone


@dataclass(frozen=True)
class CandidateLosses:
    """The four mean losses of one candidate, and why a score is missing (if it is).

    ``ifd_problem`` / ``rifd_problem`` name the cause found before any forward pass (e.g.
    ``"truncated"``, ``"empty_output"``); a non-finite loss is detected here.
    """

    output: float | None = None
    output_given_instruction: float | None = None
    instruction: float | None = None
    instruction_given_output: float | None = None
    ifd_problem: str | None = None
    rifd_problem: str | None = None


def scores_from_losses(losses: CandidateLosses, wanted: tuple[str, ...] = BOTH_SCORES) -> Scores:
    """The score record of one candidate: ifd, rifd, their loss ratios, the four losses, reason.

    ``wanted`` names the scores asked for; the fields of the other one are left out and its
    problem does not enter ``reason`` (it was not computed, which is not a problem).
    """
    ifd_problem = _problem(losses.ifd_problem, losses.output_given_instruction, losses.output)
    rifd_problem = _problem(
        losses.rifd_problem, losses.instruction_given_output, losses.instruction
    )
    y_given_x = None if ifd_problem else losses.output_given_instruction
    y_alone = None if ifd_problem else losses.output
    x_given_y = None if rifd_problem else losses.instruction_given_output
    x_alone = None if rifd_problem else losses.instruction
    ifd_problem = ifd_problem if IFD in wanted else None
    rifd_problem = rifd_problem if RIFD in wanted else None
    scores: Scores = {
        "ifd": perplexity_ratio(y_given_x, y_alone),
        "rifd": perplexity_ratio(x_given_y, x_alone),
        "ifd_loss": loss_ratio(y_given_x, y_alone),
        "rifd_loss": loss_ratio(x_given_y, x_alone),
        "loss_output": y_alone,
        "loss_output_given_instruction": y_given_x,
        "loss_instruction": x_alone,
        "loss_instruction_given_output": x_given_y,
        REASON_FIELD: combine_reasons(ifd_problem, rifd_problem),
    }
    for score, fields in OWN_FIELDS.items():
        if score not in wanted:
            for name in fields:
                del scores[name]
    return scores


def known_losses(scores: Mapping[str, Any] | None) -> dict[str, float]:
    """Pass role -> loss of the finite losses a score record holds: what an earlier phase
    computed, so that a later phase does not run those passes again."""
    known: dict[str, float] = {}
    for role, name in LOSS_FIELD_OF_ROLE.items():
        value = (scores or {}).get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            known[role] = float(value)
    return known


def combine_reasons(ifd_problem: str | None, rifd_problem: str | None) -> str | None:
    """One ``reason``: the shared cause (``"truncated"``) or which score misses and why
    (``"rifd: truncated"``); None when both scores exist."""
    if ifd_problem == rifd_problem:
        return ifd_problem
    named = (("ifd", ifd_problem), ("rifd", rifd_problem))
    return "; ".join(f"{name}: {problem}" for name, problem in named if problem)


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _problem(known: str | None, conditioned: float | None, alone: float | None) -> str | None:
    """Why a score is missing: the cause found before scoring, a missing or non-finite loss."""
    if known:
        return known
    if conditioned is None or alone is None:
        return NOT_SCORED
    if not (math.isfinite(conditioned) and math.isfinite(alone)):
        return NON_FINITE
    return None
