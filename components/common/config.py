"""Typed stage configs: built from dicts/YAML with clear errors, flattened for MLflow params.

``redact_credentials`` is the one place that hides credentials written into URLs; the tracking
boundary (params, tags, logged text) and messages that show a URL go through it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from rtune.components.common.records import InputError
from rtune.components.common.typed_values import as_type, describe_type, shown

T = TypeVar("T")

SECRET_KEY = re.compile(r"(^|_)(api_key|secret|secret_key|password|token|credentials?|access_key)$")
REDACTED = "***"
# scheme://userinfo@ - the userinfo (user:password, or a token as user name) is a credential
URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@'\"<>]+@")
# ?name=value / &name=value of a query string
QUERY_PARAM = re.compile(r"(?P<lead>[?&](?P<name>[\w.-]+)=)(?P<value>[^&#\s'\"<>]*)")
# query parameters that carry a credential: api_key, access_token, X-Amz-Signature,
# X-Amz-Credential, X-Amz-Security-Token, sig (Azure SAS), key (Google APIs), password, ...
SECRET_PARAM = re.compile(
    r"(^|[_.-])(api[_-]?key|key|token|secret|password|passwd|signature|sig|credential)$",
    re.IGNORECASE,
)


def from_dict(cls: type[T], data: Mapping[str, Any] | None, source: str = "config") -> T:
    """Build the dataclass ``cls`` from ``data``; unknown keys are an error naming the valid ones.

    Nested dataclass fields are built recursively. Validation lives in each config's
    ``__post_init__`` (raise ``ValueError`` with the fix), re-raised here as an ``InputError``.
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(
            source,
            f"unknown key(s) {unknown} for {cls.__name__}",
            f"valid keys are {sorted(fields)}",
            field=unknown[0],
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        nested = _dataclass_in(hints[name])
        if nested and isinstance(value, Mapping):
            kwargs[name] = from_dict(nested, value, f"{source}.{name}")
            continue
        ok, kwargs[name] = as_type(hints[name], value)
        if not ok:
            wanted = "a mapping" if nested else describe_type(hints[name])
            raise InputError(
                source,
                f"{name} must be {wanted}, got {shown(value)}",
                f"give {name} {wanted} (quote text YAML would read otherwise: '\"5\"')",
                field=name,
            )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(source, str(err), f"fix the {cls.__name__} values") from None


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                return arg
    return None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def redact_credentials(text: str) -> str:
    """``text`` with every credential written into a URL replaced by ``***``: the userinfo
    (``https://user:pass@host`` -> ``https://***@host``) and the values of query parameters
    named like a secret (``?token=...``, presigned ``X-Amz-Signature=...``). Host, path and
    other parameters stay, so the value still says where it points."""
    text = URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
    return QUERY_PARAM.sub(_redact_param, text)


def _redact_param(match: re.Match[str]) -> str:
    secret = SECRET_PARAM.search(match["name"]) and match["value"]
    return f"{match['lead']}{REDACTED}" if secret else match.group(0)


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """``{"teacher.model": "x", ...}`` for MLflow params; keys that look secret are refused,
    credentials inside values (URLs) are redacted."""
    data = to_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
            continue
        if SECRET_KEY.search(key.lower()):
            continue
        flat[name] = "" if value is None else redact_credentials(str(value))
    return flat
