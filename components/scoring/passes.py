"""Prompt-and-pass code shared by scoring, fine-tuning and quantization (no torch here).

A *pass* is one forward sequence of token ids and the position of its first target token. Texts
become passes with the reference tokenization (the whole text tokenized once; the target starts at
the token count of the text before it), an optional start token, and the truncation rule of
:mod:`rtune.components.scoring.scorer`'s docstring. The scorer runs passes through the model;
fine-tuning builds its training rows and quantization its calibration/held-out texts from the
same code, so all three read a record exactly alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rtune.components.scoring.config import START_TOKEN_AUTO, START_TOKEN_NONE
from rtune.components.scoring.formulas import BOTH_SCORES, IFD, RIFD
from rtune.components.scoring.templates import (
    PromptTemplate,
    adds_leading_special_token,
    scoring_texts,
)

ENDOFTEXT = "<|endoftext|>"
TRUNCATED = "truncated"
EMPTY_OUTPUT = "empty_output"
EMPTY_INSTRUCTION = "empty_instruction"
TOO_SHORT = "too_short"
MAX_PADDING = 0.1  # a shorter pass starts a new batch: cheaper than running its padding


# the passes each score reads (see :mod:`rtune.components.scoring.scorer`)
SCORE_ROLES = {
    IFD: ("output_given_instruction", "output"),
    RIFD: ("instruction_given_output", "instruction"),
}


@dataclass(frozen=True)
class ScoringCandidate:
    """One (instruction, input, output) to score, under a caller-chosen unique ``key``.

    ``scores``: which of IFD / r-IFD the caller's decision reads (only their passes are run);
    ``known``: (pass role, loss) pairs an earlier phase already computed for this candidate.
    """

    key: str
    instruction: str
    input: str
    output: str
    scores: tuple[str, ...] = BOTH_SCORES
    known: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TokenPass:
    """One forward sequence: token ids, and the position of the first target token."""

    ids: tuple[int, ...]
    start: int

    @property
    def n_targets(self) -> int:
        return len(self.ids) - self.start


@dataclass
class CandidatePlan:
    """The passes one candidate needs (role -> pass), and why a score cannot be computed."""

    key: str
    passes: dict[str, TokenPass] = field(default_factory=dict)
    ifd_problem: str | None = None
    rifd_problem: str | None = None
    wanted: tuple[str, ...] = BOTH_SCORES
    known: dict[str, float] = field(default_factory=dict)

    def passes_for(self, scores: tuple[str, ...]) -> dict[str, TokenPass]:
        """Role -> pass of the passes ``scores`` read (those the plan has)."""
        roles = {role for score in scores for role in SCORE_ROLES[score]}
        return {role: p for role, p in self.passes.items() if role in roles}


def resolve_start_ids(tokenizer: Any, start_token: str) -> list[int]:
    """The ids prepended to every pass: none if the tokenizer adds a BOS itself, else the start
    token (``auto``: ``<|endoftext|>`` if in the vocabulary, else bos, else eos)."""
    if start_token == START_TOKEN_NONE or adds_leading_special_token(tokenizer):
        return []
    vocab = tokenizer.get_vocab()
    if start_token == START_TOKEN_AUTO:
        for token in (ENDOFTEXT, tokenizer.bos_token, tokenizer.eos_token):
            if token and token in vocab:
                return [vocab[token]]
        return []
    if start_token not in vocab:
        raise ValueError(f"start_token {start_token!r} is not a token of the student's vocabulary")
    return [vocab[start_token]]


class PassBuilder:
    """Texts -> ``TokenPass`` with the reference tokenization and the truncation rule."""

    def __init__(self, tokenizer: Any, start_ids: Sequence[int], max_length: int) -> None:
        self.tokenizer = tokenizer
        self.start_ids = list(start_ids)
        self.max_length = max_length
        self.alone_start = max(len(self.encode("")), 1)

    def encode(self, text: str) -> list[int]:
        return self.start_ids + list(self.tokenizer.encode(text))

    def conditioned(self, prefix: str, target: str) -> tuple[TokenPass | None, bool]:
        """``prefix + target`` cut at ``max_length``; None if no target token is left.

        The first target position is at least 1: position 0 has nothing before it to predict it.
        """
        whole = self.encode(prefix + target)
        start = max(len(self.encode(prefix)), 1)
        truncated = len(whole) > self.max_length
        ids = whole[: self.max_length]
        if start >= len(ids):
            return None, truncated
        return TokenPass(tuple(ids), start), truncated

    def alone(self, target: str, max_targets: int | None) -> TokenPass | None:
        """``target`` alone, keeping at most ``max_targets`` target tokens (and ``max_length``)."""
        ids = self.encode(target)
        end = len(ids) if max_targets is None else min(len(ids), self.alone_start + max_targets)
        end = min(end, self.max_length)
        if self.alone_start >= end:
            return None
        return TokenPass(tuple(ids[:end]), self.alone_start)

    def pair(self, prefix: str, target: str, empty: str) -> tuple[TokenPass, TokenPass] | str:
        """The conditioned and alone passes of one score, or the reason it cannot be computed.

        When truncation cut into the target, the alone pass covers as many target tokens as
        the conditioned pass still has, so both perplexities are over the same span.
        """
        conditioned, truncated = self.conditioned(prefix, target)
        if conditioned is None:
            return TRUNCATED if truncated else empty
        alone = self.alone(target, conditioned.n_targets if truncated else None)
        if alone is None:
            return TOO_SHORT
        return conditioned, alone


def plan_candidate(
    builder: PassBuilder,
    template: PromptTemplate,
    candidate: ScoringCandidate,
    reverse_prompt: str,
) -> CandidatePlan:
    """The four passes of one candidate, or the reasons its IFD / r-IFD cannot be computed
    (all four are planned: tokenizing is cheap, and a scorer may need a score not asked for)."""
    plan = CandidatePlan(candidate.key, wanted=candidate.scores, known=dict(candidate.known))
    if not candidate.output.strip():
        plan.ifd_problem = plan.rifd_problem = EMPTY_OUTPUT
        return plan
    texts = scoring_texts(
        template,
        candidate.instruction,
        candidate.input,
        candidate.output,
        reverse_prompt,
        builder.tokenizer,
    )
    ifd = builder.pair(texts.prompt, texts.output, EMPTY_OUTPUT)
    if isinstance(ifd, str):
        plan.ifd_problem = ifd
    else:
        plan.passes["output_given_instruction"], plan.passes["output"] = ifd
    rifd: tuple[TokenPass, TokenPass] | str = EMPTY_INSTRUCTION
    if texts.instruction.strip():
        rifd = builder.pair(texts.reverse, texts.instruction, EMPTY_INSTRUCTION)
    if isinstance(rifd, str):
        plan.rifd_problem = rifd
    else:
        plan.passes["instruction_given_output"], plan.passes["instruction"] = rifd
    return plan


def batch_by_budget(
    lengths: Sequence[int], batch_tokens: int, max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Indices grouped longest-first so that rows x longest row <= ``batch_tokens`` and no row is
    padded by more than ``max_padding`` of the longest (padding is decoder work thrown away;
    a pass longer than the budget runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        longest = lengths[batches[-1][0]] if batches else 0
        fits = batches and (len(batches[-1]) + 1) * longest <= batch_tokens
        if fits and lengths[index] >= (1 - max_padding) * longest:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches
