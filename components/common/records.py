"""Records: the unit of data that flows through every stage, and its JSONL files.

Every record keeps a stable ``id`` from ``prepare`` to the end. Stages append fields and never drop
a record silently: a record that leaves the dataset carries ``decision`` and ``reason``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Record = dict[str, Any]

REQUIRED_FIELDS = ("instruction", "output")
OPTIONAL_TEXT_FIELDS = ("input",)


@dataclass
class InputError(ValueError):
    """Bad user input, told to a person: which file, which line/record, which field, and the fix.

    The CLI prints ``str(error)`` and exits with code 2 instead of showing a traceback.
    """

    file: str
    problem: str
    fix: str
    line: int | None = None
    record: str | int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.record is not None:
            where.append(
                f"record {self.record!r}"
                if isinstance(self.record, str)
                else f"record #{self.record}"
            )
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{': '.join([', '.join(where), self.problem])}\n  fix: {self.fix}"


def read_jsonl(path: str | Path) -> list[Record]:
    """Read a JSONL file written by a stage (one JSON object per line, blank lines ignored)."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[Record]:
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(
                    str(path),
                    f"invalid JSON ({err.msg}, column {err.colno})",
                    "each line must be one complete JSON object",
                    line=number,
                ) from None
            if not isinstance(record, dict):
                raise InputError(
                    str(path),
                    f"expected a JSON object, got {type(record).__name__}",
                    "each line must be one JSON object",
                    line=number,
                )
            yield record


def write_jsonl(path: str | Path, records: Iterable[Record]) -> int:
    """Write records atomically (temp file + rename): a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def require_text_fields(
    record: Mapping[str, Any], names: Sequence[str], source: str, line: int, fix: str
) -> None:
    """Each of ``names`` must be a non-empty string (the first missing one is the error)."""
    for name in names:
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InputError(
                source,
                f"field {name!r} is missing or empty",
                fix,
                line=line,
                record=str(record.get("id", "?")),
                field=name,
            )


def index_by_id(records: Iterable[Record], source: str = "records") -> dict[str, Record]:
    """Map id -> record; two records with one id is an error (ids are the join key of stages)."""
    by_id: dict[str, Record] = {}
    for position, record in enumerate(records):
        rid = record.get("id")
        if not isinstance(rid, str) or not rid:
            raise InputError(
                source,
                "has no string 'id'",
                "run the data through `rtune prepare` first",
                record=position,
                field="id",
            )
        if rid in by_id:
            raise InputError(
                source,
                "duplicate id",
                "ids must be unique; re-run `rtune prepare`",
                record=rid,
                field="id",
            )
        by_id[rid] = record
    return by_id
