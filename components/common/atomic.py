"""Atomic *and* durable file and folder replacement, with the modes the umask asks for.

A rename makes a new file visible all at once, but only ``fsync`` makes it survive a crash: the
file's bytes before the rename, its folder after it (the rename is an entry in the folder). Without
both, a crash can leave an empty or missing output after the stage has already deleted its
checkpoint. Temporary names are created with mode 0666/0777 so the process umask decides who can
read the result (``mkstemp``/``mkdtemp`` would make every output 0600/0700, unreadable on a shared
volume by the next pod's user).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_NO_DIR_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.ENOSYS, errno.EBADF}
_SWAP_ATTEMPTS = 8


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _NO_DIR_FSYNC:
            raise  # a real I/O error; some FUSE/network mounts simply cannot sync a folder
    finally:
        os.close(fd)


def sibling_name(path: Path, tag: str) -> Path:
    """A fresh hidden name beside ``path`` (same folder, so a rename onto ``path`` is atomic)."""
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}")


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` through a handle; on success the complete file replaces it durably, on
    any error nothing changes and no temporary file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_name(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def staging_dir(target: Path) -> Path:
    """A new empty folder beside ``target`` to build it in (mode from the umask)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = sibling_name(target, "partial")
    os.mkdir(staging, 0o777)
    return staging


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (before it is renamed into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def publish_dir(staging: Path, target: Path, keep: Callable[[Path], bool] | None = None) -> Path:
    """Make the complete folder ``staging`` appear as ``target``, durably.

    An existing ``target`` is replaced (moved aside, then deleted), unless ``keep(target)`` says
    it is already a finished copy (a concurrent writer won): then ``staging`` is discarded, and
    a reader busy with that copy is not disturbed. Readers see the old folder, briefly none,
    then the new one — never a half-written one.
    """
    fsync_tree(staging)
    replaced: list[Path] = []
    try:
        _swap_in(staging, target, keep, replaced)
    finally:
        for leftover in (staging, *replaced):
            shutil.rmtree(leftover, ignore_errors=True)
    fsync_dir(target.parent)
    return target


def _swap_in(
    staging: Path, target: Path, keep: Callable[[Path], bool] | None, replaced: list[Path]
) -> None:
    for _ in range(_SWAP_ATTEMPTS):
        try:
            os.replace(staging, target)
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if keep is not None and keep(target):
            return
        old = sibling_name(target, "old")
        try:
            os.replace(target, old)
        except FileNotFoundError:
            continue  # another writer moved it aside first
        replaced.append(old)
    raise OSError(errno.EBUSY, "other writers keep replacing it", str(target))
