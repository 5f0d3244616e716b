"""Per-record checkpoints: long stages survive a crash or a SIGKILL without redoing finished work.

A checkpoint is an append-only JSONL file. Its first line is a header holding a *fingerprint* of
the work (input ids + the config that shapes results); a checkpoint whose fingerprint differs is
set aside (renamed ``*.stale``), never mixed in. Each later line is one finished result keyed by
``key``, flushed and fsync'ed as it completes. A kill, a full disk or a node crash can leave a
torn last line, cut anywhere — also inside a multi-byte character of a file written before lines
were ASCII: every line is decoded on its own, a torn one is dropped and that record done again.
Lines are written as ASCII (``\\u`` escapes) so that a cut can never split a character.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from rtune.components.common.atomic import fsync_dir

HEADER_KEY = "__checkpoint__"


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (ids, config dicts)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class RecordCheckpoint:
    """Append-only store of finished results; ``done`` maps key -> result loaded at open."""

    def __init__(self, path: str | Path, work_fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = work_fingerprint
        self.done: dict[str, Any] = self._load()
        self._handle: IO[str] | None = None

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        entries = read_checkpoint_lines(self.path)
        header = entries[0] if entries else None
        if not header or header.get(HEADER_KEY) != self.fingerprint:
            self.path.replace(self.path.with_name(self.path.name + ".stale"))
            return {}
        return {
            entry["key"]: entry["result"]
            for entry in entries[1:]
            if entry is not None and "key" in entry and "result" in entry
        }

    def _open(self) -> IO[str]:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            self._handle = self.path.open("a", encoding="ascii")
            if fresh:
                self._write_line({HEADER_KEY: self.fingerprint})
                fsync_dir(self.path.parent)  # the new file's name, not only its bytes
            else:
                self._handle.write("\n")  # terminate a torn last line left by a kill
        return self._handle

    def _write_line(self, entry: dict[str, Any]) -> None:
        assert self._handle is not None
        self._handle.write(json.dumps(entry, ensure_ascii=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def add(self, key: str, result: Any) -> None:
        """Record one finished result durably (flushed + fsync'ed before returning)."""
        self._open()
        self._write_line({"key": key, "result": result})
        self.done[key] = result

    def add_many(self, items: Iterable[tuple[str, Any]]) -> None:
        for key, result in items:
            self.add(key, result)

    def pending(self, keys: Iterable[str]) -> list[str]:
        return [key for key in keys if key not in self.done]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def remove(self) -> None:
        """Delete the checkpoint once the stage's final output is safely written."""
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> RecordCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_checkpoint_lines(path: Path) -> list[dict[str, Any] | None]:
    """Every line of a checkpoint file as a JSON object, ``None`` where a line is torn.

    Each line is decoded and parsed on its own, so a line cut inside a multi-byte character (or
    anywhere else) costs that one entry, never the file. Used for every checkpoint: reflect,
    score, judge/evaluate all go through :class:`RecordCheckpoint`.
    """
    return [_parse(line) for line in path.read_bytes().split(b"\n") if line.strip()]


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
