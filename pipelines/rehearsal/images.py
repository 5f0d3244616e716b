"""What a task's image gives its process, read from ``images/<name>/Dockerfile``.

A pod starts with the image's environment (the base image's ``ENV`` plus ours), its ``USER`` and
``WORKDIR`` — nothing from a developer's shell. The rehearsal cannot pull the CUDA images, so each
image's Python environment is played by a local one of the same packages, mounted where the image
has it (``/opt/venv`` → ``.venv`` for ``rtune-base``, ``/opt/conda`` for the PyTorch images,
``/opt/llmcompressor`` → ``.venv-quantize``). Everything else comes from the Dockerfile, so a
change there (a dropped ``HOME``, another ``USER``) changes what the rehearsal runs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE_REF = re.compile(r"^(?P<registry>.+)/rtune-(?P<name>[a-z0-9-]+):(?P<tag>[\w.-]+)$")

# ENV of the base images our Dockerfiles start FROM (``docker inspect``), without build-only vars.
BASE_IMAGE_ENV: dict[str, dict[str, str]] = {
    "python:3.11.9-slim-bookworm": {
        "PATH": "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "PYTHON_VERSION": "3.11.9",
    },
    "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-devel": {
        "PATH": "/opt/conda/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:"
        "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "LD_LIBRARY_PATH": "/usr/local/nvidia/lib:/usr/local/nvidia/lib64",
    },
    "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime": {
        "PATH": "/opt/conda/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:"
        "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "LD_LIBRARY_PATH": "/usr/local/nvidia/lib:/usr/local/nvidia/lib64",
    },
    "vllm/vllm-openai:v0.30.0": {
        "PATH": "/opt/venv/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:"
        "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "VIRTUAL_ENV": "/opt/venv",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
    },
}

# image path of a Python environment -> the local environment that plays it (relative to ROOT)
PYTHON_ENVIRONMENTS: dict[str, dict[str, str]] = {
    "base": {"/opt/venv": ".venv"},
    "train": {"/opt/conda": ".venv"},
    "quantize": {"/opt/conda": ".venv", "/opt/llmcompressor": ".venv-quantize"},
    "serve": {"/opt/venv": ".venv"},
}


class UnknownImage(ValueError):
    """A task names an image that is not built from this repository's ``images/``."""


@dataclass(frozen=True)
class ImageFacts:
    """What one image gives a container: user, working dir, env, and where Python lives."""

    name: str
    reference: str
    base: str
    uid: int
    gid: int
    workdir: str
    env: Mapping[str, str]
    python_environments: Mapping[str, Path] = field(default_factory=dict)


def image_facts(reference: str, root: Path = ROOT) -> ImageFacts:
    """Facts of ``<registry>/rtune-<name>:<tag>`` from ``images/<name>/Dockerfile``."""
    match = IMAGE_REF.match(reference)
    if match is None or not (root / "images" / match["name"] / "Dockerfile").exists():
        raise UnknownImage(
            f"image {reference!r} is not one of this repository's images/ "
            "(<registry>/rtune-<name>:<tag>): the rehearsal only runs images it can read"
        )
    name = match["name"]
    stage = final_stage(root / "images" / name / "Dockerfile")
    base = re.sub(r"@sha256:[0-9a-f]+$", "", stage.base)
    if base not in BASE_IMAGE_ENV:
        raise UnknownImage(
            f"images/{name}/Dockerfile starts FROM {base!r}, unknown to the rehearsal"
        )
    env = dict(BASE_IMAGE_ENV[base])
    for key, value in stage.env:
        env[key] = expand(value, env)
    uid, _, gid = (stage.user or "0").partition(":")
    return ImageFacts(
        name=name,
        reference=reference,
        base=base,
        uid=int(uid),
        gid=int(gid or uid),
        workdir=stage.workdir or "/",
        env=env,
        python_environments={
            image_path: root / local for image_path, local in PYTHON_ENVIRONMENTS[name].items()
        },
    )


@dataclass
class DockerStage:
    base: str
    env: list[tuple[str, str]] = field(default_factory=list)
    user: str = ""
    workdir: str = ""


def final_stage(dockerfile: Path) -> DockerStage:
    """The last build stage's ``FROM``, ``ENV`` (in order), ``USER`` and ``WORKDIR``."""
    stage: DockerStage | None = None
    for instruction, argument in _instructions(dockerfile.read_text(encoding="utf-8")):
        if instruction == "FROM":
            stage = DockerStage(base=argument.split()[0])
        elif stage is None:
            continue
        elif instruction == "ENV":
            stage.env.extend(_env_pairs(argument))
        elif instruction == "USER":
            stage.user = argument.strip()
        elif instruction == "WORKDIR":
            stage.workdir = argument.strip()
    if stage is None:
        raise UnknownImage(f"{dockerfile}: no FROM")
    return stage


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    found = []
    for line in joined.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            found.append((parts[0].upper(), parts[1]))
    return found


def _env_pairs(argument: str) -> list[tuple[str, str]]:
    pairs = []
    for token in shlex.split(argument, posix=True):
        key, sep, value = token.partition("=")
        if not sep:
            raise UnknownImage(f"ENV {argument!r}: only KEY=VALUE form is supported")
        pairs.append((key, value))
    return pairs


def expand(value: str, env: Mapping[str, str]) -> str:
    """Docker's ``$VAR`` / ``${VAR}`` substitution from the environment built so far."""
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), value)
