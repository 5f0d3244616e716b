"""A small reverse proxy that gives ``transformers serve`` vLLM's reasoning field.

``transformers serve`` has no pluggable reasoning parser (it only knows the ``<think>`` formats
of models it has templates for), so for ``reasoning_format: reflection`` the local server runs
behind this proxy: non-streaming ``POST …/chat/completions`` replies get each choice's message
split by :func:`~rtune.components.serve.reasoning.split_reflection` — ``content`` becomes the answer,
``reasoning_content`` and ``reasoning`` (the two names vLLM has used) the reasoning. Every other
request and reply, streaming ones included, passes through byte for byte. The model server
stays transformers'; this only rewrites JSON, with the stdlib, in a daemon thread.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from rtune.components.serve.reasoning import split_reflection

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
}


def add_reasoning(reply: dict[str, Any]) -> dict[str, Any]:
    """A chat-completion reply with every choice's message split into answer and reasoning."""
    for choice in reply.get("choices") or []:
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            parts = split_reflection(message["content"])
            message["content"] = parts.content
            message["reasoning_content"] = message["reasoning"] = parts.reasoning
    return reply


def _is_plain_chat(path: str, body: bytes) -> bool:
    if not urlsplit(path).path.rstrip("/").endswith("/chat/completions"):
        return False
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return False
    return isinstance(request, dict) and not request.get("stream")


class ReflectionProxy:
    """Listen on ``host:port`` (0 = a free port) and forward to ``upstream`` (``http://h:p``)."""

    def __init__(
        self, upstream: str, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 600
    ):
        target = urlsplit(upstream)
        self.upstream_host, self.upstream_port = target.hostname or "127.0.0.1", target.port or 80
        self.timeout_s = timeout_s
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> ReflectionProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ReflectionProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
                }
                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=proxy.timeout_s
                )
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    if response.status == 200 and _is_plain_chat(self.path, body):
                        self._send_split(response)
                    else:
                        self._relay(response)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client went away
                except OSError as error:
                    self._send(502, {"error": {"message": f"model server unreachable: {error}"}})
                finally:
                    upstream.close()

            def _send_split(self, response: http.client.HTTPResponse) -> None:
                raw = response.read()
                try:
                    payload: Any = add_reasoning(json.loads(raw))
                except (ValueError, AttributeError):
                    payload = raw  # not the JSON we expected: hand it on untouched
                self._send(200, payload, response.getheaders())

            def _send(
                self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None
            ) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers or [("Content-Type", "application/json")]:
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _relay(self, response: http.client.HTTPResponse) -> None:
                """Pass the reply on as it arrives (streams included), then close."""
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                while chunk := response.read1(65536):
                    self.wfile.write(chunk)
                    self.wfile.flush()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        return Handler
