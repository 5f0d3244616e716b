"""Who may use a served model: the serve settings, the key check, the command lines that carry
the served name and the key, and what ``rtune serve`` says before it starts anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtune.components.common.config import from_dict
from rtune.components.common.records import InputError
from rtune.components.serve.access import (
    KeyCheck,
    MissingApiKey,
    api_key_from_env,
    exposure_warning,
    is_loopback,
)
from rtune.components.serve.config import ServeConfig
from rtune.components.serve.endpoint import EndpointSpec
from rtune.pipelines import cli

PASTED_KEY = "sk-proj-Abc123def456"


def test_serve_config_names_the_key_variable_and_the_served_model() -> None:
    config = from_dict(ServeConfig, {}, "serve")
    assert (config.served_model_name, config.api_key_env) == ("", "")
    assert config.served_name() == "rtune-student"  # the InferenceService name, locally too
    assert from_dict(ServeConfig, {"name": "team-model"}).served_name() == "team-model"
    named = from_dict(ServeConfig, {"served_model_name": "org/student-v2", "api_key_env": "K_1"})
    assert (named.served_name(), named.api_key_env) == ("org/student-v2", "K_1")
    with pytest.raises(InputError, match="api_key_env") as pasted:
        from_dict(ServeConfig, {"api_key_env": PASTED_KEY}, "serve")
    assert PASTED_KEY not in str(pasted.value)
    for bad in ("has space", "-leading-dash", "x" * 129, "tab\tname"):
        with pytest.raises(InputError, match="served_model_name"):
            from_dict(ServeConfig, {"served_model_name": bad}, "serve")


def test_the_key_comes_from_the_named_variable_or_not_at_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RTUNE_TEST_SERVE_KEY", "k-123")
    assert api_key_from_env("RTUNE_TEST_SERVE_KEY") == "k-123"
    assert api_key_from_env("") == ""
    monkeypatch.setenv("RTUNE_TEST_SERVE_KEY", "")
    with pytest.raises(MissingApiKey, match=r"RTUNE_TEST_SERVE_KEY.*not set or empty"):
        api_key_from_env("RTUNE_TEST_SERVE_KEY")
    with pytest.raises(ValueError, match="NAME of an environment variable") as pasted:
        api_key_from_env(PASTED_KEY)
    assert PASTED_KEY not in str(pasted.value)


def test_key_check_accepts_only_the_exact_bearer_key() -> None:
    check = KeyCheck("k-123")
    assert check.allows("Bearer k-123") and check.allows("bearer k-123")
    for wrong in ("", "Bearer", "Bearer k-12", "Bearer k-1234", "Basic k-123", "k-123"):
        assert not check.allows(wrong), wrong
    assert "k-123" not in repr(check) and "k-123" not in repr(vars(check))


def test_only_a_non_loopback_address_without_a_key_is_warned_about() -> None:
    for host in ("127.0.0.1", "127.3.2.1", "::1", "localhost"):
        assert is_loopback(host) and exposure_warning(host, "") == "", host
    for host in ("0.0.0.0", "::", "192.168.1.5", "serve.example.com"):
        assert not is_loopback(host)
        assert "without an API key" in exposure_warning(host, "") and "--api-key-env" in (
            exposure_warning(host, "")
        )
        assert exposure_warning(host, "RTUNE_SERVE_API_KEY") == ""


def test_vllm_gets_the_served_name_on_its_command_line_and_the_key_in_its_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import rtune.components.serve.local_server as local_server

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(local_server, "console_script", lambda name: f"/env/bin/{name}")
    monkeypatch.setattr(local_server, "vllm_usable", lambda: True)
    monkeypatch.setenv("RTUNE_TEST_SERVE_KEY", "k-vllm")
    server = local_server.LocalServer(
        tmp_path,
        server="vllm",
        host="0.0.0.0",
        port=8000,
        served_model_name="student",
        api_key_env="RTUNE_TEST_SERVE_KEY",
    )
    command, env = server.command(), server.environment("k-vllm")
    assert command[:3] == ["/env/bin/vllm", "serve", str(tmp_path)]
    assert command[command.index("--served-model-name") + 1] == "student"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "k-vllm" not in " ".join(command)  # a command line is visible to every local user
    assert env["VLLM_API_KEY"] == "k-vllm" and env["HF_HUB_OFFLINE"] == "1"
    assert not server.fronted and server.model == "student" and server.upstream_model == "student"
    assert server.endpoint().model == "student"
    assert server.endpoint().api_key_env == "RTUNE_TEST_SERVE_KEY"


def test_transformers_serve_sits_on_loopback_behind_the_front(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import rtune.components.serve.local_server as local_server

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(local_server, "console_script", lambda name: f"/env/bin/{name}")
    server = local_server.LocalServer(tmp_path, server="transformers", host="0.0.0.0", port=8000)
    command, env = server.command(), server.environment("")
    assert server.fronted and server.model == "rtune-student"
    assert server.upstream_model == str(tmp_path)  # what transformers serve calls the model
    assert command[command.index("--host") + 1] == "127.0.0.1"  # never exposed unguarded
    assert "--port" in command and command[command.index("--port") + 1] != "8000"
    assert "VLLM_API_KEY" not in env and "--served-model-name" not in command


def test_endpoint_spec_carries_the_served_name_and_the_key_variable(tmp_path: Path) -> None:
    spec = EndpointSpec(
        "local",
        "http://127.0.0.1:8000/v1",
        "rtune-student",
        model_path="/models/m",
        server="transformers",
        api_key_env="RTUNE_SERVE_API_KEY",
    )
    assert EndpointSpec.load(spec.save(tmp_path / "endpoint.json")) == spec
    assert spec.served_model_name() == "rtune-student"
    # written before the front existed: the model was the folder; it is served under the default
    old = EndpointSpec("local", "http://127.0.0.1:1/v1", "/models/m", model_path="/models/m")
    assert old.served_model_name() == "rtune-student"
    with pytest.raises(ValueError, match="api_key_env"):
        EndpointSpec("kserve", "http://x/v1", "m", api_key_env=PASTED_KEY)


def test_rtune_serve_refuses_an_unset_key_variable_before_loading_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RTUNE_TEST_SERVE_KEY", raising=False)
    code = cli.main(["serve", "--model", "/nowhere", "--api-key-env", "RTUNE_TEST_SERVE_KEY"])
    err = capsys.readouterr().err
    assert code == 2 and "--api-key-env" in err and "RTUNE_TEST_SERVE_KEY" in err
    assert "config.json" not in err  # refused before the model was even looked at
    assert cli.main(["serve", "--model", "/nowhere", "--api-key-env", PASTED_KEY]) == 2
    assert PASTED_KEY not in capsys.readouterr().err


def test_rtune_serve_warns_before_it_serves_everyone_without_a_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["serve", "--model", "/nowhere", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "warning: serving on 0.0.0.0 without an API key" in err
    assert cli.main(["serve", "--model", "/nowhere", "--served-model-name", "bad name"]) == 2
    err = capsys.readouterr().err  # the flag sets serve.served_model_name; the error names it
    assert "served_model_name 'bad name'" in err and err.count("error:") == 1
