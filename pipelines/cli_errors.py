"""What ``rtune`` tells a person when a command fails for a reason that is theirs to fix.

``InputError`` is already such a message. Three more failure classes reach the CLI from libraries
and get one message naming what the user passed, plus the fix, instead of a traceback:

* S3 (boto3/botocore): no credentials, an endpoint that cannot be reached, a refused request
  (missing bucket or key, access denied). The message names the ``s3://`` arguments of the
  command, never a credential;
* the local disk: ENOSPC / EDQUOT (full), EACCES / EPERM / EROFS, EISDIR / ENOTDIR, ENOENT.
  The message names the path (``OSError.filename``, else the command's output arguments).

Anything else (another errno, a botocore parameter error that is not about a bucket, any other
exception) is a bug and stays a traceback: ``explain`` returns ``None`` and the CLI re-raises.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from rtune.components.common.records import InputError

S3 = "s3://"
OUTPUT_ARGUMENTS = ("output", "output_dir", "selected", "checkpoint", "checkpoint_root")
PATH_ARGUMENTS = (*OUTPUT_ARGUMENTS, "input", "records", "scores", "config", "model", "model_path")
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
CREDENTIALS_FIX = (
    "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for an account that may "
    "use the bucket; in a pod, mount the S3 Secret as environment variables"
)
ENDPOINT_FIX = (
    "check --s3-endpoint or AWS_ENDPOINT_URL (MinIO: http://minio.<namespace>:9000; unset it "
    "for AWS) and that the server is up"
)
S3_CODE_FIXES = {
    "NoSuchBucket": "create the bucket (`aws s3 mb s3://BUCKET`, or the MinIO console) or fix "
    "the bucket name in the URI",
    "NoSuchKey": "check the key: `aws s3 ls s3://BUCKET/PREFIX/` lists what is there",
    "404": "check the key: `aws s3 ls s3://BUCKET/PREFIX/` lists what is there",
    "NotFound": "check the key: `aws s3 ls s3://BUCKET/PREFIX/` lists what is there",
    "InvalidBucketName": "bucket names are 3-63 lowercase letters, digits, dots and hyphens",
    "AccessDenied": CREDENTIALS_FIX,
    "403": CREDENTIALS_FIX,
    "InvalidAccessKeyId": CREDENTIALS_FIX,
    "SignatureDoesNotMatch": CREDENTIALS_FIX,
    "ExpiredToken": CREDENTIALS_FIX,
}
DISK_FULL_FIX = "free space on that disk, or write elsewhere (another output path, $RTUNE_CACHE)"
OS_ERROR_FIXES = {
    errno.ENOSPC: DISK_FULL_FIX,
    errno.EDQUOT: DISK_FULL_FIX,
    errno.EACCES: "use a path this user may read/write, or fix its permissions",
    errno.EPERM: "use a path this user may read/write, or fix its permissions",
    errno.EROFS: "write to a writable file system (another output path)",
    errno.EISDIR: "give a file path, not a directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory: fix the path",
    errno.ENOENT: "check the path",
}
S3_ERROR_CODE = re.compile(r"\(([A-Za-z0-9]+)\) when calling the (\w+) operation")


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes ``explain`` may turn into a message (botocore imported only now)."""
    found: list[type[BaseException]] = [InputError, OSError]
    try:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            NoCredentialsError,
            ParamValidationError,
            PartialCredentialsError,
            ReadTimeoutError,
        )
    except ImportError:
        return tuple(found)
    found += [
        NoCredentialsError,
        PartialCredentialsError,
        ConnectionError,
        ReadTimeoutError,
        ClientError,
        S3UploadFailedError,
        ParamValidationError,
    ]
    return tuple(found)


def explain(err: BaseException, args: argparse.Namespace) -> str | None:
    """One message for a failure the user can fix, or ``None`` for a bug (keep the traceback)."""
    explained: InputError | None = None
    if isinstance(err, InputError):
        explained = err
    elif type(err).__module__.startswith(("botocore", "boto3")):
        explained = explain_s3(err, args)
    elif isinstance(err, FileNotFoundError) and err.errno is None:
        return str(err)  # raised by rtune itself with its own message ("no objects under ...")
    elif isinstance(err, OSError):
        explained = explain_os_error(err, args)
    return None if explained is None else str(explained)


def check_s3_arguments(args: argparse.Namespace) -> None:
    """An ``s3://`` argument without a bucket is bad input before any request is made."""
    for flag, uri in s3_arguments(args):
        if not uri[len(S3) :].partition("/")[0]:
            raise InputError(
                uri,
                "an s3:// URI needs a bucket",
                "write s3://BUCKET/KEY, e.g. s3://my-data/alpaca_data.json",
                field=flag,
            )


def explain_s3(err: BaseException, args: argparse.Namespace) -> InputError | None:
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        NoCredentialsError,
        ParamValidationError,
        PartialCredentialsError,
    )

    text = redact(" ".join(str(err).split()))
    where = _s3_where(text, args)
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        problem = f"no S3 credentials found ({text})"
        return InputError(where, problem, CREDENTIALS_FIX)
    if isinstance(err, ConnectionError):
        endpoint = _endpoint(str(getattr(err, "kwargs", {}).get("endpoint_url", "")))
        problem = f"cannot reach the S3 endpoint {endpoint} ({type(err).__name__})"
        return InputError(where, problem, ENDPOINT_FIX)
    if isinstance(err, ParamValidationError):
        if "bucket" not in text.lower():
            return None  # a request rtune built wrongly: a bug
        return InputError(where, f"invalid S3 request: {text}", S3_CODE_FIXES["InvalidBucketName"])
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", "?"))
        operation = err.operation_name
    else:  # boto3's S3UploadFailedError wraps the ClientError as text
        match = S3_ERROR_CODE.search(text)
        code, operation = match.groups() if match else ("?", "PutObject")
    fix = S3_CODE_FIXES.get(code, "see S3's message; retry when the storage is healthy")
    return InputError(where, f"S3 refused {operation}: {text}", fix)


def explain_os_error(err: OSError, args: argparse.Namespace) -> InputError | None:
    fix = OS_ERROR_FIXES.get(err.errno or -1)
    if fix is None:
        return None
    filename = None if err.filename is None else str(err.filename)
    return InputError(_path_where(filename, args), os.strerror(err.errno or 0), fix)


def s3_arguments(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(--flag, uri)`` of every ``s3://`` value the command was given."""
    return [(flag, value) for flag, value in _string_arguments(args) if value.startswith(S3)]


def redact(text: str) -> str:
    """``text`` with the value of every credential variable in the environment masked."""
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _s3_where(text: str, args: argparse.Namespace) -> str:
    """The command's S3 arguments (those whose bucket the error names, if any do)."""
    uris = s3_arguments(args)
    named = [(f, u) for f, u in uris if u[len(S3) :].partition("/")[0] in text] or uris
    return ", ".join(f"{uri} ({flag})" for flag, uri in named) or "S3"


def _endpoint(url: str) -> str:
    """``scheme://host:port`` of an endpoint URL (no user info, path or query)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return (
        f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}" if parts.scheme else url
    )


def _path_where(filename: str | None, args: argparse.Namespace) -> str:
    """The failing path, with the argument it belongs to; without a path, the outputs."""
    paths = [
        (flag, value, _dest(flag) in OUTPUT_ARGUMENTS)
        for flag, value in _string_arguments(args)
        if _dest(flag) in PATH_ARGUMENTS and not value.startswith(S3)
    ]
    if filename is None:
        outputs = [f"{value} ({flag})" for flag, value, is_output in paths if is_output]
        return ", ".join(outputs) or "(a local file)"
    related = [(f, v) for f, v, is_output in paths if _same_place(filename, v, is_output)]
    return f"{filename} ({related[0][0]} {related[0][1]})" if related else filename


def _same_place(filename: str, value: str, is_output: bool) -> bool:
    """Is ``filename`` the argument's path, inside it, or a temp file beside an output?"""
    path, arg = Path(filename), Path(value)
    return path == arg or arg in path.parents or (is_output and path.parent == arg.parent)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _string_arguments(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    for name, value in vars(args).items():
        if name in ("func", "command"):
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str | Path):
                yield f"--{name.replace('_', '-')}", str(item)
