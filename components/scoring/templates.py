"""Prompt templates for student scoring: one data-driven table, not one function per variant.

Scoring needs two conditioned texts per candidate (instruction ``x`` = instruction + input,
response ``y``):

* ``P(x) + y`` — the templated prompt followed by the response (target ``y``), for IFD;
* ``R(y) + x`` — the *reverse prompt* (a request to guess the instruction of ``y``, wrapped in the
  same template as a no-input prompt) followed by the instruction (target ``x``), for r-IFD;

and the two targets alone (``y`` and ``x``). The texts of the reference implementation
(Reflection-Tuning ``selection_code/data_analysis.py``) are kept verbatim for ``vicuna``,
``alpaca`` and ``wizardlm``; ``none`` is Cherry LLM's bare prompt; ``chat`` renders the user turn
with the student tokenizer's own chat template (generation prompt included, so the response is
exactly what follows the prompt).

The reference joins instruction and input with *no* separator when the instruction is the target
(``instruct_i_ori + input_i``); ``vicuna`` keeps that, the other templates use the same separator
their prompt puts between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
)
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)

OUTPUT_PLACEHOLDER = "{output}"
DEFAULT_REVERSE_PROMPT = (
    "Below is the response to an instruction, please guess the corresponding instruction for the "
    "given response.\n{output}\nGenerate the instruction for the above response."
)


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt format, as the parts of a conversation: how an instruction (and optional input)
    becomes the prompt ``P(x)``, and how the served model's chat template renders a conversation.

    ``P(x) = system + user_open + message + assistant_open`` with ``message`` the instruction, or
    ``message_with_input`` (``str.format`` over ``{instruction}`` and ``{input}``) when there is an
    input; ``system_with_input`` replaces ``system`` then (Alpaca's preamble differs). With
    ``chat`` set, ``message`` is the *user message* the tokenizer's chat template wraps.
    ``joiner`` separates instruction and input when they are the r-IFD target.

    ``response_prefix`` goes between ``P(x)`` and the response in *training* and serving (FastChat
    writes ``ASSISTANT: answer``); scoring joins them bare, as the reference does.

    A *system turn* (a chat's leading system message, or the system prompt of a response format)
    replaces the preamble: ``system turn + system_join + user_open + message + assistant_open``.
    """

    name: str
    message_with_input: str
    joiner: str
    system: str = ""
    user_open: str = ""
    assistant_open: str = ""
    system_with_input: str | None = None
    response_prefix: str = ""
    system_join: str = "\n\n"
    chat: bool = False
    description: str = ""

    @property
    def with_input(self) -> str:
        """``P(x)`` as a ``str.format`` pattern when the record has an input."""
        system = self.system if self.system_with_input is None else self.system_with_input
        return system + self.user_open + self.message_with_input + self.assistant_open

    @property
    def without_input(self) -> str:
        """``P(x)`` as a ``str.format`` pattern when the record has no input."""
        return self.system + self.user_open + "{instruction}" + self.assistant_open

    @property
    def input_marker(self) -> str:
        """The text the user message puts between instruction and input."""
        return self.message_with_input.split("{instruction}", 1)[1].split("{input}", 1)[0]


TEMPLATES: dict[str, PromptTemplate] = {
    template.name: template
    for template in (
        PromptTemplate(
            name="vicuna",
            message_with_input="{instruction}\nInput:\n{input}",
            joiner="",
            system=VICUNA_SYSTEM + " ",
            user_open="USER: ",
            assistant_open=" ASSISTANT:",
            response_prefix=" ",
            system_join=" ",
            description="FastChat v1.1 (the reference default)",
        ),
        PromptTemplate(
            name="alpaca",
            message_with_input="{instruction}\n\n### Input:\n{input}",
            joiner="\n\n",
            system=ALPACA_PREAMBLE,
            system_with_input=ALPACA_PREAMBLE_INPUT,
            user_open="### Instruction:\n",
            assistant_open="\n\n### Response:",
            description="Stanford Alpaca",
        ),
        PromptTemplate(
            name="wizardlm",
            message_with_input="{instruction}\n{input}",
            joiner="\n",
            assistant_open="\n\n### Response:",
            description="WizardLM",
        ),
        PromptTemplate(
            name="chat",
            message_with_input="{instruction}\n\n{input}",
            joiner="\n\n",
            chat=True,
            description="the student tokenizer's own chat template (user turn + generation prompt)",
        ),
        PromptTemplate(
            name="none",
            message_with_input="{instruction}\n{input}",
            joiner="\n",
            assistant_open="\n",
            description="no template (Cherry LLM 'none')",
        ),
    )
}


def get_template(name: str) -> PromptTemplate:
    """The template called ``name``; an unknown name is an error listing the valid ones."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown template {name!r}; valid templates are {sorted(TEMPLATES)}"
        ) from None


def render_prompt(
    template: PromptTemplate,
    instruction: str,
    input_text: str = "",
    tokenizer: Any = None,
    system: str = "",
) -> str:
    """``P(x)``: the prompt the response follows (with or without the input section); a
    ``system`` turn replaces the template's preamble (scoring never passes one)."""
    message = user_message(template, instruction, input_text)
    if template.chat:
        return _render_chat_turn(message, tokenizer, system)
    if system:
        return (
            system + template.system_join + template.user_open + message + template.assistant_open
        )
    pattern = template.with_input if input_text else template.without_input
    return pattern.format(instruction=instruction, input=input_text)


def user_message(template: PromptTemplate, instruction: str, input_text: str = "") -> str:
    """The user turn's content for an (instruction, input) pair: what a client sends to the
    served model's ``/v1/chat/completions`` to prompt it as it was trained."""
    if not input_text:
        return instruction
    return template.message_with_input.format(instruction=instruction, input=input_text)


def instruction_target(template: PromptTemplate, instruction: str, input_text: str = "") -> str:
    """``x`` as an r-IFD target: instruction and input joined by the template's ``joiner``."""
    return instruction + template.joiner + input_text if input_text else instruction


def render_reverse_prompt(
    template: PromptTemplate, reverse_prompt: str, output: str, tokenizer: Any = None
) -> str:
    """``R(y)``: the reverse request with ``{output}`` replaced by ``y``, as a no-input prompt.

    Only the literal ``{output}`` is replaced, so braces elsewhere in the wording or in ``y``
    are kept as they are.
    """
    return render_prompt(
        template, reverse_prompt.replace(OUTPUT_PLACEHOLDER, output), "", tokenizer
    )


@dataclass(frozen=True)
class ScoringTexts:
    """The texts of one candidate: conditioned passes are ``prompt + output`` (target ``output``)
    and ``reverse + instruction`` (target ``instruction``); the alone passes are the targets."""

    prompt: str
    output: str
    reverse: str
    instruction: str


def scoring_texts(
    template: PromptTemplate,
    instruction: str,
    input_text: str,
    output: str,
    reverse_prompt: str = DEFAULT_REVERSE_PROMPT,
    tokenizer: Any = None,
) -> ScoringTexts:
    """All texts needed to score one (instruction, input, output) candidate."""
    return ScoringTexts(
        prompt=render_prompt(template, instruction, input_text, tokenizer),
        output=output,
        reverse=render_reverse_prompt(template, reverse_prompt, output, tokenizer),
        instruction=instruction_target(template, instruction, input_text),
    )


def _render_chat_turn(message: str, tokenizer: Any, system: str = "") -> str:
    """One user turn (after a ``system`` turn, when given) through the tokenizer's chat template,
    ending with the generation prompt.

    Templates that write the BOS token as text (Llama-3) would get a second BOS from a tokenizer
    that also adds one itself; the textual one is removed in that case.
    """
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "template 'chat' needs a student tokenizer with a chat template; "
            "use --template vicuna|alpaca|wizardlm|none for this model"
        )
    turns = [{"role": "system", "content": system}] if system else []
    text = tokenizer.apply_chat_template(
        [*turns, {"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and adds_leading_special_token(tokenizer):
        text = text[len(bos) :]
    return str(text)


def adds_leading_special_token(tokenizer: Any) -> bool:
    """Whether ``tokenizer.encode`` puts a special token (BOS) in front of every text by itself."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    return len(full) > len(plain) and full[-len(plain) :] == plain
