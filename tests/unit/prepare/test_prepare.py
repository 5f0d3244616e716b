"""The ``prepare`` stage: every input format, every bad-input message, normalisation, ids, dedupe,
too_long flags, limit, the shipped seed sample and the ``rtune prepare`` command."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.config import from_dict
from rtune.components.common.records import InputError, Record, read_jsonl
from rtune.components.prepare.config import PrepareConfig
from rtune.components.prepare.loaders import Location, RawRecord
from rtune.components.prepare.normalize import content_id, normalize_record, normalize_text
from rtune.components.prepare.prepare import (
    SEED_URI,
    PrepareSummary,
    prepare_dataset,
    prepare_records,
    sample_text,
    seed_path,
)
from rtune.pipelines.config import CONFIG_DIR
from tests.cli_lines import summary_line
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT

RECORDS: list[Record] = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5."},
    {"instruction": "Translate to French.", "input": "Good night.", "output": "Bonne nuit."},
    {
        "instruction": "Write a Python function that doubles a number.",
        "output": "```python\ndef double(x):\n    return 2 * x\n```",
        "source": "team",
    },
]


def fast(**overrides: Any) -> PrepareConfig:
    """Config without a tokenizer (chars/4), for tests that do not look at token counts."""
    return PrepareConfig(**{"tokenizer": None, **overrides})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def as_jsonl(path: Path, records: list[Any]) -> Path:
    return write_lines(path, [json.dumps(r, ensure_ascii=False) for r in records])


def bad(path: Path, **overrides: Any) -> InputError:
    """Run prepare on ``path`` and return the InputError it must raise."""
    with pytest.raises(InputError) as info:
        prepare_records(str(path), fast(**overrides))
    return info.value


def assert_message(err: InputError, *parts: str) -> None:
    text = str(err)
    for part in parts:
        assert part in text, f"{part!r} not in message:\n{text}"
    assert "fix: " in text and err.fix.strip()


# ----------------------------------------------------------------------------- config


def test_config_defaults_run_on_the_embedded_default() -> None:
    config = PrepareConfig()
    assert (config.max_length, config.tokenizer, config.limit, config.s3_endpoint) == (
        2048,
        "default",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("values", "word"),
    [
        ({"max_length": 0}, "max_length"),
        ({"max_length": True}, "max_length"),
        ({"max_length": "2048"}, "max_length"),
        ({"limit": 0}, "limit"),
        ({"tokenizer": "  "}, "tokenizer"),
        ({"s3_endpoint": "minio:9000"}, "s3_endpoint"),
    ],
)
def test_config_rejects_bad_values_with_the_field_name(values: dict[str, Any], word: str) -> None:
    with pytest.raises(InputError) as info:
        from_dict(PrepareConfig, values, "prepare")
    assert word in str(info.value)


def test_config_unknown_key_is_named() -> None:
    with pytest.raises(InputError, match="max_len"):
        from_dict(PrepareConfig, {"max_len": 10}, "prepare")


# ----------------------------------------------------------------------------- formats


def test_jsonl_gives_contract_records(tmp_path: Path) -> None:
    records, summary = prepare_records(str(as_jsonl(tmp_path / "d.jsonl", RECORDS)), fast())
    assert [list(r)[:4] for r in records] == [["id", "instruction", "input", "output"]] * 3
    assert [r["input"] for r in records] == ["", "Good night.", ""]
    assert records[2]["source"] == "team" and list(records[2])[-1] == "flags"
    assert all(r["flags"] == [] for r in records)
    assert records[2]["output"] == RECORDS[2]["output"]  # code indentation kept
    assert (summary.format, summary.records_read, summary.records_written) == ("jsonl", 3, 3)
    assert summary.with_input == 1 and summary.ids_from_content == 3


@pytest.mark.parametrize("indent", [None, 2])
def test_json_array_matches_jsonl(tmp_path: Path, indent: int | None) -> None:
    expected, _ = prepare_records(str(as_jsonl(tmp_path / "d.jsonl", RECORDS)), fast())
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(RECORDS, indent=indent, ensure_ascii=False), encoding="utf-8")
    records, summary = prepare_records(str(path), fast())
    assert records == expected and summary.format == "json"


def test_json_file_holding_json_lines_still_reads(tmp_path: Path) -> None:
    expected, _ = prepare_records(str(as_jsonl(tmp_path / "d.jsonl", RECORDS)), fast())
    records, _ = prepare_records(str(as_jsonl(tmp_path / "lines.json", RECORDS)), fast())
    assert records == expected


def test_single_pretty_printed_record_in_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(RECORDS[0], indent=2), encoding="utf-8")
    records, _ = prepare_records(str(path), fast())
    assert [r["output"] for r in records] == ["2 + 3 = 5."]


def test_jsonl_with_utf8_bom_and_crlf_reads(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    lines = [json.dumps(r) for r in RECORDS[:2]]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    records, _ = prepare_records(str(path), fast())
    assert [r["instruction"] for r in records] == ["Add 2 and 3.", "Translate to French."]


def test_parquet_matches_jsonl(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected, _ = prepare_records(str(as_jsonl(tmp_path / "d.jsonl", RECORDS)), fast())
    rows = [{"input": None, "source": None, **r} for r in RECORDS]  # nulls where a key is absent
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    records, summary = prepare_records(str(tmp_path / "d.parquet"), fast())
    assert summary.format == "parquet"
    assert [r["input"] for r in records] == ["", "Good night.", ""]
    assert [r["id"] for r in records] == [r["id"] for r in expected]
    assert [r["output"] for r in records] == [r["output"] for r in expected]


def test_saved_hf_dataset_and_datasetdict_train_split(tmp_path: Path) -> None:
    import datasets

    expected, _ = prepare_records(str(as_jsonl(tmp_path / "d.jsonl", RECORDS)), fast())
    rows = [
        {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
        for r in RECORDS
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    records, summary = prepare_records(str(tmp_path / "ds"), fast())
    assert summary.format == "hf_dataset"
    assert [r["id"] for r in records] == [r["id"] for r in expected]
    split = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    )
    split.save_to_disk(str(tmp_path / "dd"))
    records, _ = prepare_records(str(tmp_path / "dd"), fast())
    assert len(records) == 3


def test_datasetdict_without_train_names_its_splits(tmp_path: Path) -> None:
    import datasets

    rows = [{"instruction": "a", "input": "", "output": "b"}]
    datasets.DatasetDict(
        {"validation": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows)}
    ).save_to_disk(str(tmp_path / "dd"))
    err = bad(tmp_path / "dd")
    assert_message(err, str(tmp_path / "dd"), "'train'", "'test'", "'validation'")


# ----------------------------------------------------------------------------- bad input


def test_invalid_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "broken.jsonl",
        [json.dumps(RECORDS[0]), '{"instruction": "x", "output": "y"', json.dumps(RECORDS[1])],
    )
    assert_message(bad(path), "broken.jsonl, line 2", "invalid JSON", "one complete JSON object")


def test_invalid_json_inside_an_array_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text(
        '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": 1}\n]'
    )
    err = bad(path)
    assert_message(err, "broken.json, line 3", "record #1", "invalid JSON", "json.tool")


def test_missing_required_field(tmp_path: Path) -> None:
    path = as_jsonl(tmp_path / "d.jsonl", [RECORDS[0], {"instruction": "No answer here."}])
    err = bad(path)
    assert (err.line, err.field) == (2, "output")
    assert_message(err, "d.jsonl, line 2, field 'output'", "missing required field", "'output'")


def test_missing_field_suggests_the_rename(tmp_path: Path) -> None:
    path = as_jsonl(tmp_path / "d.jsonl", [{"prompt": "Say hi.", "output": "Hi!"}])
    assert_message(bad(path), "line 1", "field 'instruction'", "rename the field 'prompt'")


def test_empty_required_field(tmp_path: Path) -> None:
    path = as_jsonl(tmp_path / "d.jsonl", [{"instruction": "Say hi.", "output": " \n\u200b "}])
    assert_message(bad(path), "d.jsonl, line 1, field 'output'", "is empty", "write the output")


@pytest.mark.parametrize(
    ("record", "field", "got"),
    [
        ({"instruction": "a", "output": ["b", "c"]}, "output", "a list of 2 item(s)"),
        ({"instruction": "a", "output": 42}, "output", "a number (42)"),
        ({"instruction": None, "output": "b"}, "instruction", "null"),
        ({"instruction": "a", "input": 7, "output": "b"}, "input", "a number (7)"),
        ({"instruction": "a", "output": "b", "id": 1.5}, "id", "a number (1.5)"),
    ],
)
def test_wrong_type_names_the_field_and_type(
    tmp_path: Path, record: Record, field: str, got: str
) -> None:
    path = tmp_path / "typed.json"
    path.write_text(json.dumps([RECORDS[0], record]), encoding="utf-8")
    err = bad(path)
    assert (err.record, err.field) == (1, field)
    assert_message(err, "typed.json, line 1, record #1", f"field '{field}'", got)


def test_non_utf8_jsonl_names_line_and_byte_offset(tmp_path: Path) -> None:
    first = json.dumps(RECORDS[0]).encode() + b"\n"
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(first + b'{"instruction": "Caf\xe9", "output": "ok"}\n')
    offset = len(first) + len(b'{"instruction": "Caf')
    err = bad(path)
    assert_message(
        err,
        "latin1.jsonl, line 2",
        "not valid UTF-8",
        "0xe9",
        f"byte offset {offset}",
        "re-encode the file as UTF-8",
    )


def test_non_utf8_json_array_names_line_and_byte_offset(tmp_path: Path) -> None:
    head = b'[\n{"instruction": "a", "output": "b"},\n{"instruction": "'
    path = tmp_path / "latin1.json"
    path.write_bytes(head + b'\xfc", "output": "c"}]')
    assert_message(bad(path), "latin1.json, line 3", "0xfc", f"byte offset {len(head)}", "UTF-8")


def test_utf16_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "wide.json"
    path.write_bytes(json.dumps(RECORDS).encode("utf-16"))
    assert_message(bad(path), "wide.json, line 1", "UTF-16", "iconv -f UTF-16 -t UTF-8")


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.jsonl", "", "is empty"),
        ("blank.json", "  \n\n", "is empty"),
        ("none.json", "[]", "contains no records"),
        ("blank-lines.jsonl", "\n\n  \n", "is empty"),
    ],
)
def test_empty_inputs(tmp_path: Path, name: str, content: str, problem: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert_message(bad(path), name, problem)


def test_top_level_object_points_at_the_nested_list(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": RECORDS, "version": 1}), encoding="utf-8")
    assert_message(
        bad(path), "wrapped.json, line 1", "top-level JSON is an object", "list under 'data'"
    )


def test_top_level_scalar_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "scalar.json"
    path.write_text('"instruction, output"', encoding="utf-8")
    assert_message(
        bad(path), "scalar.json, line 1", "does not start like JSON", "JSON array of objects"
    )


def test_array_element_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([RECORDS[0], "just text"]), encoding="utf-8")
    assert_message(
        bad(path),
        "mixed.json, line 1, record #1",
        "got a string",
        '{"instruction": "...", "output": "..."}',
    )


def test_duplicate_ids_name_both_positions(tmp_path: Path) -> None:
    path = as_jsonl(
        tmp_path / "ids.jsonl",
        [
            {"id": "a1", "instruction": "One?", "output": "1"},
            {"id": "b2", "instruction": "Two?", "output": "2"},
            {"id": "a1", "instruction": "Three?", "output": "3"},
        ],
    )
    err = bad(path)
    assert (err.line, err.field) == (3, "id")
    assert_message(err, "ids.jsonl, line 3, field 'id'", "duplicate id 'a1'", "line 1", "unique id")


def test_exact_duplicates_sharing_an_id_are_not_an_id_clash(tmp_path: Path) -> None:
    row = {"id": 7, "instruction": "Same?", "output": "yes"}
    records, summary = prepare_records(str(as_jsonl(tmp_path / "d.jsonl", [row, row])), fast())
    assert [r["id"] for r in records] == ["7"] and summary.duplicates_removed == 1


def test_first_problem_is_reported_with_a_count_of_the_others(tmp_path: Path) -> None:
    path = as_jsonl(
        tmp_path / "many.jsonl",
        [RECORDS[0], {"instruction": "x"}, {"output": "y"}, {"instruction": "", "output": "z"}],
    )
    err = bad(path)
    assert err.line == 2
    assert_message(err, "2 other record(s) have problems too")


def test_a_syntax_error_later_does_not_hide_an_earlier_record_problem(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", ['{"instruction": "x"}', "{oops"])
    err = bad(path)
    assert err.line == 1 and err.field == "output"
    assert_message(err, "1 other record(s)", "reading stopped")


@pytest.mark.parametrize(
    ("name", "make", "problem"),
    [
        ("missing.jsonl", None, "does not exist"),
        ("fake.parquet", "not parquet", "is not a Parquet file"),
        ("folder", "dir", "not a dataset saved with `datasets` save_to_disk"),
    ],
)
def test_paths_that_are_not_datasets(
    tmp_path: Path, name: str, make: str | None, problem: str
) -> None:
    path = tmp_path / name
    if make == "dir":
        path.mkdir()
        (path / "notes.txt").write_text("hi")
    elif make:
        path.write_text(make)
    assert_message(bad(path), name, problem)


def test_non_json_extra_fields_are_refused_by_name() -> None:
    import datetime

    raw = RawRecord(
        Location("d.parquet", record=4),
        {"instruction": "a", "output": "b", "when": datetime.date(2024, 1, 2)},
    )
    with pytest.raises(InputError) as info:
        normalize_record(raw)
    assert_message(info.value, "d.parquet, record #4, field 'when'", "date", "convert")


# ----------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  Hello world  ", "Hello world"),
        ("Cafe\u0301", "Café"),  # NFD -> NFC
        ("line one\r\nline two\rline three", "line one\nline two\nline three"),
        ("\ufeffzero\u200bwidth\u2060joined", "zerowidthjoined"),
        ("trailing   \nspaces\t\n", "trailing\nspaces"),
        ("\n\n  first\n\n  second\n\n", "first\n\nsecond"),
        ("code:\n    if x:\n        return 1", "code:\n    if x:\n        return 1"),
        ("    def f():\n        return 1\n", "def f():\n    return 1"),
        ("   Intro:\nbody", "Intro:\nbody"),
        ("👩\u200d💻 and \u200cZWNJ", "👩\u200d💻 and \u200cZWNJ"),
    ],
)
def test_normalize_text(raw: str, clean: str) -> None:
    assert normalize_text(raw) == clean


def test_normalisation_keeps_other_fields_and_defaults_input() -> None:
    raw = RawRecord(
        Location("d.jsonl", line=1),
        {"instruction": " Q ", "output": "A\r\n", "meta": {"k": [1, " x "]}, "flags": ["seen"]},
    )
    record, from_data = normalize_record(raw)
    assert record == {
        "id": content_id("Q", "", "A"),
        "instruction": "Q",
        "input": "",
        "output": "A",
        "meta": {"k": [1, " x "]},
        "flags": ["seen"],
    }
    assert from_data is False


# ----------------------------------------------------------------------------- ids & dedupe


def test_content_id_is_the_documented_sha256() -> None:
    digest = hashlib.sha256(json.dumps(["Q", "in", "A"]).encode()).hexdigest()
    assert content_id("Q", "in", "A") == "r-" + digest[:16]
    assert content_id("Q", "in", "A") != content_id("Qin", "", "A")


def test_ids_are_stable_across_runs_and_whitespace(tmp_path: Path) -> None:
    first, _ = prepare_records(str(as_jsonl(tmp_path / "a.jsonl", RECORDS)), fast())
    messy = [{**r, "instruction": "  " + r["instruction"] + " \r\n"} for r in RECORDS]
    second, _ = prepare_records(str(as_jsonl(tmp_path / "b.jsonl", messy)), fast())
    assert [r["id"] for r in first] == [r["id"] for r in second]
    assert all(re.fullmatch(r"r-[0-9a-f]{16}", r["id"]) for r in first)
    assert len({r["id"] for r in first}) == 3


def test_data_ids_are_kept_as_strings(tmp_path: Path) -> None:
    rows = [{"id": 12, **RECORDS[0]}, {"id": " alpaca-7 ", **RECORDS[1]}, RECORDS[2]]
    records, summary = prepare_records(str(as_jsonl(tmp_path / "d.jsonl", rows)), fast())
    assert [r["id"] for r in records][:2] == ["12", "alpaca-7"]
    assert records[2]["id"].startswith("r-")
    assert (summary.ids_from_data, summary.ids_from_content) == (2, 1)


def test_exact_duplicates_are_removed_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    twin = {**RECORDS[0], "output": RECORDS[0]["output"] + "   \r\n", "note": "second copy"}
    rows = [RECORDS[0], RECORDS[1], twin, RECORDS[1], RECORDS[2]]
    with caplog.at_level(logging.WARNING, logger="rtune.components.prepare.prepare"):
        records, summary = prepare_records(str(as_jsonl(tmp_path / "d.jsonl", rows)), fast())
    assert [r["instruction"] for r in records] == [r["instruction"] for r in RECORDS]
    assert "note" not in records[0]  # the first copy wins
    assert (summary.records_read, summary.duplicates_removed, summary.records_written) == (5, 2, 3)
    assert "removed 2 exact duplicate(s)" in caplog.text and "line 3 = line 1" in caplog.text


def test_same_instruction_with_different_input_is_not_a_duplicate(tmp_path: Path) -> None:
    rows = [{"instruction": "Translate.", "input": text, "output": "x"} for text in ("a", "b")]
    _, summary = prepare_records(str(as_jsonl(tmp_path / "d.jsonl", rows)), fast())
    assert summary.duplicates_removed == 0 and summary.records_written == 2


# ----------------------------------------------------------------------------- too_long & limit


def test_too_long_is_flagged_not_dropped_with_the_estimate(tmp_path: Path) -> None:
    rows = [RECORDS[0], {"instruction": "Essay.", "output": "word " * 100, "flags": ["x"]}]
    records, summary = prepare_records(
        str(as_jsonl(tmp_path / "d.jsonl", rows)), fast(max_length=20)
    )
    assert [r["flags"] for r in records] == [[], ["x", "too_long"]]
    assert summary.flagged_too_long == 1 and summary.records_written == 2
    assert summary.max_tokens == -(-len(sample_text(records[1])) // 4)


def test_too_long_counts_with_the_students_tokenizer(
    tmp_path: Path, embedded_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    long_answer = "The quick brown fox jumps over the lazy dog. " * 12
    rows = [RECORDS[0], {"instruction": "Repeat the pangram.", "output": long_answer}]
    config = PrepareConfig(tokenizer=str(embedded_model_dir), max_length=60)
    records, summary = prepare_records(str(as_jsonl(tmp_path / "d.jsonl", rows)), config)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    lengths = [
        len(tokenizer(sample_text(r), add_special_tokens=False)["input_ids"]) for r in records
    ]
    assert lengths[0] < 60 < lengths[1]
    assert [r["flags"] for r in records] == [[], ["too_long"]]
    assert summary.max_tokens == lengths[1] and summary.mean_tokens == sum(lengths) / 2
    assert summary.token_counter == f"tokenizer {embedded_model_dir}"


def test_limit_keeps_the_first_records_after_dedupe(tmp_path: Path) -> None:
    rows = [RECORDS[0], RECORDS[0], RECORDS[1], RECORDS[2]]
    records, summary = prepare_records(str(as_jsonl(tmp_path / "d.jsonl", rows)), fast(limit=2))
    assert [r["instruction"] for r in records] == [
        RECORDS[0]["instruction"],
        RECORDS[1]["instruction"],
    ]
    assert (summary.duplicates_removed, summary.limited_out, summary.records_written) == (1, 1, 2)


def test_prepare_dataset_writes_jsonl_and_numeric_summary(tmp_path: Path) -> None:
    out = tmp_path / "out" / "seed.jsonl"
    summary = prepare_dataset(str(as_jsonl(tmp_path / "d.jsonl", RECORDS)), out, fast())
    assert isinstance(summary, PrepareSummary)
    assert len(read_jsonl(out)) == 3
    metrics = summary.as_dict()
    assert {
        "records_read",
        "records_written",
        "duplicates_removed",
        "flagged_too_long",
        "with_input",
    } <= set(metrics)
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values())


# ----------------------------------------------------------------------------- the shipped seed


def test_seed_sample_is_valid_varied_and_already_clean(embedded_model_dir: Path) -> None:
    shipped = read_jsonl(seed_path())
    config = PrepareConfig(tokenizer=str(embedded_model_dir))
    records, summary = prepare_records(SEED_URI, config)
    assert summary.records_written == len(shipped) >= 64
    assert summary.duplicates_removed == 0 and summary.flagged_too_long == 0
    assert [r["id"] for r in records] == [f"seed-{n:03d}" for n in range(1, len(shipped) + 1)]
    for before, after in zip(shipped, records, strict=True):
        assert {k: after[k] for k in ("instruction", "input", "output")} == {
            k: before.get(k, "") for k in ("instruction", "input", "output")
        }
    assert summary.with_input >= 20 and summary.with_input >= len(records) // 4
    categories = Counter(r["category"] for r in records)
    expected = {"math", "code", "writing", "translation", "reasoning", "extraction", "explanation"}
    assert set(categories) == expected and min(categories.values()) >= 8
    assert all(r["input"] for r in records if r["category"] == "translation")
    code = [r["output"] for r in records if r["category"] == "code"]
    assert sum("```" in text and "\n    " in text for text in code) >= 5


# ----------------------------------------------------------------------------- CLI


def _cli_parser() -> argparse.ArgumentParser:
    from rtune.pipelines.commands import prepare as command

    parser = argparse.ArgumentParser(prog="rtune")
    command.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_handler_writes_output_and_prints_the_runners_line_then_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a tracked run would write ./mlflow.db here
    out = tmp_path / "seed.jsonl"
    args = _cli_parser().parse_args(
        [
            "prepare",
            "--input",
            SEED_URI,
            "--output",
            str(out),
            "--limit",
            "10",
            "--tokenizer",  # the old spelling of --count-tokens false
            "none",
            "--max-length",
            "512",
            "--no-tracking",
        ]
    )
    assert args.func(args) == 0
    assert len(read_jsonl(out)) == 10
    captured = capsys.readouterr()  # the runner's line on stderr, the command's on stdout
    runner, own = summary_line(captured.err), captured.out.strip()
    assert runner.startswith("rtune-summary prepare: read ") and "wrote 10" in runner
    assert own.startswith("prepare: read ") and "wrote 10" in own and own.endswith(f"-> {out}")
    assert "> 512 tokens by chars/4 estimate" in own
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("flags", "counter"),
    [
        ([], "tokenizer"),
        (["--tokenizer", "none"], "chars/4 estimate"),
        (["--count-tokens", "false"], "chars/4 estimate"),
        (["--tokenizer", "none", "--count-tokens", "true"], "tokenizer"),  # explicit flag wins
        (["--tokenizer", "none", "--set", "prepare.count_tokens=true"], "tokenizer"),
    ],
)
def test_cli_tokenizer_none_is_an_alias_of_count_tokens_false(
    flags: list[str], counter: str, embedded_model_dir: Path
) -> None:
    from rtune.pipelines.commands.config_flags import load_command_config
    from rtune.pipelines.commands.prepare import tokenizer_none_alias

    argv = ["prepare", "--input", SEED_URI, "--output", "o.jsonl", "--no-tracking", *flags]
    args = _cli_parser().parse_args(argv)
    config = load_command_config(args, defaults=tokenizer_none_alias(args)).section("prepare")
    assert config.tokenizer == "default"  # the student's, untouched by the alias
    _, summary = prepare_records(SEED_URI, config)
    assert summary.token_counter.startswith(counter)


def test_cli_tokenizer_names_the_students_tokenizer(
    tmp_path: Path, embedded_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "seed.jsonl"
    argv = ["prepare", "--input", SEED_URI, "--output", str(out), "--limit", "5", "--no-tracking"]
    args = _cli_parser().parse_args([*argv, "--tokenizer", str(embedded_model_dir)])
    assert args.func(args) == 0
    assert f"by tokenizer {embedded_model_dir}" in capsys.readouterr().out
    config = PrepareConfig(tokenizer=str(embedded_model_dir), limit=5)
    assert read_jsonl(out) == prepare_records(SEED_URI, config)[0]


def _rtune(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtune.pipelines.cli", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, sys.path)),  # this checkout's rtune
            **(env or {}),
        },
    )


def test_cli_bad_input_exits_2_with_the_message(tmp_path: Path) -> None:
    path = as_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], {"instruction": "x", "output": [1]}])
    result = _rtune(
        "prepare",
        "--input",
        str(path),
        "--output",
        str(tmp_path / "o.jsonl"),
        "--tokenizer",
        "none",
        "--no-tracking",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "bad.jsonl, line 2, field 'output'" in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_bad_flag_value_exits_2(tmp_path: Path) -> None:
    result = _rtune(
        "prepare",
        "--input",
        SEED_URI,
        "--output",
        str(tmp_path / "o.jsonl"),
        "--max-length",
        "0",
        "--tokenizer",
        "none",
        "--no-tracking",
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "max_length" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_prepares_the_seed_as_the_config_says_and_tracks_it(tmp_path: Path) -> None:
    """``rtune prepare --config local.yaml`` runs that config's prepare section (limit 8) through
    the stage runner, which records the run in MLflow."""
    from rtune.pipelines.config import load_run_config

    out, store = tmp_path / "seed.jsonl", f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _rtune(
        "prepare",
        "--input",
        SEED_URI,
        "--output",
        str(out),
        "--tokenizer",
        "none",
        "--config",
        str(CONFIG_DIR / "local.yaml"),
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": store},
    )
    assert result.returncode == 0, result.stderr
    runner, own = summary_line(result.stderr), result.stdout.strip()
    assert "removed 0 exact duplicates" in own and own.endswith(f"-> {out}")
    config = load_run_config(CONFIG_DIR / "local.yaml", ["prepare.count_tokens=false"])
    config = config.section("prepare")
    assert read_jsonl(out) == prepare_records(SEED_URI, config)[0]
    assert len(read_jsonl(out)) == config.limit

    import mlflow

    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("reflection-tuning")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`rtune.stage` = 'prepare'"
    )
    assert run.data.tags["rtune.summary"] == runner.removeprefix("rtune-summary prepare: ")
    assert run.data.params["count_tokens"] == "False"
    assert run.data.params["limit"] == str(config.limit)
