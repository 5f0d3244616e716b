"""The stage's Model artifact and the model store: ``MODEL_URI.txt`` names a model that lives in
the store (a cluster fine-tune hands one over; a cluster quantize hands one on), otherwise the
artifact is a copy of the model folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rtune.components.quantize.config import QuantizeConfig

MODEL_URI_FILE = "MODEL_URI.txt"


def read_model_uri(model_dir: Path) -> str:
    """The ``s3://`` URI of a model that lives in the store (a cluster fine-tune), or ''."""
    marker = Path(model_dir) / MODEL_URI_FILE
    return marker.read_text(encoding="utf-8").strip() if marker.is_file() else ""


def write_outputs(source: Path, model_dir: Path, store_uri: str, local_copy: bool) -> None:
    """The task's Model artifact: a copy of the model (local runs), and/or MODEL_URI.txt
    naming the store copy (what KServe's storageUri points at)."""
    dest = Path(model_dir)
    if dest.exists():
        shutil.rmtree(dest)
    if local_copy:
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns(MODEL_URI_FILE))
    dest.mkdir(parents=True, exist_ok=True)
    if store_uri:
        (dest / MODEL_URI_FILE).write_text(store_uri + "\n", encoding="utf-8")


def store_target(config: QuantizeConfig, remote_input: str, run_id: str = "") -> str:
    """Where the quantized model goes in the store: the run's folder of the configured prefix, or
    beside the input model when that came from the store (cluster runs always store models)."""
    if config.model_store:
        from rtune.components.common.model_store import run_prefix

        return f"{run_prefix(config.model_store, run_id or 'local')}/quantized"
    return f"{remote_input.rstrip('/')}-{config.method}" if remote_input else ""


def publish_outputs(
    config: QuantizeConfig, source: Path, model_dir: Path, remote_input: str, run_id: str = ""
) -> str:
    """Upload (when configured or when the input came from the store), then fill the output."""
    target = store_target(config, remote_input, run_id)
    uri = ""
    if target:
        from rtune.components.common.model_store import upload_model

        uri = upload_model(source, target, progress=False).uri
    write_outputs(source, model_dir, uri, local_copy=not remote_input)
    return uri


def passthrough_remote(
    config: QuantizeConfig, remote: str, model_dir: Path, run: Any
) -> dict[str, Any]:
    """``none`` on a model in the store: nothing to load, the same URI goes on."""
    write_outputs(Path(), model_dir, remote, local_copy=False)
    values = {"method": "none", "size_ratio": 1.0, "perplexity_increase": 0.0}
    run.set_tags({"rtune.quantization": "none", "rtune.quantized_uri": remote}, to_parent=True)
    return {**values, "model_store_uri": remote}
