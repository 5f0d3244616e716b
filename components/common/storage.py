"""Where data lives: local paths and ``s3://`` URIs (boto3; MinIO, AWS or moto's server).

The S3 endpoint comes from ``--s3-endpoint`` or the ``AWS_ENDPOINT_URL`` environment variable;
credentials only from the environment (or the pod's Kubernetes Secret as env) — never from flags.

Object keys are untrusted: a key such as ``prefix/../../x`` or ``prefix//etc/x`` names a local path
outside the download folder. Every key is checked before the first byte is fetched, and a
download is built in a staging folder renamed into place when complete, so a folder that exists
is a finished download (a killed one leaves only a hidden ``.*.partial-*`` folder behind).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from rtune.components.common.atomic import atomic_file, publish_dir, staging_dir
from rtune.components.common.errors import InputError

S3_SCHEME = "s3://"


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def s3_client(endpoint_url: str | None = None) -> Any:
    import boto3

    endpoint = (
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
    )
    return boto3.client("s3", endpoint_url=endpoint or None)


def cache_root() -> Path:
    """``$RTUNE_CACHE`` or ``~/.cache/rtune``: models, downloaded inputs, checkpoints."""
    return Path(os.environ.get("RTUNE_CACHE") or Path.home() / ".cache" / "rtune")


def uri_cache_dir(uri: str, kind: str) -> Path:
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "root"
    return cache_root() / kind / f"{name}-{digest}"


def download_file(uri: str, dest: Path, endpoint_url: str | None = None) -> Path:
    """Fetch one object to ``dest``: complete and fsync'ed, or not there at all."""
    bucket, key = split_s3(uri)
    with atomic_file(dest) as handle:
        s3_client(endpoint_url).download_fileobj(bucket, key, handle)
    return dest


def download_prefix(
    uri: str,
    dest_dir: Path,
    endpoint_url: str | None = None,
    check: Callable[[Path], None] | None = None,
    keep: Callable[[Path], bool] | None = None,
    only: Callable[[PurePosixPath], bool] | None = None,
) -> Path:
    """Copy every object under an ``s3://`` prefix into ``dest_dir`` keeping relative paths
    (``only``: just the objects whose relative path it accepts).

    All keys are listed and checked first (:func:`local_relative_path`); the objects land in a
    staging folder beside ``dest_dir``, ``check`` may refuse the finished copy, and only then does
    it replace ``dest_dir`` in one rename. A failure at any point leaves ``dest_dir`` as it was.
    """
    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = s3_client(endpoint_url)
    plan = plan_prefix_download(uri, list_keys(client, bucket, prefix), prefix)
    if only is not None:
        plan = {relative: key for relative, key in plan.items() if only(relative)}
    if not plan:
        raise FileNotFoundError(f"no objects under {uri}")
    staging = staging_dir(dest_dir)
    try:
        for relative, key in plan.items():
            target = _inside(staging, relative, uri, key)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
        if check is not None:
            check(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return publish_dir(staging, dest_dir, keep)


def list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def plan_prefix_download(uri: str, keys: list[str], prefix: str) -> dict[PurePosixPath, str]:
    """Local relative path -> key for every object to fetch; folder markers (``a/b/``) skipped.

    Any unsafe key refuses the whole download, and so does a key that is both a file and a
    folder (``a`` and ``a/b``): nothing has been written when this raises.
    """
    plan: dict[PurePosixPath, str] = {}
    for key in keys:
        remainder = key[len(prefix) :]
        if remainder in ("", "/"):
            continue
        marker = remainder.endswith("/")
        relative = local_relative_path(uri, key, remainder[:-1] if marker else remainder)
        if not marker:
            plan[relative] = key
    folders = {parent for relative in plan for parent in relative.parents}
    clash = sorted(str(relative) for relative in plan if relative in folders)
    if clash:
        raise InputError(
            uri,
            f"object key {plan[PurePosixPath(clash[0])]!r} is both a file and a folder of other "
            "objects under this prefix, so it cannot be downloaded as a folder",
            "rename or delete one of them in the bucket",
        )
    return plan


def local_relative_path(uri: str, key: str, remainder: str) -> PurePosixPath:
    """The local path (relative to the download folder) for ``key``, or an :class:`InputError`.

    Refused: a leading ``/`` (an absolute path), and empty, ``.`` or ``..`` segments — anything
    whose local path would differ from the key or leave the download folder.
    """
    parts = remainder.split("/")
    unsafe = remainder.startswith("/") or any(part in ("", ".", "..") for part in parts)
    if unsafe or "\0" in remainder:
        raise InputError(
            uri,
            f"object key {key!r} would be written outside the download folder or under another "
            "name (it has an empty, '.' or '..' path segment, or starts with '/'); nothing was "
            "downloaded",
            "rename or delete that object in the bucket (S3 keys used as paths need plain "
            "segments), or point at a prefix that does not hold it",
        )
    return PurePosixPath(*parts)


def _inside(folder: Path, relative: PurePosixPath, uri: str, key: str) -> Path:
    """``folder / relative``, refusing a target that resolves outside ``folder`` (symlinks)."""
    target = folder.joinpath(*relative.parts)
    if not target.resolve().is_relative_to(folder.resolve()):
        raise InputError(
            uri, f"object key {key!r} resolves outside the download folder", "rename the object"
        )
    return target


def upload_file(path: Path, uri: str, endpoint_url: str | None = None) -> str:
    bucket, key = split_s3(uri)
    s3_client(endpoint_url).upload_file(str(path), bucket, key)
    return uri


def upload_dir(path: Path, uri: str, endpoint_url: str | None = None) -> str:
    bucket, prefix = split_s3(uri)
    client = s3_client(endpoint_url)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        key = f"{prefix.rstrip('/')}/{file.relative_to(path).as_posix()}".lstrip("/")
        client.upload_file(str(file), bucket, key)
    return uri


def s3_object_exists(uri: str, endpoint_url: str | None = None) -> bool:
    bucket, key = split_s3(uri)
    client = s3_client(endpoint_url)
    response = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    return bool(response.get("KeyCount"))


def localize(uri: str, kind: str = "inputs", endpoint_url: str | None = None) -> Path:
    """Return a local path for ``uri``: the path itself, or a fresh download of the S3 object(s).

    A single object is fetched as a file; a prefix (a folder such as a saved HF dataset or model) is
    fetched as a folder. Either appears only when complete.
    """
    if not is_s3(uri):
        return Path(uri).expanduser()
    dest = uri_cache_dir(uri, kind)
    bucket, key = split_s3(uri)
    client = s3_client(endpoint_url)
    try:
        client.head_object(Bucket=bucket, Key=key)
        is_object = bool(key) and not key.endswith("/")
    except client.exceptions.ClientError:
        is_object = False
    if is_object:
        name = local_relative_path(uri, key, key.rsplit("/", 1)[-1])
        return download_file(uri, dest / name, endpoint_url)
    return download_prefix(uri, dest, endpoint_url)
