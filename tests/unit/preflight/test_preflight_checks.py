"""Preflight's checks, each against the real thing it probes (env, a folder, a loopback HTTP
server); the whole stage runs in the rehearsal (tests/integration/test_rehearsal.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rtune.components.preflight import checks


def test_missing_secret_keys_are_named_with_the_secret_to_create(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    found = checks.env_present(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], "s3", "rtune-s3")
    assert not found.ok
    assert found.line() == (
        "FAIL s3: AWS_SECRET_ACCESS_KEY not set in the pod  fix: create the Secret 'rtune-s3' "
        "with those keys in the run's namespace"
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-value-never-shown")
    found = checks.env_present(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], "s3", "rtune-s3")
    assert found.ok and "secret-value-never-shown" not in found.line()


def test_an_unwritable_folder_names_the_uid_and_the_volume_fix(tmp_path: Path) -> None:
    (tmp_path / "not-a-volume").write_text("a file where the mount should be")
    found = checks.folder_writable("checkpoint_root", str(tmp_path / "not-a-volume" / "ck"))
    assert not found.ok and f"not writable by UID {os.getuid()}" in found.detail
    assert "cluster.work_volume" in found.fix


def test_a_writable_folder_is_left_as_found(tmp_path: Path) -> None:
    found = checks.folder_writable("checkpoint_root", str(tmp_path / "ck"))
    assert found.ok and list((tmp_path / "ck").iterdir()) == []


def test_an_endpoint_that_refuses_the_key_says_so() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Models(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            good = self.headers.get("Authorization") == "Bearer right"
            self.send_response(200 if good else 401)
            self.end_headers()
            self.wfile.write(b'{"data": []}' if good else b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/models"
    try:
        refused = checks.http_reachable("teacher", url, {"Authorization": "Bearer wrong"})
        allowed = checks.http_reachable("teacher", url, {"Authorization": "Bearer right"})
    finally:
        server.shutdown()
    assert not refused.ok and "refused the key (HTTP 401)" in refused.detail
    assert refused.fix == "check the key in the Secret"
    assert allowed.ok and "answered in" in allowed.detail


def test_a_probe_that_raises_is_a_failed_check_not_a_traceback() -> None:
    def probe() -> checks.Finding:
        raise ConnectionError("no route to host")

    found = checks.guarded("mlflow", probe)
    assert not found.ok and found.detail == "ConnectionError: no route to host"


def test_the_summary_counts_failures_and_says_when_there_was_nothing_to_check() -> None:
    ok, bad = checks.Finding("a", True, "fine"), checks.Finding("b", False, "broken")
    assert checks.summarize([ok, bad]) == (False, "preflight: 1 of 2 checks failed")
    assert checks.summarize([ok]) == (True, "preflight: all 1 checks passed")
    assert checks.summarize([]) == (
        True,
        "preflight: nothing to check (no cluster settings in this run)",
    )
