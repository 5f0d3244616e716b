"""Values as the KFP backend hands them to a task, not as Python passed them in.

Two conversions a component sees on a cluster and never under ``kfp.local``:

- **Parameters** travel as ``google.protobuf.Value``: every number is a float64, and Go's protojson
  prints a whole float without a fraction, so ``16.0``, ``3.0`` and ``16`` all arrive as the int
  ``16``, at any depth of a dict or list; other floats stay floats.
- **Artifact metadata** is stored in ML Metadata between tasks: numbers become doubles, ``bool``
  becomes ``1``/``0``, a list comes back wrapped as ``{"list": [...]}`` and a dict as
  ``{"struct": {...}}``; a ``None`` makes the upload fail (the task fails).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class MetadataRejected(ValueError):
    """ML Metadata cannot store this artifact metadata (the launcher fails the task)."""


def protojson_value(value: Any) -> Any:
    """``value`` after a round trip through ``protobuf.Value`` and Go's protojson."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        number = float(value)
        if math.isfinite(number) and number.is_integer() and 1e-6 <= abs(number) < 1e21:
            return int(number)
        return 0 if number == 0 else number
    if isinstance(value, Mapping):
        return {str(k): protojson_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [protojson_value(v) for v in value]
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def mlmd_metadata(metadata: Mapping[str, Any], artifact: str) -> dict[str, Any]:
    """Artifact metadata as the next task reads it back from ML Metadata."""
    return {
        key: _mlmd_value(value, f"{artifact}.metadata[{key!r}]") for key, value in metadata.items()
    }


def _mlmd_value(value: Any, where: str) -> Any:
    if value is None:
        raise MetadataRejected(f"{where} is None: ML Metadata rejects it (unsupported value type)")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return protojson_value(value)
    if isinstance(value, list | tuple):
        return {"list": [protojson_value(_plain(v, where)) for v in value]}
    if isinstance(value, Mapping):
        return {"struct": protojson_value({k: _plain(v, where) for k, v in value.items()})}
    raise MetadataRejected(f"{where}: unsupported value type {type(value).__name__}")


def _plain(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v, where) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, where) for v in value]
    return value
