"""The front with only the reflection split: no key, model names and ``/v1/models`` untouched.

``transformers serve`` has no pluggable reasoning parser, so for ``reasoning_format: reflection``
non-streaming chat replies are split by :func:`~rtune.components.serve.reasoning.add_reasoning`
on their way through :class:`~rtune.components.serve.front.ServingFront`. This is that front
set up for a model server someone else runs (a local server gets the full front, see
``local_server.py``).
"""

from __future__ import annotations

from rtune.components.serve.front import UPSTREAM_TIMEOUT_S, ServingFront
from rtune.components.serve.reasoning import add_reasoning

__all__ = ["ReflectionProxy", "add_reasoning"]


class ReflectionProxy(ServingFront):
    """Listen on ``host:port`` (0 = a free port) and forward to ``upstream`` (``http://h:p``)."""

    def __init__(
        self,
        upstream: str,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout_s: float = UPSTREAM_TIMEOUT_S,
    ) -> None:
        super().__init__(
            upstream, host, port, reasoning_format="reflection", upstream_timeout_s=timeout_s
        )
