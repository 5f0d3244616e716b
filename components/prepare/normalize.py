"""Check one raw record and bring it to the data contract: text normalised, stable id, flags list.

Output shape (``prepare``'s contract)::

    {"id": str, "instruction": str, "input": str, "output": str, ...other fields..., "flags": [str]}
"""

from __future__ import annotations

import hashlib
import json
import textwrap
import unicodedata
from typing import Any

from rtune.components.common.jsonl import first_problem
from rtune.components.common.records import Record
from rtune.components.prepare.loaders import Location, RawRecord, json_type

TEXT_FIELDS = ("instruction", "input", "output")
REQUIRED = ("instruction", "output")
CONTENT_ID_PREFIX = "r-"
CONTENT_ID_HEX = 16

# Zero-width space, word joiner and BOM carry no meaning inside text. ZWJ/ZWNJ (U+200C/U+200D) are
# kept on purpose: they are spelling in Persian and Indic scripts and glue emoji sequences.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff"))

# Column names other instruction datasets use, to suggest the rename in a "missing field" message.
_ALIASES = {
    "instruction": ("prompt", "question", "query", "instruct", "human"),
    "output": ("response", "answer", "completion", "target", "assistant"),
}


def normalize_text(text: str) -> str:
    """Unicode NFC, LF line ends, no invisible characters, no trailing spaces or outer blank lines.

    Internal newlines and relative indentation are kept (code answers depend on them). A margin
    shared by every line is removed (``textwrap.dedent``) so that stripping the text's outer
    whitespace can never leave the first line of an indented code block out of step with the rest.
    """
    text = unicodedata.normalize("NFC", text.translate(_INVISIBLE))
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return textwrap.dedent(text).strip("\n").lstrip()


def content_id(instruction: str, input_text: str, output: str) -> str:
    """``r-`` + 16 hex digits of sha256 over the JSON array ``[instruction, input, output]``.

    JSON encoding is the separator: no two different triples encode alike, so only a sha256
    collision (probability ~n²/2⁶⁵ for n records) could give two records one id. Same normalised
    content -> same id, on every machine and every run.
    """
    payload = json.dumps([instruction, input_text, output], ensure_ascii=False)
    return CONTENT_ID_PREFIX + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:CONTENT_ID_HEX]


def dedupe_key(record: Record) -> tuple[str, str, str]:
    """Exact duplicates are records whose normalised instruction, input and output all match."""
    return record["instruction"], record["input"], record["output"]


def normalize_record(raw: RawRecord) -> tuple[Record, bool]:
    """Return the contract record and whether its id came from the data (else a content hash).

    Raises :class:`~rtune.components.common.records.InputError` naming the field and the fix.
    """
    data, where = raw.data, raw.location
    texts = {name: _text_field(data, name, where) for name in TEXT_FIELDS}
    rid, from_data = _record_id(data, where, texts)
    record: Record = {"id": rid, **texts}
    for key, value in data.items():
        if key not in record and key != "flags":
            record[key] = _json_value(key, value, where)
    record["flags"] = _flags(data.get("flags"), where)
    return record, from_data


def _text_field(data: dict[str, Any], name: str, where: Location) -> str:
    required = name in REQUIRED
    if name not in data or (data[name] is None and not required):
        if required:
            raise where.error(
                f"missing required field {name!r} (fields present: {sorted(data)})",
                _missing_fix(data, name),
                field=name,
            )
        return ""
    value = data[name]
    if not isinstance(value, str):
        raise where.error(
            f"{name!r} must be a string, got {json_type(value)}",
            f"make {name!r} one JSON string: quote numbers, join list items into one text"
            + ("" if required else ', or use "" when there is no input'),
            field=name,
        )
    text = normalize_text(value)
    if required and not text:
        raise where.error(
            f"required field {name!r} is empty (or only whitespace)",
            f"write the {name} text, or delete this record",
            field=name,
        )
    return text


def _missing_fix(data: dict[str, Any], name: str) -> str:
    alias = next((key for key in _ALIASES[name] if key in data), None)
    if alias:
        return f"rename the field {alias!r} to {name!r} (rtune reads Alpaca-style records)"
    return f"give every record an {name!r} string (Alpaca style: instruction, input, output)"


def _record_id(data: dict[str, Any], where: Location, texts: dict[str, str]) -> tuple[str, bool]:
    value = data.get("id")
    if value is None:
        return content_id(texts["instruction"], texts["input"], texts["output"]), False
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise where.error(
            f"'id' must be a string or an integer, got {json_type(value)}",
            "give each record a unique string/integer id, or drop 'id' to get content-hash ids",
            field="id",
        )
    rid = str(value).strip()
    if not rid:
        raise where.error(
            "'id' is empty",
            "give each record a unique non-empty id, or drop 'id' to get content-hash ids",
            field="id",
        )
    return rid, True


def _flags(value: Any, where: Location) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(flag, str) for flag in value):
        return list(value)
    raise where.error(
        f"'flags' must be a list of strings, got {json_type(value)}",
        "remove the 'flags' field (prepare sets it) or make it a list of strings",
        field="flags",
    )


def _json_value(key: str, value: Any, where: Location) -> Any:
    """Extra fields pass through untouched but must be writable as standard JSON (Parquet may
    hold dates, or NaN where a value is missing)."""
    try:
        json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        raise where.error(
            f"field {key!r} holds {type(value).__name__}, which JSON cannot hold",
            f"convert the {key!r} column to strings or numbers before preparing, or drop it",
            field=key,
        ) from None
    problem = first_problem({key: value})
    if problem is not None:
        raise where.error(problem.problem, problem.fix, field=problem.field)
    return value
