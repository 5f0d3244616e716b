"""Reflections made elsewhere, read and aligned: the reference's four files, or one JSONL.

An import source (a local path or an ``s3://`` URI) is one of two shapes:

* a folder (S3 prefix) with the four aligned Alpaca files of the reference pipeline
  (tianyi-lab/Reflection_Tuning), named by candidate, ``.json`` (a JSON array) or ``.jsonl``::

      ori.json   the seed given to the reference scripts as --data_path          (x0, y0)
      Q.json     reflect_instruction_postprocess.py --save_path                  (x1, y1)
      A.json     reflect_response_postprocess.py --save_path, run on ori.json    (x0, y2)
      QA.json    reflect_response_postprocess.py --save_path, run on Q.json      (x1, y2')

  Record *i* of every file is the same sample; when the files carry ``id`` fields, a file is
  matched to ``ori`` by id instead (the counts must still agree).
* one JSON lines file, a sample per line:
  ``{"id": optional, "candidates": {"ori": {...}, "Q": {...}, "A": {...}, "QA": {...}}}``
  (``ori`` may be the line's own instruction/input/output instead).

Texts are normalised as ``prepare`` normalises the seed, so that the comparisons below and the
student's scores see the same text. ``A`` must keep ``ori``'s instruction and ``QA`` must keep
``Q``'s: that is what they are, and it catches swapped or re-ordered files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtune.components.common.jsonl import json_type
from rtune.components.common.record_schema import ORI, QA, A, Candidate, Q
from rtune.components.common.records import InputError
from rtune.components.prepare.loaders import Location, RawRecord, detect_format, iter_raw_records
from rtune.components.prepare.normalize import normalize_text
from rtune.components.prepare.prepare import localize_input

CANDIDATES = (ORI, Q, A, QA)
SUFFIXES = (".json", ".jsonl")
FILES_FIX = (
    "name the four files ori.json, Q.json, A.json and QA.json (or .jsonl): the seed, the "
    "reflected instructions, and the reflected answers of ori and of Q"
)
ALIGN_FIX = (
    "the four files must be aligned: record i of each is the same seed sample (the reference "
    "scripts keep the order); give every record an 'id' to match them by id instead"
)
TEXT_FIX = "every record needs string fields 'instruction' and 'output' ('input' optional)"
# what each reflected answer must keep, and from which candidate
SAME_PROMPT = {A: ORI, QA: Q}


@dataclass(frozen=True)
class ImportedSample:
    """One seed sample's four candidates, and where its ``ori`` row is (for messages)."""

    where: Location
    id: str | None
    candidates: dict[str, Candidate]


@dataclass(frozen=True)
class SourceFile:
    name: str  # the path or s3:// URI the user gave, with the file name
    sha256: str


@dataclass(frozen=True)
class ImportedReflections:
    samples: list[ImportedSample]
    files: list[SourceFile]
    ori_file: str  # where the ori rows come from (the name errors about the seed point at)

    def provenance(self) -> str:
        """``name sha256:<hex>`` per file: what MLflow records as the candidates' source."""
        return "; ".join(f"{f.name} sha256:{f.sha256}" for f in self.files)


def read_reflections(uri: str, endpoint_url: str | None = None) -> ImportedReflections:
    """The samples of an import source, checked and aligned (see the module docstring)."""
    path, display = localize_input(uri, endpoint_url)
    if path.is_dir():
        return _read_four_files(path, display.rstrip("/"))
    return _read_one_jsonl(path, display)


def _read_four_files(folder: Path, display: str) -> ImportedReflections:
    found = _candidate_files(folder, display)
    named = {name: f"{display}/{path.name}" for name, path in found.items()}
    rows = {name: list(_raw_rows(path, named[name])) for name, path in found.items()}
    aligned = _align(rows, named)
    samples = [
        ImportedSample(
            raws[ORI].location,
            _row_id(raws[ORI]),
            {name: candidate_of(raw.data, raw.location) for name, raw in raws.items()},
        )
        for raws in aligned
    ]
    for raws, sample in zip(aligned, samples, strict=True):
        _check_same_prompts(sample, {name: raw.location for name, raw in raws.items()})
    files = [SourceFile(named[name], _sha256(found[name])) for name in CANDIDATES]
    return ImportedReflections(samples, files, named[ORI])


def _read_one_jsonl(path: Path, display: str) -> ImportedReflections:
    samples = []
    for raw in _raw_rows(path, display):
        where = raw.location
        given = raw.data.get("candidates")
        if not isinstance(given, Mapping):
            raise where.error(
                f"'candidates' must be an object with {list(CANDIDATES)}, got {json_type(given)}",
                'write each line as {"id": ..., "candidates": {"ori": {...}, "Q": {...}, '
                '"A": {...}, "QA": {...}}}',
                field="candidates",
            )
        candidates = {name: _candidate_in_line(raw.data, given, name, where) for name in CANDIDATES}
        sample = ImportedSample(where, _row_id(raw), candidates)
        _check_same_prompts(sample, dict.fromkeys(CANDIDATES, where))
        samples.append(sample)
    _unique_ids([(s.id, s.where) for s in samples], display)
    return ImportedReflections(samples, [SourceFile(display, _sha256(path))], display)


def _candidate_in_line(
    line: Mapping[str, Any], given: Mapping[str, Any], name: str, where: Location
) -> Candidate:
    value = given.get(name, line if name == ORI else None)
    if not isinstance(value, Mapping):
        raise where.error(
            f"candidate {name!r} is missing or not an object",
            f"give candidates.{name} as an object with instruction, input and output",
            field=f"candidates.{name}",
        )
    return candidate_of(value, where, f"candidates.{name}." if name in given else "")


def candidate_of(data: Mapping[str, Any], where: Location, prefix: str = "") -> Candidate:
    """One Alpaca row as a candidate: instruction and output non-empty text, input optional."""
    texts = {}
    for name in ("instruction", "input", "output"):
        value = data.get(name)
        if name == "input" and value is None:
            texts[name] = ""
            continue
        if not isinstance(value, str):
            problem = (
                f"missing field {name!r}"
                if name not in data
                else f"{name!r} must be a string, got {json_type(value)}"
            )
            raise where.error(problem, TEXT_FIX, field=prefix + name)
        texts[name] = normalize_text(value)
        if name != "input" and not texts[name]:
            raise where.error(f"{name!r} is empty", TEXT_FIX, field=prefix + name)
    return Candidate(texts["instruction"], texts["input"], texts["output"])


def _candidate_files(folder: Path, display: str) -> dict[str, Path]:
    """``ori``/``Q``/``A``/``QA`` -> its file (names case-insensitive: ``q.json`` is ``Q``)."""
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in SUFFIXES:
            by_stem.setdefault(path.stem.lower(), []).append(path)
    found = {}
    for name in CANDIDATES:
        paths = by_stem.get(name.lower(), [])
        if len(paths) != 1:
            seen = sorted(p.name for p in folder.iterdir())
            problem = (
                f"has no {name} file (found {seen})"
                if not paths
                else f"has {len(paths)} {name} files: {[p.name for p in paths]}"
            )
            raise InputError(display, problem, FILES_FIX)
        found[name] = paths[0]
    return found


def _raw_rows(path: Path, display: str) -> Iterator[RawRecord]:
    fmt = detect_format(path, display)
    if fmt not in ("json", "jsonl"):
        raise InputError(display, f"is {fmt}, not JSON", "give JSON arrays or JSON lines")
    return iter_raw_records(path, fmt, display)


def _align(rows: dict[str, list[RawRecord]], named: dict[str, str]) -> list[dict[str, RawRecord]]:
    """Per sample, its row in each file: by id where ``ori`` and the file both carry ids, else by
    position. Equal counts are required either way (a missing row is a misalignment)."""
    ori = rows[ORI]
    ori_ids = _file_ids(ori, named[ORI])
    aligned: list[dict[str, RawRecord]] = [{ORI: raw} for raw in ori]
    for name in (Q, A, QA):
        mine = rows[name]
        if len(mine) != len(ori):
            raise InputError(
                named[name], f"has {len(mine)} records but {named[ORI]} has {len(ori)}", ALIGN_FIX
            )
        ids = _file_ids(mine, named[name])
        if ori_ids is None or ids is None:
            for sample, raw in zip(aligned, mine, strict=True):
                sample[name] = raw
            continue
        position = {rid: index for index, rid in enumerate(ori_ids)}
        for raw, rid in zip(mine, ids, strict=True):
            if rid not in position:
                problem = f"id {rid!r} is not in {named[ORI]}"
                raise raw.location.error(problem, ALIGN_FIX, field="id")
            aligned[position[rid]][name] = raw
    return aligned


def _file_ids(raws: list[RawRecord], display: str) -> list[str] | None:
    """The file's ids in order, or None when it has none; some with and some without is an error."""
    ids = [_row_id(raw) for raw in raws]
    if all(rid is None for rid in ids):
        return None
    for raw, rid in zip(raws, ids, strict=True):
        if rid is None:
            raise raw.location.error(
                "has no 'id' while other records of this file have one",
                "give every record an id, or none (then records are matched by position)",
                field="id",
            )
    _unique_ids(list(zip(ids, (raw.location for raw in raws), strict=True)), display)
    return [rid for rid in ids if rid is not None]


def _unique_ids(ids: list[tuple[str | None, Location]], display: str) -> None:
    first: dict[str, Location] = {}
    for rid, where in ids:
        if rid is None:
            continue
        if rid in first:
            problem = f"duplicate id {rid!r} ({first[rid].describe()} has it too)"
            raise where.error(problem, "give each record a unique id", field="id")
        first[rid] = where


def _row_id(raw: RawRecord) -> str | None:
    value = raw.data.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise raw.location.error(
            f"'id' must be a non-empty string or an integer, got {json_type(value)}",
            "give each record a unique id, or drop 'id' to match records by position",
            field="id",
        )
    return str(value).strip()


def _check_same_prompts(sample: ImportedSample, where: Mapping[str, Location]) -> None:
    """``A`` answers ``ori``'s prompt and ``QA`` answers ``Q``'s: anything else is misaligned."""
    for name, base in SAME_PROMPT.items():
        mine, theirs = sample.candidates[name], sample.candidates[base]
        for text in ("instruction", "input"):
            if getattr(mine, text) != getattr(theirs, text):
                field = text if where[name] != where[base] else f"candidates.{name}.{text}"
                raise where[name].error(
                    f"{name}'s {text} {_short(getattr(mine, text))} is not {base}'s "
                    f"{_short(getattr(theirs, text))}",
                    f"{name} must be {base}'s instruction and input with a better answer; check "
                    "that the files are not swapped or re-ordered",
                    field=field,
                )


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
