"""One prompt format: the saved tokenizer's chat template renders exactly the training format.

A chat client (vLLM's /v1/chat/completions, mlflow.pyfunc, lm-eval) renders the conversation
with the tokenizer's ``chat_template`` and tokenizes the text without special tokens
(``apply_chat_template(..., tokenize=True)`` does the same); the ids must be those the student
was fine-tuned on (``tokenize_record``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.response_format import REFLECTION_SYSTEM_PROMPT, training_answer
from rtune.components.finetune.data import tokenize_record
from rtune.components.scoring.chat_templates import install_chat_template
from rtune.components.scoring.passes import resolve_start_ids
from rtune.components.scoring.templates import VICUNA_SYSTEM, get_template, user_message

FORMATS = ("vicuna", "alpaca", "wizardlm", "none", "chat")
FIRST = {"id": "r1", "instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5."}
WITH_INPUT = {"id": "r2", "instruction": "Sum these.", "input": "4, 5", "output": "9"}
SECOND = "And 4 and 5?"


@pytest.fixture(scope="module", params=["no-bos", "bos"])
def tokenizer(request: pytest.FixtureRequest, embedded_model_dir: Path) -> Any:
    """The embedded tokenizer (adds no BOS: training prepends ``<|endoftext|>``), and the same
    tokenizer made to add a BOS of its own (as Llama-2's does)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(embedded_model_dir)
    if request.param == "bos":
        bos, bos_id = loaded.bos_token, loaded.bos_token_id
        loaded._tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bos_id)]
        )
        assert loaded.encode("a")[0] == bos_id
    return loaded


def saved_with_template(tokenizer: Any, template: str, folder: Path) -> Any:
    """The tokenizer as a fine-tuned model folder holds it: template installed, saved, reloaded."""
    from transformers import AutoTokenizer

    tokenizer = install_chat_template(copy.deepcopy(tokenizer), template)
    tokenizer.save_pretrained(folder)
    reloaded = AutoTokenizer.from_pretrained(folder)
    return reloaded


def chat_ids(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation
    )
    return list(tokenizer.encode(rendered, add_special_tokens=False))


def training_example(tokenizer: Any, record: dict[str, str], template: str) -> tuple[list, int]:
    """The fine-tune ids of ``record`` and where its response starts."""
    start_ids = resolve_start_ids(tokenizer, "auto")
    example, _ = tokenize_record(record, tokenizer, template, 512, start_ids)
    assert example is not None
    first_target = next(i for i, label in enumerate(example.labels) if label != -100)
    return list(example.input_ids), first_target


@pytest.mark.parametrize("record", [FIRST, WITH_INPUT], ids=["no-input", "input"])
@pytest.mark.parametrize("template", FORMATS)
def test_one_turn_renders_the_training_prompt(
    tokenizer: Any, template: str, record: dict[str, str], tmp_path: Path
) -> None:
    ids, first_target = training_example(tokenizer, record, template)
    served = saved_with_template(tokenizer, template, tmp_path)
    message = user_message(get_template(template), record["instruction"], record["input"])
    user = [{"role": "user", "content": message}]
    assert chat_ids(served, user, generation=True) == ids[:first_target]
    whole = [*user, {"role": "assistant", "content": record["output"]}]
    if template != "chat":  # the student's own template may add text after its end token
        assert chat_ids(served, whole, generation=False) == ids


@pytest.mark.parametrize("template", ["vicuna", "alpaca", "wizardlm", "none"])
def test_earlier_turns_render_as_their_training_examples(
    tokenizer: Any, template: str, tmp_path: Path
) -> None:
    """A conversation = the first turn's training example, then each later user turn without
    the system preamble, ending with the generation prompt."""
    first_ids, _ = training_example(tokenizer, FIRST, template)
    served = saved_with_template(tokenizer, template, tmp_path)
    fmt = get_template(template)
    conversation = [
        {"role": "user", "content": FIRST["instruction"]},
        {"role": "assistant", "content": FIRST["output"]},
        {"role": "user", "content": SECOND},
    ]
    later = tokenizer.encode(fmt.user_open + SECOND + fmt.assistant_open, add_special_tokens=False)
    assert chat_ids(served, conversation, generation=True) == first_ids + later


def test_vicuna_conversation_is_fastchats(embedded_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    served = saved_with_template(
        AutoTokenizer.from_pretrained(embedded_model_dir), "vicuna", tmp_path
    )
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Who are you?"},
    ]
    text = served.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    eos = served.eos_token
    assert text == (
        f"<|endoftext|>{VICUNA_SYSTEM} USER: Hi ASSISTANT: Hello.{eos}USER: Who are you? ASSISTANT:"
    )
    system = [{"role": "system", "content": "Be brief."}, *conversation[:1]]
    text = served.apply_chat_template(system, tokenize=False, add_generation_prompt=True)
    assert text == "<|endoftext|>Be brief. USER: Hi ASSISTANT:"


def test_alpaca_picks_its_input_preamble_from_the_first_message(
    embedded_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    served = saved_with_template(
        AutoTokenizer.from_pretrained(embedded_model_dir), "alpaca", tmp_path
    )
    alpaca = get_template("alpaca")
    for record in (FIRST, WITH_INPUT):
        message = user_message(alpaca, record["instruction"], record["input"])
        text = served.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )
        pattern = alpaca.with_input if record["input"] else alpaca.without_input
        expected = pattern.format(instruction=record["instruction"], input=record["input"])
        assert text == "<|endoftext|>" + expected


def test_vicuna_trains_with_fastchats_space_and_scores_bare(embedded_model_dir: Path) -> None:
    """Training writes ``ASSISTANT: answer`` (FastChat); scoring keeps the reference's
    ``ASSISTANT:answer`` byte for byte."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    ids, _ = training_example(tokenizer, FIRST, "vicuna")
    assert tokenizer.decode(ids).endswith(" ASSISTANT: 2 + 3 = 5." + tokenizer.eos_token)
    ids, _ = training_example(tokenizer, FIRST, "alpaca")
    assert tokenizer.decode(ids).endswith("### Response:2 + 3 = 5." + tokenizer.eos_token)


@pytest.mark.parametrize("template", ["vicuna", "chat"])
def test_the_registered_pyfunc_prompts_as_trained(
    tokenizer: Any, template: str, tmp_path: Path
) -> None:
    """mlflow.pyfunc's StudentChatModel sends the training prompt's ids (no second BOS)."""
    from rtune.components.finetune.registry import chat_prompt_ids

    ids, first_target = training_example(tokenizer, FIRST, template)
    served = saved_with_template(tokenizer, template, tmp_path)
    assert chat_prompt_ids(served, FIRST["instruction"]) == ids[:first_target]


TAGGED = {
    "id": "r3",
    "instruction": "Add 2 and 3.",
    "input": "",
    "output": "<thinking>\n2 + 3: count on from 2.\n</thinking>\n<output>\n5\n</output>",
}


@pytest.mark.parametrize("record", [TAGGED, WITH_INPUT], ids=["tagged", "untagged-input"])
@pytest.mark.parametrize("template", FORMATS)
def test_reflection_format_serves_its_system_prompt_as_trained(
    tokenizer: Any, template: str, record: dict[str, str], tmp_path: Path
) -> None:
    """Under ``response_format: reflection`` the training prompt carries the reflection system
    prompt, and the saved chat template renders it for a client that sends no system message:
    served ids == training ids; the trained response is the tagged answer (an untagged one is
    trained as ``<output>…</output>``)."""
    start_ids = resolve_start_ids(tokenizer, "auto")
    example, _ = tokenize_record(record, tokenizer, template, 512, start_ids, "reflection")
    plain, _ = tokenize_record(record, tokenizer, template, 512, start_ids)
    assert example is not None and plain is not None
    first_target = next(i for i, label in enumerate(example.labels) if label != -100)
    ids = list(example.input_ids)
    assert REFLECTION_SYSTEM_PROMPT in tokenizer.decode(ids[:first_target])
    assert REFLECTION_SYSTEM_PROMPT not in tokenizer.decode(plain.input_ids)
    assert training_answer(record["output"], "reflection") in tokenizer.decode(ids[first_target:])
    assert "<output>" in tokenizer.decode(ids[first_target:])

    served = install_chat_template(copy.deepcopy(tokenizer), template, "reflection")
    served.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    served = AutoTokenizer.from_pretrained(tmp_path)
    message = user_message(get_template(template), record["instruction"], record["input"])
    user = [{"role": "user", "content": message}]
    assert chat_ids(served, user, generation=True) == ids[:first_target]
    system = [{"role": "system", "content": REFLECTION_SYSTEM_PROMPT}, *user]
    assert chat_ids(served, system, generation=True) == ids[:first_target]
    if template != "chat":
        whole = [
            *user,
            {"role": "assistant", "content": training_answer(record["output"], "reflection")},
        ]
        assert chat_ids(served, whole, generation=False) == ids


def test_reinstalling_the_reflection_template_changes_nothing(embedded_model_dir: Path) -> None:
    """Quantize installs the template again on the fine-tuned tokenizer: the default system turn
    and the start token are put in front once."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    once = install_chat_template(tokenizer, "chat", "reflection").chat_template
    twice = install_chat_template(tokenizer, "chat", "reflection").chat_template
    assert once == twice
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.count(REFLECTION_SYSTEM_PROMPT) == 1 and text.count("<|endoftext|>") == 1
