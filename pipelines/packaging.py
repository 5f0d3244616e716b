"""Compile the pipeline into what a cluster takes: KFP IR YAML, or Kubernetes resources.

    compile_ir(config, Path("pipeline.yaml"), Images(registry="registry.example.org/ml", tag="1.2.3"))
    compile_kubernetes_manifest(config, Path("k8s.yaml"), namespace="kubeflow")
    python -m rtune.pipelines.packaging  # what `make compiled` runs: rewrite pipelines/compiled/

Images come from one place: the run config's ``cluster.images``, overridden by ``images``
(``rtune compile --image-registry/--image-tag``); the DAG applies them while it is built.

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
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from rtune.components.common.images import Images
from rtune.pipelines.config import CONFIG_DIR, RunConfig, load_run_config

ROOT = Path(__file__).resolve().parents[1]
COMPILED_DIR = Path("pipelines/compiled")
COMMITTED_CONFIG = CONFIG_DIR / "llama3-8b.yaml"
COMMITTED_NAMESPACE = "kubeflow"


def resolved_images(config: RunConfig, images: Images | None = None) -> Images:
    """The config's ``cluster.images`` with ``images``' non-empty fields on top."""
    given = images or Images()
    return Images(
        registry=given.registry or config.cluster.images.registry,
        tag=given.tag or config.cluster.images.tag,
    )


def compile_ir(config: RunConfig, output: Path, images: Images | None = None) -> Path:
    """KFP IR YAML (pipeline spec + Kubernetes platform spec) with the config as defaults."""
    return _compile(config, output, resolved_images(config, images))


def compile_kubernetes_manifest(
    config: RunConfig,
    output: Path,
    images: Images | None = None,
    namespace: str | None = None,
    version_name: str | None = None,
) -> str:
    """``Pipeline`` + ``PipelineVersion`` resources; returns the version's name."""
    from kfp.compiler import KubernetesManifestOptions

    from rtune.pipelines.reflection_tuning import PIPELINE_NAME

    images = resolved_images(config, images)
    with tempfile.TemporaryDirectory() as tmp:
        ir = _compile(config, Path(tmp) / "ir.yaml", images)
        name = version_name or content_version_name(ir, PIPELINE_NAME)
        options = KubernetesManifestOptions(
            pipeline_name=PIPELINE_NAME,
            pipeline_version_name=name,
            pipeline_version_display_name=name,
            namespace=namespace,
            include_pipeline_manifest=True,
        )
        _compile(config, output, images, options)
    return name


def _compile(config: RunConfig, output: Path, images: Images, options: Any = None) -> Path:
    """The one place the pipeline is built from a config (pod sizes and images are compile-time)."""
    from kfp import compiler

    from rtune.pipelines.config import check_for_cluster
    from rtune.pipelines.reflection_tuning import build_reflection_tuning

    check_for_cluster(config)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        build_reflection_tuning(config, images),
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

    config = load_run_config(COMMITTED_CONFIG)
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
