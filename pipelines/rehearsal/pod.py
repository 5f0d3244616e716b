"""Run one task the way its pod would: own root filesystem, the image's user, nothing inherited.

Each attempt gets a fresh root built from bind mounts in a private mount namespace:

- the host's ``/usr`` and ``/etc`` read-only (the image's OS), with the pod's ``/etc/hosts``
  (cluster DNS names of the rehearsal's services) and an ``/etc/passwd`` that knows the image user;
- the image's Python environments (played by local ones, see :mod:`.images`) and the interpreter
  and sources they point at, read-only;
- writable: a fresh ``/tmp`` and ``HOME`` (the container's writable layer, gone on retry), KFP's
  scratch ``emptyDir`` volumes (``/s3``, ``/minio``, ``/gcs``, ``/.local``, ``/.cache``,
  ``/.config``, ``/kfp-launcher``), a 64 MiB ``/dev/shm``, and the volumes the platform spec
  mounts (a PVC is a host folder that outlives the pod);
- the service account token at ``/var/run/secrets/kubernetes.io/serviceaccount``.

The process then runs as the image's ``USER`` with no capabilities and ``no_new_privs``, with
exactly the environment given (``env -i``), in the image's ``WORKDIR``. Everything runs inside the
rehearsal's network namespace, whose only interface is loopback: no package index is reachable.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rtune.pipelines.rehearsal.images import ROOT, ImageFacts

KFP_SCRATCH = ("/s3", "/minio", "/gcs", "/.local", "/.cache", "/.config", "/kfp-launcher")
DEFAULT_SHM = "64m"


@dataclass(frozen=True)
class Mount:
    """A volume in the pod: ``source`` (a host folder) at ``target``."""

    target: str
    source: Path
    read_only: bool = False
    tmpfs_size: str = ""  # a memory-backed emptyDir instead of a folder


@dataclass
class PodSpec:
    name: str
    image: ImageFacts
    command: list[str]
    env: dict[str, str]
    mounts: list[Mount] = field(default_factory=list)
    hosts: Mapping[str, str] = field(default_factory=dict)  # hostname -> loopback address
    service_account_dir: Path | None = None
    hosts_file: Path | None = None  # the cluster's live DNS (else ``hosts`` as of the start)


@dataclass
class PodResult:
    exit_code: int
    seconds: float
    log: Path
    killed: bool = False

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def run_pod(
    spec: PodSpec,
    attempt_dir: Path,
    timeout_s: float | None = None,
    kill_when: Callable[[], bool] | None = None,
) -> PodResult:
    """Run ``spec`` in a fresh sandbox under ``attempt_dir``; ``kill_when`` (polled) SIGKILLs it."""
    attempt_dir.mkdir(parents=True, exist_ok=True)
    script = attempt_dir / "pod.sh"
    script.write_text(pod_script(spec, attempt_dir), encoding="utf-8")
    log = attempt_dir / "log.txt"
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--fork", "bash", str(script)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            start_new_session=True,
        )
        killed = _wait(process, timeout_s, kill_when)
    return PodResult(process.returncode, time.monotonic() - started, log, killed)


def _wait(
    process: subprocess.Popen[bytes], timeout_s: float | None, kill_when: Callable[[], bool] | None
) -> bool:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while process.poll() is None:
        if (kill_when is not None and kill_when()) or (
            deadline is not None and time.monotonic() > deadline
        ):
            kill_pod(process)
            return True
        time.sleep(0.2)
    return False


def kill_pod(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process of the pod, as the kubelet stops a container: its process group and
    each descendant that started a session of its own (a model server's child), which
    ``killpg`` alone would leave running after the pod is gone."""
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    os.killpg(process.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    process.wait()


def pod_script(spec: PodSpec, attempt_dir: Path) -> str:
    """The root-side setup (mounts into a fresh root) ending in an unprivileged ``exec``."""
    rootfs = attempt_dir / "rootfs"
    image = spec.image
    home = image.env.get("HOME", "/")
    lines = ["set -euo pipefail", f"R={shlex.quote(str(rootfs))}", 'mkdir -p "$R"']
    lines += _system_mounts()
    writable = [("/tmp", attempt_dir / "tmp", "1777"), (home, attempt_dir / "home", "0755")]
    writable += [(path, attempt_dir / "scratch" / path.strip("/"), "0777") for path in KFP_SCRATCH]
    for target, source, mode in writable:
        lines += _owned_dir(source, image.uid, image.gid, mode) + _bind(source, target)
    lines += [f'mount -t tmpfs -o size={DEFAULT_SHM},mode=1777 shm "$R/dev/shm"']
    for image_path, local in image.python_environments.items():
        lines += _bind(local, image_path, read_only=True)
    for path in _interpreter_paths():
        lines += _bind(path, str(path), read_only=True)
    for source, target in _source_mounts(image.python_environments):
        if Path(target) != source:
            lines += _bind(source, target, read_only=True)
    for mount in spec.mounts:
        if not mount.source.is_absolute():  # an emptyDir / ephemeral volume of this attempt
            mount = Mount(mount.target, attempt_dir / "volumes" / mount.source, mount.read_only)
        lines += _volume(mount, image)
    if spec.service_account_dir is not None:
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        lines += _bind(spec.service_account_dir, sa, read_only=True)
    lines += _etc_files(spec, attempt_dir)
    lines.append(_exec_line(spec))
    return "\n".join(lines) + "\n"


def _system_mounts() -> list[str]:
    lines = []
    for name in ("bin", "lib", "lib64", "sbin"):
        if Path(f"/{name}").is_symlink():
            lines.append(f'ln -sfn {shlex.quote(os.readlink(f"/{name}"))} "$R/{name}"')
    lines += _bind(Path("/usr"), "/usr", read_only=True)
    lines += _bind(Path("/etc"), "/etc", read_only=True)
    lines += ['mkdir -p "$R/proc" "$R/dev" "$R/sys"', 'mount --rbind /proc "$R/proc"']
    lines += ['mount --rbind /dev "$R/dev"', 'mount --rbind /sys "$R/sys"']
    return lines


def _interpreter_paths() -> list[Path]:
    """The interpreter behind the local environments, and this checkout (read-only)."""
    return [Path(sys.base_prefix).resolve(), ROOT]


def _source_mounts(environments: Mapping[str, Path]) -> list[tuple[Path, str]]:
    """This checkout's packages where the environments' editable install expects them.

    An editable install maps ``rtune.components`` to the folder it was made from; the pods must
    import the code being rehearsed (this checkout), wherever that install came from.
    """
    import ast

    here = {"rtune.components": ROOT / "components", "rtune.pipelines": ROOT / "pipelines"}
    mounts = []
    for environment in environments.values():
        for finder in environment.glob("lib/python*/site-packages/__editable___rtune_*_finder.py"):
            text = finder.read_text(encoding="utf-8")
            line = next((s for s in text.splitlines() if s.startswith("MAPPING")), "")
            mapping = ast.literal_eval(line.split("=", 1)[1].strip()) if line else {}
            mounts += [(here[name], target) for name, target in mapping.items() if name in here]
    return mounts


def _owned_dir(source: Path, uid: int, gid: int, mode: str) -> list[str]:
    quoted = shlex.quote(str(source))
    return [f"mkdir -p {quoted}", f"chown {uid}:{gid} {quoted}", f"chmod {mode} {quoted}"]


def _bind(source: Path, target: str, read_only: bool = False) -> list[str]:
    src, dst = shlex.quote(str(source)), f'"$R"{shlex.quote(target)}'
    make = (
        f"mkdir -p {dst}"
        if Path(source).is_dir() or not Path(source).exists()
        else (f"mkdir -p $(dirname {dst}) && touch {dst}")
    )
    lines = [make, f"mount --rbind {src} {dst}"]
    if read_only:
        lines.append(f"mount -o remount,bind,ro {dst}")
    return lines


QUANTITY = {
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
}


def tmpfs_size(quantity: str) -> str:
    """A Kubernetes quantity (``16Gi``) or a share (``50%``) as ``mount -o size=`` takes it."""
    if quantity.endswith("%"):
        return quantity
    for suffix, factor in sorted(QUANTITY.items(), key=lambda item: -len(item[0])):
        if quantity.endswith(suffix):
            return str(int(float(quantity[: -len(suffix)]) * factor))
    return str(int(quantity))


def _volume(mount: Mount, image: ImageFacts) -> list[str]:
    dst = f'"$R"{shlex.quote(mount.target)}'
    if mount.tmpfs_size:
        size = tmpfs_size(mount.tmpfs_size)
        return [f"mkdir -p {dst}", f"mount -t tmpfs -o size={size},mode=1777 tmpfs {dst}"]
    lines = [] if mount.read_only else _owned_dir(mount.source, image.uid, image.gid, "0777")
    return lines + _bind(mount.source, mount.target, read_only=mount.read_only)


def _etc_files(spec: PodSpec, attempt_dir: Path) -> list[str]:
    """``/etc/hosts`` with the services' cluster names; ``/etc/passwd`` knowing the image user."""
    etc = attempt_dir / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    hosts = "127.0.0.1 localhost\n" + "".join(
        f"{address} {name}\n" for name, address in sorted(spec.hosts.items())
    )
    (etc / "hosts").write_text(hosts, encoding="utf-8")
    image, home = spec.image, spec.image.env.get("HOME", "/")
    passwd = Path("/etc/passwd").read_text(encoding="utf-8")
    (etc / "passwd").write_text(
        passwd + f"rtune:x:{image.uid}:{image.gid}::{home}:/bin/sh\n", encoding="utf-8"
    )
    group = Path("/etc/group").read_text(encoding="utf-8")
    (etc / "group").write_text(group + f"rtune:x:{image.gid}:\n", encoding="utf-8")
    lines = []
    for name in ("hosts", "passwd", "group"):
        source = spec.hosts_file if name == "hosts" and spec.hosts_file else etc / name
        lines += [f'mount --bind {shlex.quote(str(source))} "$R/etc/{name}"']
    return lines


def _exec_line(spec: PodSpec) -> str:
    image = spec.image
    env = [f"{key}={value}" for key, value in sorted(spec.env.items())]
    argv = [
        "exec", "chroot", '"$R"',
        "/usr/bin/setpriv", f"--reuid={image.uid}", f"--regid={image.gid}", "--clear-groups",
        "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all",
        "/usr/bin/env", "-i", f"--chdir={shlex.quote(image.workdir)}",
        *[shlex.quote(item) for item in env],
        *[shlex.quote(part) for part in spec.command],
    ]  # fmt: skip
    return " ".join(argv)
