"""The ``prepare`` stage: seed data in, contract records out (checked, normalised, de-duplicated).

    summary = prepare_dataset("s3://data/alpaca_data.json", Path("seed.jsonl"), PrepareConfig())

Steps: read (JSON array / JSONL / Parquet / saved HF dataset; local, ``s3://`` or ``builtin:seed``)
-> check and normalise every record -> drop exact duplicates (counted, logged) -> check ids are
unique -> keep the first ``limit`` -> count student tokens and flag ``too_long`` -> write JSONL.

Errors: a parse problem (bad JSON, bad bytes) stops reading at once. Record problems (missing or
empty fields, wrong types, duplicate ids) are checked for every record; the first one is raised as
one :class:`InputError` whose message also says how many other records have problems.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rtune.components.common import storage
from rtune.components.common.records import InputError, Record, write_jsonl
from rtune.components.prepare.config import PrepareConfig
from rtune.components.prepare.loaders import Location, RawRecord, detect_format, iter_raw_records
from rtune.components.prepare.normalize import dedupe_key, normalize_record

log = logging.getLogger(__name__)

SEED_URI = "builtin:seed"
TOO_LONG = "too_long"
TOKEN_BATCH = 512

TokenCounter = Callable[[list[str]], list[int]]


def seed_path() -> Path:
    """The shipped seed sample (``components/prepare/data/seed.jsonl``, package data)."""
    return Path(__file__).resolve().with_name("data") / "seed.jsonl"


@dataclass
class PrepareSummary:
    """What ``prepare`` read, removed, flagged and wrote; :meth:`as_dict` feeds MLflow metrics."""

    source: str
    format: str
    max_length: int
    token_counter: str
    records_read: int = 0
    duplicates_removed: int = 0
    limited_out: int = 0
    records_written: int = 0
    with_input: int = 0
    flagged_too_long: int = 0
    ids_from_data: int = 0
    ids_from_content: int = 0
    max_tokens: int = 0
    mean_tokens: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """The numeric fields, flat: ``{"records_read": 52002, "duplicates_removed": 3, ...}``."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("source", "format", "token_counter", "max_length")
        }

    def line(self) -> str:
        return (
            f"read {self.records_read} records ({self.format}), removed "
            f"{self.duplicates_removed} exact duplicates, left out {self.limited_out} by limit, "
            f"wrote {self.records_written} ({self.with_input} with input, "
            f"{self.flagged_too_long} flagged too_long > {self.max_length} tokens by "
            f"{self.token_counter})"
        )


def prepare_dataset(
    input_uri: str, output_path: Path, config: PrepareConfig | None = None
) -> PrepareSummary:
    """Prepare ``input_uri`` into the JSONL file ``output_path`` (written atomically)."""
    records, summary = prepare_records(input_uri, config or PrepareConfig())
    write_jsonl(output_path, records)
    log.info("prepare: %s -> %s: %s", input_uri, output_path, summary.line())
    return summary


def prepare_records(input_uri: str, config: PrepareConfig) -> tuple[list[Record], PrepareSummary]:
    """The stage without the write: contract records in source order, and the summary."""
    path, display = localize_input(input_uri, config.s3_endpoint)
    fmt = detect_format(path, display)
    kept, read, duplicates = _checked_unique_records(path, fmt, display)
    if read == 0:
        raise InputError(display, "contains no records", "give at least one instruction record")
    tokenizer = config.tokenizer if config.count_tokens else None
    counter, counter_name = make_token_counter(tokenizer, config.s3_endpoint)
    summary = PrepareSummary(
        display,
        fmt,
        config.max_length,
        counter_name,
        records_read=read,
        duplicates_removed=duplicates,
    )
    if config.limit is not None and len(kept) > config.limit:
        summary.limited_out = len(kept) - config.limit
        kept = kept[: config.limit]
    records = [record for _, record in kept]
    _flag_too_long(records, counter, config.max_length, summary)
    summary.records_written = len(records)
    summary.with_input = sum(1 for record in records if record["input"])
    summary.ids_from_data = sum(1 for source_id, _ in kept if source_id)
    summary.ids_from_content = len(records) - summary.ids_from_data
    return records, summary


def localize_input(input_uri: str, endpoint_url: str | None = None) -> tuple[Path, str]:
    """A local path for ``input_uri`` and the name to use in messages (the URI the user gave)."""
    if input_uri == SEED_URI:
        return seed_path(), SEED_URI
    if not storage.is_s3(input_uri):
        return Path(input_uri).expanduser(), input_uri
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return storage.localize(input_uri, "inputs", endpoint_url), input_uri
    except (FileNotFoundError, ClientError, BotoCoreError) as err:
        raise InputError(
            input_uri,
            f"could not be read from S3 ({err})",
            "check the bucket and key, the endpoint (--s3-endpoint or AWS_ENDPOINT_URL) and the "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables",
        ) from None


def _checked_unique_records(
    path: Path, fmt: str, display: str
) -> tuple[list[tuple[bool, Record]], int, int]:
    """Normalise every record, drop exact duplicates (first wins) and require unique ids.

    Returns ``(id_came_from_data, record)`` pairs, the number of records read and the number of
    duplicates removed. All record problems are counted; the first is raised with the count of
    the others.
    """
    problems = _Problems()
    kept: list[tuple[bool, Record]] = []
    first_by_content: dict[tuple[str, str, str], Location] = {}
    first_by_id: dict[str, Location] = {}
    duplicates: list[str] = []
    read = 0
    for raw in _read_or_report(iter_raw_records(path, fmt, display), problems):
        read += 1
        try:
            record, from_data = normalize_record(raw)
        except InputError as err:
            problems.add(err)
            continue
        key = dedupe_key(record)
        if key in first_by_content:
            duplicates.append(f"{raw.location.describe()} = {first_by_content[key].describe()}")
            continue
        first_by_content[key] = raw.location
        clash = first_by_id.get(record["id"])
        if clash is not None:
            problems.add(_duplicate_id_error(record["id"], clash, raw.location))
            continue
        first_by_id[record["id"]] = raw.location
        kept.append((from_data, record))
    problems.raise_first()
    if duplicates:
        shown = "; ".join(duplicates[:5]) + ("; ..." if len(duplicates) > 5 else "")
        log.warning(
            "prepare: removed %d exact duplicate(s) from %s: %s", len(duplicates), display, shown
        )
    return kept, read, len(duplicates)


def _read_or_report(raws: Iterable[RawRecord], problems: _Problems) -> Iterator[RawRecord]:
    """Pass records through; a parse error after earlier record problems reports the earlier one.

    Problems are told in file order, so a record problem on line 3 is not hidden by a syntax
    error on line 900 — the message then counts the syntax error among the others.
    """
    try:
        yield from raws
    except InputError as err:
        if problems.first is None:
            raise
        problems.add(err)
        problems.raise_first(note="reading stopped at a syntax/encoding problem further on")


def _duplicate_id_error(rid: str, first: Location, second: Location) -> InputError:
    return second.error(
        f"duplicate id {rid!r}: {first.describe()} has the same id with different content",
        "give each record a unique id, or drop the 'id' field to use content-hash ids",
        field="id",
    )


class _Problems:
    """First record problem plus a count of the others, for one message instead of a flood."""

    def __init__(self) -> None:
        self.first: InputError | None = None
        self.others = 0

    def add(self, error: InputError) -> None:
        if self.first is None:
            self.first = error
        else:
            self.others += 1

    def raise_first(self, note: str = "") -> None:
        if self.first is None:
            return
        extra = [f"{self.others} other record(s) have problems too"] if self.others else []
        extra += [note] if note else []
        if not extra:
            raise self.first
        problem = f"{self.first.problem} ({'; '.join(extra)})"
        raise dataclasses.replace(self.first, problem=problem)


def make_token_counter(
    spec: str | None, endpoint_url: str | None = None
) -> tuple[TokenCounter, str]:
    """Count tokens with the student's tokenizer (``spec`` = model spec), or estimate chars/4.

    Counts are without special tokens: the prompt template adds its own, and they are a few
    tokens against a limit of thousands.
    """
    if spec is None:
        return _estimate_tokens, "chars/4 estimate"
    from rtune.components.common.models import load_tokenizer, resolve_tokenizer

    tokenizer = load_tokenizer(resolve_tokenizer(spec, endpoint_url))

    def count(texts: list[str]) -> list[int]:
        encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    return count, f"tokenizer {spec}"


def _estimate_tokens(texts: list[str]) -> list[int]:
    """``ceil(chars / 4)``: the usual English BPE rate, for runs without a tokenizer."""
    return [math.ceil(len(text) / 4) for text in texts]


def sample_text(record: Record) -> str:
    """The text the student reads for a record: instruction, input (if any) and output."""
    return "\n\n".join(
        part for part in (record["instruction"], record["input"], record["output"]) if part
    )


def _flag_too_long(
    records: list[Record], counter: TokenCounter, max_length: int, summary: PrepareSummary
) -> None:
    """Flag records over ``max_length`` tokens ``too_long``: kept, but the scorer will truncate."""
    lengths: list[int] = []
    for start in range(0, len(records), TOKEN_BATCH):
        batch = records[start : start + TOKEN_BATCH]
        lengths.extend(counter([sample_text(record) for record in batch]))
    for record, length in zip(records, lengths, strict=True):
        if length > max_length and TOO_LONG not in record["flags"]:
            record["flags"].append(TOO_LONG)
    summary.flagged_too_long = sum(1 for length in lengths if length > max_length)
    summary.max_tokens = max(lengths, default=0)
    summary.mean_tokens = sum(lengths) / len(lengths) if lengths else 0.0
