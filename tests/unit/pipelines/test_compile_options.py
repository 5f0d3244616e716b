"""`rtune compile` options: image overrides, the Kubernetes-native form, the committed files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from rtune.pipelines.cli import main
from rtune.pipelines.config import CONFIG_DIR
from rtune.pipelines.packaging import ROOT, write_committed_pipelines

LLAMA_8B = str(CONFIG_DIR / "llama3-8b.yaml")


@pytest.fixture(autouse=True)
def default_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTUNE_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("RTUNE_IMAGE_TAG", raising=False)


def executor_images(path: Path) -> set[str]:
    spec = next(yaml.safe_load_all(path.read_text()))
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}


def test_image_flags_apply_to_every_compile_in_one_process(tmp_path: Path) -> None:
    for registry, tag in [("registry.example.org/ml", "1.2.3"), ("quay.io/team", "2.0.0-rc1")]:
        out = tmp_path / f"{tag}.yaml"
        code = main(["compile", "-o", str(out), "--image-registry", registry, "--image-tag", tag])
        assert code == 0
        images = executor_images(out)
        assert f"{registry}/rtune-base:{tag}" in images
        assert all(
            re.fullmatch(rf"{re.escape(registry)}/rtune-\w+:{re.escape(tag)}", i) for i in images
        )
    # the overrides do not leak into a later compile in the same process
    assert main(["compile", "-o", str(tmp_path / "default.yaml")]) == 0
    defaults = executor_images(tmp_path / "default.yaml")
    assert "ghcr.io/rtune/rtune-base:0.1.0" in defaults
    assert all(re.fullmatch(r"ghcr\.io/rtune/rtune-\w+:0\.1\.0", i) for i in defaults)


def kubernetes_form(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "k8s.yaml"
    assert (
        main(["compile", "-o", str(out), "--config", LLAMA_8B, "--kubernetes-manifest", *args]) == 0
    )
    return list(yaml.safe_load_all(out.read_text()))


def test_kubernetes_manifest_is_a_pipeline_and_a_version_embedding_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-should-never-appear-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    pipeline, version = kubernetes_form(tmp_path, "--namespace", "kubeflow")
    assert main(["compile", "-o", str(tmp_path / "ir.yaml"), "--config", LLAMA_8B]) == 0
    ir = list(yaml.safe_load_all((tmp_path / "ir.yaml").read_text()))

    assert (pipeline["kind"], version["kind"]) == ("Pipeline", "PipelineVersion")
    for doc in (pipeline, version):
        assert doc["apiVersion"].startswith("pipelines.kubeflow.org/")
        assert doc["metadata"]["namespace"] == "kubeflow"
    assert pipeline["metadata"]["name"] == version["spec"]["pipelineName"] == "reflection-tuning"
    assert version["spec"]["pipelineSpec"] == ir[0]
    assert version["spec"]["platformSpec"] == ir[1]
    assert re.fullmatch(r"reflection-tuning-v0-1-0-[0-9a-f]{10}", version["metadata"]["name"])
    text = (tmp_path / "k8s.yaml").read_text()
    assert secret not in text and "secretName: rtune-teacher" in text


def test_version_name_follows_the_content(tmp_path: Path) -> None:
    def version_name(*args: str) -> str:
        return kubernetes_form(tmp_path, *args)[1]["metadata"]["name"]

    first = version_name()
    assert version_name() == first  # same pipeline, same name: Argo CD sees no change
    assert version_name("--set", "prepare.limit=5") != first  # new defaults, new version
    assert version_name("--image-tag", "0.2.0") != first  # new images, new version
    assert version_name("--pipeline-version", "pinned-name") == "pinned-name"
    assert "namespace" not in kubernetes_form(tmp_path)[0]["metadata"]


def test_manifest_options_without_the_manifest_flag_are_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compile", "-o", str(tmp_path / "p.yaml"), "--namespace", "kubeflow"])
    assert code == 2
    assert "--kubernetes-manifest" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_committed_compiled_pipeline_is_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTUNE_IMAGE_TAG", "9.9.9")  # the committed files ignore the environment
    for fresh in write_committed_pipelines(tmp_path):
        committed = ROOT / fresh.relative_to(tmp_path)
        name = committed.relative_to(ROOT)
        if not committed.is_file():
            pytest.fail(f"{name} is missing: stale: run `make compiled`")
        old, new = committed.read_text().splitlines(), fresh.read_text().splitlines()
        if old != new:
            line = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), None)
            where = f"line {line + 1}" if line is not None else "length"
            pytest.fail(f"{name} differs at {where}: stale: run `make compiled`", pytrace=False)
