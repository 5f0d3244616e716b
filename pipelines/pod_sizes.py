"""Scoring pods sized from the student: a compiled pipeline whose scoring pod cannot hold the
student is refused, with the size it needs (a 70B student in a 16Gi, one-GPU pod fails at load,
hours into a run, after the GPUs were scheduled).

The student's shape comes from ``rtune plan``'s table (its size in the model name: ``8B``,
``70B``, ``135M``) or a local ``config.json``; an unknown student is not checked. The rule, per
scoring pod: GPU memory ``gpus x cluster.gpu_memory >= 1.2 x weights`` (activations of a batch and
CUDA's own share), and memory ``>= 1.1 x weights + 4 GiB`` (the weights pass through host memory
while loading).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from rtune.components.common.errors import InputError
from rtune.components.finetune.plan_shapes import KNOWN_SHAPES, ModelShape, shape_from_config

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_SIZE_IN_NAME = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?[MB])(?![a-z0-9])", re.IGNORECASE)
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_UNITS = {
    None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def quantity_bytes(quantity: str, field: str, source: str) -> int:
    """A Kubernetes memory quantity (``64Gi``, ``80G``, ``512Mi``) in bytes."""
    match = _QUANTITY.match(str(quantity).strip())
    if match is None:
        raise InputError(
            source,
            f"{field} {quantity!r} is not a memory quantity",
            "write it as Kubernetes does, e.g. 64Gi or 80G",
            field=field,
        )
    return int(float(match[1]) * _UNITS[match[2]])


def student_shape(model: str) -> ModelShape | None:
    """The student's shape: a local folder's ``config.json``, else its size in the name."""
    if Path(model).is_dir() and (Path(model) / "config.json").is_file():
        return shape_from_config(model)
    for found in _SIZE_IN_NAME.findall(model.rsplit("/", 1)[-1]):
        if (shape := KNOWN_SHAPES.get(found.upper())) is not None:
            return shape
    return None


def scoring_needs(shape: ModelShape, dtype: str, gpu_memory: int) -> tuple[int, int]:
    """(GPUs, memory in GiB) one scoring pod needs for ``shape`` in ``dtype``."""
    weights = shape.total_params * DTYPE_BYTES.get(dtype, 4)
    gpus = math.ceil(1.2 * weights / gpu_memory)
    memory_gib = math.ceil((1.1 * weights) / GIB + 4)
    return gpus, memory_gib


def check_scoring_pod(config: Any) -> None:
    """Refuse a scoring pod too small for the student (GPU pods only; CPU pods are laptops')."""
    cluster, student, source = config.cluster, config.student, config.source
    size = cluster.scoring
    shape = student_shape(student.model)
    if shape is None or not size.gpus:
        return
    gpu_memory = quantity_bytes(cluster.gpu_memory, "cluster.gpu_memory", source)
    gpus, memory_gib = scoring_needs(shape, student.dtype, gpu_memory)
    have = quantity_bytes(size.memory, "cluster.scoring.memory", source)
    if size.gpus < gpus or have < memory_gib * GIB:
        raise InputError(
            source,
            f"a scoring pod ({size.gpus} GPU(s) of {cluster.gpu_memory}, {size.memory}) cannot "
            f"hold the student {shape.name} in {student.dtype} "
            f"({shape.total_params * DTYPE_BYTES.get(student.dtype, 4) / GIB:.0f} GiB of weights)",
            f"set cluster.scoring to at least {{gpus: {max(gpus, size.gpus)}, memory: "
            f"{memory_gib}Gi}} (or cluster.gpu_memory to your GPUs' memory)",
            field="cluster.scoring",
        )
