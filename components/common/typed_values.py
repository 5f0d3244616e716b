"""Values checked against the type a config field declares, wherever they come from.

YAML, ``--set``, a KFP parameter (protobuf Struct: every int arrives as a float) and a direct call
all build configs through :func:`~rtune.components.common.config.from_dict`, which asks
:func:`as_type` whether a value fits its field and how to normalise it (``3.0`` -> ``3`` for an
int field, ``"1e-5"`` -> ``1e-05`` for a float field: YAML 1.1 reads an exponent without a dot as
text). A value that does not fit is one error naming the key and the type.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def as_type(hint: Any, value: Any) -> tuple[bool, Any]:
    """(``value`` fits ``hint``, the value normalised)."""
    if is_optional(hint):
        if value is None:
            return True, None
        hint = plain(hint)
    if hint is Any:
        return True, value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a section: from a mapping
        return isinstance(value, hint), value
    if hint is dict:
        return (True, {}) if value is None else (isinstance(value, dict), value)
    if hint is bool or hint is str:
        return isinstance(value, hint), value
    if isinstance(value, bool):
        return False, value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return isinstance(value, int), value
    if hint is float:
        if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            return True, float(value)
        return isinstance(value, int | float), float(value) if isinstance(value, int) else value
    if typing.get_origin(hint) is list:
        if isinstance(value, str):  # "a, b" from a flag: the config's own __post_init__ splits
            return True, value
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            return False, value
        checked = [as_type(item, v) for v in value]
        return all(ok for ok, _ in checked), [v for _, v in checked]
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict), value
    return True, value


def describe_type(hint: Any) -> str:
    """How an error names a type: ``an integer or null``, ``a list of strings``, ..."""
    suffix = " or null" if is_optional(hint) else ""
    kind = plain(hint)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if kind in names:
        return names[kind] + suffix
    if kind is dict or typing.get_origin(kind) is dict:
        return "a mapping" + suffix
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind) or (Any,)
        return f"a list of {describe_type(item).removeprefix('a ').removeprefix('an ')}s{suffix}"
    return str(kind) + suffix


def is_optional(hint: Any) -> bool:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return union and type(None) in typing.get_args(hint)


def plain(hint: Any) -> Any:
    """``int | None`` -> ``int`` (the non-null member of an optional)."""
    if is_optional(hint):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        return members[0] if len(members) == 1 else hint
    return hint


def shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
