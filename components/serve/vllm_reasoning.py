"""vLLM reasoning-parser plugin ``rtune-reflection``: the served API returns a reflection-format
reply's ``<thinking>``/``<reflection>`` part as the message's reasoning and its ``<output>`` part
as the content, with the same rules as everywhere else (:mod:`rtune.components.serve.reasoning`).

    vllm serve /mnt/models --reasoning-parser-plugin <path of this file> \\
        --reasoning-parser rtune-reflection

vLLM imports this file by path (``ReasoningParserManager.import_reasoning_parser``), so it only
imports vLLM and the project's pure-Python splitter, which the rtune-serve image installs.

API followed: vLLM v0.30 (the version of images/serve and the rtune-vllm ServingRuntime), as in
``vllm/reasoning/abs_reasoning_parsers.py``: ``ReasoningParser(tokenizer, *args, **kwargs)`` with
``is_reasoning_end(input_ids)``, ``extract_content_ids(input_ids)``,
``extract_reasoning(model_output, request) -> (reasoning, content)`` and
``extract_reasoning_streaming(previous_text, current_text, delta_text, previous_token_ids,
current_token_ids, delta_token_ids) -> DeltaMessage | None``, registered eagerly with
``ReasoningParserManager.register_module(name=..., module=...)``. ``DeltaMessage`` has moved
between releases (``entrypoints.openai.protocol`` before v0.15, ``entrypoints.openai.engine.protocol``
after, ``entrypoints.generate.base.protocol`` on newer main) and renamed ``reasoning_content`` to
``reasoning`` (v0.11); both are looked up rather than guessed.

The tags are plain text, not special tokens (``<thinking>`` is several tokens), so the parser
works on text; the token-id methods decode and search.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from vllm.reasoning import ReasoningParser, ReasoningParserManager

from rtune.components.serve.reasoning import ReflectionStream, split_reflection

PARSER_NAME = "rtune-reflection"
OUTPUT_OPEN = "<output>"
_DELTA_MODULES = (
    "vllm.entrypoints.generate.base.protocol",
    "vllm.entrypoints.openai.engine.protocol",
    "vllm.entrypoints.openai.protocol",
)


def _delta_message_class() -> Any:
    for name in _DELTA_MODULES:
        try:
            return importlib.import_module(name).DeltaMessage
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"vLLM's DeltaMessage was not found in any of {list(_DELTA_MODULES)}")


DeltaMessage = _delta_message_class()
_REASONING_FIELD = (
    "reasoning" if "reasoning" in getattr(DeltaMessage, "model_fields", {}) else "reasoning_content"
)


class RTuneReflectionParser(ReasoningParser):
    """Splits ``<thinking>``/``<reflection>`` (reasoning) from ``<output>`` (content).

    vLLM builds one parser per request; the streaming state follows the text it was given, and
    starts over if vLLM hands it a text that does not continue the previous one.
    """

    def __init__(self, tokenizer: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(tokenizer, *args, **kwargs)
        self._stream = ReflectionStream()
        self._fed = ""
        self._sent = ("", "")

    def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
        """Reasoning is over once an ``<output>`` tag follows the last ``<thinking>``."""
        text = self.model_tokenizer.decode(list(input_ids))
        return text.rfind(OUTPUT_OPEN) > text.rfind("<thinking>")

    def extract_content_ids(self, input_ids: list[int]) -> list[int]:
        """The token ids after the first ``<output>`` tag ([] before it)."""
        decode = self.model_tokenizer.decode
        if OUTPUT_OPEN not in decode(input_ids):
            return []
        low, high = 1, len(input_ids)  # smallest prefix whose text holds the tag
        while low < high:
            middle = (low + high) // 2
            if OUTPUT_OPEN in decode(input_ids[:middle]):
                high = middle
            else:
                low = middle + 1
        return list(input_ids[low:])

    def extract_reasoning(
        self, model_output: str, request: Any = None
    ) -> tuple[str | None, str | None]:
        parts = split_reflection(model_output)
        return parts.reasoning, parts.content or None

    def extract_reasoning_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
    ) -> Any:
        if previous_text == self._fed and current_text.startswith(previous_text):
            reasoning, content = self._stream.feed(current_text[len(previous_text) :])
        else:  # not the continuation we saw: replay the whole text, send only what is new
            self._stream = ReflectionStream()
            whole_reasoning, whole_content = self._stream.feed(current_text)
            sent_reasoning, sent_content = self._sent
            reasoning = whole_reasoning.removeprefix(sent_reasoning)
            content = whole_content.removeprefix(sent_content)
        self._fed = current_text
        self._sent = (self._sent[0] + reasoning, self._sent[1] + content)
        if not reasoning and not content:
            return None
        return DeltaMessage(**{_REASONING_FIELD: reasoning or None, "content": content or None})


ReasoningParserManager.register_module(name=PARSER_NAME, module=RTuneReflectionParser)
