"""The straightforward per-sample scorer: ground truth for tests, baseline for the benchmark.

Four separate forward passes per sample at batch size 1, each scored by HF's own
``outputs.loss`` with labels set to -100 before the target — the reference implementation's
``get_perplexity_and_embedding_part_text`` (Cherry LLM / Reflection-Tuning), plus the start-token
and truncation rules of DESIGN §3. It shares only the templates with ``rtune.components.scoring``
(templating is the spec); tokenization, truncation, masking and the formulas are written out
again here on purpose, as plainly as possible.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rtune.components.scoring.config import ScoringConfig
from rtune.components.scoring.templates import get_template, scoring_texts


def oracle_start_ids(tokenizer: Any, start_token: str = "auto") -> list[int]:
    """A start token only when the tokenizer does not add a BOS itself."""
    adds_bos = len(tokenizer.encode("a")) > len(tokenizer.encode("a", add_special_tokens=False))
    vocab = tokenizer.get_vocab()
    if start_token == "none" or adds_bos:
        return []
    if start_token != "auto":
        return [vocab[start_token]]
    for token in ("<|endoftext|>", tokenizer.bos_token, tokenizer.eos_token):
        if token and token in vocab:
            return [vocab[token]]
    return []


def hf_target_loss(model: Any, input_ids: list[int], target_start: int) -> float | None:
    """HF ``outputs.loss`` with every label before ``target_start`` masked (None: no target)."""
    if max(target_start, 1) >= len(input_ids):
        return None
    ids = torch.tensor([input_ids])
    labels = ids.clone()
    labels[0, :target_start] = -100
    with torch.no_grad():
        return float(model(input_ids=ids, labels=labels).loss.item())


def conditioned_loss(
    model: Any, tokenizer: Any, start: list[int], text: str, target: str, max_length: int
) -> tuple[float | None, bool, int]:
    """Loss of ``target`` at the end of ``text``: (loss, truncated, target tokens kept)."""
    full = start + tokenizer.encode(text)
    input_ids = full[:max_length]
    start_index = text.rfind(target)
    target_start = len(start + tokenizer.encode(text[:start_index]))
    kept = len(input_ids) - max(target_start, 1)
    return hf_target_loss(model, input_ids, target_start), len(full) > max_length, kept


def alone_loss(
    model: Any, tokenizer: Any, start: list[int], text: str, keep: int | None, max_length: int
) -> float | None:
    """Loss of ``text`` alone, cut to ``keep`` target tokens when the conditioned pass was cut."""
    input_ids = start + tokenizer.encode(text)
    target_start = len(start + tokenizer.encode(""))
    if keep is not None:
        input_ids = input_ids[: max(target_start, 1) + keep]
    return hf_target_loss(model, input_ids[:max_length], target_start)


def oracle_scores(
    model: Any,
    tokenizer: Any,
    config: ScoringConfig,
    instruction: str,
    input_text: str,
    output: str,
) -> dict[str, Any]:
    """All score fields of one candidate, computed the slow and obvious way."""
    start = oracle_start_ids(tokenizer, config.start_token)
    texts = scoring_texts(
        get_template(config.template),
        instruction,
        input_text,
        output,
        config.reverse_prompt,
        tokenizer,
    )
    if not output.strip():
        ifd_side: tuple[Any, ...] = (None, None, "empty_output")
        rifd_side: tuple[Any, ...] = (None, None, "empty_output")
    else:
        ifd_side = _one_side(
            model, tokenizer, start, texts.prompt, texts.output, config.max_length, "empty_output"
        )
        rifd_side = (None, None, "empty_instruction")
        if texts.instruction.strip():
            rifd_side = _one_side(
                model,
                tokenizer,
                start,
                texts.reverse,
                texts.instruction,
                config.max_length,
                "empty_instruction",
            )
    y_given_x, y_alone, ifd_problem = ifd_side
    x_given_y, x_alone, rifd_problem = rifd_side
    if ifd_problem == rifd_problem:
        reason = ifd_problem
    else:
        named = [f"{n}: {p}" for n, p in (("ifd", ifd_problem), ("rifd", rifd_problem)) if p]
        reason = "; ".join(named)
    return {
        "ifd": None if ifd_problem else math.exp(y_given_x - y_alone),
        "rifd": None if rifd_problem else math.exp(x_given_y - x_alone),
        "ifd_loss": None if ifd_problem else y_given_x / y_alone,
        "rifd_loss": None if rifd_problem else x_given_y / x_alone,
        "loss_output": y_alone,
        "loss_output_given_instruction": y_given_x,
        "loss_instruction": x_alone,
        "loss_instruction_given_output": x_given_y,
        "reason": reason,
    }


def _one_side(
    model: Any,
    tokenizer: Any,
    start: list[int],
    prefix: str,
    target: str,
    max_length: int,
    empty: str,
) -> tuple[float | None, float | None, str | None]:
    """(conditioned loss, alone loss, problem) for one of IFD / r-IFD."""
    conditioned, truncated, kept = conditioned_loss(
        model, tokenizer, start, prefix + target, target, max_length
    )
    if conditioned is None:
        return None, None, "truncated" if truncated else empty
    alone = alone_loss(model, tokenizer, start, target, kept if truncated else None, max_length)
    if alone is None:
        return None, None, "too_short"
    return conditioned, alone, None
