"""S3 downloads against moto's real server: hostile object keys are refused before anything is
written, and an interrupted download never leaves a folder that a later run takes as complete."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common import models, storage
from rtune.components.common.model_store import upload_model
from rtune.components.common.model_verify import MANIFEST_NAME, ModelVerificationError
from rtune.components.common.records import InputError
from tests.paths import REPO_ROOT
from tests.servers import S3_ENV, moto_s3, use_s3

pytestmark = pytest.mark.integration

ROOT = REPO_ROOT
BUCKET = "models"
CONFIG = b'{"model_type": "llama"}'
TOO_LONG = "z" * 300  # a valid S3 key segment, but longer than a local file name may be


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture()
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A boto3 client on moto, with AWS_ENDPOINT_URL and a private RTUNE_CACHE under tmp_path."""
    return use_s3(monkeypatch, s3_server, tmp_path / "cache", BUCKET)


def put(client: Any, prefix: str, *names: str) -> str:
    for name in names:
        body = CONFIG if name.endswith("config.json") else b"weights"
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=body)
    return f"s3://{BUCKET}/{prefix}"


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def hostile_names(tmp_path: Path) -> dict[str, str]:
    """Key remainders (after the prefix) that point outside the download folder."""
    outside = tmp_path / "outside" / "pwned.txt"
    return {
        "absolute": str(outside),  # prefix//tmp/.../pwned.txt: an absolute remainder
        "dotdot": "../../../outside/pwned.txt",
        "deep-dotdot": "sub/../../../../outside/pwned.txt",
        "empty-segment": "sub//pwned.txt",
        "dot-segment": "./pwned.txt",
    }


@pytest.mark.parametrize(
    "case", ["absolute", "dotdot", "deep-dotdot", "empty-segment", "dot-segment"]
)
@pytest.mark.parametrize("entry", ["resolve_model", "localize"])
def test_hostile_key_is_refused_before_anything_is_written(
    s3: Any, tmp_path: Path, case: str, entry: str
) -> None:
    name = hostile_names(tmp_path)[case]
    (tmp_path / "outside").mkdir()
    uri = put(s3, f"evil-{entry}-{case}", "config.json", "model.safetensors", name)
    key = f"evil-{entry}-{case}/{name}"
    before = files_under(tmp_path)
    with pytest.raises(InputError) as info:
        if entry == "resolve_model":
            models.resolve_model(uri)
        else:
            storage.localize(uri)
    assert repr(key) in str(info.value) and uri in str(info.value)
    assert not (tmp_path / "outside" / "pwned.txt").exists()
    # not a byte anywhere: no config.json, no staging folder, nothing beside the cache
    assert files_under(tmp_path) - before <= {"cache/models", "cache/inputs"}


def test_object_whose_name_is_dotdot_is_refused(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="data/..", Body=b"x")
    before = files_under(tmp_path)
    with pytest.raises(InputError, match=r"'data/\.\.'"):
        storage.localize(f"s3://{BUCKET}/data/..")
    assert files_under(tmp_path) - before <= {"cache/inputs"}


def test_cli_names_the_hostile_key_with_exit_2(s3_server: str, s3: Any, tmp_path: Path) -> None:
    uri = put(s3, "evil-cli", "config.json", "../../pwned.txt")
    env = {**os.environ, **S3_ENV, "AWS_ENDPOINT_URL": s3_server}
    env["RTUNE_CACHE"] = str(tmp_path / "cli-cache")
    result = subprocess.run(
        [sys.executable, "-m", "rtune.pipelines.cli", "models", "path", uri],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "'evil-cli/../../pwned.txt'" in result.stderr
    assert (
        not (tmp_path / "pwned.txt").exists() and not (tmp_path / "cli-cache" / "models").exists()
    )


def test_interrupted_model_download_is_not_taken_as_complete_later(s3: Any, tmp_path: Path) -> None:
    """The download dies after config.json landed (a file name the disk refuses stands in for a
    kill): no cached folder may remain, and the next run must try again, not load a half model."""
    uri = put(s3, "broken/v1", "config.json", TOO_LONG)
    dest = storage.uri_cache_dir(uri, "models")
    for _ in range(2):
        with pytest.raises(OSError, match="too long"):
            models.resolve_model(uri)
        assert not dest.exists()
    assert files_under(dest.parent) == set()  # no staging folder left behind either


def test_interrupted_prefix_download_keeps_the_previous_copy(s3: Any, tmp_path: Path) -> None:
    """A re-download that dies half-way leaves the last complete copy, not a mix of versions."""
    client = s3
    uri = put(client, "data/hf", "state.json", "part-0.arrow")
    folder = storage.localize(uri)
    old = {p.name: p.read_bytes() for p in folder.iterdir()}
    for name in ("state.json", "part-0.arrow", TOO_LONG):  # a new version of the dataset
        client.put_object(Bucket=BUCKET, Key=f"data/hf/{name}", Body=b"version 2")
    with pytest.raises(OSError, match="too long"):
        storage.localize(uri)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == old
    assert files_under(folder.parent) == {folder.name, *(f"{folder.name}/{n}" for n in old)}


def test_download_is_durable_and_shared_readable(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file is fsync'ed before the folder is renamed into place, the parent folder after;
    modes follow the umask (022 here: readable by the other users of a shared volume)."""
    uri = put(s3, "tiny/v2", "config.json", "model.safetensors", "tokenizer/tokenizer.json")
    dest = storage.uri_cache_dir(uri, "models")
    synced: list[tuple[str, bool, bool]] = []  # (path at fsync time, is a dir, dest exists)
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((target, stat.S_ISDIR(os.fstat(fd).st_mode), dest.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    old_umask = os.umask(0o022)
    try:
        local = models.resolve_model(uri)
    finally:
        os.umask(old_umask)
    assert local == dest
    files_before_rename = {
        Path(t).name for t, is_dir, landed in synced if not is_dir and not landed
    }
    assert files_before_rename >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert (str(dest.parent), True, True) in synced  # the rename itself made durable
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "tokenizer").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "config.json").stat().st_mode) == 0o644


def test_model_download_is_checked_against_its_manifest(
    s3: Any, tmp_path: Path, s3_server: str
) -> None:
    """A model stored by ``upload_model`` carries a manifest: a download whose bytes differ (an
    object overwritten after the upload) is refused and not cached."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes(CONFIG)
    (folder / "model.safetensors").write_bytes(b"the real weights")
    uri = f"s3://{BUCKET}/stored/v1"
    upload_model(folder, uri, endpoint_url=s3_server, progress=False)
    assert models.resolve_model(uri).joinpath(MANIFEST_NAME).exists()  # intact: accepted

    tampered = f"s3://{BUCKET}/stored/v2"
    upload_model(folder, tampered, endpoint_url=s3_server, progress=False)
    s3.put_object(Bucket=BUCKET, Key="stored/v2/model.safetensors", Body=b"other weights!!!")
    with pytest.raises(ModelVerificationError, match=r"model\.safetensors"):
        models.resolve_model(tampered)
    assert not storage.uri_cache_dir(tampered, "models").exists()


def test_prefix_without_config_json_is_not_cached_as_a_model(s3: Any) -> None:
    uri = put(s3, "not-a-model", "README.md")
    with pytest.raises(InputError, match=r"config\.json"):
        models.resolve_model(uri)
    assert not storage.uri_cache_dir(uri, "models").exists()
