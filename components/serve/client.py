"""A served model as seen by the pipeline: an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    endpoint = ChatEndpoint("http://127.0.0.1:8000/v1", model="rtune-student",
                            reasoning_format="reflection")
    reply = endpoint.chat([{"role": "user", "content": "What is 2 + 2?"}], max_tokens=64)
    reply.content, reply.reasoning, reply.latency_s

The reasoning comes from the server when it splits it (vLLM with a reasoning parser returns
``reasoning`` since v0.11, ``reasoning_content`` before; our proxy in front of ``transformers
serve`` sets both). When the server returned none and ``reasoning_format`` is ``reflection``,
the client splits the reply itself with the same parser, so every caller sees the same fields.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rtune.components.common.config import redact_credentials
from rtune.components.serve.reasoning import split_reflection

REASONING_FORMATS = ("none", "reflection")
REASONING_FIELDS = ("reasoning_content", "reasoning")
SMOKE_PROMPT = "In one short sentence: what is the capital of France?"


@dataclass(frozen=True)
class ChatReply:
    content: str
    reasoning: str | None
    finish_reason: str
    latency_s: float
    completion_tokens: int | None


@dataclass(frozen=True)
class SmokeResult:
    """One chat completion through the endpoint: ``ok`` when it answered with some text."""

    ok: bool
    latency_s: float
    reply: ChatReply | None
    error: str


class ChatEndpoint:
    """Chat completions against ``base_url`` (ending in ``/v1``) with the ``openai`` SDK.

    ``api_key_env`` names the env var holding the key (none needed on loopback); the key itself
    is never stored on the object or printed.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "",
        timeout_s: float = 300.0,
        reasoning_format: str = "none",
    ) -> None:
        if reasoning_format not in REASONING_FORMATS:
            raise ValueError(
                f"reasoning_format must be one of {list(REASONING_FORMATS)}, got {reasoning_format!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.reasoning_format = reasoning_format
        self._client: Any = None

    def __repr__(self) -> str:
        return f"ChatEndpoint({redact_credentials(self.base_url)!r}, model={self.model!r})"

    def client(self) -> Any:
        if self._client is None:
            from openai import OpenAI

            key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
            self._client = OpenAI(
                base_url=self.base_url, api_key=key or "EMPTY", timeout=self.timeout_s
            )
        return self._client

    def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 256,
        temperature: float = 0.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> ChatReply:
        """One completion; ``extra_body`` carries server-specific fields (vLLM's ``top_k``,
        transformers serve's ``generation_config``)."""
        began = time.perf_counter()
        response = self.client().chat.completions.create(
            model=self.model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            extra_body=dict(extra_body) if extra_body else None,
        )
        latency = time.perf_counter() - began
        choice = response.choices[0]
        content, reasoning = message_parts(choice.message.model_dump(), self.reasoning_format)
        usage = getattr(response, "usage", None)
        return ChatReply(
            content=content,
            reasoning=reasoning,
            finish_reason=str(choice.finish_reason or ""),
            latency_s=latency,
            completion_tokens=getattr(usage, "completion_tokens", None),
        )


def message_parts(message: dict[str, Any], reasoning_format: str) -> tuple[str, str | None]:
    """``(content, reasoning)`` of a chat message: the server's reasoning field if it sent one,
    else (reflection format) the client-side split of the content."""
    content = str(message.get("content") or "")
    reasoning = next((message[f] for f in REASONING_FIELDS if message.get(f)), None)
    if reasoning is None and reasoning_format == "reflection":
        parts = split_reflection(content)
        return parts.content, parts.reasoning
    return content, reasoning


def smoke_test(
    endpoint: ChatEndpoint, prompt: str = SMOKE_PROMPT, max_tokens: int = 16
) -> SmokeResult:
    """Ask one question; any failure is reported in ``error`` (type and message, credentials in
    URLs redacted), not raised."""
    began = time.perf_counter()
    try:
        reply = endpoint.chat([{"role": "user", "content": prompt}], max_tokens=max_tokens)
    except Exception as error:  # the point is to report whatever broke
        return SmokeResult(
            False,
            time.perf_counter() - began,
            None,
            redact_credentials(f"{type(error).__name__}: {error}"),
        )
    if not (reply.content.strip() or (reply.reasoning or "").strip()):
        return SmokeResult(False, reply.latency_s, reply, "the endpoint answered with empty text")
    return SmokeResult(True, reply.latency_s, reply, "")
