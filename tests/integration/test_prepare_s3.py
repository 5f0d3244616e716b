"""``prepare`` reads every format from ``s3://`` (moto's real S3 server on loopback) exactly as it
reads the same files locally, and names the S3 URI in its errors."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from rtune.components.common.records import InputError, read_jsonl
from rtune.components.common.storage import upload_dir
from rtune.components.prepare.config import PrepareConfig
from rtune.components.prepare.prepare import prepare_records
from tests.servers import moto_s3, use_s3

pytestmark = pytest.mark.integration

BUCKET = "seed-data"
RECORDS = [
    {"id": "s-1", "instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5."},
    {"instruction": "Translate to French.", "input": "Good night.", "output": "Bonne nuit."},
    {"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5.", "id": "s-1"},
    {"instruction": "Write code.", "output": "```python\ndef f():\n    return 1\n```"},
]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture()
def s3_endpoint(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Fake credentials, the endpoint in AWS_ENDPOINT_URL, a private download cache, a bucket."""
    use_s3(monkeypatch, s3_server, tmp_path / "cache", BUCKET)
    return s3_server


@pytest.fixture(scope="module")
def local_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same records as JSONL, a JSON array, Parquet and a saved HF dataset folder."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("s3-sources")
    files = {
        "jsonl": root / "seed.jsonl",
        "json": root / "alpaca_data.json",
        "parquet": root / "seed.parquet",
        "hf_dataset": root / "seed_ds",
    }
    files["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    files["json"].write_text(json.dumps(RECORDS, indent=2), encoding="utf-8")
    rows = [{"id": None, "input": None, **r} for r in RECORDS]
    pq.write_table(pa.Table.from_pylist(rows), files["parquet"])
    datasets.Dataset.from_list(rows).save_to_disk(str(files["hf_dataset"]))
    return files


def _upload(path: Path, key: str, endpoint: str) -> str:
    uri = f"s3://{BUCKET}/{key}"
    if path.is_dir():
        upload_dir(path, uri, endpoint)
    else:
        boto3.client("s3", endpoint_url=endpoint).upload_file(str(path), BUCKET, key)
    return uri


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "hf_dataset"])
def test_s3_input_equals_the_local_result(
    fmt: str, local_files: dict[str, Path], s3_endpoint: str
) -> None:
    uri = _upload(local_files[fmt], f"inputs/{fmt}/{local_files[fmt].name}", s3_endpoint)
    config = PrepareConfig(tokenizer=None)
    remote, remote_summary = prepare_records(uri, config)
    local, local_summary = prepare_records(str(local_files[fmt]), config)
    assert remote == local
    assert remote_summary.as_dict() == local_summary.as_dict()
    assert remote_summary.format == fmt and remote_summary.source == uri
    assert remote_summary.duplicates_removed == 1 and len(remote) == 3
    assert remote[0]["id"] == "s-1" and remote[2]["output"].endswith("    return 1\n```")


def test_endpoint_from_config_without_the_environment(
    local_files: dict[str, Path], s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = _upload(local_files["jsonl"], "inputs/by-flag/seed.jsonl", s3_endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    records, _ = prepare_records(uri, PrepareConfig(tokenizer=None, s3_endpoint=s3_endpoint))
    assert len(records) == 3


def test_bad_file_on_s3_names_the_uri_and_line(s3_endpoint: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    uri = _upload(path, "inputs/bad/bad.jsonl", s3_endpoint)
    with pytest.raises(InputError) as info:
        prepare_records(uri, PrepareConfig(tokenizer=None))
    assert str(info.value).startswith(f"{uri}, line 2, field 'output': missing required field")


def test_missing_s3_object_is_an_input_error(s3_endpoint: str) -> None:
    uri = f"s3://{BUCKET}/no/such/file.jsonl"
    with pytest.raises(InputError) as info:
        prepare_records(uri, PrepareConfig(tokenizer=None))
    assert info.value.file == uri and "AWS_ENDPOINT_URL" in info.value.fix


def test_cli_writes_its_output_to_s3(
    local_files: dict[str, Path], s3_endpoint: str, tmp_path: Path
) -> None:
    from rtune.pipelines.commands import prepare as command

    source = _upload(local_files["parquet"], "inputs/cli/seed.parquet", s3_endpoint)
    parser = argparse.ArgumentParser(prog="rtune")
    command.register(parser.add_subparsers(dest="command"))
    target = f"s3://{BUCKET}/prepared/seed.jsonl"
    args = parser.parse_args(
        [
            "prepare",
            "--input",
            source,
            "--output",
            target,
            "--tokenizer",
            "none",
            "--s3-endpoint",
            s3_endpoint,
            "--limit",
            "2",
            "--no-tracking",
        ]
    )
    assert args.func(args) == 0
    downloaded = tmp_path / "prepared.jsonl"
    boto3.client("s3", endpoint_url=s3_endpoint).download_file(
        BUCKET, "prepared/seed.jsonl", str(downloaded)
    )
    expected, _ = prepare_records(source, PrepareConfig(tokenizer=None, limit=2))
    assert read_jsonl(downloaded) == expected and len(expected) == 2
