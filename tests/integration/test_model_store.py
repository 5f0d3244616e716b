"""The ``s3://`` model store against moto's real S3 server on loopback: multipart uploads carry
S3's SHA-256 checksums, the manifest comes last, verification catches tampering, a crashed upload
resumes without re-sending what arrived, and no credential ever leaks into the store or errors."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from rtune.components.common import model_store, model_verify, storage
from rtune.components.common.model_store import MIB, upload_model
from rtune.components.common.model_verify import (
    MANIFEST_NAME,
    ModelVerificationError,
    verify_model,
)
from rtune.components.common.records import InputError
from tests.servers import S3_ENV, moto_s3

pytestmark = pytest.mark.integration

BUCKET = "model-store"
PART = 5 * MIB  # S3's minimum part size
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIARTUNEMODELSTORE1",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t-Do-Not-Leak",
}
WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}
BIG = "model-00001-of-00002.safetensors"  # 11 MiB: three parts
EXACT = "model-00002-of-00002.safetensors"  # exactly one part size: multipart, one part


class InjectedCrash(RuntimeError):
    pass


@dataclass
class RequestLog:
    """Every S3 call made by the model store's clients (upload and verify): (operation, key,
    part number)."""

    calls: list[tuple[str, str, int | None]] = field(default_factory=list)
    crash_when: Callable[[str, str, int | None], bool] | None = None

    def client(self, endpoint_url: str | None = None) -> Any:
        client = storage.s3_client(endpoint_url)
        client.meta.events.register("provide-client-params.s3", self._record)
        return client

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        call = (model.name, params.get("Key", ""), params.get("PartNumber"))
        self.calls.append(call)
        if self.crash_when and self.crash_when(*call):
            raise InjectedCrash(f"injected failure on {call}")

    def written(self, prefix: str) -> set[str]:
        """Files (relative names) that received any write, the manifest excluded."""
        names = {key[len(prefix) + 1 :] for op, key, _ in self.calls if op in WRITES}
        return names - {MANIFEST_NAME}


@dataclass
class Store:
    endpoint: str
    client: Any
    prefix: str
    log: RequestLog

    @property
    def uri(self) -> str:
        return f"s3://{BUCKET}/{self.prefix}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def manifest(self) -> dict[str, Any]:
        body = self.client.get_object(Bucket=BUCKET, Key=self.key(MANIFEST_NAME))["Body"].read()
        assert not any(secret.encode() in body for secret in CREDENTIALS.values())
        assert self.endpoint.encode() not in body
        return dict(json.loads(body))

    def keys(self) -> set[str]:
        listed = self.client.list_objects_v2(Bucket=BUCKET, Prefix=self.prefix + "/")
        return {obj["Key"][len(self.prefix) + 1 :] for obj in listed.get("Contents", [])}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture()
def store(s3_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Store:
    """Distinctive fake credentials, the endpoint in AWS_ENDPOINT_URL, a prefix per test, and a
    log of every request model_store makes."""
    for key, value in {**S3_ENV, **CREDENTIALS}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    client = boto3.client("s3", endpoint_url=s3_server)
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    log = RequestLog()
    monkeypatch.setattr(model_store, "s3_client", log.client)
    monkeypatch.setattr(model_verify, "s3_client", log.client)
    prefix = "models/" + re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())
    return Store(s3_server, client, prefix, log)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved-model-shaped folder: two shards (11 MiB; exactly 5 MiB), JSON, an empty file and a
    nested file."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("model")
    (root / BIG).write_bytes(rng.randbytes(11 * MIB))
    (root / EXACT).write_bytes(rng.randbytes(PART))
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (root / "added_tokens.json").write_bytes(b"")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    return root


@pytest.fixture()
def own_model_dir(model_dir: Path, tmp_path: Path) -> Path:
    """A private copy a test may change."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _upload(folder: Path, store: Store, **kwargs: Any) -> model_store.ModelUpload:
    return upload_model(folder, store.uri, part_size_bytes=PART, progress=False, **kwargs)


def test_upload_is_multipart_checksummed_and_downloads_identical(
    model_dir: Path, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint given as an argument works alone
    result = _upload(model_dir, store, endpoint_url=store.endpoint)

    names = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    assert sorted(result.files) == names and result.reused_files == []
    assert sorted(result.multipart_files) == [BIG, EXACT]
    assert result.total_bytes == 16 * MIB + (model_dir / "config.json").stat().st_size + 18
    assert result.uri == store.uri and result.manifest_uri == f"{store.uri}/{MANIFEST_NAME}"

    big = store.client.head_object(Bucket=BUCKET, Key=store.key(BIG), ChecksumMode="ENABLED")
    assert big["ETag"].strip('"').endswith("-3")  # a real three-part multipart upload
    assert big["Metadata"]["sha256"] == _sha256(model_dir / BIG)
    attributes = store.client.get_object_attributes(
        Bucket=BUCKET, Key=store.key(BIG), ObjectAttributes=["Checksum"]
    )
    assert attributes["Checksum"]["ChecksumType"] == "COMPOSITE"
    exact = store.client.head_object(Bucket=BUCKET, Key=store.key(EXACT))
    assert exact["ETag"].strip('"').endswith("-1")
    config = store.client.head_object(Bucket=BUCKET, Key=store.key("config.json"))
    assert "-" not in config["ETag"]

    manifest = store.manifest()
    assert set(manifest["files"]) == set(names) and manifest["part_size_bytes"] == PART
    for name in names:
        entry = manifest["files"][name]
        assert entry["sha256"] == _sha256(model_dir / name)
        assert entry["size"] == (model_dir / name).stat().st_size
    assert manifest["files"][BIG]["parts"] == 3 and manifest["files"][EXACT]["parts"] == 1
    assert manifest["files"]["config.json"] == {
        **manifest["files"]["config.json"],
        "parts": 1,
        "multipart": False,
    }

    last_write = [call for call in store.log.calls if call[0] in WRITES][-1]
    assert last_write == ("PutObject", store.key(MANIFEST_NAME), None)  # the manifest comes last

    downloaded = storage.download_prefix(store.uri, tmp_path / "down", store.endpoint)
    for name in names:
        assert (downloaded / name).read_bytes() == (model_dir / name).read_bytes()
    verify_model(store.uri, downloaded, endpoint_url=store.endpoint)


def _tamper_same_size_forged_metadata(store: Store, folder: Path) -> None:
    """Same length, the original sha256 metadata copied: only S3's checksum can tell."""
    original = (folder / EXACT).read_bytes()
    forged = bytes([original[0] ^ 0xFF]) + original[1:]
    metadata = {"sha256": hashlib.sha256(original).hexdigest()}
    store.client.put_object(
        Bucket=BUCKET,
        Key=store.key(EXACT),
        Body=forged,
        Metadata=metadata,
        ChecksumAlgorithm="SHA256",
    )


def _tamper_plain_overwrite(store: Store, folder: Path) -> None:
    store.client.put_object(Bucket=BUCKET, Key=store.key(EXACT), Body=b"not the weights")


def _tamper_delete(store: Store, folder: Path) -> None:
    store.client.delete_object(Bucket=BUCKET, Key=store.key(EXACT))


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_tamper_same_size_forged_metadata, ["S3 SHA-256 checksum"]),
        (
            _tamper_plain_overwrite,
            ["size 15 bytes", "sha256 metadata missing", "without a SHA-256 checksum"],
        ),
        (_tamper_delete, ["missing"]),
    ],
    ids=["forged", "overwritten", "deleted"],
)
def test_verify_names_the_tampered_object_and_what_differs(
    tamper: Callable[[Store, Path], None], expected: list[str], model_dir: Path, store: Store
) -> None:
    _upload(model_dir, store)
    verify_model(store.uri)
    tamper(store, model_dir)
    with pytest.raises(ModelVerificationError) as info:
        verify_model(store.uri)
    message = str(info.value)
    object_uri = f"{store.uri}/{EXACT}"
    assert info.value.problems and all(p.startswith(object_uri + ": ") for p in info.value.problems)
    for words in expected:
        assert words in message
    assert "fix: run upload_model" in message
    assert not any(secret in message for secret in CREDENTIALS.values())
    assert store.endpoint not in message

    repaired = _upload(model_dir, store)  # re-running repairs exactly the tampered object
    assert repaired.reused_files == sorted(set(repaired.files) - {EXACT})
    verify_model(store.uri, model_dir)


def test_verify_with_folder_checks_the_local_files(own_model_dir: Path, store: Store) -> None:
    _upload(own_model_dir, store)
    (own_model_dir / "config.json").write_text('{"model_type": "changed"}')
    (own_model_dir / "tokenizer" / "tokenizer.json").unlink()
    (own_model_dir / "stray.bin").write_bytes(b"x")
    verify_model(store.uri)  # the store itself is intact
    with pytest.raises(ModelVerificationError) as info:
        verify_model(store.uri, own_model_dir)
    problems = info.value.problems
    assert len(problems) == 3
    assert any(p.startswith(f"{own_model_dir / 'config.json'}: local sha256") for p in problems)
    assert f"{own_model_dir / 'tokenizer' / 'tokenizer.json'}: missing locally" in problems
    assert f"{own_model_dir / 'stray.bin'}: not in the manifest" in problems


def test_crashed_upload_leaves_no_manifest_and_resumes_without_resending(
    model_dir: Path, store: Store
) -> None:
    store.log.crash_when = lambda op, key, part: key.endswith(BIG) and part == 2
    with pytest.raises(InjectedCrash):
        _upload(model_dir, store)
    assert store.keys() == {"added_tokens.json", "config.json"}  # sorted order: two files landed
    with pytest.raises(ModelVerificationError, match="upload never finished"):
        verify_model(store.uri)

    store.log.crash_when, store.log.calls = None, []
    resumed = _upload(model_dir, store)
    assert store.log.written(store.prefix) == {BIG, EXACT, "tokenizer/tokenizer.json"}
    assert resumed.reused_files == ["added_tokens.json", "config.json"]
    assert store.keys() == set(resumed.files) | {MANIFEST_NAME}  # nothing duplicated
    verify_model(store.uri, model_dir)


def test_upload_again_sends_only_changed_files_and_replaces_the_manifest(
    own_model_dir: Path, store: Store
) -> None:
    _upload(own_model_dir, store)
    store.log.calls = []
    again = _upload(own_model_dir, store)
    assert store.log.written(store.prefix) == set() and sorted(again.reused_files) == sorted(
        again.files
    )

    (own_model_dir / "config.json").write_text('{"model_type": "llama", "hidden_size": 128}')
    store.log.calls = []
    _upload(own_model_dir, store)
    assert store.log.written(store.prefix) == {"config.json"}
    deleted = [key for op, key, _ in store.log.calls if op == "DeleteObject"]
    assert deleted == [store.key(MANIFEST_NAME)]  # the old manifest goes before any file changes
    assert store.manifest()["files"]["config.json"]["sha256"] == _sha256(
        own_model_dir / "config.json"
    )


def test_bad_arguments_are_refused_before_any_request(model_dir: Path, store: Store) -> None:
    with pytest.raises(ValueError, match="5 MiB to 5 GiB"):
        upload_model(model_dir, store.uri, part_size_bytes=MIB, progress=False)
    with pytest.raises(InputError, match="s3://bucket/prefix"):
        upload_model(model_dir, "/local/models/out", progress=False)
    with pytest.raises(InputError, match="not a folder"):
        upload_model(model_dir / "nope", store.uri, progress=False)
    assert store.log.calls == []
    with pytest.raises(InputError, match="bucket 'no-such-bucket' does not exist"):
        upload_model(model_dir, "s3://no-such-bucket/m", part_size_bytes=PART, progress=False)
