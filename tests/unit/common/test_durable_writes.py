"""Stage outputs are atomic *and* durable (file and folder fsync'ed before the checkpoint goes),
and readable by others as the umask says (shared volumes), not always 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rtune.components.common.checkpoint import RecordCheckpoint
from rtune.components.common.records import write_jsonl

RECORDS = [{"id": "a", "text": "héllo"}, {"id": "b", "n": 1}]


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_output_mode_follows_the_umask(tmp_path: Path, mask: int, mode: int) -> None:
    path = tmp_path / "out.jsonl"
    with umask(mask):
        write_jsonl(path, RECORDS)
    assert stat.S_IMODE(path.stat().st_mode) == mode


class FsyncLog:
    """Records what each ``os.fsync`` call made durable: (path, is a folder, bytes if a file)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, bytes | None]] = []

    def __call__(self, fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        target = os.readlink(f"/proc/self/fd/{fd}")
        content = None if is_dir else Path(target).read_bytes()
        self.calls.append((target, is_dir, content))
        REAL_FSYNC(fd)


REAL_FSYNC = os.fsync


@pytest.fixture()
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> FsyncLog:
    log = FsyncLog()
    monkeypatch.setattr(os, "fsync", log)
    return log


def test_write_jsonl_syncs_the_file_then_its_folder(tmp_path: Path, fsyncs: FsyncLog) -> None:
    path = tmp_path / "out.jsonl"
    write_jsonl(path, RECORDS)
    final = path.read_bytes()
    files = [
        i for i, (_, is_dir, content) in enumerate(fsyncs.calls) if not is_dir and content == final
    ]
    folders = [
        i
        for i, (target, is_dir, _) in enumerate(fsyncs.calls)
        if is_dir and target == str(tmp_path)
    ]
    assert files and folders, fsyncs.calls
    assert files[0] < folders[-1]  # the data first, then the rename that publishes it


def test_new_checkpoint_syncs_its_folder(tmp_path: Path, fsyncs: FsyncLog) -> None:
    """The file's own fsync does not make its name durable: a fresh checkpoint syncs its folder."""
    path = tmp_path / "ck" / "c.partial.jsonl"
    with RecordCheckpoint(path, "key") as checkpoint:
        checkpoint.add("a", {"text": "A"})
    assert (str(path.parent), True, None) in fsyncs.calls
