"""A rehearsal pod is what a Kubernetes pod is to our code: image user, given env, few writable paths."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from rtune.pipelines.rehearsal.images import image_facts
from rtune.pipelines.rehearsal.pod import Mount, PodSpec, run_pod

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pods need root to set up namespaces")

PROBE = r"""
import json, os, pathlib
def writable(path):
    try:
        pathlib.Path(path).write_text("x"); return True
    except OSError:
        return False
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "env": dict(os.environ),
    "tmp": writable("/tmp/x"), "home": writable(os.path.expanduser("~/x")),
    "scratch": writable("/minio/x"), "volume": writable("/mnt/ckpt/x"),
    "repo": writable("/work/x"), "etc": writable("/etc/x"), "usr": writable("/usr/x"),
    "shm": os.statvfs("/dev/shm").f_blocks * os.statvfs("/dev/shm").f_frsize,
    "hosts": open("/etc/hosts").read(),
    "secret_dir": sorted(os.listdir("/var/run/secrets/kubernetes.io/serviceaccount")),
    "rtune": __import__("rtune.components.common.records").__name__,
}))
"""


def _pod(tmp_path: Path, volume: Path, **env: str) -> PodSpec:
    image = image_facts("ghcr.io/rtune/rtune-base:0.1.0")
    sa = tmp_path / "sa"
    sa.mkdir(exist_ok=True)
    (sa / "token").write_text("t")
    return PodSpec(
        name="probe",
        image=image,
        command=["python3", "-c", PROBE],
        env={"PATH": image.env["PATH"], "HOME": image.env["HOME"], **env},
        mounts=[Mount("/mnt/ckpt", volume)],
        hosts={"mlflow.rtune.svc.cluster.local": "127.0.0.9"},
        service_account_dir=sa,
    )


def _result(log: Path) -> dict:
    import json

    return json.loads(log.read_text().strip().splitlines()[-1])


def test_a_pod_runs_as_the_image_user_with_only_its_env_and_volumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret-that-must-not-leak")
    volume = tmp_path / "pvc"
    result = run_pod(_pod(tmp_path, volume, ONLY="this"), tmp_path / "attempt-0")
    assert result.succeeded, result.tail()
    seen = _result(result.log)
    assert (seen["uid"], seen["gid"], seen["cwd"]) == (10001, 10001, "/home/rtune")
    assert "AWS_SECRET_ACCESS_KEY" not in seen["env"] and seen["env"]["ONLY"] == "this"
    assert set(seen["env"]) <= {"PATH", "HOME", "ONLY", "LC_CTYPE"}
    assert seen["tmp"] and seen["home"] and seen["scratch"] and seen["volume"]
    assert not (seen["repo"] or seen["etc"] or seen["usr"])
    assert seen["shm"] == 64 * 1024 * 1024  # Kubernetes' default /dev/shm
    assert "127.0.0.9 mlflow.rtune.svc.cluster.local" in seen["hosts"]
    assert seen["secret_dir"] == ["token"]
    assert seen["rtune"] == "rtune"  # the image's environment has the project
    assert (volume / "x").exists()


def test_the_writable_layer_is_fresh_per_attempt_and_the_volume_persists(tmp_path: Path) -> None:
    volume = tmp_path / "pvc"
    script = (
        "test ! -e /tmp/mark && test ! -e $HOME/mark && touch /tmp/mark $HOME/mark /mnt/ckpt/n$$"
    )
    for attempt in range(2):
        spec = _pod(tmp_path, volume)
        spec.command = ["sh", "-c", script]
        result = run_pod(spec, tmp_path / f"attempt-{attempt}")
        assert result.succeeded, result.tail()
    assert len(list(volume.iterdir())) == 2


def test_a_pod_is_killed_when_asked(tmp_path: Path) -> None:
    spec = _pod(tmp_path, tmp_path / "pvc")
    spec.command = ["sh", "-c", "touch /mnt/ckpt/started; sleep 600"]
    started = tmp_path / "pvc" / "started"
    result = run_pod(spec, tmp_path / "attempt-0", kill_when=started.exists)
    assert result.killed and not result.succeeded


def test_a_killed_pod_leaves_no_process_behind(tmp_path: Path) -> None:
    """A child in a session of its own (as the model server starts ``transformers serve``) dies
    with the pod."""
    import psutil

    spec = _pod(tmp_path, tmp_path / "pvc")
    spec.command = ["sh", "-c", "setsid sleep 600 & echo $! > /mnt/ckpt/child; sleep 600"]
    child = tmp_path / "pvc" / "child"
    result = run_pod(spec, tmp_path / "attempt-0", kill_when=child.exists)
    assert result.killed
    pid = int(child.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"pid {pid} outlived its pod"
        time.sleep(0.1)
