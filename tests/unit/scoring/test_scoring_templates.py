"""Prompt templates, the scoring config, and the reference tokenization/truncation rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.config import from_dict
from rtune.components.common.records import InputError
from rtune.components.scoring.config import ScoringConfig
from rtune.components.scoring.scorer import (
    EMPTY_INSTRUCTION,
    EMPTY_OUTPUT,
    TOO_SHORT,
    TRUNCATED,
    PassBuilder,
    ScoringCandidate,
    plan_candidate,
    resolve_start_ids,
)
from rtune.components.scoring.templates import (
    DEFAULT_REVERSE_PROMPT,
    TEMPLATES,
    VICUNA_SYSTEM,
    get_template,
    instruction_target,
    render_prompt,
    render_reverse_prompt,
    scoring_texts,
)

VICUNA = get_template("vicuna")


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir: Path) -> Any:
    from rtune.components.common.models import load_tokenizer

    return load_tokenizer(embedded_model_dir)


class CharTokenizer:
    """One token per character (id = code point), optionally with a BOS of its own (id 1)."""

    bos_token = "<s>"
    eos_token = "</s>"
    chat_template = None

    def __init__(self, adds_bos: bool) -> None:
        self.adds_bos = adds_bos

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if self.adds_bos and add_special_tokens else []) + [ord(c) for c in text]

    def get_vocab(self) -> dict[str, int]:
        return {"<s>": 1, "</s>": 2, "<pad>": 3}


def test_one_table_holds_every_template() -> None:
    assert set(TEMPLATES) == {"vicuna", "alpaca", "wizardlm", "chat", "none"}


def test_vicuna_is_the_reference_fastchat_prompt() -> None:
    assert VICUNA_SYSTEM == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions."
    )
    assert render_prompt(VICUNA, "Add.", "") == VICUNA_SYSTEM + " USER: Add. ASSISTANT:"
    assert render_prompt(VICUNA, "Add.", "2, 3") == (
        VICUNA_SYSTEM + " USER: Add.\nInput:\n2, 3 ASSISTANT:"
    )
    # the reference concatenates instruction and input with no separator as the r-IFD target
    assert instruction_target(VICUNA, "Add.", "2, 3") == "Add.2, 3"
    assert instruction_target(VICUNA, "Add.", "") == "Add."


def test_alpaca_wizardlm_and_none_prompts() -> None:
    alpaca = get_template("alpaca")
    assert render_prompt(alpaca, "Add.", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nAdd.\n\n### Response:"
    )
    assert render_prompt(alpaca, "Add.", "2, 3") == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n2, 3\n\n### Response:"
    )
    assert render_prompt(get_template("wizardlm"), "Add.", "") == "Add.\n\n### Response:"
    assert render_prompt(get_template("wizardlm"), "Add.", "2") == "Add.\n2\n\n### Response:"
    assert render_prompt(get_template("none"), "Add.", "") == "Add.\n"
    assert render_prompt(get_template("none"), "Add.", "2") == "Add.\n2\n"
    assert instruction_target(alpaca, "Add.", "2, 3") == "Add.\n\n2, 3"


def test_chat_uses_the_student_tokenizers_template(tokenizer: Any) -> None:
    chat = get_template("chat")
    prompt = render_prompt(chat, "Add.", "2, 3", tokenizer)
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Add.\n\n2, 3"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == expected
    assert prompt.endswith("<|im_start|>user\nAdd.\n\n2, 3<|im_end|>\n<|im_start|>assistant\n")


def test_chat_without_a_chat_template_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs a student tokenizer with a chat template"):
        render_prompt(get_template("chat"), "Add.", "", CharTokenizer(adds_bos=False))


def test_reverse_prompt_wraps_the_output_in_the_same_template() -> None:
    reverse = render_reverse_prompt(VICUNA, DEFAULT_REVERSE_PROMPT, "5")
    assert reverse == VICUNA_SYSTEM + (
        " USER: Below is the response to an instruction, please guess the corresponding "
        "instruction for the given response.\n5\nGenerate the instruction for the above response."
        " ASSISTANT:"
    )
    # only {output} is replaced: braces in the wording or the response stay as they are
    custom = render_reverse_prompt(get_template("none"), "Q for {output} in {json}?", "{'a': 1}")
    assert custom == "Q for {'a': 1} in {json}?\n"


def test_scoring_texts_hold_the_four_texts() -> None:
    texts = scoring_texts(VICUNA, "Add.", "2, 3", "5", "Guess: {output}")
    assert texts.prompt == render_prompt(VICUNA, "Add.", "2, 3")
    assert texts.output == "5"
    assert texts.reverse == VICUNA_SYSTEM + " USER: Guess: 5 ASSISTANT:"
    assert texts.instruction == "Add.2, 3"


def test_config_rejects_an_unknown_template_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown template 'llama'.*'alpaca', 'chat'"):
        ScoringConfig(template="llama")
    with pytest.raises(InputError, match="valid templates are"):
        from_dict(ScoringConfig, {"template": "llama"}, "flags")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("reverse_prompt", "Guess the instruction.", "must contain {output}"),
        ("max_length", 0, "max_length"),
        ("batch_tokens", 0, "batch_tokens"),
        ("dtype", "int8", "unknown dtype"),
        ("start_token", "", "start_token"),
    ],
)
def test_config_validation(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScoringConfig(**{field: value})


def test_config_defaults_are_the_reference_settings() -> None:
    config = ScoringConfig()
    assert (config.model, config.template, config.max_length) == ("default", "vicuna", 2048)
    assert (config.dtype, config.start_token) == ("float32", "auto")
    assert "{output}" in config.reverse_prompt
    assert "batch_tokens" not in config.result_fields()


def test_start_token_auto_uses_endoftext_when_no_bos_is_added(tokenizer: Any) -> None:
    assert tokenizer.encode("a") == tokenizer.encode("a", add_special_tokens=False)
    assert resolve_start_ids(tokenizer, "auto") == [tokenizer.get_vocab()["<|endoftext|>"]]
    assert resolve_start_ids(tokenizer, "<|im_start|>") == [tokenizer.get_vocab()["<|im_start|>"]]
    assert resolve_start_ids(tokenizer, "none") == []
    with pytest.raises(ValueError, match="not a token"):
        resolve_start_ids(tokenizer, "<|no such token|>")


def test_no_start_token_when_the_tokenizer_adds_a_bos_itself() -> None:
    assert resolve_start_ids(CharTokenizer(adds_bos=True), "auto") == []
    assert resolve_start_ids(CharTokenizer(adds_bos=False), "auto") == [1]  # bos, not in text


def test_target_starts_at_the_token_count_of_the_text_before_it(tokenizer: Any) -> None:
    builder = PassBuilder(tokenizer, [0], max_length=2048)
    prefix, target = VICUNA_SYSTEM + " USER: Say hi. ASSISTANT:", " Hello there!"
    conditioned, truncated = builder.conditioned(prefix, target)
    assert conditioned is not None and not truncated
    assert list(conditioned.ids) == [0, *tokenizer.encode(prefix + target)]
    assert conditioned.start == 1 + len(tokenizer.encode(prefix))
    alone = builder.alone(target, None)
    assert alone is not None
    assert list(alone.ids) == [0, *tokenizer.encode(target)] and alone.start == 1


def test_bos_tokenizer_start_counts_its_bos() -> None:
    builder = PassBuilder(CharTokenizer(adds_bos=True), [], max_length=100)
    conditioned, _ = builder.conditioned("ab", "cd")
    assert conditioned is not None
    assert conditioned.ids == (1, 97, 98, 99, 100) and conditioned.start == 3
    alone = builder.alone("cd", None)
    assert alone is not None and alone.ids == (1, 99, 100) and alone.start == 1


def test_truncation_keeps_the_same_number_of_target_tokens_alone() -> None:
    builder = PassBuilder(CharTokenizer(adds_bos=False), [1], max_length=8)
    pair = builder.pair("abc", "defghijk", EMPTY_OUTPUT)
    assert not isinstance(pair, str)
    conditioned, alone = pair
    assert len(conditioned.ids) == 8 and conditioned.start == 4 and conditioned.n_targets == 4
    assert alone.ids == (1, *map(ord, "defg")) and alone.n_targets == 4


def test_a_target_truncated_away_is_unscorable_with_reason_truncated() -> None:
    builder = PassBuilder(CharTokenizer(adds_bos=False), [1], max_length=4)
    assert builder.pair("abcdef", "xyz", EMPTY_OUTPUT) == TRUNCATED


def test_a_one_token_target_alone_is_scorable_only_with_a_start_token() -> None:
    with_start = PassBuilder(CharTokenizer(adds_bos=False), [1], max_length=50)
    pair = with_start.pair("ab", "c", EMPTY_OUTPUT)
    assert not isinstance(pair, str) and pair[1].ids == (1, 99) and pair[1].n_targets == 1
    without = PassBuilder(CharTokenizer(adds_bos=False), [], max_length=50)
    assert without.pair("ab", "c", EMPTY_OUTPUT) == TOO_SHORT


def test_plan_reports_empty_output_and_empty_instruction(tokenizer: Any) -> None:
    builder = PassBuilder(tokenizer, [0], max_length=2048)
    empty_output = plan_candidate(
        builder, VICUNA, ScoringCandidate("k", "Say hi.", "", "  "), DEFAULT_REVERSE_PROMPT
    )
    assert (empty_output.ifd_problem, empty_output.rifd_problem) == (EMPTY_OUTPUT, EMPTY_OUTPUT)
    assert empty_output.passes == {}
    no_instruction = plan_candidate(
        builder, VICUNA, ScoringCandidate("k", " ", "", "Hello"), DEFAULT_REVERSE_PROMPT
    )
    assert no_instruction.rifd_problem == EMPTY_INSTRUCTION and no_instruction.ifd_problem is None
    assert set(no_instruction.passes) == {"output", "output_given_instruction"}
