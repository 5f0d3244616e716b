"""The scorer's two exactness rules, each checked fast on the tiny random model, bit for bit.

* Minimum GEMM size: every vocabulary projection has at least ``MIN_GEMM_ROWS`` rows, and a pass
  shorter than that runs alone and projects every position, so a pass run alone gets the very
  logits HF's forward gives it (BLAS picks another kernel, another summation order, for products
  of few rows: on x86 a 1- or 2-row product differs in the last bits).
* Precise re-run: a candidate whose batched IFD or r-IFD is above ``precise_above`` has its
  passes re-run one at a time, so its scores are the per-sample ones exactly.

The expected values are computed here from HF's own logits, not by the scorer's code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from rtune.components.scoring.config import ScoringConfig
from rtune.components.scoring.scorer import (
    MIN_GEMM_ROWS,
    ScoringCandidate,
    StudentScorer,
    TokenPass,
)

WORDS = ("the", "a", "cat", "dog", "runs", "fast", "slow", "red", "blue", "why", "how", "what")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    from rtune.components.common.models import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)


def hf_pass_loss(model: Any, token_pass: TokenPass) -> float:
    """Mean target cross-entropy from HF's full forward (logits of every position, one
    unpadded sequence), reduced as the scorer reduces: per token in fp32, mean in fp64."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([token_pass.ids])).logits[0].float()
    targets = torch.tensor(token_pass.ids[token_pass.start :])
    rows = logits[token_pass.start - 1 : len(token_pass.ids) - 1]
    token_losses = torch.nn.functional.cross_entropy(rows, targets, reduction="none")
    return float(token_losses.double().mean())


def random_passes(vocab: int, rng: random.Random) -> list[TokenPass]:
    """Passes shorter than, at and beyond MIN_GEMM_ROWS tokens, with 1, 2, 3, half or
    all-but-one target tokens (a few target rows is where the projection is widened). Many
    2- and 3-token passes: a last-bit change of the logits moves their loss only now and then."""
    lengths = [2, 3] * 20 + [5, MIN_GEMM_ROWS - 1, MIN_GEMM_ROWS, MIN_GEMM_ROWS + 1, 48]
    passes = []
    for length in lengths:
        for targets in sorted({1, 2, 3, length // 2, length - 1} & set(range(1, length))):
            ids = tuple(rng.randrange(vocab) for _ in range(length))
            passes.append(TokenPass(ids, length - targets))
    return passes


def test_a_pass_run_alone_gets_hfs_logits_bit_for_bit(tiny: tuple[Any, Any]) -> None:
    """Short passes (all positions projected) and long passes with few targets (the projection
    widened to MIN_GEMM_ROWS rows) both match HF exactly; without the rule some do not."""
    model, tokenizer = tiny
    scorer = StudentScorer(model, tokenizer, ScoringConfig())
    passes = random_passes(len(tokenizer), random.Random(0))
    mismatched = [
        (len(p.ids), p.n_targets) for p in passes if scorer.exact_loss(p) != hf_pass_loss(model, p)
    ]
    assert mismatched == []


def short_candidates(rng: random.Random, count: int) -> list[ScoringCandidate]:
    """Candidates of one or two words each: with template ``none`` every pass is short."""
    return [
        ScoringCandidate(f"short-{i}", rng.choice(WORDS), "", " ".join(rng.sample(WORDS, 2)))
        for i in range(count)
    ]


def long_candidates(rng: random.Random, count: int) -> list[ScoringCandidate]:
    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    return [ScoringCandidate(f"long-{i}", text(20), "", text(24)) for i in range(count)]


def test_short_passes_run_alone_whatever_the_batch_budget(tiny: tuple[Any, Any]) -> None:
    """Short passes next to many others under a large budget score exactly as when every pass
    runs on its own: they are never padded into a batch."""
    model, tokenizer = tiny
    rng = random.Random(11)
    short, long = short_candidates(rng, 8), long_candidates(rng, 4)
    config = ScoringConfig(template="none", batch_tokens=4096)
    batched, stats = StudentScorer(model, tokenizer, config).score(short + long, progress=False)
    alone_scorer = StudentScorer(model, tokenizer, ScoringConfig(template="none", batch_tokens=1))
    alone_scorer.share_prefixes = False
    alone, _ = alone_scorer.score(short, progress=False)
    short_passes = {
        p for c in short for p in alone_scorer.plan(c).passes.values() if len(p.ids) < MIN_GEMM_ROWS
    }
    assert len(short_passes) >= 8  # the candidates really are short
    assert stats.batches < stats.unique_passes  # the long passes did share batches
    for candidate in short:
        assert batched[candidate.key] == alone[candidate.key], candidate


def ratio_of(scores: dict[str, Any]) -> float:
    return max(r for r in (scores["ifd"], scores["rifd"]) if r is not None)


def test_candidates_above_the_precise_threshold_are_rerun_pass_by_pass(
    tiny: tuple[Any, Any],
) -> None:
    """The threshold is lowered between the tiny model's ratios (all near 1) so that exactly the
    two candidates with the highest ratio are above it: only their passes are re-run, and their
    scores then equal the per-sample ones exactly."""
    model, tokenizer = tiny
    rng = random.Random(5)
    candidates = long_candidates(rng, 10)
    config = ScoringConfig(template="none", batch_tokens=4096)
    unbatched = StudentScorer(model, tokenizer, ScoringConfig(template="none", batch_tokens=1))
    unbatched.share_prefixes = False
    expected, _ = unbatched.score(candidates, progress=False)
    ranked = sorted(expected, key=lambda key: ratio_of(expected[key]), reverse=True)
    above = ranked[:2]
    second, third = ratio_of(expected[ranked[1]]), ratio_of(expected[ranked[2]])
    assert second - third > 1e-4  # far wider than batching noise (~1e-6): a clear cut
    threshold = (second + third) / 2

    scorer = StudentScorer(model, tokenizer, config)
    scorer.precise_above = threshold
    got, stats = scorer.score(candidates, progress=False)

    rerun = {p for key in above for p in scorer.plan(_by_key(candidates, key)).passes.values()}
    assert stats.exact_passes == len(rerun) and stats.exact_tokens == sum(len(p.ids) for p in rerun)
    for key in above:
        assert got[key] == expected[key]  # bit for bit: the per-sample computation
    assert all(ratio_of(got[key]) < threshold for key in ranked[2:])


def _by_key(candidates: list[ScoringCandidate], key: str) -> ScoringCandidate:
    return next(c for c in candidates if c.key == key)


def test_a_padded_batch_needs_no_mask_and_its_pads_are_never_read(tiny: tuple[Any, Any]) -> None:
    """Passes of different lengths in one right-padded batch: their losses do not change with
    the pad token (a pad is never attended to, so no mask is needed), match each pass run alone,
    and the decoder is called without an attention mask (the faster causal kernel path)."""
    model, tokenizer = tiny
    rng = random.Random(3)
    vocab = len(tokenizer)
    passes = [
        TokenPass(tuple(rng.randrange(vocab) for _ in range(n)), n // 2) for n in (40, 33, 27, 20)
    ]
    scorer = StudentScorer(model, tokenizer, ScoringConfig())
    calls: list[dict[str, Any]] = []
    decoder = scorer.decoder

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return decoder(**kwargs)

    scorer.decoder = spy
    batched = []
    for pad in (0, 1, vocab - 1):
        scorer.pad_id = pad
        batched.append(scorer.forward_losses(passes))
    assert batched[0] == batched[1] == batched[2]
    assert all(call.get("attention_mask") is None for call in calls)
    alone = [scorer.exact_loss(p) for p in passes]
    assert batched[0] == pytest.approx(alone, abs=1e-5)
