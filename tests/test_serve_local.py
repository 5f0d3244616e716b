"""Real OpenAI-compatible servers on loopback: ``transformers serve`` for the tiny model (and the
embedded one), the reflection proxy in front of it, the serve stage end to end, the endpoint
relaunched from its file, and ``rtune serve`` in the foreground.

The tiny model's weights are random, so it writes noise; where a test needs a known reply it
asks transformers serve for one through the request's ``generation_config`` (a ``sequence_bias``
that makes each next token of the wanted text win): the text still comes out of the real model
server, token by token.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import pytest

from rtune.components.serve.client import ChatEndpoint
from rtune.components.serve.endpoint import EndpointSpec, open_endpoint
from rtune.components.serve.local_server import LocalServer, ServerStartError
from rtune.components.serve.reasoning import split_reflection
from rtune.components.serve.task import run_serve
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER = [{"role": "user", "content": "What is 2 + 2?"}]
TAGGED = "<thinking>Two and two make four.</thinking>\n<output>4</output>"
ROOT = Path(__file__).resolve().parents[1]


def forced_reply(model_dir: Path, text: str) -> tuple[dict[str, Any], int]:
    """``(extra_body, token count)`` making the model write exactly ``text``, greedily."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False)["input_ids"]
    # the bias grows with the prefix length, so the longest matching prefix decides
    bias = [[ids[: i + 1], 1000.0 * (i + 1)] for i in range(len(ids))]
    config = {"sequence_bias": bias, "max_new_tokens": len(ids), "do_sample": False}
    return {"generation_config": json.dumps(config)}, len(ids)


def health(base_url: str) -> int:
    with urllib.request.urlopen(f"{base_url.removesuffix('/v1')}/health", timeout=2) as response:
        return int(response.status)


def assert_down(base_url: str) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        health(base_url)


def test_transformers_serve_answers_a_chat_completion(tiny_model_dir: Path) -> None:
    with LocalServer(tiny_model_dir, server="transformers") as server:
        assert server.server == "transformers" and not server.proxied
        assert (
            server.base_url == f"http://127.0.0.1:{server.port}/v1" == server.upstream_url + "/v1"
        )
        reply = server.endpoint().chat(USER, max_tokens=8)
        process = server._process
        assert process is not None and health(server.base_url) == 200
        assert server.startup_s > 0 and server.warmup_s > 0
    assert reply.finish_reason in ("length", "stop") and reply.latency_s > 0
    assert reply.completion_tokens is not None and 1 <= reply.completion_tokens <= 8
    assert reply.reasoning is None and isinstance(reply.content, str)
    assert process.poll() is not None, "the server process must be gone after the block"
    assert_down(server.base_url)


def post_chat(base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        message: dict[str, Any] = json.loads(response.read())["choices"][0]["message"]
        return message


def test_the_real_server_writes_a_forced_reply_and_the_proxy_splits_it(
    tiny_model_dir: Path,
) -> None:
    extra, tokens = forced_reply(tiny_model_dir, TAGGED)
    with LocalServer(
        tiny_model_dir, server="transformers", reasoning_format="reflection"
    ) as server:
        assert server.proxied and server.upstream_url != server.base_url.removesuffix("/v1")
        forced = {"model": server.model, "messages": USER, "max_tokens": tokens, **extra}
        written = post_chat(f"{server.upstream_url}/v1", forced)  # the model server itself
        proxied = post_chat(server.base_url, forced)
        # a client without its own split gets the reasoning from the API
        reply = ChatEndpoint(server.base_url, server.model).chat(USER, tokens, extra_body=extra)
        noise = {"model": server.model, "messages": USER, "max_tokens": 6, "temperature": 0}
        noise_written = post_chat(f"{server.upstream_url}/v1", noise)["content"]
        noise_proxied = post_chat(server.base_url, noise)
        assert health(server.base_url) == 200  # passed through the proxy
    assert written["content"] == TAGGED and "reasoning_content" not in written
    assert proxied["content"] == "4"
    assert proxied["reasoning_content"] == proxied["reasoning"] == "Two and two make four."
    assert (reply.content, reply.reasoning) == ("4", "Two and two make four.")
    expected = split_reflection(noise_written)  # the random model's own words, split the same way
    assert (noise_proxied["reasoning_content"], noise_proxied["content"]) == (
        expected.reasoning,
        expected.content,
    )


def test_run_serve_locally_end_to_end(embedded_model_dir: Path, tmp_path: Path) -> None:
    """The real embedded model (the tiny one only writes newlines: no smoke test passes)."""
    tracking = {"experiment": "serve-local", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    serve = {"server": "transformers", "smoke_max_tokens": 10, "reasoning_format": "reflection"}
    endpoint_path = tmp_path / "artifacts" / "endpoint"
    summary = run_serve(embedded_model_dir, serve, tracking, "local-run-1", endpoint_path)
    assert summary["kind"] == "local" and summary["smoke_ok"] is True
    assert "Paris" in summary["smoke_reply"]  # "what is the capital of France?"
    assert summary["server"] == "transformers" and summary["model"] == str(embedded_model_dir)
    assert summary["smoke_latency_s"] > 0 and summary["startup_s"] > 0
    spec = EndpointSpec.load(endpoint_path)
    assert spec.kind == "local" and spec.model_path == str(embedded_model_dir)
    assert spec.base_url == summary["base_url"] and spec.reasoning_format == "reflection"
    assert_down(spec.base_url)  # the stage's own server stopped with the stage
    mlflow.set_tracking_uri(tracking["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=["serve-local"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("rtune.role") == "pipeline")
    stage = next(r for r in runs if r.data.tags.get("rtune.stage") == "serve")
    assert parent.data.tags["rtune.endpoint"] == spec.base_url
    assert parent.data.tags["rtune.endpoint_kind"] == "local"
    assert parent.data.metrics["smoke_ok"] == 1.0 and stage.data.metrics["smoke_latency_s"] > 0
    assert stage.data.params["server"] == "transformers"


def test_open_endpoint_starts_the_local_model_again(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = EndpointSpec(
        "local",
        "http://127.0.0.1:9/v1",  # the stage's server, long gone
        str(tiny_model_dir),
        model_path=str(tiny_model_dir),
        server="transformers",
    )
    with open_endpoint(spec) as endpoint:
        assert endpoint.base_url != spec.base_url and health(endpoint.base_url) == 200
        reply = endpoint.chat(USER, max_tokens=4)
    assert reply.completion_tokens is not None and reply.completion_tokens <= 4
    assert_down(endpoint.base_url)


def test_a_server_that_dies_fails_fast_with_its_log_tail(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rtune.components.serve.local_server as local_server

    crash = (
        "import sys; print('ValueError: Unrecognized processing class', flush=True); sys.exit(3)"
    )
    monkeypatch.setattr(local_server, "server_command", lambda *args: [sys.executable, "-c", crash])
    server = LocalServer(tiny_model_dir, server="transformers", startup_timeout_s=120)
    began = time.monotonic()
    with pytest.raises(ServerStartError) as raised:
        server.start()
    message = str(raised.value)
    assert "exited with code 3" in message and "Unrecognized processing class" in message
    assert time.monotonic() - began < 30  # not the whole timeout
    assert server._process is None


def test_startup_timeout_kills_the_server_and_names_the_setting(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rtune.components.serve.local_server as local_server

    sleeper = [
        sys.executable,
        "-c",
        "import time; print('loading forever', flush=True); time.sleep(600)",
    ]
    monkeypatch.setattr(local_server, "server_command", lambda *args: sleeper)
    server = LocalServer(tiny_model_dir, server="transformers", startup_timeout_s=1.5)
    with pytest.raises(ServerStartError, match="startup_timeout_s") as raised:
        server.start()
    assert "loading forever" in str(raised.value)
    assert server._process is None  # stopped and reaped


def test_rtune_serve_runs_in_the_foreground_until_sigterm(tiny_model_dir: Path) -> None:
    port = free_port()
    script = (
        "import argparse, sys; from rtune.pipelines.commands import serve; "
        "p = argparse.ArgumentParser(); serve.register(p.add_subparsers()); "
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    command = [sys.executable, "-c", script, "serve", "--model", str(tiny_model_dir)]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--server", "transformers"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("serving ") and f"http://127.0.0.1:{port}/v1" in first, first
        curl = process.stdout.readline()
        assert curl.startswith(f"curl http://127.0.0.1:{port}/v1/chat/completions")
        assert health(f"http://127.0.0.1:{port}/v1") == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert_down(f"http://127.0.0.1:{port}/v1")
