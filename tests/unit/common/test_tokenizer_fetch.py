"""Counting tokens needs the tokenizer, not the weights: from S3 only the tokenizer's files come."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtune.components.common import models
from tests.servers import moto_s3, use_s3


@pytest.fixture()
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    with moto_s3() as endpoint:
        yield use_s3(monkeypatch, endpoint, tmp_path / "cache", "models")


def test_a_tokenizer_from_s3_comes_without_the_weights(store, tiny_model_dir: Path) -> None:
    for file in tiny_model_dir.iterdir():
        store.upload_file(str(file), "models", f"student/{file.name}")
    folder = models.resolve_tokenizer("s3://models/student")
    fetched = {p.name for p in folder.iterdir()}
    assert "config.json" in fetched and any(n.startswith("tokenizer") for n in fetched)
    assert not any(n.endswith((".safetensors", ".bin")) for n in fetched)  # no weights
    assert models.load_tokenizer(folder)("hello")["input_ids"]
    # a full model already in the cache serves the tokenizer without another download
    full = models.resolve_model("s3://models/student")
    assert models.resolve_tokenizer("s3://models/student") == full
