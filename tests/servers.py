"""Real servers on loopback for integration tests: moto's S3 and an MLflow tracking server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtune.components.common.ports import free_port

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server (a real HTTP endpoint) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto keeps its buckets in process-wide state: every server starts (and leaves) it empty,
    # so one test file's objects never show up in the next file's buckets
    _reset_moto(endpoint)
    try:
        yield endpoint
    finally:
        _reset_moto(endpoint)
        server.stop()


def _reset_moto(endpoint: str) -> None:
    import urllib.request

    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def use_s3(monkeypatch: Any, endpoint: str, cache: Path, bucket: str) -> Any:
    """Point boto3 at ``endpoint`` (fake credentials, AWS_ENDPOINT_URL), a private RTUNE_CACHE,
    and make sure ``bucket`` exists; returns a boto3 S3 client."""
    import boto3

    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("RTUNE_CACHE", str(cache))
    client = boto3.client("s3", endpoint_url=endpoint)
    if bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=bucket)
    return client


@dataclass
class MlflowServer:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def mlflow_server(
    workdir: Path, artifacts_destination: str, env: dict[str, str]
) -> Iterator[MlflowServer]:
    """``mlflow server`` with a sqlite backend and proxied artifacts at ``artifacts_destination``."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts_destination,
        "--workers",
        "1",
    ]
    log = (workdir / "mlflow-server.log").open("wb")
    # no GenAI job runner: it starts five huey consumer processes the tests never use
    quiet = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        command, cwd=workdir, env={**os.environ, **quiet, **env}, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, workdir / "mlflow-server.log")
        yield MlflowServer(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_healthy(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server not healthy after {timeout}s: {log.read_text()[-2000:]}")
