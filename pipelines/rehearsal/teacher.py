"""The teacher a rehearsal talks to: an OpenAI-compatible endpoint on loopback at the config's URL.

The real teacher is a large served model (remote, paid, GPU); what the rehearsal needs from it is
the wire contract a cluster run depends on: ``/v1/models``, ``/v1/chat/completions`` answering the
JSON schema the request asks for (vLLM's guided decoding), and a bearer key that must be the one in
the ``rtune-teacher`` Secret — a pod that sends no key, or another key, gets a 401 like from a
gateway. Replies are deterministic rewrites of the request's own text, so selection has real,
different texts to score.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 4 * 1024 * 1024
STYLES = (
    "Explain the reasoning step by step and give one concrete example.",
    "Answer for a reader new to the topic, then list two common mistakes.",
    "Compare two approaches and say when each one is the better choice.",
)


@dataclass
class TeacherStandIn:
    address: str
    port: int
    model: str
    api_key: str
    requests: int = 0
    refused: int = 0
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def reply_for(body: dict[str, Any]) -> str:
    """The assistant text for a chat request: the schema's fields filled, or plain prose."""
    messages = body.get("messages") or [{}]
    prompt = str(messages[-1].get("content", ""))
    digest = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    topic = " ".join(prompt.split()[-40:])[:240]
    style = STYLES[digest % len(STYLES)]
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema") or {}
    properties = schema.get("properties") or {}
    if not properties:
        return f"{style} {topic}"
    return json.dumps({name: f"{name.replace('_', ' ')}: {style} {topic}" for name in properties})


def start_teacher(address: str, port: int, model: str, api_key: str) -> TeacherStandIn:
    teacher = TeacherStandIn(address, port, model, api_key)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            sent = self.headers.get("Authorization", "")
            if hmac.compare_digest(sent.encode(), f"Bearer {teacher.api_key}".encode()):
                return True
            teacher.refused += 1
            self._send(401, {"error": {"message": "invalid API key", "type": "auth_error"}})
            return False

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            elif self._authorized() and self.path.rstrip("/") == "/v1/models":
                self._send(
                    200, {"object": "list", "data": [{"id": teacher.model, "object": "model"}]}
                )
            elif self.path.rstrip("/") != "/v1/models":
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(min(length, MAX_BODY)) or b"{}")
            if not self._authorized():
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            teacher.requests += 1
            text = reply_for(body)
            self._send(
                200,
                {
                    "id": f"chatcmpl-{teacher.requests}",
                    "object": "chat.completion",
                    "model": teacher.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(json.dumps(body)) // 4,
                        "completion_tokens": len(text) // 4,
                        "total_tokens": len(json.dumps(body)) // 4 + len(text) // 4,
                    },
                },
            )

    server = ThreadingHTTPServer((address, port), Handler)
    teacher._server = server
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return teacher
