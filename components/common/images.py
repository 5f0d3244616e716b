"""Container images for the stages, named in one place (stdlib only: imported at compile time).

Override at compile time with ``RTUNE_IMAGE_REGISTRY`` / ``RTUNE_IMAGE_TAG`` (``rtune compile``
sets them from ``--image-registry`` / ``--image-tag``); the tag defaults to the package version.
"""

from __future__ import annotations

import importlib.metadata
import os

DEFAULT_REGISTRY = "ghcr.io/rtune"


def package_version() -> str:
    try:
        return importlib.metadata.version("rtune")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def image(name: str) -> str:
    """``<registry>/rtune-<name>:<tag>`` for the images in ``images/`` (base, train, serve)."""
    registry = (os.environ.get("RTUNE_IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    tag = os.environ.get("RTUNE_IMAGE_TAG") or package_version()
    return f"{registry}/rtune-{name}:{tag}"
