"""llm-compressor recipes, one per method, as YAML text (built here, run by the worker).

The recipes use llm-compressor 0.14's stage layout (``<name>_stage: <group>_modifiers:
<ModifierClass>: {args}``); modifiers run in the order written, each with its own calibration
pass. All of them write compressed-tensors checkpoints that vLLM loads.

==================  ===========================================================================
method              recipe
==================  ===========================================================================
w4a16               GPTQ, int4 symmetric weights in groups of ``group_size`` input columns,
                    16-bit activations (the default for GPU serving: ~4x smaller weights)
fp8_dynamic         round-to-nearest FP8 weights per channel + FP8 activations per token computed
                    at run time; no calibration data (Hopper/Ada GPUs)
w8a8                SmoothQuant (moves activation outliers into the weights, strength alpha),
                    then GPTQ int8 weights per channel + dynamic int8 activations per token
sparse_2of4         SparseGPT: in every group of 4 consecutive weights of a row, the 2 least
                    important (by the OBS saliency w^2 / [H^-1]_jj) are zeroed and the rest
                    updated to compensate
sparse_2of4_w4a16   SparseGPT 2:4, then int4 weights (group ``group_size``) by round-to-nearest.
                    Not GPTQ: 0.14's GPTQ spreads each column's rounding error over the later
                    columns, which refills the pruned zeros; symmetric round-to-nearest maps
                    0 to 0 exactly, so the 2:4 pattern survives quantization
==================  ===========================================================================

``ignore`` keeps modules in full precision (``lm_head`` by default: the output layer is the
most sensitive one, and vLLM's kernels expect it unquantized).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from rtune.components.quantize.config import QuantizeConfig

LINEAR = ["Linear"]
DECODER_LAYERS = [r"re:.*layers\.\d+$"]  # model.layers.N in Llama, Qwen, Mistral, Gemma


def int4_group_weights(group_size: int) -> dict[str, Any]:
    """Symmetric int4, one scale per ``group_size`` input columns of each output row."""
    return {
        "num_bits": 4,
        "type": "int",
        "symmetric": True,
        "strategy": "group",
        "group_size": group_size,
    }


def gptq_w4a16(group_size: int, ignore: Sequence[str], dampening_frac: float) -> dict[str, Any]:
    return {
        "GPTQModifier": {
            "ignore": list(ignore),
            "dampening_frac": dampening_frac,
            "config_groups": {
                "group_0": {"targets": LINEAR, "weights": int4_group_weights(group_size)}
            },
        }
    }


def rtn_w4a16(group_size: int, ignore: Sequence[str]) -> dict[str, Any]:
    """Round-to-nearest int4 (no error feedback: zeros stay zeros)."""
    return {
        "QuantizationModifier": {
            "ignore": list(ignore),
            "config_groups": {
                "group_0": {"targets": LINEAR, "weights": int4_group_weights(group_size)}
            },
        }
    }


def fp8_dynamic(ignore: Sequence[str]) -> dict[str, Any]:
    return {
        "QuantizationModifier": {"targets": LINEAR, "ignore": list(ignore), "scheme": "FP8_DYNAMIC"}
    }


def smoothquant_gptq_w8a8(
    smoothing_strength: float, ignore: Sequence[str], dampening_frac: float
) -> dict[str, Any]:
    """SmoothQuant's mappings are inferred from the architecture (Llama, Qwen, Mistral, ...)."""
    return {
        "SmoothQuantModifier": {"smoothing_strength": smoothing_strength},
        "GPTQModifier": {
            "targets": LINEAR,
            "ignore": list(ignore),
            "dampening_frac": dampening_frac,
            "scheme": "W8A8",
        },
    }


def sparsegpt_2of4(ignore: Sequence[str], dampening_frac: float) -> dict[str, Any]:
    """SparseGPT targets the decoder layers (it prunes every Linear inside them).

    Targeting ``Linear`` would also prune ``lm_head``, whose weight is tied to the input
    embeddings in small models: 0.14 names it ``lm_head.`` there, so ``ignore`` misses it.
    """
    return {
        "SparseGPTModifier": {
            "sparsity": 0.5,
            "mask_structure": "2:4",
            "targets": DECODER_LAYERS,
            "ignore": list(ignore),
            "dampening_frac": dampening_frac,
        }
    }


def recipe_stages(config: QuantizeConfig) -> dict[str, Any]:
    """The recipe of ``config.method`` as a dict of stages (``none`` has no recipe)."""
    ignore, damp = config.ignore, config.dampening_frac
    sparsity = {"sparsity_stage": {"sparsity_modifiers": sparsegpt_2of4(ignore, damp)}}
    quantization: dict[str, Any]
    if config.method == "w4a16":
        quantization = gptq_w4a16(config.group_size, ignore, damp)
    elif config.method == "fp8_dynamic":
        quantization = fp8_dynamic(ignore)
    elif config.method == "w8a8":
        quantization = smoothquant_gptq_w8a8(config.smoothing_strength, ignore, damp)
    elif config.method == "sparse_2of4":
        return sparsity
    elif config.method == "sparse_2of4_w4a16":
        quantization = rtn_w4a16(config.group_size, ignore)
        return {**sparsity, "quantization_stage": {"quantization_modifiers": quantization}}
    else:
        raise ValueError(f"method {config.method!r} has no llm-compressor recipe")
    return {"quantization_stage": {"quantization_modifiers": quantization}}


def recipe_yaml(config: QuantizeConfig) -> str:
    """The recipe as YAML text, headed by a comment naming the method."""
    body = yaml.safe_dump(recipe_stages(config), sort_keys=False, default_flow_style=False)
    return f"# rtune quantize: method {config.method}\n{body}"
