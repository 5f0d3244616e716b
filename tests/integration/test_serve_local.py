"""Real OpenAI-compatible servers on loopback: ``transformers serve`` for the tiny model (and the
embedded one) behind rtune's front (API key, served name, reflection split) as the ``openai``
SDK sees it, the serve stage end to end, the endpoint relaunched from its file, and
``rtune serve`` in the foreground.

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
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import openai
import pytest

from rtune.components.serve.client import ChatEndpoint
from rtune.components.serve.endpoint import EndpointSpec, open_endpoint
from rtune.components.serve.local_server import LocalServer, ServerStartError
from rtune.components.serve.reasoning import split_reflection
from tests.paths import REPO_ROOT
from tests.servers import free_port
from tests.unit.serve.test_serve_kserve import run_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER = [{"role": "user", "content": "What is 2 + 2?"}]
TAGGED = "<thinking>Two and two make four.</thinking>\n<output>4</output>"
KEY_ENV = "RTUNE_TEST_SERVE_KEY"
KEY = "k-local-0123456789"
ROOT = REPO_ROOT


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


def test_transformers_serve_behind_the_front_as_an_openai_client_sees_it(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    with LocalServer(
        tiny_model_dir, server="transformers", served_model_name="tiny", api_key_env=KEY_ENV
    ) as server:
        assert server.fronted and server.upstream_url.startswith("http://127.0.0.1:")
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1" != server.upstream_url
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)
        listed = [m.id for m in client.models.list()]  # transformers serve itself answers 500
        named = client.chat.completions.create(model="tiny", messages=USER, max_tokens=4)  # type: ignore[arg-type]
        default = client.chat.completions.create(model="default", messages=USER, max_tokens=4)  # type: ignore[arg-type]
        streamed = list(
            client.chat.completions.create(
                model="tiny",
                messages=USER,  # type: ignore[arg-type]
                max_tokens=4,
                stream=True,
            )
        )
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()
        reply = server.endpoint().chat(USER, max_tokens=8)  # the stage's client: key from the env
        process = server._process
        assert process is not None and health(server.base_url) == 200  # /health needs no key
        assert server.startup_s > 0 and server.warmup_s > 0
    assert listed == ["tiny"] and named.model == default.model == "tiny"
    assert named.usage is not None and 1 <= named.usage.completion_tokens <= 4
    assert streamed and {chunk.model for chunk in streamed} == {"tiny"}
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
        assert server.fronted and server.upstream_url != server.base_url.removesuffix("/v1")
        forced = {"model": server.upstream_model, "messages": USER, "max_tokens": tokens, **extra}
        written = post_chat(f"{server.upstream_url}/v1", forced)  # the model server itself
        proxied = post_chat(server.base_url, {**forced, "model": server.model})
        # a client without its own split gets the reasoning from the API
        reply = ChatEndpoint(server.base_url, server.model).chat(USER, tokens, extra_body=extra)
        noise = {"model": server.model, "messages": USER, "max_tokens": 6, "temperature": 0}
        upstream_noise = {**noise, "model": server.upstream_model}
        noise_written = post_chat(f"{server.upstream_url}/v1", upstream_noise)["content"]
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


def test_run_serve_locally_end_to_end(
    embedded_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real embedded model (the tiny one only writes newlines: no smoke test passes)."""
    monkeypatch.setenv(KEY_ENV, KEY)
    tracking = {"experiment": "serve-local", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    serve = {
        "server": "transformers",
        "smoke_max_tokens": 10,
        "reasoning_format": "reflection",
        "served_model_name": "smol",
        "api_key_env": KEY_ENV,
    }
    endpoint_path = tmp_path / "artifacts" / "endpoint"
    summary = run_serve(embedded_model_dir, serve, tracking, "local-run-1", endpoint_path)
    assert summary["kind"] == "local" and summary["smoke_ok"] is True  # through the key check
    assert "Paris" in summary["smoke_reply"]  # "what is the capital of France?"
    assert summary["server"] == "transformers" and summary["model"] == "smol"
    assert summary["smoke_latency_s"] > 0 and summary["startup_s"] > 0
    spec = EndpointSpec.load(endpoint_path)
    assert spec.kind == "local" and spec.model_path == str(embedded_model_dir)
    assert (spec.model, spec.api_key_env) == ("smol", KEY_ENV)
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
    assert stage.data.params["api_key_env"] == KEY_ENV
    recorded = json.dumps([(r.data.params, r.data.tags) for r in runs]) + endpoint_path.read_text()
    assert KEY not in recorded


def test_open_endpoint_starts_the_local_model_again(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    spec = EndpointSpec(
        "local",
        "http://127.0.0.1:9/v1",  # the stage's server, long gone
        "tiny",
        model_path=str(tiny_model_dir),
        server="transformers",
        api_key_env=KEY_ENV,
    )
    with open_endpoint(spec) as endpoint:
        assert endpoint.base_url != spec.base_url and health(endpoint.base_url) == 200
        reply = endpoint.chat(USER, max_tokens=4)  # as "tiny", with the key
        anonymous = openai.OpenAI(base_url=endpoint.base_url, api_key="EMPTY", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
    assert endpoint.model == "tiny" and endpoint.api_key_env == KEY_ENV
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
    server = LocalServer(tiny_model_dir, server="transformers", startup_timeout_s=600)
    with pytest.raises(ServerStartError) as raised:
        server.start()
    message = str(raised.value)
    # the exit was noticed (the timeout's error says "did not answer … within")
    assert "exited with code 3" in message and "Unrecognized processing class" in message
    assert "within" not in message
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


def test_rtune_serve_runs_in_the_foreground_until_sigterm(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    script = (
        "import argparse, sys; from rtune.pipelines.commands import serve; "
        "p = argparse.ArgumentParser(); serve.register(p.add_subparsers()); "
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    command = [sys.executable, "-c", script, "serve", "--model", str(tiny_model_dir)]
    flags = ["--served-model-name", "tiny", "--api-key-env", KEY_ENV]
    monkeypatch.setenv(KEY_ENV, KEY)
    process = subprocess.Popen(
        [*command, "--port", str(port), "--server", "transformers", *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("serving 'tiny'") and base_url in first, first
        assert f"key from ${KEY_ENV}" in first and KEY not in first
        curl = process.stdout.readline()
        assert curl.startswith(f"curl {base_url}/chat/completions")
        assert f"Bearer ${KEY_ENV}" in curl and '"model": "tiny"' in curl
        assert health(base_url) == 200
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["tiny"]
        reply = client.chat.completions.create(model="default", messages=USER, max_tokens=2)  # type: ignore[arg-type]
        assert reply.model == "tiny" and reply.choices[0].finish_reason in ("length", "stop")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert_down(base_url)
