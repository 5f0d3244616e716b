"""One scoring call's bookkeeping: each needed pass once, and who waits on which (no torch).

Candidates share passes (the alone pass of one response, a teacher fallback equal to ``ori``, the
instruction-alone pass of a phase-1 winner and of its reflected answer): :class:`ScoringRun` keys
passes by token ids and target start, runs only those the asked-for scores read and no earlier
phase computed, counts what the decoder really runs, and turns finished losses into a
candidate's scores the moment its last pass is done (``on_scored``, which the stages checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from rtune.components.scoring.formulas import (
    BOTH_SCORES,
    RIFD,
    CandidateLosses,
    Scores,
    scores_from_losses,
)
from rtune.components.scoring.passes import CandidatePlan, TokenPass

# exp() turns a loss error e into a ratio error of about ratio * e. Batched fp32 losses differ from
# the per-sample ones by up to ~5e-6, so a candidate with IFD or r-IFD above this has its passes
# re-run one at a time, unpadded, exactly like the per-sample pass (rare: the ratio is ~1).
PRECISE_ABOVE = 4.0


@dataclass
class ScoringStats:
    """What one scoring run did: pass counts before/after dedupe, tokens through the model."""

    candidates: int = 0
    passes: int = 0  # the passes the asked-for scores read, over all candidates
    unique_passes: int = 0  # of those, the ones run (deduplicated, not carried forward)
    carried_passes: int = 0  # losses an earlier phase computed, taken from the records
    tokens: int = 0
    target_tokens: int = 0
    forward_tokens: int = 0  # run through the decoder: padding included, cached prefixes not
    shared_prefix_tokens: int = 0  # read from a prefix cache instead of being run
    exact_passes: int = 0  # re-run alone for a candidate with a large ratio
    exact_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0


class ScoringRun:
    """Bookkeeping of one ``score`` call: unique passes, which candidates wait on which pass.

    Only the passes of the scores a candidate asks for (``plan.wanted``) are run, and none whose
    loss is known already (``plan.known``: carried forward from an earlier phase; a pass is known
    by its token ids, so another candidate with the same pass reuses it too). A candidate asking
    for IFD only whose IFD is missing gets its r-IFD passes run as well, one at a time: its
    ``reason`` then names both scores' problems, exactly as when both are scored (the phase-1
    rule quotes it). Rare: the IFD of a scorable text is missing only when truncated away.
    """

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
        self.exact: set[TokenPass] = set()
        self.results: dict[str, Scores] = {}
        self.stats = ScoringStats(candidates=len(plans))
        self.loss: dict[TokenPass, float] = {
            plan.passes[role]: loss
            for plan in plans
            for role, loss in plan.known.items()
            if role in plan.passes
        }
        self.carried = set(self.loss)
        index: dict[TokenPass, int] = {}
        self.unique: list[TokenPass] = []
        self.waiting: dict[int, list[int]] = {}
        self.remaining: list[int] = []
        for number, plan in enumerate(plans):
            needed = plan.passes_for(plan.wanted)
            pending = {p for p in needed.values() if p not in self.carried}
            for token_pass in pending:
                unique_index = index.setdefault(token_pass, len(index))
                if unique_index == len(self.unique):
                    self.unique.append(token_pass)
                self.waiting.setdefault(unique_index, []).append(number)
            self.remaining.append(len(pending))
            self.stats.passes += len(needed)
            self.stats.carried_passes += len(needed) - len(pending)
        self.stats.unique_passes = len(self.unique)
        self.stats.target_tokens = sum(p.n_targets for p in self.unique)

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
            self.loss[self.unique[unique_index]] = loss
            for number in self.waiting[unique_index]:
                self.remaining[number] -= 1
                if self.remaining[number] == 0:
                    self._finish(number)

    def _finish(self, number: int) -> None:
        """Score a candidate whose passes are all done, re-running its passes one by one first
        when a ratio is large enough for batching noise to show (see ``PRECISE_ABOVE``)."""
        plan = self.plans[number]
        wanted = plan.wanted
        scores = self._scores(plan, wanted)
        if RIFD not in wanted and scores.get("ifd") is None:
            wanted = BOTH_SCORES
            self._run_exact(plan.passes_for(wanted).values(), rerun=False)
            scores = self._scores(plan, wanted)
        if needs_exact_passes(scores, self.precise_above):
            self._run_exact(plan.passes_for(wanted).values(), rerun=True)
            scores = self._scores(plan, wanted)
        self.results[plan.key] = scores
        if self.on_scored is not None:
            self.on_scored(plan.key, scores)

    def _run_exact(self, passes: Iterable[TokenPass], rerun: bool) -> None:
        """Run ``passes`` one at a time, unpadded: those without a loss, and with ``rerun`` the
        batched ones too (never a carried-forward loss, nor one already run exactly)."""
        for token_pass in passes:
            done = token_pass in self.exact or token_pass in self.carried
            if done or (token_pass in self.loss and not rerun):
                continue
            self.loss[token_pass] = self.exact_loss(token_pass)
            self.exact.add(token_pass)
            self.stats.exact_passes += 1
            self.stats.exact_tokens += len(token_pass.ids)

    def _scores(self, plan: CandidatePlan, wanted: tuple[str, ...]) -> Scores:
        loss = {role: self.loss.get(token_pass) for role, token_pass in plan.passes.items()}
        losses = CandidateLosses(
            output=loss.get("output"),
            output_given_instruction=loss.get("output_given_instruction"),
            instruction=loss.get("instruction"),
            instruction_given_output=loss.get("instruction_given_output"),
            ifd_problem=plan.ifd_problem,
            rifd_problem=plan.rifd_problem,
        )
        return scores_from_losses(losses, wanted)


def needs_exact_passes(scores: Scores, precise_above: float = PRECISE_ABOVE) -> bool:
    ratios = (scores.get("ifd"), scores.get("rifd"))
    return any(isinstance(r, float) and r > precise_above for r in ratios)
