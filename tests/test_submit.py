"""`rtune submit` against a loopback server speaking the KFP v2beta1 REST API."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rtune.pipelines.cli import main
from rtune.pipelines.config import CONFIG_DIR, load_run_config
from rtune.pipelines.packaging import compile_ir
from tests.fakes.kfp_server import FakeKfpServer

TOKEN = "kfp-test-token-must-stay-secret-42"
LLAMA_8B = str(CONFIG_DIR / "llama3-8b.yaml")


@pytest.fixture(autouse=True)
def clean_auth_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No token from the developer's shell or this machine's service account."""
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token-here"))
    monkeypatch.delenv("RTUNE_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("RTUNE_IMAGE_TAG", raising=False)


@pytest.fixture()
def kfp() -> Iterator[FakeKfpServer]:
    with FakeKfpServer(token=TOKEN) as server:
        yield server


def submit(host: str, *args: str) -> int:
    return main(["submit", "--host", host, "--poll-interval", "0.01", *args])


def test_submit_uploads_the_compiled_pipeline_and_runs_it_with_the_config(
    kfp: FakeKfpServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    assert submit(kfp.url, "--config", LLAMA_8B, "--experiment", "nightly") == 0

    config = load_run_config(LLAMA_8B)
    compiled = compile_ir(config, tmp_path / "expected.yaml")
    (version,) = kfp.versions_of("reflection-tuning")
    assert version["docs"] == list(yaml.safe_load_all(compiled.read_text()))
    (run,) = kfp.runs.values()
    assert run["runtime_config"]["parameters"] == json.loads(
        json.dumps(config.pipeline_arguments())
    )
    assert (
        run["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    )
    assert kfp.experiments[run["experiment_id"]]["display_name"] == "nightly"

    out, err = capsys.readouterr()
    assert f"{kfp.url}/#/runs/details/{run['run_id']}" in out
    assert kfp.authorizations and set(kfp.authorizations) == {f"Bearer {TOKEN}"}
    assert TOKEN not in out + err + caplog.text
    assert "$KF_PIPELINES_TOKEN" in out  # says where the token came from, not what it is


def test_second_submit_adds_a_version_to_the_same_pipeline(
    kfp: FakeKfpServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    assert submit(kfp.url) == 0
    assert submit(kfp.url, "--set", "prepare.limit=3") == 0
    versions = kfp.versions_of("reflection-tuning")
    assert len(kfp.pipelines) == 1 and len(versions) == 2 and len(kfp.experiments) == 1
    defaults = [v["docs"][0]["root"]["inputDefinitions"]["parameters"] for v in versions]
    assert [d["prepare_config"]["defaultValue"]["limit"] for d in defaults] == [8, 3]
    assert versions[0]["name"] != versions[1]["name"]

    capsys.readouterr()
    assert submit(kfp.url) == 0  # unchanged pipeline: the version is reused, the run is new
    assert len(kfp.versions_of("reflection-tuning")) == 2 and len(kfp.runs) == 3
    assert "reusing unchanged pipeline version" in capsys.readouterr().out


def test_token_file_is_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("projected-sa-token\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    with FakeKfpServer(token="projected-sa-token") as kfp:
        assert submit(kfp.url) == 0
    assert set(kfp.authorizations) == {"Bearer projected-sa-token"}
    out, err = capsys.readouterr()
    assert str(token_file) in out and "projected-sa-token" not in out + err


def test_without_a_token_no_authorization_header_is_sent() -> None:
    with FakeKfpServer(token=None) as kfp:
        assert submit(kfp.url) == 0
    assert kfp.authorizations and set(kfp.authorizations) == {None}


@pytest.mark.parametrize(
    ("states", "error", "code"),
    [
        (["PENDING", "RUNNING", "SUCCEEDED"], None, 0),
        (["PENDING", "RUNNING", "FAILED"], "task select-rifd: OOMKilled", 1),
        (["RUNNING", "CANCELING", "CANCELED"], None, 1),
        (["RUNNING", "SKIPPED"], None, 1),
    ],
    ids=["succeeded", "failed", "canceled", "skipped"],
)
def test_wait_exit_code_is_the_run_result(
    kfp: FakeKfpServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    states: list[str],
    error: str | None,
    code: int,
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    kfp.script_run(states, error=error)
    assert submit(kfp.url, "--wait") == code
    out, err = capsys.readouterr()
    assert f"run state: {states[-1]}" in out
    if code:
        assert f"{states[-1]}" in err and "/#/runs/details/" in err
    if error:
        assert error in err


def test_wait_gives_up_after_the_timeout(
    kfp: FakeKfpServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    kfp.script_run(["RUNNING"])
    assert submit(kfp.url, "--wait", "--timeout", "0.2") == 1
    assert "still RUNNING after 0.2s" in capsys.readouterr().err


@pytest.mark.parametrize("token", [None, "wrong-token-also-secret"], ids=["none", "wrong"])
def test_rejected_token_is_one_clear_message(
    kfp: FakeKfpServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    token: str | None,
) -> None:
    if token:
        monkeypatch.setenv("KF_PIPELINES_TOKEN", token)
    assert submit(kfp.url) == 2
    out, err = capsys.readouterr()
    assert "401" in err and "set KF_PIPELINES_TOKEN" in err and "Traceback" not in err
    assert str(token) not in out + err
    assert not kfp.pipelines and not kfp.runs


def test_unreachable_host_is_one_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert submit(f"http://127.0.0.1:{port}") == 2
    err = capsys.readouterr().err
    assert "cannot reach the Kubeflow Pipelines API" in err and "--host" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("proxy", ["login-page", "redirect"])
def test_a_login_page_instead_of_the_api_is_one_clear_message(
    proxy: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    with FakeKfpServer(auth_proxy=proxy) as kfp:
        assert submit(kfp.url) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err and err.count("error:") == 1
    assert kfp.url in err and "login page" in err
    assert "KF_PIPELINES_TOKEN" in err and "in-cluster" in err
    assert TOKEN not in out + err
    # it stops at the first answer: the redirect is not followed (nor the token sent there)
    assert [r.path for r in kfp.log] == ["/apis/v2beta1/pipelines"]
    if proxy == "redirect":
        assert "/dex/auth" in err and "opaque-session-state" not in err


def test_unknown_config_fails_before_any_request(
    kfp: FakeKfpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert submit(kfp.url, "--config", "pipelines/configs/nope.yaml") == 2
    assert "config file not found" in capsys.readouterr().err
    assert kfp.log == []


def test_namespace_scopes_the_pipeline_and_experiment(
    kfp: FakeKfpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    assert (
        submit(kfp.url, "--namespace", "team-a", "--service-account", "rtune-pipeline-runner") == 0
    )
    (pipeline,) = kfp.pipelines.values()
    (experiment,) = kfp.experiments.values()
    (run,) = kfp.runs.values()
    assert pipeline["namespace"] == experiment["namespace"] == "team-a"
    assert run["service_account"] == "rtune-pipeline-runner"
