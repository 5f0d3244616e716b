"""Records: the unit of data that flows through every stage, and its JSONL files.

Every record keeps a stable ``id`` from ``prepare`` to the end. Stages append fields and never drop
a record silently: a record that leaves the dataset carries ``decision`` and ``reason``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rtune.components.common.atomic import atomic_file
from rtune.components.common.errors import InputError as InputError
from rtune.components.common.errors import RecordNotWritable as RecordNotWritable
from rtune.components.common.jsonl import (
    encode_record,
    iter_json_lines,
    read_json_array,
    starts_json_array,
)

Record = dict[str, Any]

REQUIRED_FIELDS = ("instruction", "output")
OPTIONAL_TEXT_FIELDS = ("input",)


def read_jsonl(path: str | Path) -> list[Record]:
    """Read a JSONL file (one JSON object per line, blank lines ignored); see :func:`iter_jsonl`."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[Record]:
    """The records of a JSONL file through the one strict reader ``prepare`` uses too: UTF-8
    (a byte-order mark is fine), standard JSON only; any problem is an :class:`InputError`
    naming the file, line and field."""
    for _, record in iter_json_lines(Path(path)):
        yield record


def read_records(path: str | Path) -> list[Record]:
    """Records from JSONL or from one JSON array of objects (``alpaca_data.json``), both read
    strictly: any problem is an :class:`InputError` naming the file and line or record."""
    path = Path(path)
    return read_json_array(path) if starts_json_array(path) else read_jsonl(path)


def write_jsonl(path: str | Path, records: Iterable[Record]) -> int:
    """Write records atomically and durably: a reader never sees a half-written file, and once
    this returns the file survives a crash (so a stage may delete its checkpoint next).

    Only standard JSON is written: a NaN, an Infinity or a lone surrogate raises
    :class:`RecordNotWritable` naming the record and field, and the old file stays as it was.
    """
    path = Path(path)
    count = 0
    with atomic_file(path) as handle:
        for record in records:
            handle.write(encode_record(record, str(path)))
            count += 1
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
