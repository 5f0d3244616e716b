"""Model resolution (default / folder / s3://) and S3 storage helpers against moto's server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from rtune.components.common import models, storage
from tests.paths import REPO_ROOT
from tests.servers import S3_ENV, moto_s3

ROOT = REPO_ROOT


@pytest.fixture()
def s3_endpoint(monkeypatch: pytest.MonkeyPatch):
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    with moto_s3() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="models")
        yield endpoint


def test_split_s3_and_errors() -> None:
    assert storage.split_s3("s3://bucket/a/b.json") == ("bucket", "a/b.json")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="not an s3"):
        storage.split_s3("/tmp/x")


def test_resolve_model_rejects_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        models.resolve_model(str(tmp_path))


def test_embedded_default_is_a_cached_fp32_folder(embedded_model_dir: Path) -> None:
    assert models.resolve_model("default") == embedded_model_dir
    assert (embedded_model_dir / "config.json").exists()
    assert "quantization_config" not in (embedded_model_dir / "config.json").read_text()
    result = subprocess.run(
        [sys.executable, "-m", "rtune.pipelines.cli", "models", "path", "default"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(result.stdout.strip()) == embedded_model_dir


def test_model_from_s3_prefix_is_downloaded_once_and_loads(
    s3_endpoint: str, tiny_model_dir: Path, rtune_cache: Path
) -> None:
    storage.upload_dir(tiny_model_dir, "s3://models/tiny/v1")
    local = models.resolve_model("s3://models/tiny/v1")
    assert local.is_relative_to(rtune_cache)
    assert sorted(p.name for p in local.iterdir()) == sorted(
        p.name for p in tiny_model_dir.iterdir()
    )
    model = models.load_causal_lm(local)
    assert model.config.num_hidden_layers == 2
    boto3.client("s3", endpoint_url=s3_endpoint).delete_object(
        Bucket="models", Key="tiny/v1/config.json"
    )
    assert models.resolve_model("s3://models/tiny/v1") == local  # cached: no second download


def test_localize_fetches_objects_and_prefixes(
    s3_endpoint: str, tmp_path: Path, rtune_cache: Path
) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket="models", Key="data/seed.jsonl", Body=b'{"a": 1}\n')
    client.put_object(Bucket="models", Key="data/hf/part-0.arrow", Body=b"x")
    client.put_object(Bucket="models", Key="data/hf/state.json", Body=b"{}")
    one = storage.localize("s3://models/data/seed.jsonl")
    assert one.name == "seed.jsonl" and one.read_text() == '{"a": 1}\n'
    folder = storage.localize("s3://models/data/hf")
    assert sorted(p.name for p in folder.iterdir()) == ["part-0.arrow", "state.json"]
    with pytest.raises(FileNotFoundError, match="no objects"):
        storage.localize("s3://models/missing/")
    assert storage.localize(str(tmp_path)) == tmp_path
