"""How the front reads a request body safely: framing rules and OpenAI-style refusals.

A body is framed by exactly one of ``Content-Length`` (one decimal byte count) or
``Transfer-Encoding: chunked``; both at once, or any other transfer coding, is refused rather
than guessed (a proxy and a server that frame one request differently is request smuggling).
The size limit is checked before reading (an announced length) or as the chunks arrive.
"""

from __future__ import annotations

import re
from email.message import Message
from typing import IO, Any

MAX_LINE = 4096  # a chunk-size line or trailer line
_DECIMAL = re.compile(r"^[0-9]{1,19}$")
_HEX = re.compile(rb"^[0-9A-Fa-f]{1,16}$")


def error_body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    """The error object OpenAI's API returns, which its SDKs turn into typed exceptions."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Refusal(Exception):
    """A request the front answers itself, with ``status`` and an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.kind, self.param = (
            status,
            code,
            message,
            kind,
            param,
        )

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.code, self.param)


def request_body_length(headers: Message, limit: int) -> int | None:
    """The announced body size in bytes (0 without a body), or ``None`` for a chunked body."""
    codings = [
        coding.strip().lower()
        for value in headers.get_all("Transfer-Encoding") or []
        for coding in value.split(",")
    ]
    lengths = {value.strip() for value in headers.get_all("Content-Length") or []}
    if codings:
        if codings != ["chunked"]:
            raise Refusal(501, "not_implemented", f"transfer coding {codings} is not supported")
        if lengths:
            raise Refusal(400, "bad_request", "both Transfer-Encoding and Content-Length given")
        return None
    if not lengths:
        return 0
    value = lengths.pop() if len(lengths) == 1 else ", ".join(sorted(lengths))
    if not _DECIMAL.match(value):
        raise Refusal(400, "bad_request", f"Content-Length {value!r} is not a byte count")
    length = int(value)
    if length > limit:
        raise too_large(limit, f"{length} bytes")
    return length


def too_large(limit: int, size: str) -> Refusal:
    return Refusal(
        413, "request_too_large", f"the request body is {size}; this server takes at most {limit}"
    )


def read_chunked(stream: IO[bytes], limit: int) -> bytes:
    """Decode a chunked body from ``stream`` (RFC 9112 §7.1), at most ``limit`` bytes of it."""
    body = bytearray()
    try:
        while size := _chunk_size(stream.readline(MAX_LINE + 1)):
            if len(body) + size > limit:
                raise too_large(limit, f"over {limit} bytes")
            data = stream.read(size)
            if len(data) < size:
                raise Refusal(400, "bad_request", "the chunked body ended inside a chunk")
            body += data
            if stream.readline(3) not in (b"\r\n", b"\n"):
                raise Refusal(400, "bad_request", "a chunk is not followed by CRLF")
        while (trailer := stream.readline(MAX_LINE + 1)) not in (b"\r\n", b"\n", b""):
            if len(trailer) > MAX_LINE:
                raise Refusal(400, "bad_request", "a chunked-body trailer line is too long")
    except TimeoutError:
        raise Refusal(408, "request_timeout", "the chunked request body stopped") from None
    return bytes(body)


def _chunk_size(line: bytes) -> int:
    if not line.endswith(b"\n") or len(line) > MAX_LINE:
        raise Refusal(400, "bad_request", "malformed chunk-size line in the chunked body")
    size = line.split(b";", 1)[0].strip()  # chunk extensions are ignored
    if not _HEX.match(size):
        raise Refusal(400, "bad_request", f"bad chunk size {size[:20]!r} in the chunked body")
    return int(size, 16)
