"""Teacher on vLLM's offline engine (GPU): the whole batch goes to ``LLM.chat`` at once.

Deliberately thin - vLLM schedules and batches by itself. Records are sent in chunks of
``batch_size`` only so that finished chunks reach the checkpoint while the rest runs. The
assistant turn is continued from the prefilled marker (``continue_final_message``), exactly as
the transformers backend does. ``vllm`` is imported when the backend is built, never at import.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.protocol import Completion, Message, OnDone, TeacherRequest

MISSING_VLLM = (
    "the vllm teacher backend needs the vLLM package and a CUDA GPU: install it with "
    "`pip install 'rtune[serve]'` or run the stage in the rtune serve image; on a CPU machine use "
    "--teacher transformers, or --teacher openai with --teacher-url of a running vLLM server"
)


def conversation(request: TeacherRequest) -> list[Message]:
    """The chat, ending in the prefilled assistant turn that vLLM continues."""
    return [*request.messages, {"role": "assistant", "content": request.prefill}]


class VLLMTeacher:
    """The ``vllm`` backend."""

    prefills = True
    structured = False

    def __init__(self, config: TeacherConfig) -> None:
        try:
            import vllm
        except ImportError as err:
            raise RuntimeError(MISSING_VLLM) from err
        from rtune.components.common.models import resolve_model

        self.config = config
        self._vllm = vllm
        path = resolve_model(config.model)
        self.model_name = config.model if config.model != "default" else path.name
        self.llm = vllm.LLM(model=str(path))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the served model's tokenizer (for ``max_sample_tokens``)."""
        return len(self.llm.get_tokenizer().encode(text, add_special_tokens=False))

    def sampling_params(self, stop: list[str]) -> Any:
        return self._vllm.SamplingParams(
            max_tokens=self.config.max_new_tokens, temperature=self.config.temperature, stop=stop
        )

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        size = self.config.batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            params = self.sampling_params(sorted({text for r in chunk for text in r.stop}))
            began = time.perf_counter()
            outputs = self.llm.chat(
                [conversation(r) for r in chunk],
                params,
                use_tqdm=False,
                add_generation_prompt=False,
                continue_final_message=True,
            )
            latency = time.perf_counter() - began
            for offset, (request, output) in enumerate(zip(chunk, outputs, strict=True)):
                on_done(start + offset, self._completion(output, latency, request.prefill))

    def _completion(self, output: Any, latency: float, prefill: str) -> Completion:
        best = output.outputs[0]
        return Completion(
            text=best.text,
            model=self.model_name,
            prompt_tokens=len(output.prompt_token_ids),
            completion_tokens=len(best.token_ids),
            latency_s=latency,
            prefill=prefill,
            truncated=getattr(best, "finish_reason", None) == "length",
        )
