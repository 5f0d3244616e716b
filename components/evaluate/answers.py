"""Answers from a served model, asked a few at a time and checkpointed one by one.

Every answer is keyed ``<role>/<kind>/<item id>`` (role ``candidate`` or ``base``, kind ``suite``
or ``heldout``) and written to the evaluation's checkpoint the moment it arrives, so a killed
evaluation resumes asking only what it had not got. A request that fails (after the client's
own retries) is not checkpointed: the run ends with an error naming it, and the next run asks it
again.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from rtune.components.common.checkpoint import RecordCheckpoint
from rtune.components.serve.client import ChatReply

Messages = list[dict[str, str]]


class ChatModel(Protocol):
    """What answers need from an endpoint (``rtune.components.serve.client.ChatEndpoint``)."""

    def chat(
        self, messages: Messages, max_tokens: int = 256, temperature: float = 0.0
    ) -> ChatReply: ...


@dataclass(frozen=True)
class Question:
    key: str
    messages: Messages


def answer_key(role: str, kind: str, item_id: str) -> str:
    return f"{role}/{kind}/{item_id}"


def user_turn(text: str) -> Messages:
    return [{"role": "user", "content": text}]


class SharedCheckpoint:
    """A ``RecordCheckpoint`` that several threads may add to (one writer at a time)."""

    def __init__(self, checkpoint: RecordCheckpoint) -> None:
        self.checkpoint = checkpoint
        self._lock = threading.Lock()

    @property
    def done(self) -> dict[str, Any]:
        return self.checkpoint.done

    def add(self, key: str, result: Any) -> None:
        with self._lock:
            self.checkpoint.add(key, result)


def pending(questions: Sequence[Question], done: Mapping[str, Any]) -> list[Question]:
    return [q for q in questions if q.key not in done]


def ask_all(
    model: ChatModel,
    questions: Sequence[Question],
    store: SharedCheckpoint,
    max_tokens: int,
    temperature: float = 0.0,
    concurrency: int = 4,
    desc: str = "answers",
    progress: bool = True,
) -> None:
    """Ask every question not yet in ``store`` with ``concurrency`` requests in flight."""
    from tqdm import tqdm

    todo = pending(questions, store.done)

    def ask(question: Question) -> None:
        reply = model.chat(question.messages, max_tokens=max_tokens, temperature=temperature)
        store.add(question.key, asdict(reply))

    failures: list[tuple[str, BaseException]] = []
    bar = tqdm(
        total=len(questions),
        initial=len(questions) - len(todo),
        desc=desc,
        unit="answer",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar, ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(ask, question): question.key for question in todo}
        for future in as_completed(futures):
            error = future.exception()
            if error is not None:
                failures.append((futures[future], error))
            bar.update(1)
    if failures:
        key, error = failures[0]
        raise RuntimeError(
            f"{len(failures)} of {len(todo)} {desc} failed, e.g. {key}: "
            f"{type(error).__name__}: {error}. The answers that arrived are checkpointed; "
            "re-run to ask only the missing ones"
        ) from error
