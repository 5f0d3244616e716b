"""rtune's front: the small HTTP server every local ``transformers serve`` runs behind.

    with ServingFront("http://127.0.0.1:8123", host="0.0.0.0", port=8000,
                      served_model_name="rtune-student", upstream_model="/models/student",
                      api_key=os.environ["RTUNE_SERVE_API_KEY"]) as front:
        front.base_url  # http://0.0.0.0:8000/v1

``transformers serve`` has no authentication, answers ``GET /v1/models`` with a 500 and knows
its model only by the folder path. The front gives an OpenAI client what it expects:

- **API key**: every route but ``/health`` needs ``Authorization: Bearer <key>`` (401 with an
  OpenAI-style error otherwise); the key is compared in constant time and never forwarded.
- **Served name**: ``/v1/models`` lists ``served_model_name`` (answered here); a request's
  ``model`` may be that name, ``default`` or the upstream's own id, and is rewritten to the
  upstream's id; any other name is a 404 ``model_not_found``. Replies, streamed ones included,
  name the served model.
- **Bounded requests**: a body over ``max_request_bytes`` is a 413, a malformed framing a 400, a
  body slower than ``client_timeout_s`` a 408; chunked bodies are decoded and forwarded whole.
- **Upstream failures** (refused, hung up, timed out after ``upstream_timeout_s``, not HTTP)
  reach the client as a 502 with a JSON error, never as an empty reply.
- **Reflection split** (``reasoning_format: reflection``): non-streaming chat replies get
  ``reasoning_content``/``reasoning`` (:func:`~rtune.components.serve.reasoning.add_reasoning`).

Without ``served_model_name`` model names and ``/v1/models`` pass through untouched. Stdlib only;
it runs in a daemon thread of the process that owns the model server.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from rtune.components.serve.access import DEFAULT_ALIAS, KeyCheck
from rtune.components.serve.framing import Refusal, read_chunked, request_body_length
from rtune.components.serve.reasoning import add_reasoning

MAX_REQUEST_BYTES = 8 * 2**20  # ~2M tokens of JSON text: far past any context window
CLIENT_TIMEOUT_S = 60.0  # a client silent this long while sending is gone
UPSTREAM_TIMEOUT_S = 600.0  # one read from the model server (a long CPU generation)
LINGER_S = 2.0
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
    "expect",
    "content-length",
}
log = logging.getLogger(__name__)


def upstream_failure(error: BaseException, timeout_s: float) -> Refusal:
    """A 502 saying what went wrong with the model server, in words."""
    if isinstance(error, TimeoutError):
        problem = f"the model server did not answer within {timeout_s:g} s"
    elif isinstance(error, http.client.RemoteDisconnected):
        problem = "the model server closed the connection without a reply"
    elif isinstance(error, http.client.HTTPException):
        problem = f"the model server sent no valid HTTP reply ({type(error).__name__}: {error})"
    else:
        problem = f"model server unreachable: {error}"
    return Refusal(502, "bad_gateway", problem, kind="upstream_error")


class ServingFront:
    """Listen on ``host:port`` (0 = a free port) and serve the model behind ``upstream``."""

    def __init__(
        self,
        upstream: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        served_model_name: str = "",
        upstream_model: str = "",
        api_key: str = "",
        reasoning_format: str = "none",
        max_request_bytes: int = MAX_REQUEST_BYTES,
        client_timeout_s: float = CLIENT_TIMEOUT_S,
        upstream_timeout_s: float = UPSTREAM_TIMEOUT_S,
    ) -> None:
        if served_model_name and not upstream_model:
            raise ValueError("served_model_name needs upstream_model, the id it stands for")
        target = urlsplit(upstream)
        self.upstream_host, self.upstream_port = target.hostname or "127.0.0.1", target.port or 80
        self.host = host
        self.served_model_name = served_model_name
        self.upstream_model = upstream_model
        self.reasoning_format = reasoning_format
        self.max_request_bytes = max_request_bytes
        self.upstream_timeout_s = upstream_timeout_s
        self._key_check = KeyCheck(api_key) if api_key else None
        self._created = int(time.time())
        handler = type("Handler", (FrontHandler,), {"front": self, "timeout": client_timeout_s})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def __repr__(self) -> str:
        key = "with a key" if self._key_check else "no key"
        return (
            f"ServingFront({self.base_url!r} -> {self.upstream_host}:{self.upstream_port}, {key})"
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ServingFront:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ServingFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def guarded(self) -> bool:
        """Whether clients must send the key."""
        return self._key_check is not None

    # -- the rules, per request --

    def authorised(self, route: str, authorization: str) -> bool:
        return (
            route == "/health" or self._key_check is None or self._key_check.allows(authorization)
        )

    def model_listing(self, method: str, route: str) -> dict[str, Any] | None:
        """The reply to ``GET /v1/models[/<id>]`` when a served name is set, else ``None``."""
        if not self.served_model_name or method != "GET":
            return None
        route = route.rstrip("/")
        if route == "/v1/models":
            return {"object": "list", "data": [self._model_card()]}
        if route.startswith("/v1/models/"):
            wanted = unquote(route.removeprefix("/v1/models/"))
            self.upstream_name_for(wanted)  # 404 for any other name
            return self._model_card()
        return None

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.served_model_name,
            "object": "model",
            "created": self._created,
            "owned_by": "rtune",
        }

    def upstream_name_for(self, requested: Any) -> str:
        """The upstream's id for a request's ``model``; an unknown name is a 404."""
        if requested in (self.served_model_name, DEFAULT_ALIAS, self.upstream_model):
            return self.upstream_model
        raise Refusal(
            404,
            "model_not_found",
            f"The model {requested!r} does not exist: this server serves "
            f"{self.served_model_name!r}",
            param="model",
        )

    def upstream_body(self, method: str, body: bytes) -> bytes:
        """The request body with its ``model`` mapped to the upstream's id."""
        if not self.served_model_name or method != "POST" or not body:
            return body
        try:
            request = json.loads(body)
        except ValueError:
            return body  # not JSON: the model server says what is wrong with it
        if not isinstance(request, dict) or "model" not in request:
            return body
        request["model"] = self.upstream_name_for(request["model"])
        return json.dumps(request).encode()

    def rewrite_reply(self, route: str, reply: Any) -> Any:
        """A whole JSON reply as the client should see it (served name, reasoning split)."""
        if not isinstance(reply, dict):
            return reply
        if self.served_model_name and isinstance(reply.get("model"), str):
            reply["model"] = self.served_model_name
        if self.reasoning_format == "reflection" and route.endswith("/chat/completions"):
            reply = add_reasoning(reply)
        return reply

    def rewrite_event(self, line: bytes) -> bytes:
        """One line of a server-sent event stream, naming the served model."""
        if not line.startswith(b"data: {"):
            return line
        try:
            event = json.loads(line[len(b"data: ") :])
        except ValueError:
            return line
        if isinstance(event, dict) and isinstance(event.get("model"), str):
            event["model"] = self.served_model_name
        return b"data: " + json.dumps(event).encode() + b"\n"

    def rewrites(self, route: str, body: bytes) -> bool:
        """Whether a 200 reply to this request is read whole and rewritten."""
        if not route.endswith(("/chat/completions", "/completions")):
            return False
        if not (self.served_model_name or self.reasoning_format == "reflection"):
            return False
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return False
        return isinstance(request, dict) and not request.get("stream")


class FrontHandler(BaseHTTPRequestHandler):
    """One client connection. ``front`` (the rules) and ``timeout`` (the socket timeout for
    everything the client sends) are set on the subclass each :class:`ServingFront` makes."""

    front: ServingFront
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def handle_expect_100(self) -> bool:
        """Defer ``100 Continue`` until the request is accepted: a refused body is never sent."""
        return True

    def _serve(self) -> None:
        route = urlsplit(self.path).path
        body_read = False
        try:
            length = request_body_length(self.headers, self.front.max_request_bytes)
            if not self.front.authorised(route, self.headers.get("Authorization", "")):
                raise Refusal(
                    401,
                    "invalid_api_key",
                    "missing or wrong API key: send it as 'Authorization: Bearer <key>'",
                )
            body = self._read_body(length)
            body_read = True
            listing = self.front.model_listing(self.command, route)
            if listing is not None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send_json(200, listing)
                return
            forwarded = self.front.upstream_body(self.command, body)
        except Refusal as refusal:
            self._refuse(refusal, body_read)
            return
        self._forward(route, body, forwarded)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def _read_body(self, length: int | None) -> bytes:
        """The whole body: ``length`` bytes, or the chunks when ``length`` is ``None``."""
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        try:
            if length is None:
                return read_chunked(self.rfile, self.front.max_request_bytes)
            body = self.rfile.read(length) if length else b""
        except TimeoutError:
            body = b""
        if length is not None and len(body) < length:
            raise Refusal(408, "request_timeout", f"the request body stopped before {length} bytes")
        return body

    def _forward(self, route: str, body: bytes, forwarded: bytes) -> None:
        front = self.front
        upstream = http.client.HTTPConnection(
            front.upstream_host, front.upstream_port, timeout=front.upstream_timeout_s
        )
        try:
            try:
                upstream.request(
                    self.command,
                    self.path,
                    body=forwarded if forwarded or self.command != "GET" else None,
                    headers=self._upstream_headers(),
                )
                response = upstream.getresponse()
                whole = response.status == 200 and front.rewrites(route, body)
                raw = response.read() if whole else b""
            except (OSError, http.client.HTTPException) as error:
                self._refuse(upstream_failure(error, front.upstream_timeout_s), body_read=True)
                return
            if whole:
                self._send_json(200, self._rewritten(route, raw), response.getheaders())
            else:
                self._relay(response)
        except (OSError, http.client.HTTPException) as error:
            # mid-reply (the model server or the client went away): nothing more can be said
            log.warning("front: %s %s ended mid-reply: %s", self.command, self.path, error)
            self.close_connection = True
        finally:
            upstream.close()

    def _rewritten(self, route: str, raw: bytes) -> Any:
        try:
            return self.front.rewrite_reply(route, json.loads(raw))
        except ValueError:
            return raw  # not the JSON we expected: hand it on untouched

    def _upstream_headers(self) -> dict[str, str]:
        drop = set(HOP_BY_HOP)
        if self.front.guarded:
            drop.add("authorization")  # the front's key is not the model server's business
        return {k: v for k, v in self.headers.items() if k.lower() not in drop}

    def _relay(self, response: http.client.HTTPResponse) -> None:
        """Pass the reply on as it arrives (streams included), then close."""
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        events = response.getheader("Content-Type", "").startswith("text/event-stream")
        if events and self.front.served_model_name:
            while line := response.readline(self.front.max_request_bytes):
                self.wfile.write(self.front.rewrite_event(line))
                self.wfile.flush()
            return
        while chunk := response.read1(65536):
            self.wfile.write(chunk)
            self.wfile.flush()

    def _refuse(self, refusal: Refusal, body_read: bool) -> None:
        extra = [("WWW-Authenticate", "Bearer")] if refusal.status == 401 else []
        try:
            self._send_json(refusal.status, refusal.body(), extra)
        except OSError:
            self.close_connection = True  # the client went away first
            return
        if not body_read:
            self.close_connection = True
            self._linger()

    def _linger(self) -> None:
        """Drop what the client still sends, briefly, before closing: closing a socket with
        unread data resets the connection, and the client might lose the refusal."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_S)
            drained = 0
            while drained <= self.front.max_request_bytes and (data := self.connection.recv(65536)):
                drained += len(data)

    def _send_json(
        self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None
    ) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        names = set()
        for name, value in headers or []:
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
                names.add(name.lower())
        if "content-type" not in names:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
