"""What defines one reflection phase's prompt and reply: ``PhaseSpec`` and its parts.

A phase asks the teacher for a *critique* (its judgement of the sample) and then for the
*outputs* (the rewrite: a new instruction and answer, or a better answer). The critique comes
first in every reply style that asks for it - markers, JSON (first key of the schema) and
prefilled replies (the prefill is the critique's marker) - so the teacher writes its judgement
before, and as the basis of, its rewrite. ``critique_first`` says whether a phase asks for it in
every style (the ``faithful`` wording) or only in free-form marker replies (the ``concise``
wording, where a prefilled or JSON reply starts at the first output).

A *tagged* output (``teacher.response_format: reflection``) is written in the Reflection format
(``<thinking>``, optional ``<reflection>``, ``<output>``; ``common/response_format.py``): its slot
in the reply format is that skeleton, and a prefill that ends at its marker also opens its
``<thinking>`` block, so a small local model can only go on reasoning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CRITIQUE_KEY = "critique"


@dataclass(frozen=True)
class OutputField:
    """One thing the teacher must write: its marker, JSON key, meaning, and what it may not copy.

    ``not_same_as`` names sample fields (``instruction``/``input``/``output``) or other output keys
    whose text this field must differ from; a copy counts as a placeholder, not a reflection.
    ``tagged``: the field is a Reflection-format answer (module doc); ``layout`` is its slot in a
    marker reply format ('' = ``<meaning>``).
    """

    key: str
    marker: str
    meaning: str
    not_same_as: tuple[str, ...] = ()
    tagged: bool = False
    layout: str = ""

    @property
    def opening(self) -> str:
        """What a prefill writes after this field's marker: the tagged answer's first tag."""
        return "<thinking>\n" if self.tagged else ""


@dataclass(frozen=True)
class Example:
    """A worked example: a sample, the teacher's critique of it, and the fields it wrote."""

    sample: Mapping[str, str]
    feedback: str
    outputs: Mapping[str, str]


@dataclass(frozen=True)
class PhaseSpec:
    """Everything that defines one reflection phase's prompt and reply in one wording style."""

    name: str
    target: str
    criteria: tuple[str, ...]
    task: str
    outputs: tuple[OutputField, ...]
    examples: tuple[Example, ...]
    critique: OutputField
    critique_first: bool = False
    style: str = "concise"
    system: str = ""
    response_format: str = "plain"

    def asks_critique(self, *, structured: bool, prefill: bool) -> bool:
        """Whether a reply in this style starts with the critique (see module doc)."""
        return self.critique_first or (not structured and not prefill)

    def reply_fields(self, *, critique: bool) -> tuple[OutputField, ...]:
        """The reply's sections in order: the critique (when asked) and then the outputs."""
        return (self.critique, *self.outputs) if critique else self.outputs

    @property
    def prefilled_fields(self) -> tuple[OutputField, ...]:
        """The sections of a prefilled reply (local backends), in order."""
        return self.reply_fields(critique=self.asks_critique(structured=False, prefill=True))

    @property
    def prefill(self) -> str:
        """The start of the assistant turn for prefilling backends: its first section's marker
        (and, for a tagged answer, its opening tag)."""
        first = self.prefilled_fields[0]
        return f"[{first.marker}]\n{first.opening}"

    def json_schema(self, *, critique: bool = False) -> dict[str, Any]:
        """The structured-output schema; the critique, when asked, is its first property, so a
        model that writes keys in schema order (vLLM's guided decoding does) judges first."""
        fields = self.reply_fields(critique=critique)
        props = {f.key: {"type": "string", "description": f.meaning} for f in fields}
        return {
            "type": "object",
            "properties": props,
            "required": [f.key for f in fields],
            "additionalProperties": False,
        }

    def version(self) -> str:
        """A hash of the prompts this phase renders, in every reply style: a checkpoint made with
        other wording (or other rendering code) is not resumed."""
        from rtune.components.teacher.prompts import prompt_version

        return prompt_version(self)
