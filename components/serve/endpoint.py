"""What the serve stage hands to the next stages: where the served model answers.

    spec = EndpointSpec.load(endpoint_artifact_path)
    with open_endpoint(spec) as endpoint:      # a ChatEndpoint
        endpoint.chat([{"role": "user", "content": "…"}])

A ``kserve`` endpoint keeps running in the cluster: opening it just connects. A ``local`` one
was a server on loopback that the serve stage stopped when it ended (a pipeline task must not
leave a process behind), so opening it starts a :class:`LocalServer` for the same model folder,
server, reasoning format, served name and API key variable, for the duration of the ``with``
block.

A client reaches the model as ``ChatEndpoint(spec.base_url, spec.model,
api_key_env=spec.api_key_env)``: ``model`` is the served name, ``api_key_env`` the NAME of the
environment variable holding the key ("" = no key); the key itself is never in the spec.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rtune.components.serve.access import DEFAULT_SERVED_NAME, check_env_name
from rtune.components.serve.client import REASONING_FORMATS, ChatEndpoint

KINDS = ("local", "kserve")


@dataclass
class EndpointSpec:
    """``base_url`` ends in ``/v1``; ``model`` is the name the server answers to (the served
    name); ``api_key_env`` names the variable holding the key clients send. Local endpoints also
    record the ``model_path`` and ``server`` needed to start them again."""

    kind: str
    base_url: str
    model: str
    model_path: str = ""
    server: str = ""
    reasoning_format: str = "none"
    name: str = ""
    namespace: str = ""
    api_key_env: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.reasoning_format not in REASONING_FORMATS:
            raise ValueError(
                f"reasoning_format must be one of {list(REASONING_FORMATS)}, "
                f"got {self.reasoning_format!r}"
            )
        if self.kind == "local" and not self.model_path:
            raise ValueError("a local endpoint needs model_path to be started again")
        check_env_name("api_key_env", self.api_key_env)

    def served_model_name(self) -> str:
        """The name to serve a local endpoint under again. Files written before models had a
        served name recorded the folder itself: those are served under the default name (the
        front still accepts the folder path as the model)."""
        if self.kind == "local" and self.model in ("", self.model_path):
            return DEFAULT_SERVED_NAME
        return self.model

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> EndpointSpec:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@contextmanager
def open_endpoint(
    spec: EndpointSpec, timeout_s: float = 300.0, startup_timeout_s: float = 600.0
) -> Iterator[ChatEndpoint]:
    """A :class:`ChatEndpoint` for ``spec``; a local model is served for the block's duration."""
    if spec.kind == "kserve":
        yield ChatEndpoint(
            spec.base_url,
            spec.model,
            api_key_env=spec.api_key_env,
            timeout_s=timeout_s,
            reasoning_format=spec.reasoning_format,
        )
        return
    from rtune.components.serve.local_server import LocalServer

    with LocalServer(
        spec.model_path,
        server=spec.server or "auto",
        reasoning_format=spec.reasoning_format,
        startup_timeout_s=startup_timeout_s,
        served_model_name=spec.served_model_name(),
        api_key_env=spec.api_key_env,
    ) as server:
        yield server.endpoint(timeout_s=timeout_s)
