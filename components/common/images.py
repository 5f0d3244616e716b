"""Container images of the stages, named in one place (stdlib only: imported at compile time).

The DAG asks :meth:`Images.reference` for each stage's image when the pipeline is compiled; the
registry and tag come from the run config's ``cluster.images`` (or ``rtune compile
--image-registry/--image-tag``), else ``ghcr.io/rtune`` and the package version.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

DEFAULT_REGISTRY = "ghcr.io/rtune"
IMAGE_NAMES = ("base", "train", "quantize", "serve")


def package_version() -> str:
    try:
        return importlib.metadata.version("rtune")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


@dataclass(frozen=True)
class Images:
    """Where the images are pulled from: ``<registry>/rtune-<name>:<tag>``."""

    registry: str = ""
    tag: str = ""

    def reference(self, name: str) -> str:
        if name not in IMAGE_NAMES:
            raise ValueError(f"unknown image {name!r}; images are {list(IMAGE_NAMES)}")
        registry = (self.registry or DEFAULT_REGISTRY).rstrip("/")
        return f"{registry}/rtune-{name}:{self.tag or package_version()}"
