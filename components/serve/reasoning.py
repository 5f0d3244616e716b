"""Split a reflection-format reply into its reasoning and its final answer.

Models trained on the Reflection-70B format (DESIGN.md §3) answer as

    <thinking> steps … <reflection> a self-correction </reflection> … </thinking>
    <output> the final answer </output>

:func:`split_reflection` returns the reasoning (the ``<thinking>`` and ``<reflection>`` blocks)
and the content (the ``<output>`` block, plus any text outside every block) separately. It is
the one parser behind every place that splits: the vLLM reasoning-parser plugin
(``vllm_reasoning.py``), the reverse proxy in front of ``transformers serve`` and the client.

The rules, chosen so that a text can be split as it streams, token by token, with exactly the
result of splitting it whole (:class:`ReflectionStream` is that incremental scanner):

- ``<thinking>…</thinking>`` is reasoning; its tags are dropped. A ``<reflection>`` block inside
  it stays in the reasoning *with* its tags, so a reader sees which part was a self-correction;
  a ``<reflection>`` block on its own (no thinking) is reasoning the same way.
- ``<output>…</output>`` is content. Inside it only ``</output>`` is a tag: an answer may
  mention ``<thinking>`` literally. Text outside every block is content too (a model that skips
  the ``<output>`` tags still has an answer).
- Robust to missing closing tags: ``<output>`` ends an open thinking/reflection block, and a
  block still open at the end of the text runs to the end (a reply cut by ``max_tokens``).
  A trailing fragment of a tag (``</outp`` at the cut) is dropped; stray closing tags too.
- Whitespace at the edges of each block is trimmed; blocks of one kind are joined with a
  newline. No reasoning -> ``reasoning is None``. A reply without any tag is all content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

THINKING, REFLECTION, OUTPUT = "thinking", "reflection", "output"
TAGS = tuple(f"<{slash}{name}>" for name in (THINKING, REFLECTION, OUTPUT) for slash in ("", "/"))
OUTPUT_CLOSE = "</output>"

# scanner states
_OUTSIDE, _THINKING, _NESTED_REFLECTION, _REFLECTION, _OUTPUT = range(5)
_REASONING_STATES = (_THINKING, _NESTED_REFLECTION, _REFLECTION)


@dataclass(frozen=True)
class ReflectionParts:
    """``reasoning``: the thinking/reflection text (None when there is none); ``content``: the
    final answer."""

    reasoning: str | None
    content: str


def split_reflection(text: str) -> ReflectionParts:
    """Split a whole reply (see the module docstring for the rules)."""
    reasoning, content = ReflectionStream().feed(text)
    return ReflectionParts(reasoning or None, content)


def add_reasoning(reply: dict[str, Any]) -> dict[str, Any]:
    """A chat-completion reply with every choice's message split into answer (``content``) and
    reasoning (``reasoning_content`` and ``reasoning``: the two names vLLM has used)."""
    for choice in reply.get("choices") or []:
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            parts = split_reflection(message["content"])
            message["content"] = parts.content
            message["reasoning_content"] = message["reasoning"] = parts.reasoning
    return reply


class _Channel:
    """One output stream (reasoning or content) built from blocks: each block's edge whitespace
    is trimmed and blocks are joined by a newline. Trailing whitespace is held back until more
    text of the same block shows it is inner whitespace, so deltas never need taking back."""

    def __init__(self) -> None:
        self.emitted_any = False
        self.block_started = False
        self.pending_space = ""

    def open_block(self) -> None:
        self.block_started = False
        self.pending_space = ""

    def text(self, piece: str) -> str:
        if not self.block_started:
            piece = piece.lstrip()
            if not piece:
                return ""
        whole = self.pending_space + piece
        body = whole.rstrip()
        self.pending_space = whole[len(body) :]
        if not body:
            return ""
        prefix = "\n" if self.emitted_any and not self.block_started else ""
        self.block_started = self.emitted_any = True
        return prefix + body


class ReflectionStream:
    """Incremental :func:`split_reflection`: ``feed`` text in any pieces and get back the
    ``(reasoning, content)`` deltas. The concatenated deltas equal ``split_reflection`` of the
    concatenated text, however the text was cut (a possible tag at the end of a piece waits for
    the next piece)."""

    def __init__(self) -> None:
        self.state = _OUTSIDE
        self.buffer = ""
        self.reasoning = _Channel()
        self.content = _Channel()

    def feed(self, text: str) -> tuple[str, str]:
        self.buffer += text
        out: list[tuple[str, str]] = []
        while self.buffer:
            start = self.buffer.find("<")
            if start < 0:
                out.append(self._text(self.buffer))
                self.buffer = ""
                break
            if start:
                out.append(self._text(self.buffer[:start]))
                self.buffer = self.buffer[start:]
            tag = next((t for t in self._tags() if self.buffer.startswith(t)), None)
            if tag is not None:
                self.buffer = self.buffer[len(tag) :]
                out.append(self._tag(tag))
            elif any(t.startswith(self.buffer) for t in self._tags()):
                break  # maybe the start of a tag: wait for more text
            else:
                out.append(self._text("<"))
                self.buffer = self.buffer[1:]
        return "".join(r for r, _ in out), "".join(c for _, c in out)

    def _tags(self) -> tuple[str, ...]:
        return (OUTPUT_CLOSE,) if self.state == _OUTPUT else TAGS

    def _text(self, piece: str) -> tuple[str, str]:
        if self.state in _REASONING_STATES:
            return self.reasoning.text(piece), ""
        return "", self.content.text(piece)

    def _tag(self, tag: str) -> tuple[str, str]:
        """Move to the next state; a tag kept in the reasoning is emitted into it."""
        before = self.state
        self.state, kept = _TRANSITIONS.get((before, tag), (before, ""))
        entering = self.state != before
        if entering and self.state in _REASONING_STATES and before not in _REASONING_STATES:
            self.reasoning.open_block()
        if entering and self.state in (_OUTSIDE, _OUTPUT):
            self.content.open_block()
        return (self.reasoning.text(kept) if kept else ""), ""


# (state, tag) -> (next state, text the tag leaves in the reasoning). A reflection closed
# implicitly (by </thinking>, <thinking> or <output>) gets its </reflection> all the same.
# Unlisted pairs are stray or repeated tags: dropped, no state change.
_TRANSITIONS: dict[tuple[int, str], tuple[int, str]] = {
    (_OUTSIDE, "<thinking>"): (_THINKING, ""),
    (_OUTSIDE, "<reflection>"): (_REFLECTION, "<reflection>"),
    (_OUTSIDE, "<output>"): (_OUTPUT, ""),
    (_THINKING, "</thinking>"): (_OUTSIDE, ""),
    (_THINKING, "<reflection>"): (_NESTED_REFLECTION, "<reflection>"),
    (_THINKING, "<output>"): (_OUTPUT, ""),
    (_NESTED_REFLECTION, "</reflection>"): (_THINKING, "</reflection>"),
    (_NESTED_REFLECTION, "</thinking>"): (_OUTSIDE, "</reflection>"),
    (_NESTED_REFLECTION, "<output>"): (_OUTPUT, "</reflection>"),
    (_REFLECTION, "</reflection>"): (_OUTSIDE, "</reflection>"),
    (_REFLECTION, "<thinking>"): (_THINKING, "</reflection>"),
    (_REFLECTION, "<output>"): (_OUTPUT, "</reflection>"),
    (_OUTPUT, "</output>"): (_OUTSIDE, ""),
}
