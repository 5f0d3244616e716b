"""The chat client, the reflection proxy, the endpoint file and the stage config, against
OpenAI-compatible servers on loopback (FakeOpenAIServer: real HTTP, known replies)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.config import from_dict
from rtune.components.common.records import InputError
from rtune.components.serve.client import ChatEndpoint, message_parts, smoke_test
from rtune.components.serve.config import ServeConfig
from rtune.components.serve.endpoint import EndpointSpec, open_endpoint
from rtune.components.serve.reflection_proxy import ReflectionProxy, add_reasoning
from tests.fakes.openai_server import FakeOpenAIServer, Fault
from tests.servers import free_port

TAGGED = "<thinking>2 and 2 make 4.</thinking>\n<output>4</output>"
USER = [{"role": "user", "content": "What is 2 + 2?"}]


def completion_body(message: dict[str, Any], model: str = "m") -> str:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        }
    )


def post_json(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


# ----------------------------------------------------------------------------- the client


@pytest.mark.integration
def test_chat_returns_content_usage_and_latency() -> None:
    with FakeOpenAIServer(reply=lambda body: "Paris is the capital.", delay_s=0.05) as server:
        reply = ChatEndpoint(server.url, "student").chat(USER, max_tokens=20, temperature=0.0)
        [request] = server.completions
    assert reply.content == "Paris is the capital." and reply.reasoning is None
    assert reply.finish_reason == "stop" and reply.completion_tokens == 4
    assert reply.latency_s >= 0.05
    assert request.body["model"] == "student" and request.body["max_tokens"] == 20
    assert request.body["temperature"] == 0.0 and request.body["messages"] == USER


@pytest.mark.integration
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_chat_takes_the_servers_reasoning_field_under_either_name(field: str) -> None:
    message = {"role": "assistant", "content": "4", field: "2 and 2 make 4."}
    with FakeOpenAIServer() as server:
        server.inject(Fault(raw_body=completion_body(message)))
        reply = ChatEndpoint(server.url, "m", reasoning_format="reflection").chat(USER)
    assert (reply.content, reply.reasoning) == ("4", "2 and 2 make 4.")


@pytest.mark.integration
def test_chat_splits_locally_only_in_reflection_format() -> None:
    with FakeOpenAIServer(reply=lambda body: TAGGED) as server:
        split = ChatEndpoint(server.url, "m", reasoning_format="reflection").chat(USER)
        raw = ChatEndpoint(server.url, "m").chat(USER)
    assert (split.content, split.reasoning) == ("4", "2 and 2 make 4.")
    assert (raw.content, raw.reasoning) == (TAGGED, None)


def test_message_parts_prefers_the_servers_split_over_its_own() -> None:
    server_split = {"content": "<output>x</output>", "reasoning_content": "given"}
    assert message_parts(server_split, "reflection") == ("<output>x</output>", "given")
    assert message_parts({"content": None}, "reflection") == ("", None)


@pytest.mark.integration
def test_smoke_test_reports_http_errors_and_empty_answers() -> None:
    with FakeOpenAIServer(reply=lambda body: "   ") as server:
        server.inject(Fault(status=400, message="model 'nope' not found"))
        endpoint = ChatEndpoint(server.url, "nope")
        endpoint.client().max_retries = 0
        failed = smoke_test(endpoint)
        empty = smoke_test(endpoint)
    assert not failed.ok and failed.reply is None
    assert "BadRequestError" in failed.error and "model 'nope' not found" in failed.error
    assert not empty.ok and empty.reply is not None and "empty" in empty.error


@pytest.mark.integration
def test_smoke_test_passes_on_a_reasoning_only_reply_and_fails_on_no_server() -> None:
    with FakeOpenAIServer(reply=lambda body: "<thinking>hmm") as server:
        ok = smoke_test(ChatEndpoint(server.url, "m", reasoning_format="reflection"), "Hi", 8)
    assert ok.ok and ok.reply is not None and ok.reply.reasoning == "hmm" and ok.error == ""
    nobody = ChatEndpoint(f"http://127.0.0.1:{free_port()}/v1", "m", timeout_s=2)
    nobody.client().max_retries = 0
    down = smoke_test(nobody)
    assert not down.ok and "APIConnectionError" in down.error


def test_api_key_comes_from_the_named_env_var_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTUNE_TEST_KEY", "sk-test-value")
    endpoint = ChatEndpoint("http://127.0.0.1:1/v1", "m", api_key_env="RTUNE_TEST_KEY")
    assert endpoint.client().api_key == "sk-test-value"
    assert "sk-test-value" not in repr(endpoint) and "sk-test" not in str(vars(endpoint))
    assert ChatEndpoint("http://127.0.0.1:1/v1", "m").client().api_key == "EMPTY"
    shown = repr(ChatEndpoint("https://user:pw-123@served.example/v1", "m"))
    assert "pw-123" not in shown and "https://***@served.example/v1" in shown
    with pytest.raises(ValueError, match="reasoning_format"):
        ChatEndpoint("http://x/v1", "m", reasoning_format="think")


# ----------------------------------------------------------------------------- the proxy


def test_add_reasoning_splits_every_choice() -> None:
    reply = json.loads(completion_body({"role": "assistant", "content": TAGGED}))
    reply["choices"].append({"index": 1, "message": {"role": "assistant", "content": "plain"}})
    messages = [c["message"] for c in add_reasoning(reply)["choices"]]
    assert messages[0] == {
        "role": "assistant",
        "content": "4",
        "reasoning_content": "2 and 2 make 4.",
        "reasoning": "2 and 2 make 4.",
    }
    assert messages[1]["content"] == "plain" and messages[1]["reasoning_content"] is None


@pytest.mark.integration
def test_proxy_adds_reasoning_to_chat_replies_and_passes_the_rest_through() -> None:
    with (
        FakeOpenAIServer(reply=lambda body: TAGGED, model="upstream") as upstream,
        ReflectionProxy(upstream.base_url) as proxy,
    ):
        base = f"http://127.0.0.1:{proxy.port}/v1"
        status, body = post_json(f"{base}/chat/completions", {"model": "m", "messages": USER})
        message = body["choices"][0]["message"]
        assert status == 200 and message["content"] == "4"
        assert message["reasoning_content"] == message["reasoning"] == "2 and 2 make 4."
        assert body["usage"]["completion_tokens"] == len(TAGGED.split())  # the rest: untouched
        with urllib.request.urlopen(f"{base}/models", timeout=10) as response:  # passed through
            assert json.loads(response.read())["data"][0]["id"] == "upstream"
        upstream.inject(Fault(status=429, retry_after=2, message="slow down"))
        with pytest.raises(urllib.error.HTTPError) as refused:
            post_json(f"{base}/chat/completions", {"model": "m", "messages": USER})
        assert refused.value.code == 429 and refused.value.headers["Retry-After"] == "2"
        assert "slow down" in refused.value.read().decode()
        streamed = {"model": "m", "messages": USER, "stream": True}
        status, body = post_json(f"{base}/chat/completions", streamed)  # the fake ignores stream
        assert body["choices"][0]["message"]["content"] == TAGGED  # not rewritten
        assert upstream.completions[0].body == {"model": "m", "messages": USER}


@pytest.mark.integration
def test_proxy_answers_502_when_the_model_server_is_gone() -> None:
    with (
        ReflectionProxy(f"http://127.0.0.1:{free_port()}") as proxy,
        pytest.raises(urllib.error.HTTPError) as failed,
    ):
        post_json(f"http://127.0.0.1:{proxy.port}/v1/chat/completions", {"messages": USER})
    assert failed.value.code == 502 and "unreachable" in failed.value.read().decode()


# ----------------------------------------------------------------------------- endpoint + config


def test_endpoint_spec_round_trips_and_ignores_unknown_keys(tmp_path: Path) -> None:
    spec = EndpointSpec("kserve", "http://rtune-student.ns.svc/v1", "rtune-student", name="s")
    path = spec.save(tmp_path / "out" / "endpoint.json")
    assert EndpointSpec.load(path) == spec
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "added_later": 1}))
    assert EndpointSpec.load(path) == spec
    with pytest.raises(ValueError, match="model_path"):
        EndpointSpec("local", "http://127.0.0.1:1/v1", "m")
    with pytest.raises(ValueError, match="kind"):
        EndpointSpec("modal", "http://x/v1", "m")


@pytest.mark.integration
def test_open_endpoint_connects_to_a_kserve_endpoint() -> None:
    with FakeOpenAIServer(reply=lambda body: TAGGED) as server:
        spec = EndpointSpec("kserve", server.url, "rtune-student", reasoning_format="reflection")
        with open_endpoint(spec) as endpoint:
            reply = endpoint.chat(USER)
    assert endpoint.model == "rtune-student" and reply.content == "4"


def test_serve_config_defaults_and_refusals() -> None:
    config = from_dict(ServeConfig, {}, "serve")
    assert (config.backend, config.server, config.reasoning_format) == ("local", "auto", "none")
    assert from_dict(ServeConfig, {"extra_args": "--max-model-len=8192 --seed=1"}).extra_args == [
        "--max-model-len=8192",
        "--seed=1",
    ]
    for bad, field in [
        ({"backend": "modal"}, "backend"),
        ({"server": "ollama"}, "server"),
        ({"reasoning_format": "think"}, "reasoning_format"),
        ({"name": "Bad_Name"}, "DNS-1035"),
        ({"name": "x" * 46}, "DNS-1035"),
        ({"storage_uri": "/local/path"}, "storage_uri"),
        ({"port": 70000}, "port"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"min_replicas": 2, "max_replicas": 1}, "max_replicas"),
    ]:
        with pytest.raises(InputError, match=field):
            from_dict(ServeConfig, bad, "serve")


# ----------------------------------------------------------------------------- local server


def test_server_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import rtune.components.serve.local_server as local_server

    monkeypatch.setattr(local_server, "console_script", lambda name: f"/env/bin/{name}")
    vllm = local_server.server_command("vllm", tmp_path, "127.0.0.1", 8123, "reflection")
    plugin = vllm[vllm.index("--reasoning-parser-plugin") + 1]
    assert vllm[:3] == ["/env/bin/vllm", "serve", str(tmp_path)]
    assert Path(plugin).is_file() and plugin.endswith("components/serve/vllm_reasoning.py")
    assert vllm[-2:] == ["--reasoning-parser", "rtune-reflection"]
    plain = local_server.server_command("vllm", tmp_path, "127.0.0.1", 8123, "none")
    assert "--reasoning-parser" not in plain
    hf = local_server.server_command("transformers", tmp_path, "127.0.0.1", 8123, "reflection")
    assert hf[:3] == ["/env/bin/transformers", "serve", str(tmp_path)]
    assert hf[hf.index("--device") + 1] == "cpu" and hf[hf.index("--port") + 1] == "8123"


def test_server_choice_without_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import rtune.components.serve.local_server as local_server

    monkeypatch.setattr(local_server, "vllm_usable", lambda: False)
    assert local_server.resolve_server("auto") == "transformers"
    with pytest.raises(RuntimeError, match="rtune\\[serve\\]"):
        local_server.resolve_server("vllm")
    monkeypatch.setattr(local_server, "vllm_usable", lambda: True)
    assert local_server.resolve_server("auto") == "vllm"
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        local_server.LocalServer(tmp_path, server="transformers")
