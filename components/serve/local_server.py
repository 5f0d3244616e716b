"""A real OpenAI-compatible server for a model folder, on loopback, for as long as it is needed.

    with LocalServer(model_dir, reasoning_format="reflection", api_key_env="RTUNE_SERVE_API_KEY",
                     served_model_name="rtune-student") as server:
        server.base_url               # http://127.0.0.1:<port>/v1
        server.endpoint().chat([...])  # model "rtune-student", the key from the variable

- ``vllm``: ``vllm serve <folder>`` (GPU) with ``--served-model-name``, the key in its
  environment (``VLLM_API_KEY``: a command line is visible to every local user), and the
  ``rtune-reflection`` reasoning-parser plugin when ``reasoning_format`` is ``reflection``.
- ``transformers``: ``transformers serve <folder> --device cpu`` (maintained by Hugging Face;
  never a home-made model server), ``HF_HUB_OFFLINE=1``, on 127.0.0.1 behind rtune's front
  (:class:`~rtune.components.serve.front.ServingFront`), which adds what it lacks: the API key,
  the served name and ``/v1/models``, bounded requests, 502s, the reflection split. The folder
  is passed as the forced model, so the weights load before ``/health`` answers and are never
  unloaded; one warm-up request then runs the first generation, so the first timed request is
  not a load.
- ``auto``: vLLM when it is importable and a CUDA GPU is visible, else transformers.

The server runs in its own process group, which is killed on exit (and at interpreter exit if
the owner never got there); its log goes to a file whose tail is in every startup error.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rtune.components.common.ports import free_port
from rtune.components.serve.access import (
    DEFAULT_SERVED_NAME,
    api_key_from_env,
    check_env_name,
    check_served_name,
)
from rtune.components.serve.client import REASONING_FORMATS, ChatEndpoint

SERVERS = ("auto", "transformers", "vllm")
LOOPBACK = "127.0.0.1"  # where a fronted model server listens: only the front reaches it
DEFAULT_STARTUP_TIMEOUT_S = 600.0
LOG_TAIL_CHARS = 3000
MISSING_VLLM = (
    "server 'vllm' needs the vLLM package and a CUDA GPU: install it with "
    "`pip install 'rtune[serve]'` or run in the rtune-serve image; on CPU use server 'transformers'"
)


class ServerStartError(RuntimeError):
    """The model server exited or did not become healthy in time; the text has its log tail."""


def vllm_usable() -> bool:
    """vLLM importable and a CUDA device visible (vLLM's CPU build is not what we ship)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def resolve_server(server: str) -> str:
    """``auto`` -> ``vllm`` or ``transformers``; ``vllm`` without vLLM/GPU is an error."""
    if server not in SERVERS:
        raise ValueError(f"server must be one of {list(SERVERS)}, got {server!r}")
    if server == "auto":
        return "vllm" if vllm_usable() else "transformers"
    if server == "vllm" and not vllm_usable():
        raise RuntimeError(MISSING_VLLM)
    return server


def console_script(name: str) -> str:
    """The ``name`` executable of this Python's environment (else on PATH)."""
    sibling = Path(sys.executable).parent / name
    found = str(sibling) if sibling.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"`{name}` is not installed in {sys.prefix} nor on PATH")
    return found


def plugin_path() -> str:
    """The vLLM reasoning-parser plugin file (``--reasoning-parser-plugin``)."""
    return str(Path(__file__).with_name("vllm_reasoning.py"))


def server_command(
    server: str,
    model_path: Path,
    host: str,
    port: int,
    reasoning_format: str,
    served_model_name: str = "",
) -> list[str]:
    """The command line that serves ``model_path`` on ``host:port`` (vLLM: under
    ``served_model_name``; transformers serve knows the model by its folder only)."""
    if server == "transformers":
        return [
            console_script("transformers"),
            "serve",
            str(model_path),
            "--host",
            host,
            "--port",
            str(port),
            "--device",
            "cpu",
            "--log-level",
            "info",
        ]
    command = [
        console_script("vllm"),
        "serve",
        str(model_path),
        "--host",
        host,
        "--port",
        str(port),
    ]
    if served_model_name:
        command += ["--served-model-name", served_model_name]
    if reasoning_format == "reflection":
        command += [
            "--reasoning-parser-plugin",
            plugin_path(),
            "--reasoning-parser",
            "rtune-reflection",
        ]
    return command


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no log)"


class LocalServer:
    """Context manager serving ``model_path`` on ``host:port`` (0 = a free port) under the name
    ``served_model_name``; with ``api_key_env``, every route but ``/health`` needs the key held
    by that environment variable."""

    def __init__(
        self,
        model_path: str | Path,
        server: str = "auto",
        host: str = "127.0.0.1",
        port: int = 0,
        reasoning_format: str = "none",
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        served_model_name: str = DEFAULT_SERVED_NAME,
        api_key_env: str = "",
    ) -> None:
        if reasoning_format not in REASONING_FORMATS:
            raise ValueError(
                f"reasoning_format must be one of {list(REASONING_FORMATS)}, got {reasoning_format!r}"
            )
        check_served_name("served_model_name", served_model_name)
        check_env_name("api_key_env", api_key_env)
        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").exists():
            raise FileNotFoundError(
                f"{self.model_path}: not a Hugging Face model folder (no config.json) to serve"
            )
        self.requested_server = server
        self.server = resolve_server(server)
        self.host = host
        self.port = port or free_port(host)
        self.reasoning_format = reasoning_format
        self.startup_timeout_s = startup_timeout_s
        self.model = served_model_name or DEFAULT_SERVED_NAME  # the name clients send
        self.api_key_env = api_key_env
        self.startup_s = 0.0  # process start -> /health answering
        self.warmup_s = 0.0  # the first generation
        self._process: subprocess.Popen[bytes] | None = None
        self._front: Any = None
        self._log_path: Path | None = None
        self._server_port = free_port(LOOPBACK) if self.fronted else self.port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def fronted(self) -> bool:
        """transformers serve runs behind rtune's front; vLLM does its own key and name."""
        return self.server == "transformers"

    @property
    def upstream_url(self) -> str:
        """The model server itself (behind the front, if there is one)."""
        host = LOOPBACK if self.fronted else self.host
        return f"http://{host}:{self._server_port}"

    @property
    def upstream_model(self) -> str:
        """The model's name at the model server (transformers serve: the folder)."""
        return str(self.model_path) if self.fronted else self.model

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def endpoint(self, timeout_s: float = 300.0) -> ChatEndpoint:
        return ChatEndpoint(
            self.base_url,
            self.model,
            api_key_env=self.api_key_env,
            timeout_s=timeout_s,
            reasoning_format=self.reasoning_format,
        )

    def command(self) -> list[str]:
        """The model server's command line (never the key)."""
        host = LOOPBACK if self.fronted else self.host
        served = "" if self.fronted else self.model
        return server_command(
            self.server, self.model_path, host, self._server_port, self.reasoning_format, served
        )

    def environment(self, api_key: str) -> dict[str, str]:
        """The model server's environment: offline hub, and vLLM's key."""
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        if api_key and not self.fronted:
            env["VLLM_API_KEY"] = api_key
        return env

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        api_key = api_key_from_env(self.api_key_env)
        log_dir = Path(tempfile.mkdtemp(prefix="rtune-serve-"))
        self._log_path = log_dir / f"{self.server}-serve.log"
        began = time.monotonic()
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(api_key),
                start_new_session=True,
            )
        atexit.register(self.stop)
        try:
            self._wait_healthy(self.upstream_url, began)
            self.startup_s = time.monotonic() - began
            if self.fronted:
                self._front = self._serving_front(api_key).start()
            self._warm_up(f"{self.upstream_url}/v1", "" if self.fronted else api_key)
        except BaseException:
            self.stop()
            raise

    def _serving_front(self, api_key: str) -> Any:
        from rtune.components.serve.front import ServingFront

        return ServingFront(
            self.upstream_url,
            self.host,
            self.port,
            served_model_name=self.model,
            upstream_model=self.upstream_model,
            api_key=api_key,
            reasoning_format=self.reasoning_format,
        )

    def _wait_healthy(self, upstream: str, began: float) -> None:
        assert self._process is not None and self._log_path is not None
        deadline = began + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise ServerStartError(
                    f"`{self.server} serve {self.model_path}` exited with code {code} before it "
                    f"answered /health. Its log ({self._log_path}) ends with:\n"
                    f"{log_tail(self._log_path)}"
                )
            try:
                with urllib.request.urlopen(f"{upstream}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ServerStartError(
            f"`{self.server} serve {self.model_path}` did not answer {upstream}/health within "
            f"{self.startup_timeout_s:g} s (raise serve.startup_timeout_s for a large model). "
            f"Its log ({self._log_path}) ends with:\n{log_tail(self._log_path)}"
        )

    def _warm_up(self, upstream_v1: str, api_key: str) -> None:
        """One short generation, so that the first timed request pays no one-off cost."""
        body = {
            "model": self.upstream_model,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 1,
        }
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(
            f"{upstream_v1}/chat/completions", data=json.dumps(body).encode(), headers=headers
        )
        began = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=self.startup_timeout_s) as response:
                response.read()
        except (urllib.error.URLError, OSError) as error:
            assert self._log_path is not None
            raise ServerStartError(
                f"`{self.server} serve {self.model_path}` is up but its first chat completion "
                f"failed ({error}). Its log ({self._log_path}) ends with:\n"
                f"{log_tail(self._log_path)}"
            ) from error
        self.warmup_s = time.monotonic() - began

    def stop(self) -> None:
        """Stop the front and kill the server's whole process group (idempotent)."""
        if self._front is not None:
            self._front.close()
            self._front = None
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=15)
        _signal_group(process, signal.SIGKILL)  # workers the server left behind, if any


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # start_new_session: the group id is the server's pid
