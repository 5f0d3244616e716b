"""The model ``rtune plan`` sizes: a Llama-style decoder's shape, from a known size or a config.json.

A shape is all the memory plan needs to know about a model: its parameter count, the parameters
of its largest single module (what ZeRO-3 gathers at once) and the block linears LoRA adapts and
QLoRA quantizes. The known sizes are the Llama-3.1 family and the embedded default (SmolLM2-135M);
their totals equal the safetensors totals of the real checkpoints (a test keeps them so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rtune.components.common.records import InputError

SOURCE = "rtune plan"


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder (GQA attention, SwiGLU MLP, RMSNorm) described by its config."""

    name: str
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    heads: int
    kv_heads: int
    tie_embeddings: bool = False
    head_dim: int = 0
    size: str = ""

    def block_linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear in one decoder block, by its HF module name."""
        d = self.head_dim or self.hidden // self.heads
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, self.heads * d),
            "k_proj": (h, self.kv_heads * d),
            "v_proj": (h, self.kv_heads * d),
            "o_proj": (self.heads * d, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Parameters in the decoder blocks' linears (what QLoRA quantizes)."""
        return self.layers * sum(a * b for a, b in self.block_linears().values())

    @property
    def total_params(self) -> int:
        """Linears + 2 RMSNorms per block + final norm + embedding (+ untied lm_head)."""
        embeddings = self.vocab * self.hidden * (1 if self.tie_embeddings else 2)
        return self.linear_params + self.layers * 2 * self.hidden + self.hidden + embeddings

    @property
    def largest_layer_params(self) -> int:
        """Largest single module, as DeepSpeed's ``model_to_params`` counts it (the embedding)."""
        linears = (a * b for a, b in self.block_linears().values())
        return max(self.vocab * self.hidden, *linears)


KNOWN_SHAPES = {
    shape.size: shape
    for shape in (
        ModelShape(
            "SmolLM2-135M (embedded default)", 576, 30, 49152, 1536, 9, 3, True, size="135M"
        ),
        ModelShape("Llama-3.1-8B", 4096, 32, 128256, 14336, 32, 8, size="8B"),
        ModelShape("Llama-3.1-70B", 8192, 80, 128256, 28672, 64, 8, size="70B"),
        ModelShape("Llama-3.1-405B", 16384, 126, 128256, 53248, 128, 8, size="405B"),
    )
}


def shape_for_size(size: str) -> ModelShape:
    """The known shape for ``--model-size`` (case-insensitive), or an error listing them."""
    for known, shape in KNOWN_SHAPES.items():
        if size.strip().upper() == known:
            return shape
    raise InputError(
        SOURCE,
        f"unknown --model-size {size!r}",
        f"use one of {list(KNOWN_SHAPES)}, or --model PATH to a Hugging Face config.json",
        field="--model-size",
    )


def shape_from_config(path: str | Path) -> ModelShape:
    """Read a Hugging Face ``config.json`` (the file or its folder) of a Llama-style model."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such config.json (pass the model folder or the file)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise InputError(
            str(file), f"not JSON: {err.msg}", "pass a model's config.json", line=err.lineno
        ) from err
    keys = (
        "hidden_size",
        "num_hidden_layers",
        "vocab_size",
        "intermediate_size",
        "num_attention_heads",
    )
    missing = [key for key in keys if not isinstance(data.get(key), int)]
    if missing:
        raise InputError(
            str(file),
            f"missing integer {missing} (not a Llama-style decoder config?)",
            "pass the config.json of a Llama/Mistral/Qwen-style model, or use --model-size",
            field=missing[0],
        )
    return ModelShape(
        name=str(data.get("_name_or_path") or file.parent.name or file.name),
        hidden=data["hidden_size"],
        layers=data["num_hidden_layers"],
        vocab=data["vocab_size"],
        intermediate=data["intermediate_size"],
        heads=data["num_attention_heads"],
        kv_heads=int(data.get("num_key_value_heads") or data["num_attention_heads"]),
        tie_embeddings=bool(data.get("tie_word_embeddings", False)),
        head_dim=int(data.get("head_dim") or 0),
    )
