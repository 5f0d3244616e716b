"""Check a model stored under an ``s3://`` prefix against the manifest its upload wrote last
(``rtune-model-manifest.json``), without downloading it, and a downloaded copy before it enters
the model cache. :mod:`.model_store` writes what these functions check.

- :func:`verify_model` HEADs every object the manifest lists: its size, the file's SHA-256 in the
  object metadata ``x-amz-meta-sha256``, and S3's own ``ChecksumSHA256`` (for a multipart upload
  the composite ``sha256(sha256(part_1) ‖ … ‖ sha256(part_N))-N``), which proves the store holds
  the uploaded bytes. Given a local ``folder`` it re-hashes the local files too.
- :func:`check_local_copy` checks a download of the prefix (``resolve_model``): every listed file
  present with its SHA-256, nothing extra.

Every problem names the object and the difference; a missing manifest means the upload never
finished. Neither the manifest nor any message contains credentials or the endpoint URL.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtune.components.common.records import InputError
from rtune.components.common.storage import s3_client, split_s3

MANIFEST_NAME = "rtune-model-manifest.json"
MANIFEST_FORMAT = "rtune-model-manifest/1"
SHA256_METADATA = "sha256"
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
REUPLOAD_FIX = (
    "run upload_model(folder, uri) again: it re-sends only the objects that differ, then "
    "writes a fresh manifest"
)
_DOWNLOAD_FIX = (
    "the stored objects no longer match the manifest written at upload (changed or damaged "
    "since): upload the model again with upload_model, then rerun; nothing was cached"
)


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


def model_prefix(uri: str) -> tuple[str, str, str]:
    """``(bucket, prefix without trailing slash, normalised uri)``."""
    try:
        bucket, prefix = split_s3(uri)
    except ValueError as error:
        raise InputError(uri, str(error), "give the model store as s3://bucket/prefix") from None
    prefix = prefix.strip("/")
    return bucket, prefix, f"s3://{bucket}/{prefix}".rstrip("/")


def object_key(prefix: str, relative: str) -> str:
    return f"{prefix}/{relative}" if prefix else relative


def local_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by relative POSIX path (a downloaded manifest excluded)."""
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST_NAME
    }


def head_object(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
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


def remote_problems(
    client: Any, bucket: str, prefix: str, entries: dict[str, dict[str, Any]]
) -> list[str]:
    problems = []
    for name, entry in entries.items():
        key = object_key(prefix, name)
        problems += object_problems(head_object(client, bucket, key), entry, f"s3://{bucket}/{key}")
    return problems


def _local_problems(folder: Path, entries: dict[str, dict[str, Any]]) -> list[str]:
    """Local files against the manifest: missing, extra, or a different SHA-256."""
    local = local_files(folder)
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

    bucket, prefix, uri = model_prefix(uri)
    key = object_key(prefix, MANIFEST_NAME)
    try:
        body = s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) not in _MISSING_CODES:
            raise
        problem = f"s3://{bucket}/{key}: missing (the upload never finished, or this is not an rtune model)"
        raise ModelVerificationError(uri, [problem], REUPLOAD_FIX) from None
    try:
        manifest = json.loads(body)
    except (ValueError, RecursionError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        problem = f"s3://{bucket}/{key}: not a {MANIFEST_FORMAT} manifest"
        raise ModelVerificationError(uri, [problem], REUPLOAD_FIX)
    return manifest


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
        raise ModelVerificationError(uri, [problem], REUPLOAD_FIX) from None
    problems = _local_problems(Path(folder), entries)
    if problems:  # named by object, not by the staging folder they were downloaded to
        named = [problem.replace(str(folder), uri.rstrip("/")) for problem in problems]
        raise ModelVerificationError(uri, named, _DOWNLOAD_FIX)


def verify_model(uri: str, folder: Path | None = None, *, endpoint_url: str | None = None) -> None:
    """Check every object listed in the manifest by HEAD (size, sha256 metadata, S3's checksum)
    and, given ``folder``, the local files too. Raises :class:`ModelVerificationError` listing
    every difference; returns ``None`` when the stored model is intact."""
    manifest = read_manifest(uri, endpoint_url=endpoint_url)
    bucket, prefix, uri = model_prefix(uri)
    entries = manifest["files"]
    problems = remote_problems(s3_client(endpoint_url), bucket, prefix, entries)
    if folder is not None:
        problems += _local_problems(Path(folder), entries)
    if problems:
        raise ModelVerificationError(uri, problems, REUPLOAD_FIX)
