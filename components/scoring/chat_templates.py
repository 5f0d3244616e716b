"""The served model's chat template: the training format, written as a tokenizer ``chat_template``.

A student is scored and fine-tuned on ``P(x) + y`` in one template (``templates.py``). Serving
(``/v1/chat/completions``), ``mlflow.pyfunc`` and lm-eval prompt through the tokenizer's chat
template, so the fine-tuned (and quantized) model carries one that renders exactly what it was
trained on:

* one user turn + generation prompt  ==  the training prompt ``start + P(x)`` (same token ids);
* a finished conversation            ==  each turn as its training example, back to back:
  ``lead + system + user_open + q1 + assistant_open + response_prefix + a1 + eos
  + user_open + q2 + assistant_open ...`` (the system preamble once, as FastChat does:
  ``... USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:``).

``lead`` is the text of the tokens training puts in front of every prompt that a chat client
does not add itself (clients tokenize the rendered text without special tokens): the start
token (``<|endoftext|>`` for a tokenizer that adds no BOS) or the tokenizer's own BOS.

A leading ``system`` message replaces the template's system preamble. Alpaca's preamble depends
on whether the *first* user message carries an input (``\\n\\n### Input:\\n`` in it), as it does
in training. Template ``chat`` keeps the student's own chat template, with the lead in front
when that template does not write it already.

A *response format* with a system prompt (``teacher.response_format: reflection``,
``common/response_format.py``) is trained with that prompt as the system turn of every example
(``training_texts``), and the chat template uses it as the default system turn: a conversation
without a system message is rendered as if it began with it, so a client that sends none gets
the format the model was trained to answer in (one sent by the client still replaces it).
Scoring (IFD / r-IFD) keeps the plain prompt: it measures how much the *instruction* helps the
student predict an answer, and a system prompt that announces the tags would make tagged answers
easier to predict whatever the instruction (README: Reflection format).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rtune.components.common.response_format import system_prompt, training_answer
from rtune.components.scoring.passes import resolve_start_ids
from rtune.components.scoring.templates import (
    PromptTemplate,
    adds_leading_special_token,
    get_template,
    render_prompt,
)


def serving_chat_template(template_name: str, tokenizer: Any, system: str = "") -> str:
    """The Jinja ``chat_template`` that renders ``template_name``'s training format, with
    ``system`` as the default system turn ('' = the template's own preamble)."""
    template = get_template(template_name)
    lead = training_lead(tokenizer)
    if template.chat:
        return _own_template_with_lead(tokenizer, lead, system)
    return _format_template(template, lead, str(tokenizer.eos_token), system)


def install_chat_template(
    tokenizer: Any, template_name: str, response_format: str = "plain"
) -> Any:
    """Set ``tokenizer.chat_template`` to the training format of ``template_name`` and
    ``response_format`` (saved with the tokenizer)."""
    system = system_prompt(response_format)
    tokenizer.chat_template = serving_chat_template(template_name, tokenizer, system)
    return tokenizer


def training_texts(
    template_name: str, record: Mapping[str, Any], tokenizer: Any, response_format: str = "plain"
) -> tuple[str, str]:
    """``(prompt, response)`` of a record's training example: ``P(x)`` with the response
    format's system turn, then the template's ``response_prefix`` and the answer as it is
    trained (``training_answer``). Fine-tuning, quantization calibration and the perplexity
    guard all read these, and the installed chat template renders the same prompt."""
    template = get_template(template_name)
    prompt = render_prompt(
        template,
        str(record["instruction"]),
        str(record.get("input") or ""),
        tokenizer,
        system=system_prompt(response_format),
    )
    answer = training_answer(str(record["output"]), response_format)
    return prompt, template.response_prefix + answer


def training_lead(tokenizer: Any) -> str:
    """Text of the ids training puts before the prompt that ``encode(.., add_special_tokens=
    False)`` would not: the start token, or the BOS the tokenizer adds itself."""
    ids = list(resolve_start_ids(tokenizer, "auto"))
    if adds_leading_special_token(tokenizer):
        ids = tokenizer.encode("a")[: -len(tokenizer.encode("a", add_special_tokens=False))]
    return "".join(tokenizer.convert_ids_to_tokens(ids))


def _literal(text: str) -> str:
    """A Jinja string literal (JSON escapes are Jinja escapes)."""
    return json.dumps(text)


def _format_template(template: PromptTemplate, lead: str, eos: str, system: str = "") -> str:
    system_join = template.system_join
    preamble = system + system_join if system else template.system
    preamble_with_input = ""
    if template.system_with_input is not None and not system:
        preamble_with_input = (
            "{%- if not has_system and messages and "
            f"{_literal(template.input_marker)} in messages[0]['content'] -%}}"
            f"{{%- set ns.system = {_literal(template.system_with_input)} -%}}"
            "{%- endif -%}"
        )
    return (
        f"{{%- set ns = namespace(system={_literal(preamble)}) -%}}"
        "{%- set has_system = messages and messages[0]['role'] == 'system' -%}"
        "{%- if has_system -%}"
        f"{{%- set ns.system = messages[0]['content'] + {_literal(system_join)} -%}}"
        "{%- endif -%}"
        f"{preamble_with_input}"
        f"{{{{- {_literal(lead)} + ns.system -}}}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        f"{{{{- {_literal(template.user_open)} + message['content'] -}}}}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{{{{- {_literal(template.assistant_open + template.response_prefix)}"
        f" + message['content'] + {_literal(eos)} -}}}}"
        "{%- elif message['role'] != 'system' or not loop.first -%}"
        "{{- raise_exception('roles are user and assistant, after one optional system') -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        f"{{{{- {_literal(template.assistant_open)} -}}}}"
        "{%- endif -%}"
    )


def _default_system(system: str) -> str:
    """Jinja that puts ``system`` in front of a conversation without a system message."""
    if not system:
        return ""
    turn = f"[{{'role': 'system', 'content': {_literal(system)}}}]"
    return (
        "{% if not (messages and messages[0]['role'] == 'system') %}"
        f"{{% set messages = {turn} + messages %}}{{% endif %}}"
    )


def _own_template_with_lead(tokenizer: Any, lead: str, system: str = "") -> str:
    """The student's own template with the default system turn and the lead in front (each
    only once: re-installing on a fine-tuned model's tokenizer changes nothing)."""
    own = getattr(tokenizer, "chat_template", None)
    if not own:
        raise ValueError(
            "template 'chat' needs a student tokenizer with a chat template; "
            "use template vicuna|alpaca|wizardlm|none for this model"
        )
    head = _default_system(system)
    body = str(own)[len(head) :] if head and str(own).startswith(head) else str(own)
    sample = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}],
        tokenize=False,
        add_generation_prompt=True,
        chat_template=body,
    )
    if not lead or str(sample).startswith(lead):
        return head + body
    return head + f"{{{{ {_literal(lead)} }}}}" + body
