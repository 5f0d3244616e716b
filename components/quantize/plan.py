"""What one quantize run works on: the calibration / held-out split, its token passes, and the
work folder ``<checkpoint_root>/quantize/<fingerprint>``.

The folder is keyed by the recipe, the calibration token ids and the model (``model_signature``):
the same three find the same folder, so a finished quantization is reused and two different ones
never mix. ``check_group_size`` refuses an int4 group size that does not tile the model before any
worker starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rtune.components.common.checkpoint import fingerprint
from rtune.components.common.records import InputError, read_jsonl
from rtune.components.quantize.config import CALIBRATED, QuantizeConfig
from rtune.components.quantize.data import (
    CalibrationSplit,
    ResponseTexts,
    response_passes,
    split_records,
    texts_digest,
)


@dataclass
class QuantizePlan:
    """What one run works on: the split, its token passes and the work folder."""

    config: QuantizeConfig
    model_path: Path
    split: CalibrationSplit
    calibration: ResponseTexts
    heldout: ResponseTexts
    work: Path
    chat_template: str = ""  # the training format's, saved with the quantized model's tokenizer


def model_signature(model_path: Path, blocks: int = 16, block_size: int = 1 << 16) -> str:
    """What tells one model folder from another, cheaply: config.json and, per weight file,
    name, size and a hash of ``blocks`` evenly spaced blocks (a retrained model changes them;
    hashing a 140 GB checkpoint whole would take minutes on every run)."""
    digest = hashlib.sha256()
    config = model_path / "config.json"
    digest.update(config.read_bytes() if config.exists() else b"")
    for path in sorted(p for p in model_path.rglob("*") if p.is_file()):
        if path.suffix not in {".safetensors", ".bin", ".pt", ".pth"}:
            continue
        size = path.stat().st_size
        digest.update(f"{path.relative_to(model_path)}:{size}".encode())
        with path.open("rb") as handle:
            for index in range(blocks):
                handle.seek(max(size - block_size, 0) * index // max(blocks - 1, 1))
                digest.update(handle.read(block_size))
    return digest.hexdigest()[:24]


def work_dir_for(
    config: QuantizeConfig,
    calibration: ResponseTexts,
    model_path: Path,
    folder: Path,
    chat_template: str = "",
) -> Path:
    """Same recipe + same calibration ids + same model + same chat template -> same folder
    (reuse, never mix)."""
    from rtune.components.quantize.recipes import recipe_yaml

    recipe = recipe_yaml(config) if config.method != "none" else "none"
    data = texts_digest(calibration) if config.method in CALIBRATED else ""
    key = fingerprint(
        "quantize", recipe, config.max_seq_length, data, model_signature(model_path), chat_template
    )
    return Path(folder) / key


def plan_quantization(
    config: QuantizeConfig, model_path: Path, selected_path: Path, folder: Path
) -> QuantizePlan:
    """Split the selected records, tokenize both halves as the scorer does, and name the work
    folder; refuse a run whose held-out (or, for calibrated methods, calibration) responses were
    all cut away by ``max_seq_length``."""
    from rtune.components.common.models import load_tokenizer
    from rtune.components.common.response_format import system_prompt
    from rtune.components.scoring.chat_templates import serving_chat_template

    records = read_jsonl(selected_path)
    split = split_records(
        records, config.calibration_records, config.heldout_records, str(selected_path)
    )
    tokenizer = load_tokenizer(model_path)
    fmt = config.response_format
    calibration = response_passes(
        split.calibration, tokenizer, config.template, config.max_seq_length, fmt
    )
    heldout = response_passes(split.heldout, tokenizer, config.template, config.max_seq_length, fmt)
    if not heldout.passes:
        raise InputError(
            str(selected_path),
            f"every held-out record's response was cut away by max_seq_length {config.max_seq_length}",
            "raise quantize.max_seq_length",
        )
    if config.method in CALIBRATED and not calibration.passes:
        raise InputError(
            str(selected_path),
            "no calibration text left after max_seq_length cut every response away",
            "raise quantize.max_seq_length",
        )
    chat_template = serving_chat_template(config.template, tokenizer, system_prompt(fmt))
    work = work_dir_for(config, calibration, model_path, folder, chat_template)
    return QuantizePlan(config, model_path, split, calibration, heldout, work, chat_template)


def check_group_size(model_path: Path, group_size: int) -> None:
    """int4 groups must tile every Linear input width (hidden, attention output, MLP)."""
    config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    hidden = config.get("hidden_size")
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    widths = {
        "hidden_size": hidden,
        "intermediate_size": config.get("intermediate_size"),
        "num_attention_heads*head_dim": heads * head_dim if heads and head_dim else None,
    }
    bad = {name: width for name, width in widths.items() if width and width % group_size}
    if bad:
        divisors = [g for g in (32, 64, 128) if all(w % g == 0 for w in widths.values() if w)]
        raise InputError(
            str(model_path / "config.json"),
            f"group_size {group_size} does not divide {bad}",
            f"set quantize.group_size to a common divisor, e.g. {divisors or 'a smaller power of 2'}",
            field="group_size",
        )
