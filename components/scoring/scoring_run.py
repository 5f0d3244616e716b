"""One scoring call's bookkeeping: each unique pass once, and who waits on which (no torch).

Candidates share passes (the alone pass of one response, a teacher fallback equal to ``ori``):
:class:`ScoringRun` keys passes by token ids and target start, counts what the decoder really
runs, and turns four finished losses into a candidate's scores the moment its last pass is done
(``on_scored``, which the stages checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rtune.components.scoring.formulas import CandidateLosses, Scores, scores_from_losses
from rtune.components.scoring.passes import CandidatePlan, TokenPass

# exp() turns a loss error e into a ratio error of about ratio * e. Batched fp32 losses differ from
# the per-sample ones by up to ~5e-6, so a candidate with IFD or r-IFD above this has its passes
# re-run one at a time, unpadded, exactly like the per-sample pass (rare: the ratio is ~1).
PRECISE_ABOVE = 4.0


@dataclass
class ScoringStats:
    """What one scoring run did: pass counts before/after dedupe, tokens through the model."""

    candidates: int = 0
    passes: int = 0
    unique_passes: int = 0
    tokens: int = 0
    target_tokens: int = 0
    forward_tokens: int = 0  # run through the decoder: padding included, cached prefixes not
    shared_prefix_tokens: int = 0  # read from a prefix cache instead of being run
    exact_passes: int = 0  # re-run alone for a candidate with a large ratio
    exact_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0


class ScoringRun:
    """Bookkeeping of one ``score`` call: unique passes, which candidates wait on which pass."""

    def __init__(
        self,
        plans: list[CandidatePlan],
        on_scored: Callable[[str, Scores], None] | None,
        exact_loss: Callable[[TokenPass], float],
        precise_above: float = PRECISE_ABOVE,
    ) -> None:
        self.plans = plans
        self.on_scored = on_scored
        self.exact_loss = exact_loss
        self.precise_above = precise_above
        self.exact: set[int] = set()
        self.results: dict[str, Scores] = {}
        self.stats = ScoringStats(candidates=len(plans))
        index: dict[TokenPass, int] = {}
        self.unique: list[TokenPass] = []
        self.roles: list[dict[str, int]] = []
        self.waiting: dict[int, list[int]] = {}
        self.remaining: list[int] = []
        for number, plan in enumerate(plans):
            roles = {role: index.setdefault(p, len(index)) for role, p in plan.passes.items()}
            for role, unique_index in roles.items():
                if unique_index == len(self.unique):
                    self.unique.append(plan.passes[role])
            for unique_index in set(roles.values()):
                self.waiting.setdefault(unique_index, []).append(number)
            self.roles.append(roles)
            self.remaining.append(len(set(roles.values())))
            self.stats.passes += len(roles)
        self.stats.unique_passes = len(self.unique)
        self.stats.target_tokens = sum(p.n_targets for p in self.unique)
        self.losses: list[float | None] = [None] * len(self.unique)

    def count_batch(self, passes: Sequence[TokenPass], shared: int, new_prefix: bool) -> None:
        """Tokens the decoder really runs: padded rows minus the cached prefix (run once)."""
        self.stats.batches += 1
        self.stats.forward_tokens += len(passes) * (max(len(p.ids) for p in passes) - shared)
        self.stats.forward_tokens += shared if shared and new_prefix else 0
        self.stats.shared_prefix_tokens += shared * len(passes)

    def finish_unscored(self) -> None:
        for number, left in enumerate(self.remaining):
            if left == 0:
                self._finish(number)

    def record(self, batch: Sequence[int], losses: Sequence[float]) -> None:
        for unique_index, loss in zip(batch, losses, strict=True):
            self.losses[unique_index] = loss
            for number in self.waiting[unique_index]:
                self.remaining[number] -= 1
                if self.remaining[number] == 0:
                    self._finish(number)

    def _finish(self, number: int) -> None:
        """Score a candidate whose passes are all done, re-running its passes one by one first
        when a ratio is large enough for batching noise to show (see ``PRECISE_ABOVE``)."""
        plan, roles = self.plans[number], self.roles[number]
        scores = self._scores(plan, roles)
        if needs_exact_passes(scores, self.precise_above):
            for unique_index in set(roles.values()) - self.exact:
                self.losses[unique_index] = self.exact_loss(self.unique[unique_index])
                self.exact.add(unique_index)
                self.stats.exact_passes += 1
                self.stats.exact_tokens += len(self.unique[unique_index].ids)
            scores = self._scores(plan, roles)
        self.results[plan.key] = scores
        if self.on_scored is not None:
            self.on_scored(plan.key, scores)

    def _scores(self, plan: CandidatePlan, roles: dict[str, int]) -> Scores:
        loss = {role: self.losses[unique_index] for role, unique_index in roles.items()}
        return scores_from_losses(
            CandidateLosses(
                output=loss.get("output"),
                output_given_instruction=loss.get("output_given_instruction"),
                instruction=loss.get("instruction"),
                instruction_given_output=loss.get("instruction_given_output"),
                ifd_problem=plan.ifd_problem,
                rifd_problem=plan.rifd_problem,
            )
        )


def needs_exact_passes(scores: Scores, precise_above: float = PRECISE_ABOVE) -> bool:
    ratios = (scores.get("ifd"), scores.get("rifd"))
    return any(isinstance(r, float) and r > precise_above for r in ratios)
