"""The SFT trainer: HF ``Trainer`` over packed rows, loss and logits at target positions only.

Why a ``Trainer`` subclass and not a hand-written loop: DeepSpeed ZeRO-3 (+ offload), gradient
accumulation, checkpoints with resume, LR schedules and the MLflow callback all come from the
HF integration and behave the way users of HF expect. What we change is the data layout and the
loss:

* each device step is one packed row (``data.pack_examples``): no padding tokens are computed;
* the model projects to the vocabulary only at the positions whose next token is a label
  (``logits_to_keep`` = boolean target mask): on a 49k-vocabulary model the output layer is most
  of the cost of a full-logits forward/backward over prompt tokens;
* loss = Σ CE(target tokens) / (target tokens in the whole accumulated global batch, over all
  ranks) — the same normalisation HF's own causal-LM loss uses with ``num_items_in_batch``, so a
  token weighs the same whatever row or micro-step it lands in.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from rtune.components.finetune.config import FinetuneConfig
from rtune.components.finetune.data import IGNORE, PackedRow

log = logging.getLogger(__name__)


class PackedRowDataset(torch.utils.data.Dataset):
    """Packed rows as the dicts the collator concatenates."""

    def __init__(self, rows: Sequence[PackedRow]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Sequence[int]]:
        row = self.rows[index]
        return {
            "input_ids": row.input_ids,
            "position_ids": row.position_ids,
            "shift_labels": row.shift_labels,
        }


def collate_packed(features: Sequence[dict[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
    """Concatenate the rows of a micro-batch into one ``[1, T]`` row (still padding-free).

    ``labels`` is present only so the Trainer counts targets (it reads ``shift_labels``).
    """
    batch = {
        key: torch.tensor([token for feature in features for token in feature[key]]).unsqueeze(0)
        for key in ("input_ids", "position_ids", "shift_labels")
    }
    batch["labels"] = batch["shift_labels"]
    return batch


class PackedSFTTrainer(Trainer):
    """``Trainer`` whose loss is computed from logits at target positions only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens_seen = 0
        self.target_tokens_seen = 0
        self._last_log = (time.perf_counter(), 0)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        shift_labels = inputs["shift_labels"]
        keep = shift_labels != IGNORE
        # use_cache=False matters: with a KV cache transformers skips the packed-sequence mask
        outputs = model(
            input_ids=inputs["input_ids"],
            position_ids=inputs["position_ids"],
            logits_to_keep=keep,
            use_cache=False,
        )
        logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
        loss_sum = F.cross_entropy(logits, shift_labels[keep], reduction="sum")
        if model.training:
            self.tokens_seen += int(inputs["input_ids"].numel())
            self.target_tokens_seen += int(keep.sum())
        if num_items_in_batch is None:
            loss = loss_sum / keep.sum().clamp(min=1)
        else:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add throughput since the last log (tokens of this rank) to every training log line."""
        if "loss" in logs:
            now = time.perf_counter()
            then, seen = self._last_log
            logs["tokens_per_second"] = round((self.tokens_seen - seen) / max(now - then, 1e-9), 2)
            logs["tokens_seen"] = float(self.tokens_seen)
            self._last_log = (now, self.tokens_seen)
        super().log(logs, start_time)


def use_bf16(config: FinetuneConfig) -> bool:
    """bf16 on GPU, fp32 on CPU (bf16 CPU kernels are slower and less exact here)."""
    if config.precision == "auto":
        return torch.cuda.is_available()
    return config.precision == "bf16"


def load_student(config: FinetuneConfig, model_path: str) -> Any:
    """The student ready to train: full weights, or frozen base + LoRA (4-bit base for qlora)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if use_bf16(config) else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": config.attn_implementation}
    if config.attn_implementation == "flash_attention_2" and not importlib.util.find_spec(
        "flash_attn"
    ):
        raise ValueError(
            "attn_implementation flash_attention_2 needs the flash-attn package (GPU image); "
            "use sdpa here"
        )
    if config.method == "qlora":
        kwargs["quantization_config"] = qlora_quantization_config()
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    if config.method in ("lora", "qlora"):
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(config))
        if config.gradient_checkpointing:
            model.enable_input_require_grads()
    return model


def lora_config(config: FinetuneConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def qlora_quantization_config() -> Any:
    """NF4 4-bit base with bf16 compute (QLoRA); bitsandbytes' kernels need a CUDA GPU."""
    if not torch.cuda.is_available():
        raise ValueError("method qlora needs a CUDA GPU (bitsandbytes 4-bit); use lora on CPU")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def gradient_accumulation(config: FinetuneConfig, rows: Sequence[PackedRow], world: int) -> int:
    """Micro-steps per optimizer step so that one step sees ~``global_batch_size`` records."""
    records = sum(len(row.example_ids) for row in rows)
    per_row = records / max(len(rows), 1)
    return max(1, round(config.global_batch_size / max(per_row * world, 1e-9)))


def prepare_cpu_deepspeed_state() -> bool:
    """Set up DeepSpeed's process group over gloo before ``TrainingArguments`` on a CPU cluster.

    Left to itself, ``TrainingArguments`` asks Accelerate for a DeepSpeed state without a backend
    and, with no GPU, Accelerate then counts one process: the batch sizes it fills into the
    DeepSpeed config disagree with DeepSpeed's real world size. A pre-configured ``PartialState``
    with the gloo backend (what DeepSpeed's CPU accelerator falls back to without oneCCL) gives
    both the same world. GPUs (nccl) need none of this.
    """
    import os

    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    return True


def training_arguments(
    config: FinetuneConfig, output_dir: str, accumulation: int, report_to: list[str]
) -> Any:
    """``TrainingArguments`` from the stage config (created before the model: ZeRO-3 init)."""
    from transformers import TrainingArguments

    deepspeed = config.deepspeed_config_path()
    configured_state = bool(deepspeed) and prepare_cpu_deepspeed_state()
    return TrainingArguments(
        accelerator_config={"use_configured_state": configured_state},
        output_dir=output_dir,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of all steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=use_bf16(config),
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        deepspeed=str(deepspeed) if deepspeed else None,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        report_to=report_to,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
    )
