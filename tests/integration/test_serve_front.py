"""rtune's front in front of a model server, against real sockets on loopback.

The upstream is the FakeOpenAIServer, or a raw TCP server (:class:`RawUpstream`) when the test
needs an upstream that misbehaves below HTTP: one that hangs up, speaks garbage or never answers.
Requests that a client library would never send (a malformed ``Content-Length``, a body shorter
than announced) go out as raw bytes (:func:`exchange`). OpenAI clients are the ``openai`` SDK.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest

from rtune.components.serve.front import ServingFront
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.integration

USER = [{"role": "user", "content": "What is 2 + 2?"}]
TAGGED = "<thinking>2 and 2 make 4.</thinking><output>4</output>"
FOLDER = "/models/run-7/model"  # the id the upstream knows the model by
KEY = "rt-test-key-0123456789"
CHAT = json.dumps({"model": "rtune-student", "messages": USER}).encode()


def exchange(port: int, request: bytes, timeout_s: float = 30) -> tuple[int, dict[str, str], Any]:
    """Send raw bytes, read one HTTP reply: (status, headers, JSON body or raw bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        raw = response.read()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def post(path: str, body: bytes, *headers: str) -> bytes:
    """A raw HTTP/1.1 POST with a correct Content-Length unless ``headers`` frame it otherwise."""
    framing = [h for h in headers if h.lower().startswith(("content-length", "transfer-encoding"))]
    lines = ["Host: front", *headers] + ([] if framing else [f"Content-Length: {len(body)}"])
    return (
        f"POST {path} HTTP/1.1\r\n{''.join(h + chr(13) + chr(10) for h in lines)}\r\n".encode()
        + (body)
    )


def bound_port(sock: socket.socket) -> int:
    sock.bind(("127.0.0.1", 0))
    return int(sock.getsockname()[1])


def chunked(body: bytes, size: int = 7) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def sdk(front: ServingFront, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=front.base_url, api_key=key, max_retries=0, timeout=30)


def read_request(connection: socket.socket) -> bytes:
    """One whole request with a Content-Length body, as it came over the wire."""
    data = b""
    while b"\r\n\r\n" not in data and (piece := connection.recv(65536)):
        data += piece
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    length = next(
        (
            int(line.split(":")[1])
            for line in head.split("\r\n")
            if line.startswith("content-length:")
        ),
        0,
    )
    while len(data) < len(head) + 4 + length and (piece := connection.recv(65536)):
        data += piece
    return data


class RawUpstream:
    """A TCP server that reads one request per connection and then does ``behaviour``:
    ``close`` (hang up without a reply), ``garbage`` (not HTTP), ``hang`` (never answer until
    the test ends) or ``sse`` (a two-chunk chat stream naming the model ``FOLDER``)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.requests: list[bytes] = []
        self._released = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        with contextlib.suppress(OSError):  # wake the accept() so the thread sees the release
            socket.create_connection(self._listener.getsockname(), timeout=5).close()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._released.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection:
                if self._released.is_set():
                    return
                self.requests.append(read_request(connection))
                self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        if self.behaviour == "garbage":
            connection.sendall(b"HELLO THERE\r\n\r\n")
        elif self.behaviour == "hang":
            self._released.wait()
        elif self.behaviour == "sse":
            events = [
                {"model": FOLDER, "choices": [{"index": 0, "delta": {"content": "Fo"}}]},
                {"model": FOLDER, "choices": [{"index": 0, "delta": {"content": "ur"}}]},
            ]
            stream = b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in events)
            stream += b"data: [DONE]\n\n"
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            )
            connection.sendall(head + stream)


@contextmanager
def front_over_fake(**options: Any) -> Iterator[tuple[ServingFront, FakeOpenAIServer]]:
    with (
        FakeOpenAIServer(reply=lambda body: TAGGED, model=FOLDER) as upstream,
        ServingFront(upstream.base_url, **options) as front,
    ):
        yield front, upstream


# ----------------------------------------------------------------------------- request framing


def test_a_malformed_content_length_is_a_400_and_the_front_keeps_serving() -> None:
    with front_over_fake() as (front, upstream):
        for bad in ("abc", "-5", "12, 13", "0x10"):
            status, _, body = exchange(
                front.port, post("/v1/chat/completions", b"", f"Content-Length: {bad}")
            )
            assert status == 400 and body["error"]["code"] == "bad_request", bad
            assert "Content-Length" in body["error"]["message"]
        status, _, body = exchange(front.port, post("/v1/chat/completions", CHAT))
        assert status == 200 and body["choices"][0]["message"]["content"] == TAGGED
    assert len(upstream.completions) == 1  # the refused ones never reached the model server


def test_a_body_shorter_than_its_content_length_times_out_with_408() -> None:
    with front_over_fake(client_timeout_s=0.3) as (front, upstream):
        short = post("/v1/chat/completions", b'{"model": ', "Content-Length: 100")
        status, _, body = exchange(front.port, short)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert upstream.completions == []


def test_a_request_over_the_size_limit_is_413_and_never_forwarded() -> None:
    with front_over_fake(max_request_bytes=1024) as (front, upstream):
        # announced too large: refused before the body is read (a 100-continue client never
        # sends it)
        announced = post(
            "/v1/chat/completions", b"", "Content-Length: 5000000", "Expect: 100-continue"
        )
        status, _, body = exchange(front.port, announced)
        assert status == 413 and body["error"]["code"] == "request_too_large"
        assert "1024" in body["error"]["message"]
        # chunked: refused once the chunks pass the limit
        big = json.dumps({"model": "m", "messages": USER, "pad": "x" * 4000}).encode()
        status, _, body = exchange(
            front.port,
            post("/v1/chat/completions", chunked(big, 512), "Transfer-Encoding: chunked"),
        )
        assert status == 413
        # at the limit is fine
        status, _, _ = exchange(front.port, post("/v1/chat/completions", CHAT))
        assert status == 200
    assert len(upstream.completions) == 1


def test_a_chunked_body_is_forwarded_whole() -> None:
    with front_over_fake() as (front, upstream):
        request = post("/v1/chat/completions", chunked(CHAT), "Transfer-Encoding: chunked")
        status, _, body = exchange(front.port, request)
        bad = post("/v1/chat/completions", b"zz\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked")
        bad_status, _, bad_body = exchange(front.port, bad)
        both = post(
            "/v1/chat/completions",
            chunked(CHAT),
            "Transfer-Encoding: chunked",
            f"Content-Length: {len(CHAT)}",
        )
        both_status, _, _ = exchange(front.port, both)
    assert status == 200 and body["choices"][0]["message"]["content"] == TAGGED
    assert [r.body for r in upstream.completions] == [json.loads(CHAT)]
    assert bad_status == 400 and "chunk" in bad_body["error"]["message"]
    assert both_status == 400  # both framings at once: refused, never guessed (smuggling)


# ----------------------------------------------------------------------------- upstream failures


@pytest.mark.parametrize("behaviour", ["close", "garbage", "hang"])
def test_an_upstream_failure_reaches_the_client_as_a_502_json_error(behaviour: str) -> None:
    with (
        RawUpstream(behaviour) as upstream,
        ServingFront(upstream.url, upstream_timeout_s=0.3) as front,
    ):
        status, headers, body = exchange(front.port, post("/v1/chat/completions", CHAT))
        assert upstream.requests and upstream.requests[0].startswith(b"POST /v1/chat/completions")
    assert status == 502 and headers["content-type"] == "application/json"
    assert body["error"]["type"] == "upstream_error" and body["error"]["code"] == "bad_gateway"


def test_an_unreachable_model_server_is_a_502_the_sdk_reports() -> None:
    with (
        socket.socket() as closed,  # bound, never listening: connections to it are refused
        ServingFront(f"http://127.0.0.1:{bound_port(closed)}") as front,
    ):
        client = openai.OpenAI(base_url=front.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert failed.value.status_code == 502 and "unreachable" in failed.value.message


# ----------------------------------------------------------------------------- the API key


def test_the_api_key_guards_every_route_but_health() -> None:
    with front_over_fake(api_key=KEY, served_model_name="rtune-student", upstream_model=FOLDER) as (
        front,
        upstream,
    ):
        for key in ("", "wrong", KEY[:-1], KEY + "x"):
            headers = [f"Authorization: Bearer {key}"] if key else []
            status, reply_headers, body = exchange(
                front.port, post("/v1/chat/completions", CHAT, *headers)
            )
            assert status == 401 and body["error"]["code"] == "invalid_api_key", key
            assert reply_headers["www-authenticate"] == "Bearer"
            assert KEY not in json.dumps(body)
        with pytest.raises(openai.AuthenticationError):
            sdk(front, key="wrong").models.list()
        health = b"GET /health HTTP/1.1\r\nHost: front\r\n\r\n"
        status, _, body = exchange(front.port, health)
        assert status == 404 and body == {"error": {"message": "not found"}}  # the fake's own
        reply = sdk(front).chat.completions.create(model="rtune-student", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == TAGGED
    [forwarded] = upstream.completions  # only the authorised request got through
    assert forwarded.authorization == ""  # the key stays at the front
    assert KEY not in repr(front) and KEY not in repr(vars(front))


# ----------------------------------------------------------------------------- the served name


def test_openai_clients_see_the_served_name_only() -> None:
    with front_over_fake(served_model_name="rtune-student", upstream_model=FOLDER) as (
        front,
        upstream,
    ):
        client = sdk(front)
        assert [m.id for m in client.models.list()] == ["rtune-student"]
        assert client.models.retrieve("rtune-student").owned_by == "rtune"
        named = client.chat.completions.create(model="rtune-student", messages=USER)  # type: ignore[arg-type]
        default = client.chat.completions.create(model="default", messages=USER)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError) as unknown:
            client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-4o")
    assert named.model == default.model == "rtune-student"  # never the folder path
    assert named.choices[0].message.content == TAGGED  # no split unless asked
    assert [r.body["model"] for r in upstream.completions] == [FOLDER, FOLDER]
    assert unknown.value.code == "model_not_found" and "gpt-4o" in unknown.value.message


def test_a_stream_names_the_served_model_in_every_chunk() -> None:
    with (
        RawUpstream("sse") as upstream,
        ServingFront(
            upstream.url, served_model_name="rtune-student", upstream_model=FOLDER
        ) as front,
    ):
        stream = sdk(front).chat.completions.create(
            model="rtune-student",
            messages=USER,  # type: ignore[arg-type]
            stream=True,
        )
        chunks = list(stream)
        forwarded = upstream.requests[0]
    assert [c.model for c in chunks] == ["rtune-student", "rtune-student"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Four"
    assert json.loads(forwarded.split(b"\r\n\r\n", 1)[1])["model"] == FOLDER


def test_the_reflection_split_applies_only_when_asked() -> None:
    with front_over_fake(
        served_model_name="s", upstream_model=FOLDER, reasoning_format="reflection"
    ) as (
        front,
        _,
    ):
        message = sdk(front).chat.completions.create(model="s", messages=USER).choices[0].message  # type: ignore[arg-type]
    extra = message.model_extra or {}
    assert message.content == "4" and extra["reasoning_content"] == "2 and 2 make 4."
