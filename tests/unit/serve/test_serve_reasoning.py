"""The reflection-format splitter, its incremental form, and the vLLM reasoning-parser plugin.

The plugin is loaded the way ``vllm serve --reasoning-parser-plugin <file>`` loads it (by file
path) against a stand-in ``vllm`` package that mirrors the v0.30 API it is written for: an
abstract ``ReasoningParser``, ``ReasoningParserManager`` with ``register_module`` /
``get_reasoning_parser`` / ``import_reasoning_parser``, and a pydantic ``DeltaMessage``.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import types
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from rtune.components.serve.reasoning import ReflectionParts, ReflectionStream, split_reflection
from tests.paths import REPO_ROOT

FULL = (
    "<thinking>\nFirst add 2 and 2.\n<reflection>No mistake so far.</reflection>\n"
    "So the sum is 4.\n</thinking>\n<output>\nThe answer is 4.\n</output>\n"
)


# ----------------------------------------------------------------------------- split_reflection


@pytest.mark.parametrize(
    ("text", "reasoning", "content"),
    [
        pytest.param(
            FULL,
            "First add 2 and 2.\n<reflection>No mistake so far.</reflection>\nSo the sum is 4.",
            "The answer is 4.",
            id="complete-tags-reflection-nested-in-thinking",
        ),
        pytest.param("The answer is 4.", None, "The answer is 4.", id="no-tags"),
        pytest.param("  \n The answer is 4. \n", None, "The answer is 4.", id="no-tags-spaces"),
        pytest.param(
            "<thinking>add them</thinking><output>4", "add them", "4", id="missing-output-close"
        ),
        pytest.param(
            "<thinking>add them<output>4</output>", "add them", "4", id="missing-thinking-close"
        ),
        pytest.param("<thinking>still thinking when cut", "still thinking when cut", "", id="cut"),
        pytest.param(
            "<thinking>x</thinking><output>4</outp", "x", "4", id="cut-inside-a-closing-tag"
        ),
        pytest.param(
            "<reflection>I misread the question.</reflection><output>5</output>",
            "<reflection>I misread the question.</reflection>",
            "5",
            id="reflection-without-thinking",
        ),
        pytest.param(
            "<thinking>a <reflection>b<output>c</output>",
            "a <reflection>b</reflection>",
            "c",
            id="reflection-closed-by-output",
        ),
        pytest.param(
            "\n\n<thinking>\n\n  spaced   out  \n\n</thinking>\n\n\n<output>\n\n  42  \n\n</output>\n\n",
            "spaced   out",
            "42",
            id="extra-whitespace",
        ),
        pytest.param(
            "<output>Wrap reasoning in <thinking> tags and the answer in <output>.</output>",
            None,
            "Wrap reasoning in <thinking> tags and the answer in <output>.",
            id="tags-quoted-inside-the-answer",
        ),
        pytest.param(
            "<thinking>is 3 < 4? yes, <b>bold</b></thinking><output>3 < 4</output>",
            "is 3 < 4? yes, <b>bold</b>",
            "3 < 4",
            id="angle-brackets-that-are-not-tags",
        ),
        pytest.param(
            "<thinking>a</thinking>The answer is 42.", "a", "The answer is 42.", id="no-output-tags"
        ),
        pytest.param(
            "<thinking>one</thinking><thinking>two</thinking><output>x</output></thinking>",
            "one\ntwo",
            "x",
            id="two-blocks-and-a-stray-close",
        ),
        pytest.param("<thinking></thinking><output>4</output>", None, "4", id="empty-thinking"),
    ],
)
def test_split_reflection(text: str, reasoning: str | None, content: str) -> None:
    assert split_reflection(text) == ReflectionParts(reasoning, content)


def feed_in_pieces(text: str, cuts: Sequence[int]) -> tuple[str, str]:
    stream = ReflectionStream()
    reasoning, content, start = "", "", 0
    for end in [*cuts, len(text)]:
        r, c = stream.feed(text[start:end])
        reasoning, content, start = reasoning + r, content + c, end
    return reasoning, content


@pytest.mark.parametrize(
    "text",
    [
        FULL,
        "plain answer",
        "<reflection>x</reflection> between <output> y </output> after",
        "<thinking>a <reflection>b<output>c</out",
        "  <thinking>  x  y  </thinking>  <output>  z  </output>  ",
    ],
)
def test_stream_gives_the_whole_split_however_the_text_is_cut(text: str) -> None:
    whole = split_reflection(text)
    expected = (whole.reasoning or "", whole.content)
    assert feed_in_pieces(text, range(1, len(text))) == expected  # one character at a time
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 8))))
        assert feed_in_pieces(text, cuts) == expected, cuts


def test_stream_never_sends_a_partial_tag() -> None:
    stream = ReflectionStream()
    assert stream.feed("<thinking>step one <ref") == ("step one", "")  # "<ref" may be a tag
    assert stream.feed("lection>oops</reflection> </thin") == (" <reflection>oops</reflection>", "")
    assert stream.feed("king><output>4") == ("", "4")


# ----------------------------------------------------------------------------- the vLLM plugin

PLUGIN = REPO_ROOT / "components" / "serve" / "vllm_reasoning.py"


class StandInReasoningParser:
    """vLLM v0.30's abstract ``ReasoningParser`` (abstract methods as in upstream)."""

    def __init__(self, tokenizer: Any, *args: Any, **kwargs: Any) -> None:
        self.model_tokenizer = tokenizer

    @abstractmethod
    def is_reasoning_end(self, input_ids: Sequence[int]) -> bool: ...

    @abstractmethod
    def extract_content_ids(self, input_ids: list[int]) -> list[int]: ...

    @abstractmethod
    def extract_reasoning(
        self, model_output: str, request: Any
    ) -> tuple[str | None, str | None]: ...

    @abstractmethod
    def extract_reasoning_streaming(self, *args: Any) -> Any: ...


class StandInManager:
    """``ReasoningParserManager``: eager registration and loading a plugin file by path."""

    reasoning_parsers: ClassVar[dict[str, type]] = {}

    @classmethod
    def register_module(
        cls, name: str | list[str] | None = None, force: bool = True, module: type | None = None
    ) -> Any:
        assert module is not None, "the plugin registers eagerly (module=...)"
        assert issubclass(module, StandInReasoningParser)
        for each in [name] if isinstance(name, str) else name or [module.__name__]:
            cls.reasoning_parsers[each] = module
        return module

    @classmethod
    def get_reasoning_parser(cls, name: str) -> type:
        return cls.reasoning_parsers[name]

    @classmethod
    def import_reasoning_parser(cls, plugin_path: str) -> None:
        module_name = os.path.splitext(os.path.basename(plugin_path))[0]
        spec = importlib.util.spec_from_file_location(module_name, plugin_path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)


class StandInDeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None
    reasoning: str | None = None


class CharTokenizer:
    """One token per character, so that token ids and text line up exactly."""

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def get_vocab(self) -> dict[str, int]:
        return {}


@pytest.fixture()
def reflection_parser(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Any]:
    """Install the stand-in vllm, load the plugin by path, return its registered class."""
    modules = {
        name: types.ModuleType(name)
        for name in (
            "vllm",
            "vllm.reasoning",
            "vllm.entrypoints",
            "vllm.entrypoints.openai",
            "vllm.entrypoints.openai.engine",
            "vllm.entrypoints.openai.engine.protocol",
        )
    }
    modules["vllm.reasoning"].ReasoningParser = StandInReasoningParser  # type: ignore[attr-defined]
    modules["vllm.reasoning"].ReasoningParserManager = StandInManager  # type: ignore[attr-defined]
    modules["vllm.entrypoints.openai.engine.protocol"].DeltaMessage = StandInDeltaMessage  # type: ignore[attr-defined]
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "vllm.entrypoints.generate", None)  # newer layout: absent
    monkeypatch.setattr(StandInManager, "reasoning_parsers", {})
    monkeypatch.delitem(sys.modules, "vllm_reasoning", raising=False)
    StandInManager.import_reasoning_parser(str(PLUGIN))
    parser_class = StandInManager.get_reasoning_parser("rtune-reflection")
    return lambda: parser_class(CharTokenizer(), model_config=None)


def stream_through(parser: Any, text: str, cuts: Sequence[int]) -> tuple[str | None, str | None]:
    """Drive ``extract_reasoning_streaming`` as vLLM's chat server does and join the deltas."""
    tokenizer = CharTokenizer()
    reasoning: list[str] = []
    content: list[str] = []
    previous, start = "", 0
    for end in [*cuts, len(text)]:
        delta = text[start:end]
        current = previous + delta
        message = parser.extract_reasoning_streaming(
            previous,
            current,
            delta,
            tokenizer.encode(previous),
            tokenizer.encode(current),
            tokenizer.encode(delta),
        )
        if message is not None:
            assert isinstance(message, StandInDeltaMessage)
            assert message.reasoning or message.content, "an empty delta must be None"
            reasoning.append(message.reasoning or "")
            content.append(message.content or "")
        previous, start = current, end
    return "".join(reasoning) or None, "".join(content) or None


def test_plugin_registers_under_its_name_and_splits_whole_replies(
    reflection_parser: Callable[[], Any],
) -> None:
    parser = reflection_parser()
    reasoning, content = parser.extract_reasoning(FULL, request=None)
    expected = split_reflection(FULL)
    assert (reasoning, content) == (expected.reasoning, expected.content)
    assert parser.extract_reasoning("just an answer", request=None) == (None, "just an answer")
    assert parser.extract_reasoning("<thinking>cut off", request=None) == ("cut off", None)


@pytest.mark.parametrize("text", [FULL, "plain answer", "<thinking>a <reflection>b<output>c"])
def test_plugin_streaming_deltas_reassemble_to_the_same_split(
    reflection_parser: Callable[[], Any], text: str
) -> None:
    whole = split_reflection(text)
    expected = (whole.reasoning, whole.content or None)
    assert stream_through(reflection_parser(), text, range(1, len(text))) == expected
    rng = random.Random(3)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, 6)))
        assert stream_through(reflection_parser(), text, cuts) == expected


def test_plugin_streaming_recovers_when_the_text_does_not_continue(
    reflection_parser: Callable[[], Any],
) -> None:
    parser = reflection_parser()
    first = parser.extract_reasoning_streaming("", "<thinking>ab", "<thinking>ab", [], [], [])
    assert first.reasoning == "ab"
    # vLLM hands a text that is not previous + delta: replay it, send only the new part
    later = parser.extract_reasoning_streaming(
        "x", "<thinking>abc</thinking><output>d", "", [], [], []
    )
    assert (later.reasoning, later.content) == ("c", "d")


def test_plugin_token_methods_find_the_output_tag(reflection_parser: Callable[[], Any]) -> None:
    parser = reflection_parser()
    ids = CharTokenizer().encode(FULL)
    start = FULL.index("<output>") + len("<output>")
    assert parser.extract_content_ids(ids) == ids[start:]
    assert parser.extract_content_ids(CharTokenizer().encode("<thinking>no answer yet")) == []
    assert parser.is_reasoning_end(ids) is True
    assert parser.is_reasoning_end(CharTokenizer().encode("<thinking>still going")) is False
    earlier_turn = "<output>old answer</output> new question <thinking>thinking again"
    assert parser.is_reasoning_end(CharTokenizer().encode(earlier_turn)) is False


def test_plugin_uses_reasoning_content_on_vllm_releases_before_the_rename(
    monkeypatch: pytest.MonkeyPatch, reflection_parser: Callable[[], Any]
) -> None:
    class OldDeltaMessage(BaseModel):
        content: str | None = None
        reasoning_content: str | None = None

    protocol = types.ModuleType("vllm.entrypoints.openai.protocol")
    protocol.DeltaMessage = OldDeltaMessage  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.entrypoints.openai.engine.protocol", None)
    monkeypatch.setitem(sys.modules, "vllm.entrypoints.openai.protocol", protocol)
    monkeypatch.delitem(sys.modules, "vllm_reasoning")
    StandInManager.import_reasoning_parser(str(PLUGIN))
    parser = StandInManager.get_reasoning_parser("rtune-reflection")(CharTokenizer())
    message = parser.extract_reasoning_streaming("", "<thinking>ab", "<thinking>ab", [], [], [])
    assert isinstance(message, OldDeltaMessage) and message.reasoning_content == "ab"
