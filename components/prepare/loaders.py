"""Read raw instruction records from JSON arrays, JSON lines, Parquet and saved HF datasets.

Every record comes out with its :class:`Location` (file plus line and/or record index) so that any
later problem can be told to a person as "file, line 7, field 'output': ...". Record indexes count
from 0, as ``jq '.[7]'``, pandas and ``datasets`` do; lines count from 1, as editors do.

The format is taken from the content where the content is unambiguous (Parquet's ``PAR1`` magic,
a leading ``[`` for a JSON array) and from the extension otherwise, so that a ``.json`` file holding
JSON lines still reads. JSON lines go through the same reader as every stage's input
(:mod:`rtune.components.common.jsonl`), and JSON documents through the same strict parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtune.components.common.jsonl import (
    UTF8_BOM,
    UTF16_BOMS,
    ValueProblem,
    decode_utf8,
    describe_syntax_error,
    iter_json_lines,
    json_type,
    parse_json,
    utf16_error,
)
from rtune.components.common.records import InputError

FORMATS = ("json", "jsonl", "parquet", "hf_dataset")
SUPPORTED = (
    "a JSON array (alpaca_data.json), JSON lines, Parquet, or a datasets save_to_disk folder"
)

PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_RECORD_KEYS = ("instruction", "input", "output")


@dataclass(frozen=True)
class Location:
    """Where a record sits in its source: a line (text formats) and/or a record index."""

    file: str
    line: int | None = None
    record: int | None = None

    def error(self, problem: str, fix: str, field: str | None = None) -> InputError:
        return InputError(self.file, problem, fix, line=self.line, record=self.record, field=field)

    def describe(self) -> str:
        """``line 7``, ``record #6`` or ``record #6 (line 40)`` — for messages naming two places."""
        if self.record is None:
            return f"line {self.line}"
        return f"record #{self.record}" + (f" (line {self.line})" if self.line else "")


@dataclass(frozen=True)
class RawRecord:
    """One record exactly as the source holds it, before any check or normalisation."""

    location: Location
    data: dict[str, Any]


def detect_format(path: Path, display: str) -> str:
    """Return one of :data:`FORMATS` for ``path`` or raise an :class:`InputError` saying why not."""
    if path.is_dir():
        return _detect_dataset_folder(path, display)
    if not path.exists():
        raise InputError(
            display,
            "does not exist",
            f"give the path of {SUPPORTED}, an s3:// URI, or builtin:seed",
        )
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if path.suffix.lower() in PARQUET_SUFFIXES:
        raise InputError(
            display,
            "is named like Parquet but is not a Parquet file (no PAR1 magic bytes)",
            "write it with pyarrow/pandas `.to_parquet()`, or rename it to its real format",
        )
    if head.startswith(UTF16_BOMS):
        raise utf16_error(display)
    first = head.removeprefix(UTF8_BOM).lstrip(b" \t\r\n")[:1]
    if not first:
        raise InputError(display, "is empty", f"give {SUPPORTED} with at least one record")
    if first == b"[":
        return "json"
    if first == b"{":
        return "json" if path.suffix.lower() == ".json" else "jsonl"
    raise InputError(
        display,
        f"does not start like JSON, JSON lines or Parquet (first character {first!r})",
        "the top level must be a JSON array of objects, or one JSON object per line",
        line=1,
    )


def iter_raw_records(path: Path, fmt: str, display: str) -> Iterator[RawRecord]:
    """Yield the records of ``path`` in file order; parse problems raise at the first one."""
    if fmt == "jsonl":
        return _iter_jsonl(path, display)
    if fmt == "json":
        return _iter_json_document(path, display)
    if fmt == "parquet":
        return _iter_parquet(path, display)
    if fmt == "hf_dataset":
        return _iter_hf_dataset(path, display)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def _iter_jsonl(path: Path, display: str) -> Iterator[RawRecord]:
    """One JSON object per line, through the stages' own reader (BOM, CRLF, blank lines)."""
    for number, value in iter_json_lines(path, display):
        yield RawRecord(Location(display, line=number), value)


def _iter_json_document(path: Path, display: str) -> Iterator[RawRecord]:
    """A ``.json`` file: an array of objects, or JSON lines / one record under a .json name."""
    text = decode_utf8(path.read_bytes(), display)
    start = _JSON_SPACE.match(text).end()  # type: ignore[union-attr]
    if text.startswith("[", start):
        yield from _iter_json_array(text, start, display)
        return
    try:
        document, end, problem = parse_json(text, start)
    except json.JSONDecodeError as err:
        raise _json_syntax_error(err, display) from None
    if end > start and _JSON_SPACE.match(text, end).end() < len(text):  # type: ignore[union-attr]
        yield from _iter_jsonl(path, display)  # more after the first value: JSON lines
        return
    location = Location(display, line=1 + text.count("\n", 0, start))
    if problem is not None:
        raise _value_error(problem, location)
    if isinstance(document, dict) and any(key in document for key in _RECORD_KEYS):
        yield RawRecord(location, document)
        return
    raise _not_records_error(document, display)


def _iter_json_array(text: str, start: int, display: str) -> Iterator[RawRecord]:
    """Walk ``[obj, obj, ...]`` element by element so each record also knows its line number."""
    position, line, counted_to = start + 1, 1, 0
    index = 0
    while True:
        position = _JSON_SPACE.match(text, position).end()  # type: ignore[union-attr]
        if index == 0 and text.startswith("]", position):
            break
        line += text.count("\n", counted_to, position)
        counted_to = position
        try:
            value, end, problem = parse_json(text, position)
        except json.JSONDecodeError as err:
            raise _json_syntax_error(err, display, record=index) from None
        location = Location(display, line=line, record=index)
        if problem is not None:
            raise _value_error(problem, location)
        yield RawRecord(_expect_object(value, location), value)
        index += 1
        position = _JSON_SPACE.match(text, end).end()  # type: ignore[union-attr]
        if text.startswith(",", position):
            position += 1
            continue
        if text.startswith("]", position):
            break
        line += text.count("\n", counted_to, position)
        counted_to = position
        found = text[position : position + 1] or "end of file"
        raise InputError(
            display,
            f"invalid JSON array: expected ',' or ']' after record #{index - 1}, found {found!r}",
            "separate records with commas and close the array with ']'",
            line=line,
        )
    trailing = _JSON_SPACE.match(text, position + 1).end()  # type: ignore[union-attr]
    if trailing < len(text):
        raise InputError(
            display,
            "extra data after the closing ']' of the JSON array",
            "keep exactly one top-level array in the file",
            line=1 + text.count("\n", 0, trailing),
        )


def _iter_parquet(path: Path, display: str) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except (pa.ArrowException, OSError) as err:
        raise InputError(
            display,
            f"is not a readable Parquet file ({err})",
            "re-write it with pyarrow or pandas `.to_parquet()`",
        ) from None
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield RawRecord(Location(display, record=index), row)
            index += 1


def _detect_dataset_folder(path: Path, display: str) -> str:
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return "hf_dataset"
    raise InputError(
        display,
        "is a folder but not a dataset saved with `datasets` save_to_disk "
        "(no state.json or dataset_dict.json in it)",
        f"give {SUPPORTED}; save a Dataset with `ds.save_to_disk(folder)`",
    )


def _iter_hf_dataset(path: Path, display: str) -> Iterator[RawRecord]:
    """A ``save_to_disk`` folder: a Dataset, or a DatasetDict whose ``train`` split is used."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as err:
        raise InputError(
            display,
            f"could not be loaded with datasets.load_from_disk ({err})",
            "re-save it with `dataset.save_to_disk(folder)` from the same datasets major version",
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise InputError(
                display,
                f"is a DatasetDict without a 'train' split (splits: {sorted(loaded)})",
                "save the split you want on its own (`dd['<split>'].save_to_disk(folder)`) "
                "or name it 'train'",
            )
        loaded = loaded["train"]
    index = 0
    for table in loaded.with_format("arrow").iter(batch_size=1024):
        for row in table.to_pylist():
            yield RawRecord(Location(display, record=index), row)
            index += 1


def _expect_object(value: Any, location: Location) -> Location:
    if not isinstance(value, dict):
        raise location.error(
            f"expected a JSON object (a record), got {json_type(value)}",
            'each record must be an object like {"instruction": "...", "output": "..."}',
        )
    return location


def _value_error(problem: ValueProblem, location: Location) -> InputError:
    """A value standard JSON does not allow (NaN, a lone surrogate, ...), named by field."""
    return location.error(problem.problem, problem.fix, field=problem.field)


def _json_syntax_error(
    err: json.JSONDecodeError, display: str, record: int | None = None
) -> InputError:
    return InputError(
        display,
        describe_syntax_error(err),
        "fix the JSON syntax there (often a missing comma or quote); check the file with "
        "`python -m json.tool FILE`",
        line=err.lineno,
        record=record,
    )


def _not_records_error(document: Any, display: str) -> InputError:
    fix = "give a top-level JSON array of records, or one JSON object per line (JSONL)"
    if isinstance(document, dict):
        nested = [key for key, value in document.items() if isinstance(value, list)]
        if nested:
            fix += f"; the records may be the list under {nested[0]!r}: save that list on its own"
    return InputError(
        display,
        f"top-level JSON is {json_type(document)}, not an array of records or JSON lines",
        fix,
        line=1,
    )
