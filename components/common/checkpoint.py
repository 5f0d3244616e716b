"""Per-record checkpoints: long stages survive a crash or a SIGKILL without redoing finished work.

A checkpoint is an append-only JSONL file. Its first line is a header holding a *fingerprint* of
the work (input ids + the config that shapes results); a checkpoint whose fingerprint differs is
set aside (renamed ``*.stale``), never mixed in. Each later line is one finished result keyed by
``key``, flushed and fsync'ed as it completes. A kill can leave a torn last line: it is ignored
on load and that record is simply done again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

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
        done: dict[str, Any] = {}
        with self.path.open(encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        header = _parse(lines[0]) if lines else None
        if not header or header.get(HEADER_KEY) != self.fingerprint:
            self.path.replace(self.path.with_name(self.path.name + ".stale"))
            return {}
        for line in lines[1:]:
            entry = _parse(line)
            if entry is not None and "key" in entry:
                done[entry["key"]] = entry["result"]
        return done

    def _open(self) -> IO[str]:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            self._handle = self.path.open("a", encoding="utf-8")
            if fresh:
                self._write_line({HEADER_KEY: self.fingerprint})
            else:
                self._handle.write("\n")  # terminate a torn last line left by a kill
        return self._handle

    def _write_line(self, entry: dict[str, Any]) -> None:
        assert self._handle is not None
        self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
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


def _parse(line: str) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
