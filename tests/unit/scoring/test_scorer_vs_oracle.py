"""The fast scorer agrees with the per-sample HF-loss oracle within 1e-4 on IFD and r-IFD.

On the real embedded model for every template (a handful of varied records: with/without input,
a 1-token output, targets truncated in part and to nothing, duplicates, an empty output), and on
the tiny random model for broader cases (many batches, no start token, heavy truncation).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rtune.components.scoring.config import ScoringConfig
from rtune.components.scoring.formulas import LOSS_FIELDS
from rtune.components.scoring.scorer import ScoringCandidate, StudentScorer, batch_by_budget
from tests.scoring_oracle import oracle_scores

TOLERANCE = 1e-4
LONG_TEXT = (
    "The city council met on Tuesday to discuss the new budget, which includes funding for "
    "parks, libraries, road repairs and a pilot programme for electric buses. Several residents "
    "spoke in favour of the library funding, while others asked for more money for snow removal "
    "and for the repair of the old bridge over the river near the market square. "
) * 2

VARIED_RECORDS = [
    ("Give three tips for staying healthy.", "", "1. Eat well.\n2. Move daily.\n3. Sleep."),
    ("Translate to French.", "Good morning, my friend.", "Bonjour, mon ami."),
    ("What is 2 + 2? Answer with one number.", "", "4"),
    ("Summarise this text: " + LONG_TEXT, "", "The council discussed its budget."),
    ("Describe the meeting.", "", LONG_TEXT),
    ("Give three tips for staying healthy.", "", "1. Eat well.\n2. Move daily.\n3. Sleep."),
    ("List healthy habits.", "", "1. Eat well.\n2. Move daily.\n3. Sleep."),
    ("Say nothing.", "", ""),
]


def candidates_of(records: Sequence[tuple[str, str, str]]) -> list[ScoringCandidate]:
    return [ScoringCandidate(str(i), *record) for i, record in enumerate(records)]


def assert_agrees_with_oracle(
    scorer: StudentScorer, records: Sequence[tuple[str, str, str]]
) -> dict[str, dict[str, Any]]:
    """Fast scores of ``records`` equal the oracle's: same nulls/reasons, values within 1e-4."""
    fast, _ = scorer.score(candidates_of(records), progress=False)
    for index, (instruction, input_text, output) in enumerate(records):
        slow = oracle_scores(
            scorer.model, scorer.tokenizer, scorer.config, instruction, input_text, output
        )
        got = fast[str(index)]
        assert got["reason"] == slow["reason"], (index, got, slow)
        for name in ("ifd", "rifd", "ifd_loss", "rifd_loss", *LOSS_FIELDS):
            if slow[name] is None:
                assert got[name] is None, (index, name)
            else:
                assert got[name] == pytest.approx(slow[name], abs=TOLERANCE), (index, name)
    return fast


@pytest.fixture(scope="module")
def embedded(embedded_model_dir: Path) -> tuple[Any, Any]:
    from rtune.components.common.models import load_causal_lm, load_tokenizer

    return load_causal_lm(embedded_model_dir), load_tokenizer(embedded_model_dir)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    from rtune.components.common.models import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)


@pytest.mark.slow
@pytest.mark.parametrize("template", ["vicuna", "alpaca", "wizardlm", "chat", "none"])
def test_embedded_model_matches_oracle_for_every_template(
    embedded: tuple[Any, Any], template: str
) -> None:
    model, tokenizer = embedded
    config = ScoringConfig(template=template, max_length=128, batch_tokens=512)
    scorer = StudentScorer(model, tokenizer, config)
    fast = assert_agrees_with_oracle(scorer, VARIED_RECORDS)
    assert fast["2"]["ifd"] is not None  # a 1-token output is scored, not NaN
    assert fast["3"]["reason"] == "ifd: truncated"  # the prompt alone fills max_length
    assert fast["3"]["rifd"] is not None  # the instruction is cut, not lost
    assert fast["4"]["ifd"] is not None and fast["4"]["reason"] == "rifd: truncated"
    assert fast["7"]["reason"] == "empty_output"
    assert fast["0"] == fast["5"]


@pytest.mark.slow
def test_identical_passes_are_computed_once(embedded: tuple[Any, Any]) -> None:
    model, tokenizer = embedded
    scorer = StudentScorer(model, tokenizer, ScoringConfig(max_length=256))
    records = VARIED_RECORDS[:3] + VARIED_RECORDS[5:7]  # 0 == 5; 6 shares 0's output
    _, stats = scorer.score(candidates_of(records), progress=False)
    assert stats.passes == 4 * len(records)
    # record 5 repeats all four passes of 0; record 6 repeats the alone pass of 0's output
    assert stats.unique_passes == stats.passes - 4 - 1
    assert stats.shared_prefix_tokens > 0  # the vicuna system prompt is run once


def test_tiny_model_matches_oracle_on_many_random_records(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    records = random_records(random.Random(7), 40)
    for config in (
        ScoringConfig(template="vicuna", max_length=96, batch_tokens=64),
        ScoringConfig(template="alpaca", max_length=48, batch_tokens=256, start_token="none"),
        ScoringConfig(template="chat", max_length=160, batch_tokens=1024),
        ScoringConfig(
            template="wizardlm", max_length=40, reverse_prompt="Instruction of: {output}"
        ),
        ScoringConfig(template="none", max_length=2048, batch_tokens=1),
    ):
        assert_agrees_with_oracle(StudentScorer(model, tokenizer, config), records)


def test_scores_do_not_depend_on_batching_or_prefix_sharing(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    records = random_records(random.Random(3), 12)
    reference = StudentScorer(model, tokenizer, ScoringConfig(batch_tokens=1))
    reference.share_prefixes = False
    expected, _ = reference.score(candidates_of(records), progress=False)
    got, stats = StudentScorer(model, tokenizer, ScoringConfig(batch_tokens=4096)).score(
        candidates_of(records), progress=False
    )
    assert stats.batches < stats.unique_passes  # some passes did share a batch
    for key, scores in expected.items():
        assert got[key]["ifd"] == pytest.approx(scores["ifd"], abs=1e-5)
        assert got[key]["rifd"] == pytest.approx(scores["rifd"], abs=1e-5)


def test_each_candidate_is_reported_once_as_it_completes(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    seen: list[str] = []
    records = random_records(random.Random(5), 10)
    results, _ = StudentScorer(model, tokenizer, ScoringConfig(batch_tokens=128)).score(
        candidates_of(records), on_scored=lambda key, _: seen.append(key), progress=False
    )
    assert sorted(seen) == sorted(results) == sorted(str(i) for i in range(len(records)))


def test_a_model_whose_logits_are_not_the_head_is_refused(tiny_model_dir: Path) -> None:
    from rtune.components.common.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_model_dir)
    model.config.final_logit_softcapping = 0.5  # the scorer would cap, the model does not
    with pytest.raises(ValueError, match="not lm_head"):
        StudentScorer(model, load_tokenizer(tiny_model_dir), ScoringConfig())


def test_batches_respect_the_token_budget_and_the_padding_limit() -> None:
    lengths = [5, 30, 12, 12, 7, 40, 1, 11, 29]
    batches = batch_by_budget(lengths, 36, max_padding=0.2)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == longest
        assert len(batch) == 1 or len(batch) * longest <= 36
        assert all(lengths[i] >= 0.8 * longest for i in batch)
    assert batches[0] == [5]  # longer than the budget: runs alone
    assert [12, 12, 11] in [[lengths[i] for i in batch] for batch in batches]


WORDS = ("the", "a", "cat", "dog", "runs", "fast", "slow", "red", "blue", "why", "how", "what")


def random_records(rng: random.Random, count: int) -> list[tuple[str, str, str]]:
    """Records with random lengths; some with input, 1-token or empty outputs, duplicates."""

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    records = []
    for index in range(count):
        output = rng.choice([text(1, 60), text(1, 3), "ok", ""]) if index % 5 == 0 else text(1, 60)
        records.append((text(1, 25), text(1, 12) if rng.random() < 0.4 else "", output))
    return records + records[:3]
