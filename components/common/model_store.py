"""Upload a trained model folder to an ``s3://`` model store, resumably, and prove it arrived intact.

Layout under the prefix: every file of the folder at its relative path, then
``rtune-model-manifest.json`` written LAST, only after every object was checked. So a prefix with
a manifest is complete; a crash mid-upload leaves no manifest, and running the upload again sends
only the files whose stored copy does not match (no duplicates, no re-sending a 5 GB shard).
:func:`run_prefix` keeps each pipeline run's models apart.

Each object is uploaded with ``ChecksumAlgorithm=SHA256``, so the server hashes the bytes it
received. For a single PUT that is the file's SHA-256; for a multipart upload it is the
*composite* checksum ``sha256(sha256(part_1) ‖ … ‖ sha256(part_N))`` with the suffix ``-N``. We
compute the same value locally, with the exact part boundaries boto3's transfer manager uses, and
record it in the manifest next to the file's full SHA-256 (also sent as the object metadata
``x-amz-meta-sha256``). :mod:`.model_verify` then checks the store against the manifest by HEAD.

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

from rtune.components.common.model_verify import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    REUPLOAD_FIX,
    SHA256_METADATA,
    ModelVerificationError,
    head_object,
    local_files,
    model_prefix,
    object_key,
    object_problems,
    remote_problems,
    verify_model,
)
from rtune.components.common.records import InputError
from rtune.components.common.storage import s3_client

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 64 * MIB
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB  # S3's maximum part size
_READ_BLOCK = 8 * MIB


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


def _model_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(str(folder), "not a folder", "pass the saved model's folder")
    files = local_files(folder)
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
        client.delete_object(Bucket=bucket, Key=object_key(prefix, MANIFEST_NAME))
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
            key = object_key(prefix, name)
            client.upload_file(
                str(path), bucket, key, ExtraArgs=extra, Config=config, Callback=bar.update
            )


def _is_stored(client: Any, bucket: str, key: str, entry: dict[str, Any]) -> bool:
    """True when the object already holds this file (a resumed upload skips it)."""
    return not object_problems(head_object(client, bucket, key), entry, f"s3://{bucket}/{key}")


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
    key = object_key(prefix, MANIFEST_NAME)
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
    bucket, prefix, uri = model_prefix(uri)
    files = _model_files(Path(folder))
    digests = _digest_files(files, part_size_bytes, progress)
    entries = {name: digest.as_entry() for name, digest in digests.items()}
    client = s3_client(endpoint_url)
    _start_upload(client, bucket, prefix, uri)
    pending = {
        name: path
        for name, path in files.items()
        if not _is_stored(client, bucket, object_key(prefix, name), entries[name])
    }
    _send_files(client, bucket, prefix, pending, digests, config, progress)
    problems = remote_problems(client, bucket, prefix, entries)
    if problems:
        raise ModelVerificationError(uri, problems, REUPLOAD_FIX)
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
