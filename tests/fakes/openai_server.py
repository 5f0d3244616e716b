"""An OpenAI-compatible HTTP server on 127.0.0.1 for tests: real sockets, programmable trouble.

    with FakeOpenAIServer(delay_s=0.2) as server:
        server.inject(Fault(status=429, retry_after=1.0), Fault(status=500))
        ... OpenAI client with base_url=server.url ...
        server.requests_for("Give three tips")  # how often that sample was asked

It speaks ``POST /v1/chat/completions`` (with ``usage``) and ``GET /v1/models``. Each request
takes the next injected ``Fault`` if any (an HTTP error with optional ``Retry-After``, a hang past
the client's timeout, or a raw reply text), else waits ``delay_s`` and answers with ``reply(body)``.
The default reply is deterministic and follows the teacher prompt's format: it rewrites the
sample's instruction inside the markers (or JSON when ``response_format`` asks for it). Like a
real server it honours ``max_tokens`` - counting a word as a token, as its ``usage`` does - by
cutting a longer reply there with ``finish_reason: "length"``; a ``Fault`` can also set the
``finish_reason`` outright. The server logs every request and the most requests it ever had in
flight at once. It also notes the ``Authorization`` header of every request, whatever its
method and path (``authorizations``), so a test can check which credentials reached it, and
lets a test wait until a number of chat completions have arrived (``wait_for_completions``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackHTTPServer

Body = dict[str, Any]
CRITIQUE = "It could be more specific"  # the critique echo_reply writes, then "(<instruction>)"
INSTRUCTION = re.compile(r"<instruction>\n(.*?)\n</instruction>", re.DOTALL)


@dataclass(frozen=True)
class Fault:
    """What to do with one request instead of answering normally: an HTTP error ``status``
    (optionally with ``Retry-After`` and an error ``message``), a ``hang_s`` before answering,
    a reply ``text`` of the model's (with ``finish_reason`` if given, e.g. ``"length"``), or a
    ``raw_body`` sent as the whole HTTP 200 response."""

    status: int | None = None
    retry_after: float | None = None
    hang_s: float = 0.0
    text: str | None = None
    message: str | None = None
    raw_body: str | None = None
    finish_reason: str | None = None


def within_budget(text: str, max_tokens: Any) -> tuple[str, str]:
    """(reply, finish_reason): the first ``max_tokens`` words and ``"length"`` when the text is
    longer than the request's budget, else the text and ``"stop"``."""
    words = text.split(" ")
    if isinstance(max_tokens, int) and len(text.split()) > max_tokens:
        kept: list[str] = []
        for word in words:
            kept.append(word)
            if len(" ".join(kept).split()) >= max_tokens:
                break
        return " ".join(kept), "length"
    return text, "stop"


@dataclass
class LoggedRequest:
    path: str
    body: Body
    authorization: str
    arrived: float
    instruction: str = field(default="")


def last_user_message(body: Body) -> str:
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def sample_instruction(body: Body) -> str:
    """The instruction of the sample under judgement: the ``<instruction>`` of the last user turn
    that has one (a repair round ends in a note that holds no sample)."""
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    for content in reversed(users):
        match = INSTRUCTION.search(str(content))
        if match:
            return match.group(1).strip()
    return ""


def echo_reply(body: Body) -> str:
    """A well-formed teacher reply derived from the sample, in markers or JSON as asked, critique
    first (a ``critique`` key only when the JSON schema asks for one)."""
    instruction = sample_instruction(body) or "the task"
    response_phase = "Better Answer" in last_user_message(body) or "better_answer" in str(
        body.get("response_format", "")
    )
    better = f"A more detailed answer to: {instruction}"
    if "<output>" in last_user_message(body) or "<output>" in str(body.get("response_format")):
        better = reflection_answer(instruction, better)
    fields = (
        {"better_answer": better}
        if response_phase
        else {
            "new_instruction": f"{instruction} Explain your reasoning step by step.",
            "new_answer": f"Step by step answer to: {instruction}",
        }
    )
    critique = f"{CRITIQUE} ({instruction})"
    if body.get("response_format"):
        schema = body["response_format"].get("json_schema", {}).get("schema", {})
        asked = "critique" in schema.get("properties", {})
        return json.dumps({"critique": critique, **fields} if asked else fields)
    markers = {
        "better_answer": "Better Answer",
        "new_instruction": "New Instruction",
        "new_answer": "New Answer",
    }
    sections = [f"[{markers[key]}]\n{text}" for key, text in fields.items()]
    lead = "Critique" if "[Critique]" in last_user_message(body) else "Feedback"
    return "\n".join([f"[{lead}]\n{critique}", *sections])


def reflection_answer(instruction: str, answer: str) -> str:
    """``answer`` in the Reflection format, as a teacher asked for it writes it (the request
    names ``<output>`` in its format or schema: ``teacher.response_format: reflection``)."""
    return (
        f"<thinking>\nThe task asks: {instruction} A good answer covers it fully. Check: the "
        f"answer below does what was asked.\n</thinking>\n<output>\n{answer}\n</output>"
    )


def markerless_reply(body: Body) -> str:
    return "This sample looks fine to me and needs no changes."


class FakeOpenAIServer(LoopbackHTTPServer):
    """Context manager running the server in a thread; ``url`` is the OpenAI ``base_url``."""

    def __init__(
        self,
        delay_s: float = 0.0,
        model: str = "fake-teacher",
        reply: Callable[[Body], str] = echo_reply,
        report_usage: bool = True,
    ) -> None:
        self.delay_s = delay_s
        self.model = model
        self.reply = reply
        self.report_usage = report_usage
        self.log: list[LoggedRequest] = []
        self.authorizations: list[str] = []  # of every request, in arrival order
        self.max_in_flight = 0
        self._in_flight = 0
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stop = threading.Event()
        super().__init__(self._handler_class())

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"

    def close(self) -> None:
        self._stop.set()
        super().close()

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each of the next requests takes one, in arrival order."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def completions(self) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.log if r.path.endswith("/chat/completions")]

    def wait_for_completions(self, count: int, timeout_s: float = 300.0) -> None:
        """Block until ``count`` chat completions have arrived (an event, not a sleep);
        ``timeout_s`` only guards against a test hanging forever."""
        with self._arrived:
            arrived = self._arrived.wait_for(
                lambda: sum(r.path.endswith("/chat/completions") for r in self.log) >= count,
                timeout_s,
            )
        if not arrived:
            raise TimeoutError(f"fewer than {count} chat completions arrived")

    def requests_per_instruction(self) -> Counter[str]:
        return Counter(r.instruction for r in self.completions)

    def requests_for(self, instruction_part: str) -> int:
        return sum(instruction_part in r.instruction for r in self.completions)

    # -- request handling (runs in the server's threads) --

    def _saw(self, authorization: str) -> None:
        with self._lock:
            self.authorizations.append(authorization)

    def _arrive(self, path: str, body: Body, authorization: str) -> Fault | None:
        with self._lock:
            self.log.append(
                LoggedRequest(path, body, authorization, time.monotonic(), sample_instruction(body))
            )
            self._arrived.notify_all()
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            return self._faults.popleft() if self._faults else None

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _chat(self, body: Body, fault: Fault | None) -> tuple[int, Body | bytes, dict[str, str]]:
        if fault is not None and fault.hang_s:
            self._stop.wait(fault.hang_s)
        if fault is not None and fault.status:
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            message = fault.message or f"injected {fault.status}"
            error = {"error": {"message": message, "type": "fake", "code": None}}
            return fault.status, error, headers
        self._stop.wait(self.delay_s)
        if fault is not None and fault.raw_body is not None:
            return 200, fault.raw_body.encode(), {}
        text = fault.text if fault is not None and fault.text is not None else self.reply(body)
        text, finish_reason = within_budget(text, body.get("max_tokens"))
        if fault is not None and fault.finish_reason is not None:
            finish_reason = fault.finish_reason
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        reply: Body = {
            "id": f"chatcmpl-{len(self.log)}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish_reason,
                    "message": {"role": "assistant", "content": text},
                }
            ],
        }
        if self.report_usage:
            words = len(text.split())
            reply["usage"] = {
                "prompt_tokens": prompt_words,
                "completion_tokens": words,
                "total_tokens": prompt_words + words,
            }
        return 200, reply, {}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers + body pay ~40 ms of delayed ACK

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, payload: Body | bytes, headers: dict[str, str]) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (timeout or killed)

            def do_GET(self) -> None:
                server._saw(self.headers.get("Authorization", ""))
                if self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {
                                    "id": server.model,
                                    "object": "model",
                                    "created": 0,
                                    "owned_by": "fake",
                                }
                            ],
                        },
                        {},
                    )
                else:
                    self._send(404, {"error": {"message": "not found"}}, {})

            def do_POST(self) -> None:
                server._saw(self.headers.get("Authorization", ""))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found"}}, {})
                    return
                fault = server._arrive(self.path, body, self.headers.get("Authorization", ""))
                try:
                    self._send(*server._chat(body, fault))
                finally:
                    server._leave()

        return Handler
