"""One JSONL reader for every stage and for ``prepare``: hostile input gives one clear
InputError (file, line, field), never a traceback, and non-standard JSON never gets in or out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtune.components.common.records import InputError, read_jsonl, write_jsonl
from rtune.components.prepare.config import PrepareConfig
from rtune.components.prepare.prepare import prepare_records
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
GOOD = '{"id": "a", "instruction": "Say hi.", "input": "", "output": "Hi!"}'
DEEP = "[" * 100_000 + "]" * 100_000

# second line of a file -> (problem words, field the message must name or None)
HOSTILE = {
    "deep-nesting": (
        '{"id": "b", "instruction": "x", "output": "y", "extra": ' + DEEP + "}",
        "nested",
        None,
    ),
    "huge-integer-id": (
        '{"id": ' + "7" * 5000 + ', "instruction": "x", "output": "y"}',
        "5000 digits",
        "id",
    ),
    "lone-surrogate": (
        '{"id": "b", "instruction": "broken \\ud800 text", "output": "y"}',
        "surrogate",
        "instruction",
    ),
    "nan": ('{"id": "b", "instruction": "x", "output": "y", "score": NaN}', "NaN", "score"),
    "infinity": (
        '{"id": "b", "instruction": "x", "output": "y", "meta": {"loss": -Infinity}}',
        "-Infinity",
        "meta.loss",
    ),
    "overflowing-float": (
        '{"id": "b", "instruction": "x", "output": "y", "w": [1, 1e999]}',
        "1e999",
        "w[1]",
    ),
}


def two_lines(tmp_path: Path, second: str, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(GOOD + "\n" + second + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_stage_reader_gives_one_clear_error(tmp_path: Path, case: str) -> None:
    line, words, field = HOSTILE[case]
    path = two_lines(tmp_path, line)
    with pytest.raises(InputError) as info:
        read_jsonl(path)
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), 2, field)
    assert words in str(err) and err.fix


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_prepare_gives_the_same_clear_error(tmp_path: Path, case: str, fmt: str) -> None:
    line, words, field = HOSTILE[case]
    if fmt == "jsonl":
        path = two_lines(tmp_path, line)
    else:
        path = tmp_path / "d.json"
        path.write_text(f"[{GOOD},\n{line}\n]\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        prepare_records(str(path), PrepareConfig(tokenizer=None))
    err = info.value
    assert (err.line, err.field) == (2, field)
    assert words in str(err)


def test_parquet_nan_is_refused_by_field(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": "x", "output": "y", "score": float("nan")}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with pytest.raises(InputError) as info:
        prepare_records(str(tmp_path / "d.parquet"), PrepareConfig(tokenizer=None))
    assert info.value.field == "score" and "NaN" in str(info.value)


def test_utf8_bom_is_read_by_the_stage_reader_like_prepare(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + GOOD.encode()
        + b"\r\n"
        + GOOD.replace('"a"', '"b"').replace("hi", "bye").encode()
    )
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    records, _ = prepare_records(str(path), PrepareConfig(tokenizer=None))
    assert [r["id"] for r in records] == ["a", "b"]


def test_invalid_utf8_names_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD.encode() + b'\n{"id": "b", "instruction": "Caf\xe9", "output": "y"}\n')
    with pytest.raises(InputError) as info:
        read_jsonl(path)
    offset = len(GOOD) + 1 + len('{"id": "b", "instruction": "Caf')
    assert info.value.line == 2
    assert "not valid UTF-8" in str(info.value) and f"byte offset {offset}" in str(info.value)


@pytest.mark.parametrize("reader", ["stage", "prepare-jsonl", "prepare-json"])
def test_json_syntax_message_reads_once(tmp_path: Path, reader: str) -> None:
    """json says "Unterminated string starting at"; we must not append "at column" to it."""
    if reader == "prepare-json":
        path = tmp_path / "d.json"
        path.write_text('[\n{"instruction": "x", "output": "unterminated}', encoding="utf-8")
    else:
        path = two_lines(tmp_path, '{"id": "b", "instruction": "unterminated}')
    with pytest.raises(InputError) as info:
        if reader == "stage":
            read_jsonl(path)
        else:
            prepare_records(str(path), PrepareConfig(tokenizer=None))
    text = str(info.value)
    assert "at at" not in text
    assert "(Unterminated string starting at column " in text


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        (float("nan"), "scores.ifd", "NaN"),
        (float("inf"), "scores.ifd", "Infinity"),
        ("lone \ud800", "scores.ifd", "surrogate"),
    ],
)
def test_writer_refuses_non_standard_json_and_writes_nothing(
    tmp_path: Path, value: object, field: str, words: str
) -> None:
    path = tmp_path / "out.jsonl"
    records = [{"id": "ok", "scores": {"ifd": 0.5}}, {"id": "bad", "scores": {"ifd": value}}]
    with pytest.raises(InputError) as info:
        write_jsonl(path, records)
    err = info.value
    assert (err.file, err.record, err.field) == (str(path), "bad", field)
    assert words in str(err)
    assert list(tmp_path.iterdir()) == []  # no output, no temp file


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RTUNE_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "rtune.pipelines.cli", *args, "--no-tracking"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    "case", ["invalid-utf8", "deep-nesting", "huge-integer-id", "lone-surrogate"]
)
@pytest.mark.parametrize("command", ["select", "score"])
def test_cli_prints_one_message_and_exits_2(tmp_path: Path, case: str, command: str) -> None:
    path = tmp_path / "records.jsonl"
    if case == "invalid-utf8":
        path.write_bytes(GOOD.encode() + b'\n{"id": "b", "instruction": "\xff", "output": "y"}\n')
    else:
        two_lines(tmp_path, HOSTILE[case][0], name=path.name)
    scores = tmp_path / "scores.jsonl"
    scores.write_text("", encoding="utf-8")
    out = str(tmp_path / "out.jsonl")
    if command == "select":
        result = _cli(
            tmp_path,
            "select",
            "--phase",
            "ifd",
            "--records",
            str(path),
            "--scores",
            str(scores),
            "--output",
            out,
        )
    else:
        result = _cli(tmp_path, "score", "--input", str(path), "--output", out, "--no-progress")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"{path}, line 2" in result.stderr
    assert not Path(out).exists()
