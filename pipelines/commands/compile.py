"""``rtune compile -o F [--config F] [--set k=v] [--image-registry R] [--image-tag T]
[--kubernetes-manifest [--namespace NS] [--pipeline-version NAME]]``.

Writes the KFP IR YAML for a cluster; the config's values become the compiled parameter defaults,
so the Kubeflow UI's run form starts from them. ``--kubernetes-manifest`` writes the same pipeline
as ``Pipeline`` + ``PipelineVersion`` resources for KFP's Kubernetes-native pipeline store (Argo CD
syncs them); the version name defaults to ``reflection-tuning-v<version>-<content hash>``.
Compiling never imports torch. The work is in ``pipelines/packaging.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    parser.add_argument("-o", "--output", default="pipeline.yaml", help="where to write the YAML")
    parser.add_argument(
        "--config", default=None, help="run config whose values become the defaults"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    add_image_arguments(parser)
    parser.add_argument(
        "--kubernetes-manifest",
        action="store_true",
        help="emit Pipeline + PipelineVersion resources (KFP's Kubernetes-native store)",
    )
    parser.add_argument("--namespace", default=None, help="metadata.namespace of the resources")
    parser.add_argument(
        "--pipeline-version",
        default=None,
        metavar="NAME",
        help="PipelineVersion name (default: reflection-tuning-v<version>-<content hash>)",
    )
    parser.set_defaults(func=run)


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image-registry",
        default=os.environ.get("RTUNE_IMAGE_REGISTRY", ""),
        metavar="R",
        help="registry of the rtune images (default $RTUNE_IMAGE_REGISTRY, else the config's "
        "cluster.images.registry, else ghcr.io/rtune)",
    )
    parser.add_argument(
        "--image-tag",
        default=os.environ.get("RTUNE_IMAGE_TAG", ""),
        metavar="T",
        help="tag of the rtune images (default $RTUNE_IMAGE_TAG, else cluster.images.tag, else "
        "the package version)",
    )


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.records import InputError
    from rtune.pipelines.config import load_run_config
    from rtune.pipelines.packaging import Images, compile_ir, compile_kubernetes_manifest

    manifest_only = [
        f"--{n}" for n in ("namespace", "pipeline-version") if vars(args)[n.replace("-", "_")]
    ]
    if manifest_only and not args.kubernetes_manifest:
        raise InputError(
            "rtune compile",
            f"{manifest_only[0]} only applies to the Kubernetes form",
            "add --kubernetes-manifest",
        )
    config = load_run_config(args.config, args.overrides)
    images = Images(registry=args.image_registry, tag=args.image_tag)
    output = Path(args.output)
    if args.kubernetes_manifest:
        name = compile_kubernetes_manifest(
            config, output, images, namespace=args.namespace, version_name=args.pipeline_version
        )
        print(f"compiled reflection-tuning (Pipeline + PipelineVersion {name}) -> {output}")
    else:
        compile_ir(config, output, images)
        print(f"compiled reflection-tuning -> {output}")
    return 0
