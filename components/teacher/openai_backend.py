"""Teacher over any OpenAI-compatible endpoint (vLLM, KServe, OpenAI), many requests in flight.

``concurrency`` workers share one ``AsyncOpenAI`` client, so at most that many requests are open
at once however many records there are, and each record is handed to the caller the moment it
finishes. The client's own retries are off (``max_retries=0``): we retry here, so every attempt
is counted and the backoff honours the server's ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.protocol import Completion, OnDone, TeacherRequest

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRYABLE_STATUS = frozenset({408, 409, 429})
PLACEHOLDER_KEY = "EMPTY"


def read_api_key(env_name: str) -> str:
    """The key from ``$env_name``; unset means a server without auth (vLLM's own convention).

    Only the variable's name is ever logged.
    """
    key = os.environ.get(env_name, "")
    if key:
        return key
    log.warning(
        "environment variable %s is not set: sending the placeholder API key %r "
        "(fine for a server started without --api-key)",
        env_name,
        PLACEHOLDER_KEY,
    )
    return PLACEHOLDER_KEY


def retry_delay(
    attempt: int,
    retry_after: float | None,
    base: float,
    cap: float,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before attempt ``attempt + 1``.

    Exponential backoff ``base * 2**(attempt-1)`` with "equal jitter" (half fixed, half random),
    so clients that failed together do not come back together. A server's ``Retry-After`` replaces
    it - the server knows when it will have room. Either way the wait is capped at ``cap``.
    """
    if retry_after is not None:
        return min(cap, max(0.0, retry_after))
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + rng() * delay / 2


def retry_after_seconds(headers: Any) -> float | None:
    """``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date) from response headers."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    value = headers.get("retry-after")
    try:
        if millis:
            return float(millis) / 1000
        if value:
            return float(value)
    except ValueError:
        pass
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def is_retryable(err: BaseException) -> bool:
    """Timeouts, lost connections, 408/409/429, every 5xx and a reply that is not JSON (a proxy's
    error page) are worth another try."""
    import openai

    if isinstance(err, TimeoutError | openai.APIConnectionError | json.JSONDecodeError):
        return True
    if isinstance(err, openai.APIStatusError):
        return err.status_code in RETRYABLE_STATUS or err.status_code >= 500
    return False


def redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if len(secret) >= 4 else text


def describe_error(err: BaseException, timeout_s: float, secret: str, limit: int = 300) -> str:
    """A short reason for people and for the record's ``error`` field; the key is masked."""
    import openai

    if isinstance(err, TimeoutError | openai.APITimeoutError):
        text = f"timed out after {timeout_s:g} s"
    elif isinstance(err, openai.APIStatusError):
        text = f"HTTP {err.status_code}: {err.message}"
    elif isinstance(err, openai.APIConnectionError):
        text = f"connection error: {err.__cause__ or err}"
    elif isinstance(err, json.JSONDecodeError):
        text = f"the server's reply is not JSON ({err.msg})"
    else:
        text = f"{type(err).__name__}: {err}"
    text = redact(" ".join(text.split()), secret)
    return text if len(text) <= limit else text[:limit] + "…"


def reply_text(response: Any) -> str | None:
    """``choices[0].message.content`` ("" for an empty message), or ``None`` when the reply lacks
    that shape (responses are not validated strictly, so a malformed one arrives half-built)."""
    choices = getattr(response, "choices", None) or []
    message = getattr(choices[0], "message", None) if choices else None
    if message is None:
        return None
    return getattr(message, "content", None) or ""


def reply_was_cut(response: Any) -> bool:
    """Whether ``choices[0].finish_reason`` is ``"length"``: the server stopped the reply at
    ``max_tokens``, not at the model's end of turn."""
    choices = getattr(response, "choices", None) or []
    return bool(choices) and getattr(choices[0], "finish_reason", None) == "length"


class OpenAITeacher:
    """The ``openai`` backend: bounded concurrency, per-request deadline, retries with backoff."""

    prefills = False

    def __init__(
        self,
        config: TeacherConfig,
        api_key: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``sleep`` waits out each retry delay; a test passes one that records the delays the
        client chose instead of asserting on how long the machine took."""
        import openai  # noqa: F401  (fail at construction, not mid-run, if it is missing)

        self.config = config
        self._api_key = api_key if api_key is not None else read_api_key(config.api_key_env)
        self._sleep = sleep

    @property
    def structured(self) -> bool:
        return self.config.structured_output

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        """Run the requests on an event loop in a helper thread; hand each completion to
        ``on_done`` here, in the calling thread.

        The caller's work per record (parsing, an fsync'ed checkpoint line) then overlaps the
        network instead of stalling every request in flight, and needs no locking. If
        ``on_done`` raises, the requests still in flight are cancelled before it propagates.
        """
        if not requests:
            return
        finished: queue.SimpleQueue[tuple[int, Completion] | None] = queue.SimpleQueue()
        loop = asyncio.new_event_loop()
        job = loop.create_task(self._complete_all(requests, lambda *done: finished.put(done)))

        def drive() -> None:
            try:
                with contextlib.suppress(BaseException):  # the outcome stays in `job`
                    loop.run_until_complete(job)
            finally:
                loop.close()
                finished.put(None)

        thread = threading.Thread(target=drive, name="openai-teacher", daemon=True)
        thread.start()
        try:
            while (item := finished.get()) is not None:
                on_done(*item)
        except BaseException:
            with contextlib.suppress(RuntimeError):  # the loop may have just closed
                loop.call_soon_threadsafe(job.cancel)
            raise
        finally:
            thread.join()
        failure = None if job.cancelled() else job.exception()
        if failure is not None:
            raise failure

    async def _complete_all(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        import openai

        async with openai.AsyncOpenAI(
            base_url=self.config.url,
            api_key=self._api_key,
            max_retries=0,
            timeout=self.config.timeout_s,
        ) as client:
            model = await self._model_name(client)
            pending = iter(enumerate(requests))

            async def worker() -> None:
                for index, request in pending:
                    on_done(index, await self._complete(client, model, request))

            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.config.concurrency, len(requests))):
                    group.create_task(worker())

    async def _model_name(self, client: Any) -> str:
        """``model: default`` means the server's first listed model (vLLM serves exactly one)."""
        if self.config.model != "default":
            return self.config.model
        listing, _, error = await self._with_retries(client.models.list)
        models = [m.id for m in listing.data] if listing is not None else []
        if not models:
            raise RuntimeError(
                f"could not find a model at {self.config.url}/models "
                f"({error or 'the server lists none'}); pass --teacher-model NAME"
            )
        return str(models[0])

    def _body(self, model: str, request: TeacherRequest) -> dict[str, Any]:
        """The chat-completions request body (``response_format`` only for structured output)."""
        body: dict[str, Any] = {
            "model": model,
            "messages": list(request.messages),
            "max_tokens": self.config.max_new_tokens,
            "temperature": self.config.temperature,
        }
        if request.json_schema is not None:
            schema = {"name": request.schema_name, "schema": request.json_schema, "strict": True}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        return body

    async def _complete(self, client: Any, model: str, request: TeacherRequest) -> Completion:
        from openai.types.chat import ChatCompletion

        started = time.perf_counter()
        body = self._body(model, request)
        # `client.post` is what `chat.completions.create` calls after re-walking every message
        # against the SDK's TypedDicts (~3 ms per request here); skipping that walk for our
        # plain-string messages made 32-in-flight runs ~25 % faster. Errors are the same types.
        response, attempts, error = await self._with_retries(
            lambda: client.post("/chat/completions", cast_to=ChatCompletion, body=body)
        )
        latency = time.perf_counter() - started
        text = reply_text(response) if response is not None else None
        if text is None:
            error = error or "the server's reply has no choices[0].message"
            log.warning("teacher request failed after %d attempt(s): %s", attempts, error)
            return Completion("", model, None, None, latency, attempts, error)
        usage = getattr(response, "usage", None)
        return Completion(
            text=text,
            model=getattr(response, "model", None) or model,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            latency_s=latency,
            attempts=attempts,
            truncated=reply_was_cut(response),
        )

    async def _with_retries(
        self, call: Callable[[], Awaitable[T]]
    ) -> tuple[T | None, int, str | None]:
        """Run ``call`` until it succeeds, fails for good, or ``max_attempts`` is spent.

        Returns (result or None, attempts made, last error or None). Each attempt has its own
        deadline of ``timeout_s`` (also enforced here, in case a server trickles bytes).
        """
        import openai

        cfg = self.config
        error: str | None = None
        attempt = 0
        while attempt < cfg.max_attempts:
            attempt += 1
            try:
                async with asyncio.timeout(cfg.timeout_s):
                    return await call(), attempt, None
            except (TimeoutError, openai.APIError, json.JSONDecodeError) as err:
                error = describe_error(err, cfg.timeout_s, self._api_key)
                if not is_retryable(err) or attempt == cfg.max_attempts:
                    break
                response = getattr(err, "response", None)
                headers = response.headers if response is not None else None
                delay = retry_delay(
                    attempt, retry_after_seconds(headers), cfg.backoff_s, cfg.max_backoff_s
                )
                log.debug("attempt %d failed (%s); retrying in %.2f s", attempt, error, delay)
                await self._sleep(delay)
        return None, attempt, error
