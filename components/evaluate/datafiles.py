"""The evaluation's input files: shipped ``builtin:<name>`` files, local paths or ``s3://`` URIs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rtune.components.common.records import InputError, iter_jsonl

DATA_DIR = Path(__file__).parent / "data"


def resolve_data_file(spec: str, builtin_example: str) -> Path:
    """``builtin:<name>`` -> ``data/<name>.jsonl`` shipped with the package; a path or ``s3://``
    URI -> a local file (S3 objects are downloaded once into the cache)."""
    if spec.startswith("builtin:"):
        path = DATA_DIR / f"{spec.split(':', 1)[1]}.jsonl"
        if not path.is_file():
            shipped = sorted(f"builtin:{p.stem}" for p in DATA_DIR.glob("*.jsonl"))
            raise InputError(spec, "no such built-in file", f"use one of {shipped} or a path")
        return path
    from rtune.components.common.storage import localize

    path = localize(spec, "eval")
    if not path.is_file():
        raise InputError(
            spec, "does not exist", f"give a JSONL file, an s3:// URI or {builtin_example}"
        )
    return path


def numbered_records(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, record) pairs; blank lines are skipped but still counted."""
    lines = path.read_text(encoding="utf-8").splitlines()
    numbers = [number for number, text in enumerate(lines, 1) if text.strip()]
    return zip(numbers, iter_jsonl(path), strict=True)


def text_field(
    record: Mapping[str, Any], name: str, source: str, line: int, required: bool = True
) -> str:
    """A string field of a record; a missing optional one is ``""``."""
    value = record.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InputError(
            source,
            f"{name!r} must be a {'non-empty ' if required else ''}string, got {value!r}",
            f"give every line a text {name!r}",
            line=line,
            field=name,
        )
    return value
