"""`rtune submit` against a loopback server speaking the KFP v2beta1 REST API."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml

from rtune.pipelines.cli import main
from rtune.pipelines.config import CONFIG_DIR, load_run_config
from rtune.pipelines.kfp_rest import KfpClient, KfpUnavailable, PipelineVersion
from rtune.pipelines.packaging import compile_ir
from rtune.pipelines.submit import wait_for_run
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
    monkeypatch.setenv("RTUNE_POD_NAMESPACE_PATH", str(tmp_path / "not-in-a-pod"))


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
    assert [r.path for r in kfp.log] == ["/apis/v2beta1/healthz"]
    if proxy == "redirect":
        assert "/dex/auth" in err and "opaque-session-state" not in err


def test_unknown_config_fails_before_any_request(
    kfp: FakeKfpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert submit(kfp.url, "--config", "pipelines/configs/nope.yaml") == 2
    assert "config file not found" in capsys.readouterr().err
    assert kfp.log == []


def test_namespace_scopes_the_pipeline_and_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    with FakeKfpServer(token=TOKEN, multi_user=True) as kfp:
        args = ("--namespace", "team-a", "--service-account", "rtune-pipeline-runner")
        assert submit(kfp.url, *args) == 0
    (pipeline,) = kfp.pipelines.values()
    (experiment,) = kfp.experiments.values()
    (run,) = kfp.runs.values()
    assert pipeline["namespace"] == experiment["namespace"] == "team-a"
    assert run["service_account"] == "rtune-pipeline-runner"


# ---------------------------------------------------------------- the fake behaves like the server


def test_the_fake_refuses_what_the_real_api_server_refuses() -> None:
    with FakeKfpServer() as kfp:
        pipelines = f"{kfp.url}/apis/v2beta1/pipelines"
        unknown_field = requests.post(pipelines, json={"display_name": "p", "bogus": 1}, timeout=10)
        assert unknown_field.status_code == 400 and "bogus" in unknown_field.json()["message"]
        wrong_type = requests.post(pipelines, json={"display_name": 3}, timeout=10)
        assert wrong_type.status_code == 400
        assert requests.post(pipelines, json={"display_name": "a+b"}, timeout=10).ok
        once = json.dumps(
            {"predicates": [{"key": "name", "operation": "EQUALS", "string_value": "a+b"}]}
        )
        # encoded once (by requests) the server's second decoding turns `+` into a space
        assert requests.get(pipelines, params={"filter": once}, timeout=10).json() == {}
        twice = requests.get(pipelines, params={"filter": quote(once, safe="")}, timeout=10)
        assert [p["name"] for p in twice.json()["pipelines"]] == ["a+b"]
        assert requests.post(pipelines, json={"display_name": "a+b"}, timeout=10).status_code == 409
    with FakeKfpServer(version="2.5.0") as old:
        named = requests.post(
            f"{old.url}/apis/v2beta1/pipelines", json={"name": "p", "display_name": "p"}, timeout=10
        )
        assert named.status_code == 400 and "'name' was unexpected" in named.json()["message"]


# ---------------------------------------------------------------- the backend: version and mode


def test_requests_are_valid_for_the_oldest_supported_backend(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeKfpServer(version="2.5.0") as kfp:
        assert submit(kfp.url, "--wait") == 0, capsys.readouterr().err
        assert submit(kfp.url) == 0  # found again by name: the version is reused
    assert len(kfp.pipelines) == 1 and len(kfp.versions) == 1 and len(kfp.runs) == 2
    assert "Kubeflow Pipelines 2.5.0" in capsys.readouterr().out


@pytest.mark.parametrize("version", ["2.4.1", "v2.0.5", "1.8.5"])
def test_a_backend_older_than_2_5_is_refused_before_anything_is_written(
    version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeKfpServer(version=version) as kfp:
        assert submit(kfp.url) == 2
    err = capsys.readouterr().err
    assert f"Kubeflow Pipelines {version}" in err and ">= 2.5" in err and "upgrade" in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert [r.method for r in kfp.log] == ["GET"] and not kfp.pipelines


def test_an_unknown_backend_version_is_said_and_the_submit_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeKfpServer(version="unknown") as kfp:
        assert submit(kfp.url) == 0
    assert "version unknown" in capsys.readouterr().out and len(kfp.runs) == 1


def test_multi_user_without_a_namespace_fails_before_anything_is_written(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    with FakeKfpServer(token=TOKEN, multi_user=True) as kfp:
        assert submit(kfp.url) == 2
    err = capsys.readouterr().err
    assert "multi-user" in err and "--namespace" in err and "Traceback" not in err
    assert {r.method for r in kfp.log} == {"GET"} and not kfp.pipelines and not kfp.experiments


def test_multi_user_in_a_pod_takes_the_namespace_of_its_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "namespace").write_text("team-b")
    monkeypatch.setenv("RTUNE_POD_NAMESPACE_PATH", str(tmp_path / "namespace"))
    with FakeKfpServer(multi_user=True) as kfp:
        assert submit(kfp.url) == 0
    (pipeline,) = kfp.pipelines.values()
    (experiment,) = kfp.experiments.values()
    assert pipeline["namespace"] == experiment["namespace"] == "team-b"
    assert "namespace team-b" in capsys.readouterr().out


# ---------------------------------------------------------------- names, filters, races


def test_names_with_plus_and_percent_are_found_again(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeKfpServer() as kfp:
        assert submit(kfp.url, "--experiment", "nightly+gpu 50%") == 0
        assert submit(kfp.url, "--experiment", "nightly+gpu 50%") == 0, capsys.readouterr().err
    (experiment,) = kfp.experiments.values()
    assert experiment["display_name"] == "nightly+gpu 50%" and len(kfp.runs) == 2


def _someone_else_creates_the_pipeline(kfp: FakeKfpServer) -> None:
    kfp.before("POST", "/pipelines", lambda r: kfp.add_pipeline(json.loads(r.body)["display_name"]))


def _someone_else_uploads_the_version(kfp: FakeKfpServer) -> None:
    kfp.before(
        "POST",
        "/pipelines/upload_version",
        lambda r: kfp.add_version(r.query["pipelineid"], r.query["name"]),
    )


def _someone_else_creates_the_experiment(kfp: FakeKfpServer) -> None:
    kfp.before(
        "POST", "/experiments", lambda r: kfp.add_experiment(json.loads(r.body)["display_name"])
    )


@pytest.mark.parametrize(
    "race",
    [
        _someone_else_creates_the_pipeline,
        _someone_else_uploads_the_version,
        _someone_else_creates_the_experiment,
    ],
    ids=["pipeline", "version", "experiment"],
)
def test_a_concurrent_submit_409_is_answered_by_looking_again(
    race: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeKfpServer() as kfp:
        race(kfp)
        assert submit(kfp.url) == 0, capsys.readouterr().err
    assert len(kfp.pipelines) == len(kfp.versions) == len(kfp.experiments) == len(kfp.runs) == 1
    (run,) = kfp.runs.values()
    (version,) = kfp.versions.values()
    assert (
        run["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    )


# ---------------------------------------------------------------- the gateway: auth, proxies


def test_every_request_asks_for_json(kfp: FakeKfpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    assert submit(kfp.url, "--wait") == 0
    assert {r.accept for r in kfp.log} == {"application/json"}


def test_a_login_redirect_of_the_upload_post_is_one_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    upload = "/apis/v2beta1/pipelines/upload_version"
    with FakeKfpServer(auth_proxy="redirect", proxy_paths=(upload,)) as kfp:
        assert submit(kfp.url) == 2
    out, err = capsys.readouterr()
    assert "POST /apis/v2beta1/pipelines/upload_version -> 302" in err and "/dex/auth" in err
    assert "login page" in err and "Traceback" not in err and TOKEN not in out + err
    # not followed: no GET of the upload (a POST turned GET) and nothing sent to the login page
    assert [(r.method, r.path) for r in kfp.log if r.path in (upload, "/dex/auth")] == [
        ("POST", upload)
    ]


def test_the_projected_token_is_read_again_when_the_kubelet_rotates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("projected-token-1\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))

    def rotate(_: object) -> None:  # the kubelet writes a new token before the old one expires
        token_file.write_text("projected-token-2\n")

    def expire(_: object) -> None:
        kfp.token = "projected-token-2"

    with FakeKfpServer(token="projected-token-1") as kfp:
        kfp.script_run(["PENDING", "RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"])
        kfp.before("GET", "/runs/", rotate, nth=2)
        kfp.before("GET", "/runs/", expire, nth=3)
        assert submit(kfp.url, "--wait") == 0, capsys.readouterr().err
    assert kfp.authorizations[-1] == "Bearer projected-token-2"
    assert "Bearer projected-token-1" in kfp.authorizations


def test_a_token_that_expires_while_waiting_says_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    with FakeKfpServer(token=TOKEN) as kfp:
        kfp.script_run(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
        kfp.before("GET", "/runs/", lambda _: setattr(kfp, "token", "a-later-token"), nth=2)
        assert submit(kfp.url, "--wait") == 2
    (run_id,) = kfp.runs
    err = capsys.readouterr().err
    assert "401" in err and "set KF_PIPELINES_TOKEN" in err and err.count("error:") == 1
    assert f"the run goes on: {kfp.url}/#/runs/details/{run_id}" in err


# ---------------------------------------------------------------- waiting through outages


class StoppedClock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _started_run(kfp: FakeKfpServer, client: KfpClient) -> str:
    pipeline = kfp.add_pipeline("reflection-tuning")
    version = kfp.add_version(pipeline["pipeline_id"], "v1")
    experiment = kfp.add_experiment("nightly")
    reference = PipelineVersion(version["pipeline_version_id"], pipeline["pipeline_id"], "v1")
    return client.create_run("r", experiment["experiment_id"], reference, {}).id


def test_wait_rides_out_gateway_errors_with_backoff() -> None:
    clock = StoppedClock()
    retries: list[str] = []
    with FakeKfpServer() as kfp:
        client = KfpClient(kfp.url)
        run_id = _started_run(kfp, client)
        kfp.script_run(["PENDING", "RUNNING", "SUCCEEDED"])
        kfp.fail_next("GET", "/runs/", 503, "drop", 502, 504)
        final = wait_for_run(
            client,
            run_id,
            timeout_s=3600,
            poll_s=10,
            on_retry=lambda err, delay: retries.append(err.problem),
            sleep=clock.sleep,
            clock=clock,
        )
    assert clock.sleeps[:4] == [10, 20, 40, 80], "doubling from the poll interval"
    assert clock.sleeps[4:] == [10] * (len(clock.sleeps) - 4), "a success resets the backoff"
    assert final.state == "SUCCEEDED"
    assert [p.split(" -> ")[-1][:3] for p in retries if "->" in p] == ["503", "502", "504"]
    assert "an HTML page (502 Bad Gateway)" in retries[2]
    assert any("cannot reach" in p for p in retries)


def test_wait_stops_at_the_deadline_when_the_api_stays_away() -> None:
    clock = StoppedClock()
    with FakeKfpServer() as kfp:
        client = KfpClient(kfp.url)
        run_id = _started_run(kfp, client)
        kfp.fail_next("GET", "/runs/", *[503] * 20)
        with pytest.raises(KfpUnavailable, match="503"):
            wait_for_run(client, run_id, timeout_s=100, poll_s=10, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == [10, 20, 40, 30], "never sleeps past the deadline"
    assert sum(1 for r in kfp.log if r.path.startswith("/apis/v2beta1/runs/")) == 5


def test_single_user_ignores_the_namespace_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeKfpServer() as kfp:
        assert submit(kfp.url, "--namespace", "team-a") == 0
    assert "ignored team-a" in capsys.readouterr().out
    assert all(r.query.get("namespace", "") == "" for r in kfp.log)
    assert all(b'"namespace"' not in r.body for r in kfp.log)


def test_wait_says_each_retry_and_ends_with_the_run_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeKfpServer() as kfp:
        kfp.fail_next("GET", "/runs/", 503, "drop")
        assert submit(kfp.url, "--wait") == 0
    err = capsys.readouterr().err
    assert err.count("retrying in") == 2 and "503" in err and "cannot reach" in err
