"""Teacher on a local Hugging Face model (the embedded default on CPU): batched generation.

Requests are sorted by prompt length and cut into batches of ``batch_size``, so little padding is
wasted; prompts are left-padded so every row's last prompt token sits at the same position and
generation continues each row where its prompt ends. The chat template renders the conversation
and the prefilled marker is appended after the generation prompt, so the model starts inside the
reply format (with two worked examples and the prefill, the 135M default followed the format 4
times in 5; without them, 0 in 5). Each batch's records are handed back as soon as it finishes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.protocol import Completion, OnDone, TeacherRequest

log = logging.getLogger(__name__)


def render_prompt(tokenizer: Any, request: TeacherRequest) -> str:
    """Chat-templated conversation ending in an open assistant turn that holds the prefill."""
    text = tokenizer.apply_chat_template(
        list(request.messages), tokenize=False, add_generation_prompt=True
    )
    return str(text) + request.prefill


def batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so a too-big batch fails
    on the first try rather than at the end)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def generated_length(row: Sequence[int], eos_ids: set[int]) -> int:
    """Tokens the model generated in one row: up to and including its first end-of-turn token
    (after that the row only holds padding while the rest of the batch finishes)."""
    for position, token in enumerate(row):
        if token in eos_ids:
            return position + 1
    return len(row)


def stop_text_at_end(text: str, before_last_token: str, stop: Sequence[str]) -> bool:
    """Whether a stop text ends in the row's last token, i.e. the stop criterion ended the row
    (``StopStringCriteria`` fires on the token that completes a stop text, so the text ends there
    or within that token's overhang)."""
    return any(
        (at := text.rfind(s)) != -1 and at + len(s) > len(before_last_token) for s in stop if s
    )


class TransformersTeacher:
    """The ``transformers`` backend: greedy (or sampled) batched generation on a local model."""

    prefills = True
    structured = False

    def __init__(self, config: TeacherConfig) -> None:
        from rtune.components.common.models import load_causal_lm, load_tokenizer, resolve_model

        self.config = config
        path = resolve_model(config.model)
        self.model_name = config.model if config.model != "default" else path.name
        self.tokenizer = load_tokenizer(path)
        self.tokenizer.padding_side = "left"
        self.model = load_causal_lm(path)
        eos = self.model.generation_config.eos_token_id
        eos_list = eos if isinstance(eos, list) else [eos]
        ends = [*eos_list, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id]
        # A row that stopped early is padded while the batch finishes: pad ends it too.
        self.eos_ids = {int(t) for t in ends if t is not None}
        self._stoppers: dict[tuple[str, ...], Any] = {}

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the teacher's own tokenizer (for ``max_sample_tokens``)."""
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        prompts = [render_prompt(self.tokenizer, request) for request in requests]
        lengths = [len(self.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
        for batch in batches_by_length(lengths, self.config.batch_size):
            stop = tuple(sorted({text for i in batch for text in requests[i].stop}))
            completions = self._generate([prompts[i] for i in batch], stop)
            for index, completion in zip(batch, completions, strict=True):
                on_done(index, completion.with_prefill(requests[index].prefill))

    def _stopping(self, stop: tuple[str, ...]) -> Any:
        """Criteria that end a row once it produced one of ``stop``; built once per set of texts
        (building scans the whole vocabulary: ~2 s for the embedded model)."""
        from transformers import StoppingCriteriaList, StopStringCriteria

        if stop not in self._stoppers:
            criteria = [StopStringCriteria(self.tokenizer, list(stop))] if stop else []
            self._stoppers[stop] = StoppingCriteriaList(criteria)
        return self._stoppers[stop]

    def _generate(self, prompts: list[str], stop: tuple[str, ...]) -> list[Completion]:
        import torch
        from transformers import GenerationConfig

        encoded = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        )
        sampling = self.config.temperature > 0
        generation = GenerationConfig(
            max_new_tokens=self.config.max_new_tokens,
            do_sample=sampling,
            temperature=self.config.temperature if sampling else None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids),
        )
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                **encoded, generation_config=generation, stopping_criteria=self._stopping(stop)
            )
        latency = time.perf_counter() - started
        new_tokens = output[:, encoded.input_ids.shape[1] :].tolist()
        prompt_tokens = encoded.attention_mask.sum(dim=1).tolist()
        log.debug("generated a batch of %d in %.1f s", len(prompts), latency)
        return [
            self._completion(row, int(used), latency, stop, prompt)
            for row, used, prompt in zip(new_tokens, prompt_tokens, prompts, strict=True)
        ]

    def _completion(
        self, row: list[int], prompt_tokens: int, latency: float, stop: Sequence[str], prompt: str
    ) -> Completion:
        length = generated_length(row, self.eos_ids)
        text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
        return Completion(
            text=text,
            model=self.model_name,
            prompt_tokens=prompt_tokens,
            completion_tokens=length,
            latency_s=latency,
            truncated=self._cut(row[:length], text, stop, prompt),
        )

    def _cut(self, generated: list[int], text: str, stop: Sequence[str], prompt: str) -> bool:
        """A row was cut by the budget when it spent all ``max_new_tokens`` without an end-of-turn
        token and without completing a stop text on its last token. The stop criterion reads the
        prompt too (a stop text may begin in the prefill), so the prompt's tail is checked along."""
        if len(generated) < self.config.max_new_tokens or generated[-1] in self.eos_ids:
            return False
        before = self.tokenizer.decode(generated[:-1], skip_special_tokens=True)
        tail = prompt[-max((len(s) for s in stop), default=0) :] if stop else ""
        return not stop_text_at_end(tail + text, tail + before, stop)
