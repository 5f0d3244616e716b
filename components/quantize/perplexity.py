"""The quality guard's numbers: response-token perplexity and weight size of a model folder.

Perplexity over the held-out passes (``ids``, first response position ``start``)::

    NLL  = sum over records r, response positions p >= start_r of  -log softmax(logits[p-1])[ids[p]]
    PPL  = exp(NLL / number of response tokens)

i.e. ``exp`` of the token-weighted mean of the cross-entropy HF computes with labels masked to
the response — the scorer's ``L(y | P(x))``, pooled over records. Only the logits that predict
response tokens are computed (``logits_to_keep``), in fp32 on CPU. A compressed-tensors folder
(the quantized model) loads through transformers, which decompresses it, so both models are
scored by the same code in the same environment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtune.components.scoring.passes import TokenPass

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MB = 1_000_000


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    mean_nll: float
    tokens: int
    records: int


def weight_bytes(model_dir: Path) -> int:
    """Bytes of the weight files in a model folder (tokenizer and config files excluded)."""
    return sum(
        path.stat().st_size
        for path in Path(model_dir).rglob("*")
        if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES)
    )


def response_nll(model: Any, token_pass: TokenPass) -> float:
    """Summed negative log-likelihood of one pass's response tokens."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    ids = torch.tensor([token_pass.ids], device=device)
    keep = len(token_pass.ids) - token_pass.start + 1  # positions start-1 .. end predict targets
    with torch.inference_mode():
        logits = model(input_ids=ids, logits_to_keep=keep).logits[0, :-1].float()
    targets = ids[0, token_pass.start :]
    return float(F.cross_entropy(logits, targets, reduction="sum"))


def perplexity_of(model: Any, passes: Iterable[TokenPass]) -> Perplexity:
    total, tokens, records = 0.0, 0, 0
    for token_pass in passes:
        total += response_nll(model, token_pass)
        tokens += token_pass.n_targets
        records += 1
    if not tokens:
        raise ValueError("no response tokens to measure perplexity on")
    mean = total / tokens
    return Perplexity(math.exp(mean), mean, tokens, records)


def load_for_perplexity(model_dir: Path) -> Any:
    """fp32 on CPU (the scorer's precision); bf16/fp16 as saved, spread over GPUs, on a GPU."""
    import torch

    from rtune.components.common.models import load_causal_lm

    if not torch.cuda.is_available():
        return load_causal_lm(model_dir)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", device_map="auto")
    model.eval()
    return model


def model_perplexity(model_dir: Path, passes: Iterable[TokenPass]) -> Perplexity:
    """Load the folder, measure, release the model."""
    import gc

    model = load_for_perplexity(model_dir)
    try:
        return perplexity_of(model, passes)
    finally:
        del model
        gc.collect()
