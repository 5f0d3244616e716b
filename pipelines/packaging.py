"""Compile the pipeline into what a cluster takes: KFP IR YAML, or Kubernetes resources.

    compile_ir(config, Path("pipeline.yaml"), Images(registry="registry.example.org/ml", tag="1.2.3"))
    compile_kubernetes_manifest(config, Path("k8s.yaml"), namespace="kubeflow")
    python -m rtune.pipelines.packaging        # what `make compiled` runs: rewrite pipelines/compiled/

Images: each component's decorator calls ``image("base")`` when its module is imported, so the
overrides go into ``RTUNE_IMAGE_REGISTRY`` / ``RTUNE_IMAGE_TAG`` and every module that names an
image is re-imported before compiling - and once more afterwards with the environment restored, so
one process can compile with several tags and nothing leaks into later imports.

Same input, same bytes: kfp writes the parameter defaults into the IR's header comment in protobuf
map order, which changes from process to process, so the header is rebuilt from the (sorted) spec.
That makes the committed files checkable for freshness.

The Kubernetes form (KFP's Kubernetes-native pipeline store) is a ``Pipeline`` plus a
``PipelineVersion`` that embeds the spec. Versions are immutable, so the default version name is
content addressed - ``reflection-tuning-v0-1-0-<first 10 hex of sha256(IR)>`` - and Argo CD sees
a new version exactly when the compiled pipeline (spec, defaults or images) changes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from rtune.pipelines.config import CONFIG_DIR, PipelineConfig, load_pipeline_config

PIPELINE_MODULE = "rtune.pipelines.reflection_tuning"
IMAGE_ENV = {"registry": "RTUNE_IMAGE_REGISTRY", "tag": "RTUNE_IMAGE_TAG"}
ROOT = Path(__file__).resolve().parents[1]
COMPILED_DIR = Path("pipelines/compiled")
COMMITTED_CONFIG = CONFIG_DIR / "llama3-8b.yaml"
COMMITTED_NAMESPACE = "kubeflow"


@dataclass(frozen=True)
class Images:
    """Image registry/tag overrides (``None``: the environment's or the default)."""

    registry: str | None = None
    tag: str | None = None

    def env(self) -> dict[str, str]:
        return {IMAGE_ENV[k]: v for k, v in vars(self).items() if v}


@contextmanager
def pipeline_module(images: Images = Images()) -> Iterator[ModuleType]:
    """The pipeline module, (re-)imported with ``images`` in the environment."""
    saved = {name: os.environ.get(name) for name in IMAGE_ENV.values()}
    os.environ.update(images.env())
    try:
        yield _reimport_pipeline()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if images.env():
            _reimport_pipeline()


def _reimport_pipeline() -> ModuleType:
    """Reload every project module that names an image, then the pipeline that wires them."""
    from rtune.components.common import images

    def names_images(module: ModuleType) -> bool:
        return any(value is images.image or value is images for value in vars(module).values())

    users = [
        module
        for name, module in sorted(sys.modules.items())
        if name.startswith(("rtune.components.", "rtune.pipelines."))
        and module is not None
        and module is not images
        and name != PIPELINE_MODULE
        and names_images(module)
    ]
    for module in users:
        importlib.reload(module)
    if PIPELINE_MODULE in sys.modules:
        return importlib.reload(sys.modules[PIPELINE_MODULE])
    return importlib.import_module(PIPELINE_MODULE)


def compile_ir(config: PipelineConfig, output: Path, images: Images = Images()) -> Path:
    """KFP IR YAML (pipeline spec + Kubernetes platform spec) with the config as defaults."""
    with pipeline_module(images) as module:
        _compile(module, config, output)
    return output


def compile_kubernetes_manifest(
    config: PipelineConfig,
    output: Path,
    images: Images = Images(),
    namespace: str | None = None,
    version_name: str | None = None,
) -> str:
    """``Pipeline`` + ``PipelineVersion`` resources; returns the version's name."""
    from kfp.compiler import KubernetesManifestOptions

    with pipeline_module(images) as module, tempfile.TemporaryDirectory() as tmp:
        ir = _compile(module, config, Path(tmp) / "ir.yaml")
        name = version_name or content_version_name(ir, module.PIPELINE_NAME)
        options = KubernetesManifestOptions(
            pipeline_name=module.PIPELINE_NAME,
            pipeline_version_name=name,
            pipeline_version_display_name=name,
            namespace=namespace,
            include_pipeline_manifest=True,
        )
        _compile(module, config, output, options)
    return name


def _compile(module: ModuleType, config: PipelineConfig, output: Path, options: Any = None) -> Path:
    """The one place the pipeline is built from a config (resource sizes are compile-time)."""
    from kfp import compiler

    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        module.build_reflection_tuning(
            scoring_gpus=config.scoring_gpus(),
            finetune_gpus=config.finetune_gpus(),
            quantize_gpus=config.quantize_gpus(),
        ),
        package_path=str(output),
        pipeline_parameters=config.pipeline_arguments(),
        kubernetes_manifest_format=options is not None,
        kubernetes_manifest_options=options,
    )
    if options is None:
        _rebuild_header(output)
    return output


def _rebuild_header(path: Path) -> None:
    """Rewrite kfp's header comment from the sorted spec (kfp's own is in protobuf map order)."""
    from kfp.compiler.pipeline_spec_builder import extract_comments_from_pipeline_spec

    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    body = "".join(lines[next(i for i, line in enumerate(lines) if not line.startswith("#")) :])
    spec = next(yaml.safe_load_all(body))
    header = extract_comments_from_pipeline_spec(spec, spec["pipelineInfo"].get("description"))
    path.write_text(header + body, encoding="utf-8")


def ir_digest(ir: Path) -> str:
    """sha256 of the IR's documents as canonical JSON (formatting and comments do not count)."""
    docs = list(yaml.safe_load_all(ir.read_text(encoding="utf-8")))
    return hashlib.sha256(json.dumps(docs, sort_keys=True).encode()).hexdigest()


def content_version_name(ir: Path, pipeline_name: str) -> str:
    """``<pipeline>-v<package version>-<10 hex of the IR digest>``: a valid Kubernetes name."""
    from rtune.components.common.images import package_version

    version = re.sub(r"[^a-z0-9]+", "-", package_version().lower()).strip("-")
    return f"{pipeline_name}-v{version}-{ir_digest(ir)[:10]}"


GENERATED_NOTE = "# Generated by `make compiled` from {config}; do not edit.\n"


def write_committed_pipelines(root: Path = ROOT) -> list[Path]:
    """Write ``pipelines/compiled/`` under ``root``: the IR and its Kubernetes form, compiled from
    ``llama3-8b.yaml`` with the default images (registry and package version, whatever the
    environment says), so the files only change when the pipeline or the config does."""
    from rtune.components.common.images import DEFAULT_REGISTRY, package_version

    config = load_pipeline_config(COMMITTED_CONFIG)
    images = Images(registry=DEFAULT_REGISTRY, tag=package_version())
    ir = compile_ir(config, root / COMPILED_DIR / "reflection_tuning.yaml", images)
    manifest = root / COMPILED_DIR / "kubernetes" / "reflection_tuning.yaml"
    compile_kubernetes_manifest(config, manifest, images, namespace=COMMITTED_NAMESPACE)
    note = GENERATED_NOTE.format(config=COMMITTED_CONFIG.relative_to(ROOT).as_posix())
    for path in (ir, manifest):
        path.write_text(note + path.read_text(encoding="utf-8"), encoding="utf-8")
    return [ir, manifest]


if __name__ == "__main__":
    for written in write_committed_pipelines():
        print(f"wrote {written.relative_to(ROOT)}")
