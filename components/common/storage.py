"""Where data lives: local paths and ``s3://`` URIs (boto3; MinIO, AWS or moto's server).

The S3 endpoint comes from ``--s3-endpoint`` or the ``AWS_ENDPOINT_URL`` environment variable;
credentials only from the environment (or the pod's Kubernetes Secret as env) — never from flags.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

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
    bucket, key = split_s3(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    s3_client(endpoint_url).download_file(bucket, key, str(tmp))
    os.replace(tmp, dest)
    return dest


def download_prefix(uri: str, dest_dir: Path, endpoint_url: str | None = None) -> Path:
    """Copy every object under an ``s3://`` prefix into ``dest_dir`` keeping relative paths."""
    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = s3_client(endpoint_url)
    found = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(prefix) :]
            if not relative or relative.endswith("/"):
                continue
            target = dest_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))
            found += 1
    if not found:
        raise FileNotFoundError(f"no objects under {uri}")
    return dest_dir


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
    """Return a local path for ``uri``: the path itself, or a cached download of the S3 object(s).

    A single object is fetched as a file; a prefix (a folder such as a saved HF dataset or model) is
    fetched as a folder.
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
        return download_file(uri, dest / key.rsplit("/", 1)[-1], endpoint_url)
    return download_prefix(uri, dest, endpoint_url)
