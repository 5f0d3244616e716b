"""What every teacher backend takes and gives back, and the one interface they share.

A backend receives ready-made chat requests (``TeacherRequest``: messages, an optional prefilled
start of the assistant turn, an optional JSON schema) and reports each ``Completion`` through a
callback *as it finishes*, so the runner can checkpoint it before the next one lands. A backend
never raises for one bad record: a request that failed for good comes back with ``error`` set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

Message = dict[str, str]
OnDone = Callable[[int, "Completion"], None]


@dataclass(frozen=True)
class TeacherRequest:
    """One chat request: ``messages`` (system, few-shot turns, the sample) plus how to answer.

    ``prefill`` is text the assistant turn already starts with (local backends continue it, so a
    small model begins inside the marker format); ``json_schema`` asks for structured output;
    ``stop`` are texts that end generation on local backends - the prompt's own sentences, which a
    small model starts reciting once its answer is over (remote teachers do not recite, and some
    APIs refuse ``stop``, so the openai backend does not send it).
    """

    messages: tuple[Message, ...]
    prefill: str = ""
    json_schema: dict[str, Any] | None = None
    schema_name: str = "reply"
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    """The teacher's answer to one request, with its cost.

    ``text`` is what the model generated after ``prefill`` (the parser puts the prefill back).
    Token counts are ``None`` when the server did not report usage - never a made-up zero.
    ``latency_s`` is the wall time the record waited (for batched backends: its batch's time).
    ``truncated`` says generation stopped because it spent ``max_new_tokens``, not because the
    model ended its turn (or hit a stop text): the reply's last words may be mid-sentence.
    """

    text: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    attempts: int = 1
    error: str | None = None
    prefill: str = field(default="")
    truncated: bool = False

    @property
    def failed(self) -> bool:
        return self.error is not None

    def with_prefill(self, prefill: str) -> Completion:
        return replace(self, prefill=prefill)


class Teacher(Protocol):
    """A teacher LLM backend.

    ``prefills`` tells the prompt builder whether the backend can start the assistant turn with a
    marker; ``structured`` whether it honours ``TeacherRequest.json_schema``. A backend with its
    own tokenizer may also offer ``count_tokens(text) -> int``; over-long samples are then cut in
    its tokens, else at about four characters a token (``sample_cut``).
    """

    @property
    def prefills(self) -> bool: ...

    @property
    def structured(self) -> bool: ...

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        """Answer every request; call ``on_done(index, completion)`` once per request, in
        completion order, from the calling thread."""
        ...
