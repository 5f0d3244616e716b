"""Upload a trained model folder to an ``s3://`` model store, resumably, and prove it arrived intact.

Layout under the prefix: every file of the folder at its relative path, then
``rtune-model-manifest.json`` written LAST, only after every object was checked. So a prefix with
a manifest is complete; a crash mid-upload leaves no manifest, and running the upload again sends
only the files whose stored copy does not match (no duplicates, no re-sending a 5 GB shard).

Integrity is checked three ways, none of which needs a download:

- **S3's own checksum.** Each object is uploaded with ``ChecksumAlgorithm=SHA256``, so the server
  hashes the bytes it received. For a single PUT that is the file's SHA-256; for a multipart upload
  it is the *composite* checksum ``sha256(sha256(part_1) ‖ … ‖ sha256(part_N))`` with the suffix
  ``-N``. We compute the same value locally, with the exact part boundaries boto3's transfer manager
  uses, and record it in the manifest: a HEAD with ``ChecksumMode=ENABLED`` then proves the store
  holds our bytes.
- **The file's full SHA-256** (hex) in the object metadata ``x-amz-meta-sha256``: what a consumer
  compares after a download, and what a resumed upload compares to decide to skip a file.
- With a local ``folder``, :func:`verify_model` also re-hashes the local files; a download of
  the prefix (``resolve_model``) is checked the same way by :func:`check_local_copy` before it
  enters the model cache.

Credentials come only from the environment (see :mod:`rtune.components.common.storage`); neither the
manifest nor any error message contains them or the endpoint URL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rtune.components.common.records import InputError
from rtune.components.common.storage import s3_client, split_s3

MANIFEST_NAME = "rtune-model-manifest.json"
MANIFEST_FORMAT = "rtune-model-manifest/1"
SHA256_METADATA = "sha256"
MIB = 1024 * 1024
DEFAULT_PART_SIZE = 64 * MIB
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB  # S3's maximum part size
_READ_BLOCK = 8 * MIB
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class FileDigest:
    """What one file must look like in the store; ``checksum_sha256`` is S3's expected value."""

    size: int
    sha256: str
    parts: int
    multipart: bool
    checksum_sha256: str

    def as_entry(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "sha256": self.sha256,
            "parts": self.parts,
            "multipart": self.multipart,
            "checksum_sha256": self.checksum_sha256,
        }


@dataclass
class ModelUpload:
    """The result of :func:`upload_model`; ``files`` are paths relative to the folder."""

    uri: str
    files: list[str]
    total_bytes: int
    multipart_files: list[str]
    manifest_uri: str
    seconds: float
    reused_files: list[str] = field(default_factory=list)  # already stored intact, not re-sent


@dataclass
class ModelVerificationError(RuntimeError):
    """A stored model that does not match its manifest: each problem names the object and the
    difference (size, sha256 metadata, S3 checksum, missing)."""

    uri: str
    problems: list[str]
    fix: str

    def __str__(self) -> str:
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        return f"{self.uri}: model store check failed:\n{listed}\n  fix: {self.fix}"


def part_layout(size: int, part_size: int) -> tuple[bool, int]:
    """``(multipart, chunk size)`` exactly as boto3's classic transfer manager will upload a file.

    It goes multipart when ``size >= multipart_threshold`` (we set the threshold to the part size)
    and widens the chunk so that no upload needs more than 10,000 parts.
    """
    from s3transfer.utils import ChunksizeAdjuster

    return size >= part_size, ChunksizeAdjuster().adjust_chunksize(part_size, size)


def digest_file(
    path: Path, part_size: int, on_bytes: Callable[[int], object] | None = None
) -> FileDigest:
    """Hash a file once: its full SHA-256 and the checksum S3 will compute for its upload."""
    size = path.stat().st_size
    multipart, chunk = part_layout(size, part_size)
    whole = hashlib.sha256()
    part_digests = []
    with path.open("rb") as handle:
        for _ in range(max(1, math.ceil(size / chunk))):
            part, remaining = hashlib.sha256(), chunk
            while remaining and (block := handle.read(min(_READ_BLOCK, remaining))):
                part.update(block)
                whole.update(block)
                remaining -= len(block)
                if on_bytes:
                    on_bytes(len(block))
            part_digests.append(part.digest())
    if multipart:
        composite = hashlib.sha256(b"".join(part_digests)).digest()
        checksum = f"{base64.b64encode(composite).decode()}-{len(part_digests)}"
    else:
        checksum = base64.b64encode(whole.digest()).decode()
    parts = len(part_digests) if multipart else 1
    return FileDigest(size, whole.hexdigest(), parts, multipart, checksum)


def run_prefix(store: str, run_id: str) -> str:
    """``<store>/runs/<run id>``: where one pipeline run keeps its models, apart from every other
    run's (a registered version never ends up pointing at another run's weights)."""
    return f"{store.rstrip('/')}/runs/{run_id}"


def _model_prefix(uri: str) -> tuple[str, str, str]:
    """``(bucket, prefix without trailing slash, normalised uri)``."""
    try:
        bucket, prefix = split_s3(uri)
    except ValueError as error:
        raise InputError(uri, str(error), "give the model store as s3://bucket/prefix") from None
    prefix = prefix.strip("/")
    return bucket, prefix, f"s3://{bucket}/{prefix}".rstrip("/")


def _object_key(prefix: str, relative: str) -> str:
    return f"{prefix}/{relative}" if prefix else relative


def _local_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by relative POSIX path (a downloaded manifest excluded)."""
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST_NAME
    }


def _model_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(str(folder), "not a folder", "pass the saved model's folder")
    files = _local_files(folder)
    if not files:
        raise InputError(str(folder), "no files to upload", "save the model into it first")
    return files


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled
    )


def _digest_files(files: dict[str, Path], part_size: int, progress: bool) -> dict[str, FileDigest]:
    total = sum(path.stat().st_size for path in files.values())
    with _progress(total, "sha256", progress) as bar:
        return {name: digest_file(path, part_size, bar.update) for name, path in files.items()}


def _head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """HEAD with S3's checksum requested; ``None`` when the object does not exist."""
    from botocore.exceptions import ClientError

    try:
        return dict(client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) in _MISSING_CODES:
            return None
        error.add_note(f"while checking s3://{bucket}/{key}")
        raise


def _checksum_problem(head: dict[str, Any], expected: str) -> str | None:
    """Compare S3's SHA-256 checksum, ignoring the ``-N`` part count some servers omit (moto)."""
    stored = head.get("ChecksumSHA256")
    if stored:
        if stored.split("-")[0] != expected.split("-")[0]:
            return f"S3 SHA-256 checksum {stored}, expected {expected} (the stored bytes differ from the uploaded file)"
        return None
    others = sorted(k for k in head if k.startswith("Checksum") and k != "ChecksumType")
    if others:  # the server does checksums, but this object was written without ours
        return f"stored without a SHA-256 checksum (has {', '.join(others)}): it was overwritten by another writer"
    return None  # a server that reports no checksums at all: size and metadata still checked


def object_problems(
    head: dict[str, Any] | None, entry: dict[str, Any], object_uri: str
) -> list[str]:
    """What differs between a HEAD response and a manifest entry, each naming the object."""
    if head is None:
        return [f"{object_uri}: missing"]
    found = []
    if head.get("ContentLength") != entry["size"]:
        found.append(f"size {head.get('ContentLength')} bytes, manifest says {entry['size']}")
    stored_sha = head.get("Metadata", {}).get(SHA256_METADATA)
    if stored_sha != entry["sha256"]:
        found.append(f"sha256 metadata {stored_sha or 'missing'}, manifest says {entry['sha256']}")
    checksum = _checksum_problem(head, entry["checksum_sha256"])
    if checksum:
        found.append(checksum)
    return [f"{object_uri}: {problem}" for problem in found]


def _remote_problems(
    client: Any, bucket: str, prefix: str, entries: dict[str, dict[str, Any]]
) -> list[str]:
    problems = []
    for name, entry in entries.items():
        key = _object_key(prefix, name)
        problems += object_problems(_head(client, bucket, key), entry, f"s3://{bucket}/{key}")
    return problems


def _local_problems(folder: Path, entries: dict[str, dict[str, Any]]) -> list[str]:
    """Local files against the manifest: missing, extra, or a different SHA-256."""
    local = _local_files(folder)
    problems = [
        f"{folder / name}: not in the manifest" for name in sorted(set(local) - set(entries))
    ]
    for name, entry in entries.items():
        path = local.get(name)
        if path is None:
            problems.append(f"{folder / name}: missing locally")
            continue
        with path.open("rb") as handle:
            sha = hashlib.file_digest(handle, "sha256").hexdigest()
        if sha != entry["sha256"]:
            problems.append(f"{path}: local sha256 {sha}, manifest says {entry['sha256']}")
    return problems


def read_manifest(uri: str, *, endpoint_url: str | None = None) -> dict[str, Any]:
    """The manifest of a stored model; a missing one means the upload never finished."""
    from botocore.exceptions import ClientError

    bucket, prefix, uri = _model_prefix(uri)
    key = _object_key(prefix, MANIFEST_NAME)
    try:
        body = s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) not in _MISSING_CODES:
            raise
        problem = f"s3://{bucket}/{key}: missing (the upload never finished, or this is not an rtune model)"
        raise ModelVerificationError(uri, [problem], _REUPLOAD_FIX) from None
    try:
        manifest = json.loads(body)
    except (ValueError, RecursionError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        problem = f"s3://{bucket}/{key}: not a {MANIFEST_FORMAT} manifest"
        raise ModelVerificationError(uri, [problem], _REUPLOAD_FIX)
    return manifest


_REUPLOAD_FIX = (
    "run upload_model(folder, uri) again: it re-sends only the objects that differ, then "
    "writes a fresh manifest"
)


def check_local_copy(uri: str, folder: Path) -> None:
    """A downloaded copy of a stored model against the manifest that came with it (if any): every
    listed file present with its SHA-256, nothing extra. Raises :class:`ModelVerificationError`."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return  # not uploaded by upload_model: nothing to check against
    try:
        manifest = json.loads(path.read_bytes())
        entries = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(entries, dict):
            raise ValueError(manifest.get("format"))
    except (ValueError, KeyError, TypeError, AttributeError):
        problem = f"{uri}/{MANIFEST_NAME}: not a {MANIFEST_FORMAT} manifest"
        raise ModelVerificationError(uri, [problem], _REUPLOAD_FIX) from None
    problems = _local_problems(Path(folder), entries)
    if problems:  # named by object, not by the staging folder they were downloaded to
        named = [problem.replace(str(folder), uri.rstrip("/")) for problem in problems]
        raise ModelVerificationError(uri, named, _DOWNLOAD_FIX)


_DOWNLOAD_FIX = (
    "the stored objects no longer match the manifest written at upload (changed or damaged "
    "since): upload the model again with upload_model, then rerun; nothing was cached"
)


def verify_model(uri: str, folder: Path | None = None, *, endpoint_url: str | None = None) -> None:
    """Check every object listed in the manifest by HEAD (size, sha256 metadata, S3's checksum)
    and, given ``folder``, the local files too. Raises :class:`ModelVerificationError` listing
    every difference; returns ``None`` when the stored model is intact."""
    manifest = read_manifest(uri, endpoint_url=endpoint_url)
    bucket, prefix, uri = _model_prefix(uri)
    entries = manifest["files"]
    problems = _remote_problems(s3_client(endpoint_url), bucket, prefix, entries)
    if folder is not None:
        problems += _local_problems(Path(folder), entries)
    if problems:
        raise ModelVerificationError(uri, problems, _REUPLOAD_FIX)


def _transfer_config(part_size: int, max_concurrency: int) -> Any:
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValueError(
            f"part_size_bytes={part_size}: S3 parts must be 5 MiB to 5 GiB; use e.g. {DEFAULT_PART_SIZE}"
        )
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency={max_concurrency}: must be at least 1")
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=part_size,
        multipart_chunksize=part_size,
        max_concurrency=max_concurrency,
        preferred_transfer_client="classic",  # the part layout our checksums assume
    )


def _start_upload(client: Any, bucket: str, prefix: str, uri: str) -> None:
    """Remove an old manifest first: from now until the new one is written the prefix is
    incomplete, so a crash can never leave a manifest describing half-replaced files."""
    from botocore.exceptions import ClientError

    try:
        client.delete_object(Bucket=bucket, Key=_object_key(prefix, MANIFEST_NAME))
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise
        raise InputError(
            uri, f"bucket {bucket!r} does not exist", "create it, or fix the URI / AWS_ENDPOINT_URL"
        ) from None


def _send_files(
    client: Any,
    bucket: str,
    prefix: str,
    files: dict[str, Path],
    digests: dict[str, FileDigest],
    config: Any,
    progress: bool,
) -> None:
    total = sum(digests[name].size for name in files)
    with _progress(total, "upload", progress) as bar:
        for name, path in files.items():
            extra = {
                "ChecksumAlgorithm": "SHA256",
                "Metadata": {SHA256_METADATA: digests[name].sha256},
            }
            key = _object_key(prefix, name)
            client.upload_file(
                str(path), bucket, key, ExtraArgs=extra, Config=config, Callback=bar.update
            )


def _is_stored(client: Any, bucket: str, key: str, entry: dict[str, Any]) -> bool:
    """True when the object already holds this file (a resumed upload skips it)."""
    return not object_problems(_head(client, bucket, key), entry, f"s3://{bucket}/{key}")


def _manifest(uri: str, part_size: int, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """File -> size, sha256, parts, S3 checksum. No endpoint and no credentials, by design."""
    return {
        "format": MANIFEST_FORMAT,
        "uri": uri,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "part_size_bytes": part_size,
        "total_bytes": sum(entry["size"] for entry in entries.values()),
        "files": entries,
    }


def _put_manifest(client: Any, bucket: str, prefix: str, manifest: dict[str, Any]) -> str:
    key = _object_key(prefix, MANIFEST_NAME)
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType="application/json",
        ChecksumAlgorithm="SHA256",
    )
    return f"s3://{bucket}/{key}"


def upload_model(
    folder: Path,
    uri: str,
    *,
    endpoint_url: str | None = None,
    part_size_bytes: int = DEFAULT_PART_SIZE,
    max_concurrency: int = 4,
    progress: bool = True,
) -> ModelUpload:
    """Upload every file of ``folder`` under the ``s3://`` prefix ``uri``, then its manifest.

    Files at least ``part_size_bytes`` long go multipart (``max_concurrency`` parts in flight).
    A file whose stored copy already has the same size, sha256 metadata and S3 checksum is not
    sent again, so re-running after a crash resumes. Every object is checked before the manifest
    is written, and :func:`verify_model` re-reads the manifest at the end.
    """
    started = time.monotonic()
    config = _transfer_config(part_size_bytes, max_concurrency)
    bucket, prefix, uri = _model_prefix(uri)
    files = _model_files(Path(folder))
    digests = _digest_files(files, part_size_bytes, progress)
    entries = {name: digest.as_entry() for name, digest in digests.items()}
    client = s3_client(endpoint_url)
    _start_upload(client, bucket, prefix, uri)
    pending = {
        name: path
        for name, path in files.items()
        if not _is_stored(client, bucket, _object_key(prefix, name), entries[name])
    }
    _send_files(client, bucket, prefix, pending, digests, config, progress)
    problems = _remote_problems(client, bucket, prefix, entries)
    if problems:
        raise ModelVerificationError(uri, problems, _REUPLOAD_FIX)
    manifest = _manifest(uri, part_size_bytes, entries)
    manifest_uri = _put_manifest(client, bucket, prefix, manifest)
    verify_model(uri, endpoint_url=endpoint_url)
    return ModelUpload(
        uri=uri,
        files=list(files),
        total_bytes=manifest["total_bytes"],
        multipart_files=[name for name, digest in digests.items() if digest.multipart],
        manifest_uri=manifest_uri,
        seconds=time.monotonic() - started,
        reused_files=[name for name in files if name not in pending],
    )
