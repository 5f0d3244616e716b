"""GPUs a pod asked for must be there: fail at the start of a stage, not hours later on CPU.

The DAG tells a GPU task how many GPUs its pod requested (``RTUNE_EXPECTED_GPUS``, set where
``pipelines/reflection_tuning.py`` sets the accelerator limit). The device plugin gives the
container one ``/dev/nvidia<N>`` per GPU; fewer means the pod was scheduled without them (a node
without the device plugin, a runtime class missing, ``NVIDIA_VISIBLE_DEVICES`` overridden). A
model loader that would otherwise fall back to the CPU asks :func:`require_cuda` as well, which
also catches an image whose CUDA libraries do not match the node's driver.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

EXPECTED_GPUS_ENV = "RTUNE_EXPECTED_GPUS"
_GPU_DEVICE = re.compile(r"^nvidia\d+$")


class GpusNotVisible(RuntimeError):
    """The pod asked for GPUs that the container cannot see or use."""


def expected_gpus(env: dict[str, str] | None = None) -> int:
    """GPUs the pod requested (0 when the task is not a GPU task)."""
    value = (os.environ if env is None else env).get(EXPECTED_GPUS_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise GpusNotVisible(f"{EXPECTED_GPUS_ENV}={value!r} is not a whole number")
    return int(value)


def visible_gpu_devices(dev: Path = Path("/dev")) -> int:
    """How many NVIDIA GPU device files the container has (``/dev/nvidia0``, ``/dev/nvidia1``…)."""
    try:
        return sum(1 for entry in dev.iterdir() if _GPU_DEVICE.match(entry.name))
    except OSError:
        return 0


def require_gpu_devices(env: dict[str, str] | None = None, dev: Path = Path("/dev")) -> None:
    """Raise when the pod requested more GPUs than the container has devices for."""
    wanted = expected_gpus(env)
    if wanted and (seen := visible_gpu_devices(dev)) < wanted:
        raise GpusNotVisible(
            f"the pod requested {wanted} GPU(s) but the container sees {seen} "
            f"(/dev/nvidia<N>); fix: check the node's NVIDIA device plugin and runtime class, and "
            f"that nothing overrides NVIDIA_VISIBLE_DEVICES, then retry the task"
        )


def require_cuda(cuda_available: bool, env: dict[str, str] | None = None) -> None:
    """Raise when a GPU task's torch cannot use CUDA (it would silently run on the CPU)."""
    if expected_gpus(env) and not cuda_available:
        raise GpusNotVisible(
            "the pod requested GPUs but torch cannot use CUDA; fix: use the rtune-train image "
            "(CUDA build of torch) and a node whose driver supports its CUDA version"
        )
