"""JSON as every stage reads and writes it: standard JSON (RFC 8259) in UTF-8, one object a line.

Python's ``json`` is laxer than the standard and than the readers downstream of us (pandas,
``datasets``, Spark, jq): it takes ``NaN``/``Infinity``, turns ``1e999`` into ``inf``, accepts a
lone surrogate escape such as ``"\\ud800"`` (a string no UTF-8 writer can encode), and fails with a
bare ``RecursionError`` or ``ValueError`` on deep nesting or a 5000-digit integer. Here each of
those is an :class:`InputError` naming the file, line and field; the writer refuses them too.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rtune.components.common.errors import InputError, RecordNotWritable

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
MAX_DEPTH = 100  # records nest a few levels; far deeper is a broken or hostile file
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")

JSONL_FIX = (
    "each line must hold one complete JSON object, such as "
    '{"id": "...", "instruction": "...", "output": "..."}; look for an unescaped quote or '
    "newline, or a line cut short"
)
_NON_FINITE_FIX = (
    "write null (or leave the field out) where a number is missing or undefined: NaN and "
    "Infinity are not standard JSON (pandas: df.to_json(); Python: json.dumps(..., allow_nan=False))"
)
_BIG_INT_FIX = "write such a long number as a string (in quotes)"
_SURROGATE_FIX = (
    "remove the stray \\uD8xx-\\uDFxx escape, or pair it (\\ud83d\\ude00 is one emoji); the "
    "file's writer cut a character in half"
)
_DEPTH_FIX = f"flatten the record: rtune reads at most {MAX_DEPTH} levels of nested arrays/objects"


@dataclass(frozen=True)
class _Rejected:
    """Stands in for a number standard JSON does not allow, so the walk can name its field."""

    problem: str
    fix: str


@dataclass(frozen=True)
class ValueProblem:
    """Why a parsed value cannot be kept, and where in it: ``field`` like ``meta.loss`` or ``w[1]``."""

    field: str | None
    problem: str
    fix: str


def describe_syntax_error(err: json.JSONDecodeError) -> str:
    """``json``'s message plus the column, read as one phrase ("… starting at column 7")."""
    joiner = " " if err.msg.endswith(" at") else ", "
    return f"invalid JSON ({err.msg}{joiner}column {err.colno})"


def parse_json(text: str, start: int = 0) -> tuple[Any, int, ValueProblem | None]:
    """Decode one JSON value from ``text[start:]``: ``(value, end, problem or None)``.

    Raises ``json.JSONDecodeError`` for bad syntax; nesting too deep to decode is a problem.
    """
    rejected: list[_Rejected] = []

    def reject(problem: str, fix: str) -> _Rejected:
        rejected.append(_Rejected(problem, fix))
        return rejected[-1]

    def constant(token: str) -> _Rejected:
        return reject(f"{token} is not standard JSON (numbers must be finite)", _NON_FINITE_FIX)

    def number(token: str) -> float | _Rejected:
        value = float(token)
        if value in (float("inf"), float("-inf")):
            return reject(f"{token} is too large for a 64-bit number", _NON_FINITE_FIX)
        return value

    def integer(token: str) -> int | _Rejected:
        try:
            return int(token)
        except ValueError:
            limit = sys.get_int_max_str_digits()
            digits = len(token.lstrip("-"))
            return reject(
                f"an integer of {digits} digits (more than the {limit} this reader takes)",
                _BIG_INT_FIX,
            )

    decoder = json.JSONDecoder(parse_constant=constant, parse_float=number, parse_int=integer)
    try:
        value, end = decoder.raw_decode(text, start)
    except RecursionError:
        problem = ValueProblem(None, f"JSON nested more than {MAX_DEPTH} levels deep", _DEPTH_FIX)
        return None, start, problem
    segment = text[start:end]
    suspicious = (
        rejected
        or _SURROGATE_ESCAPE.search(segment)
        or segment.count("[") + segment.count("{") > MAX_DEPTH
    )
    return value, end, first_problem(value) if suspicious else None


def first_problem(value: Any) -> ValueProblem | None:
    """The first value standard JSON (or UTF-8) cannot hold, or nesting past :data:`MAX_DEPTH`.

    Walks iteratively (no recursion on hostile depth); finds NaN/Infinity floats as well as the
    reader's rejected numbers, so the writer uses it to name the field it refuses.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        found = _problem_of(item, path, depth)
        if found is not None:
            return found
        if isinstance(item, dict):
            children = [(v, f"{path}.{k}" if path else str(k), k) for k, v in item.items()]
        elif isinstance(item, list | tuple):
            children = [(v, f"{path}[{i}]", None) for i, v in enumerate(item)]
        else:
            continue
        for child, child_path, key in reversed(children):
            if isinstance(key, str) and _SURROGATE.search(key):
                return ValueProblem(child_path, "a key holds a lone surrogate", _SURROGATE_FIX)
            stack.append((child, child_path, depth + 1))
    return None


def _problem_of(item: Any, path: str, depth: int) -> ValueProblem | None:
    field = path or None
    if depth > MAX_DEPTH:
        top = re.split(r"[.\[]", path, maxsplit=1)[0] or None
        return ValueProblem(top, f"JSON nested more than {MAX_DEPTH} levels deep", _DEPTH_FIX)
    if isinstance(item, _Rejected):
        return ValueProblem(field, item.problem, item.fix)
    if isinstance(item, float) and item != item:
        return ValueProblem(field, "is NaN, which standard JSON cannot hold", _NON_FINITE_FIX)
    if isinstance(item, float) and item in (float("inf"), float("-inf")):
        name = "Infinity" if item > 0 else "-Infinity"
        return ValueProblem(field, f"is {name}, which standard JSON cannot hold", _NON_FINITE_FIX)
    if isinstance(item, str) and (match := _SURROGATE.search(item)):
        code = f"\\u{ord(match.group()):04x}"
        problem = f"holds a lone UTF-16 surrogate ({code}), which is not a character"
        return ValueProblem(field, problem, _SURROGATE_FIX)
    return None


def decode_utf8(data: bytes, display: str, first_line: int = 1, base_offset: int = 0) -> str:
    """Decode strictly; a bad byte is reported with its line and byte offset in the file.

    ``base_offset`` is where ``data`` starts in the file; at offset 0 a UTF-8 byte-order mark is
    skipped and a UTF-16 one is named as such.
    """
    if base_offset == 0 and data.startswith(UTF16_BOMS):
        raise utf16_error(display)
    skip = len(UTF8_BOM) if base_offset == 0 and data.startswith(UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        bad = skip + err.start
        line = first_line + data.count(b"\n", 0, bad)
        column = bad - (data.rfind(b"\n", 0, bad) + 1) + 1
        raise InputError(
            display,
            f"is not valid UTF-8: byte 0x{data[bad]:02x} at byte offset {base_offset + bad} "
            f"(byte {column} of the line) cannot be decoded",
            "re-encode the file as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 in.jsonl > "
            "out.jsonl` (use the encoding it was written in)",
            line=line,
        ) from None


def utf16_error(display: str) -> InputError:
    return InputError(
        display,
        "is UTF-16 encoded (it starts with a UTF-16 byte-order mark), not UTF-8",
        "re-encode the file as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8 in.json > out.json`",
        line=1,
    )


def iter_json_lines(path: Path, display: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file, in file order.

    A UTF-8 byte-order mark and CRLF line ends are accepted. Every other problem — bad bytes,
    bad syntax, a line that is not an object, a non-standard value — raises an
    :class:`InputError` naming ``display`` (default: the path), the line and the field.
    """
    display = display or str(path)
    with path.open("rb") as handle:
        yield from _lines(handle, display)


def _lines(handle: BinaryIO, display: str) -> Iterator[tuple[int, dict[str, Any]]]:
    offset = 0
    for number, raw in enumerate(handle, start=1):
        text = decode_utf8(raw, display, first_line=number, base_offset=offset)
        offset += len(raw)
        if not text.strip():
            continue
        try:
            value, _, problem = parse_json(text.rstrip("\r\n"))
        except json.JSONDecodeError as err:
            raise InputError(display, describe_syntax_error(err), JSONL_FIX, line=number) from None
        if problem is not None:
            raise InputError(
                display, problem.problem, problem.fix, line=number, field=problem.field
            )
        if not isinstance(value, dict):
            raise InputError(
                display, f"expected a JSON object, got {json_type(value)}", JSONL_FIX, line=number
            )
        yield number, value


def read_json_array(path: Path, display: str | None = None) -> list[dict[str, Any]]:
    """A file holding one JSON array of objects (``alpaca_data.json``), read as strictly as
    :func:`iter_json_lines`; errors name the line and the record index."""
    display = display or str(path)
    text = decode_utf8(path.read_bytes(), display)
    try:
        value, end, problem = parse_json(text, len(text) - len(text.lstrip()))
    except json.JSONDecodeError as err:
        raise InputError(display, describe_syntax_error(err), _ARRAY_FIX, line=err.lineno) from None
    if problem is not None and value is None:  # too deep to decode at all
        raise InputError(display, problem.problem, problem.fix)
    if text[end:].strip() or not isinstance(value, list):
        raise InputError(display, "is not one JSON array", _ARRAY_FIX)
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            got = f"expected a JSON object, got {json_type(item)}"
            raise InputError(display, got, _ARRAY_FIX, record=index)
        found = first_problem(item) if problem is not None else None
        if found is not None:
            raise InputError(display, found.problem, found.fix, record=index, field=found.field)
    return value


_ARRAY_FIX = "give JSONL (one object per line) or one JSON array of objects"


def starts_json_array(path: Path) -> bool:
    """True when the file's first character (after a BOM and spaces) is ``[``."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    return head.removeprefix(UTF8_BOM).lstrip(b" \t\r\n").startswith(b"[")


def encode_record(record: dict[str, Any], file: str) -> bytes:
    """One JSONL line, UTF-8, standard JSON only: a value that is not raises
    :class:`RecordNotWritable` naming the record id and field instead of writing it."""
    try:
        return (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        problem = first_problem(record)
        if problem is None:
            raise
        rid = record.get("id")
        raise RecordNotWritable(
            file,
            problem.problem + "; nothing was written",
            "this value was computed by a stage, not read from the input: please report it "
            "with the record id",
            record=rid if isinstance(rid, str) else None,
            field=problem.field,
        ) from None


def json_type(value: Any) -> str:
    """Name a value's type the way a JSON/Parquet user thinks of it (``null``, a number, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
