"""Per-GPU memory of fine-tuning one model: each method x ZeRO stage x offload is a ``PlanRow``.

Every row is ``model states + activations + buffer`` per GPU, plus CPU RAM per node.

**Model states, full fine-tuning** come from DeepSpeed's own estimators (imported lazily with
``DS_ACCELERATOR=cpu``), called with ``additional_buffer_factor=1.5`` (their default):

- ZeRO-3 ``estimate_zero3_model_states_mem_needs(P, largest_layer, gpus_per_node, nodes,
  cpu_offload, cpu_offload_params, zero_init=True)``. With ``N`` GPUs in all and ``L`` the largest
  layer's parameters (the embedding ``vocab x hidden`` for Llama), the GPU holds
  ``4L + 18P/N`` bytes (2 bf16 params + 2 bf16 grads + 4 fp32 grads + 4 fp32 master + 8 Adam
  moments, partitioned; ``4L`` is the gathered working layer); with optimizer+parameter offload
  only ``4L`` stays on the GPU and each node's CPU holds ``18P/nodes x 1.5``. Without offload the
  CPU needs ``4L x gpus_per_node x 1.5`` (``zero.Init`` loads one layer at a time: the trainer must
  build its ``TrainingArguments`` before the model, as HF Trainer with a ZeRO-3 config does).
- ZeRO-2 ``estimate_zero2_model_states_mem_needs(P, gpus_per_node, nodes, cpu_offload)``: the
  GPU holds ``2P + 18P/N`` (bf16 params replicated), or ``2P`` with the optimizer offloaded and
  then ``max(4N, 16) P x 1.5`` CPU per node; otherwise CPU ``4P x gpus_per_node x 1.5``.
- ZeRO-0 (plain DDP, no estimator): DeepSpeed's ZeRO-2 figure for a world of one GPU, i.e.
  nothing partitioned: ``20P`` per GPU, CPU as ZeRO-2 without offload.

If DeepSpeed is not importable the same formulas run in pure Python (``fallback_zero3`` and
``fallback_zero2``, copied from DeepSpeed 0.19's source; a test keeps them equal).

**LoRA / QLoRA**: the trainable adapters (``r x (in + out)`` for each targeted linear: q, k, v, o,
gate, up, down in every block) go through the same estimators, with ``L`` still the base model's
largest layer (ZeRO-3 gathers frozen layers too). The frozen base weights are added on top: bf16
(2 bytes/param) for LoRA; for QLoRA the block linears are NF4 with double quantization (4 bits +
8-bit absmax per 64 weights + fp32 per 256 blocks = 0.516 bytes/param, Dettmers et al. 2023) and
embeddings/norms stay bf16. ZeRO-3 partitions them over all GPUs, or with parameter offload
moves them to CPU RAM (split over the nodes, x 1.5) and keeps ``zero.Init``'s per-process loading
buffer on top (the no-offload CPU figure, ``4L x gpus_per_node x 1.5``: the adapters' offloaded
states are too small for the 1.5 factor to cover it as it does for full fine-tuning). ZeRO-0/2
replicate them on every GPU and load them once per process on the CPU (x 1.5). So with the
optimizer offloaded under ZeRO-2, LoRA needs slightly *more* GPU memory than full fine-tuning
(both keep the bf16 weights on the GPU; LoRA also keeps its adapters' ``2 bytes x r x (in+out)``).

**Activations** (same for every method and stage: ZeRO does not partition them), bf16, per GPU,
sequence ``s`` = max_length, micro batch ``b``, hidden ``h``, heads ``a`` (Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models", no tensor/sequence parallelism):

- one block's activations: ``s b (34 h + 5 a s)`` bytes. This keeps the ``5 a s^2 b`` attention
  score term (eager attention; SDPA/flash kernels do not store it) and a 4h MLP (Llama's SwiGLU is
  wider but has no dropout masks), so it is a conservative estimate;
- without gradient checkpointing: ``layers x`` one block;
- with gradient checkpointing (one checkpoint per decoder layer): each layer keeps its input,
  ``2 s b h`` bytes, plus one block's full activations while it is recomputed in backward;
- plus the logits, ``b s vocab x 4`` bytes (the loss upcasts them to fp32).

**Buffer**: a stated ``BUFFER_GIB`` per GPU for the CUDA context, NCCL buffers and allocator
fragmentation. A row **fits** when the per-GPU total is at most ``GPU_HEADROOM`` (90 %) of the
GPU's memory and the CPU need per node is at most the node's RAM.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rtune.components.common.records import InputError
from rtune.components.finetune.plan_shapes import SOURCE, ModelShape

log = logging.getLogger(__name__)

GIB = 2**30
BUFFER_GIB = 2.0
GPU_HEADROOM = 0.9
ADDITIONAL_BUFFER_FACTOR = 1.5
BF16_BYTES = 2
NF4_DOUBLE_QUANT_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
METHODS = ("lora", "qlora", "full")
# (ZeRO stage, offload) in display order; offload = optimizer (stage 2) or optimizer+params (3).
COMBINATIONS = ((0, False), (2, False), (2, True), (3, False), (3, True))
SHIPPED_DEEPSPEED = {(3, False): "zero3", (3, True): "zero3_offload"}


@dataclass(frozen=True)
class PlanInputs:
    """The hardware and the run's shape; ``gpu_limit`` is the usable share of one GPU."""

    gpus_per_node: int = 8
    nodes: int = 1
    gpu_memory_gib: float = 80.0
    cpu_memory_gib_per_node: float = 1024.0
    max_length: int = 2048
    micro_batch: int = 1
    gradient_checkpointing: bool = True
    lora_r: int = 16
    buffer_gib: float = BUFFER_GIB

    def __post_init__(self) -> None:
        for name in ("gpus_per_node", "nodes", "max_length", "micro_batch", "lora_r"):
            if getattr(self, name) < 1:
                raise InputError(
                    SOURCE, f"{name} must be >= 1", "pass a positive integer", field=_flag(name)
                )
        for name in ("gpu_memory_gib", "cpu_memory_gib_per_node"):
            if not getattr(self, name) > 0:
                raise InputError(
                    SOURCE, f"{name} must be > 0", "pass the memory in GiB", field=_flag(name)
                )

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def gpu_limit_bytes(self) -> float:
        return GPU_HEADROOM * self.gpu_memory_gib * GIB


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# DeepSpeed estimator signatures: zero3(...) -> (cpu, gpu, largest_layer_memory); zero2 -> (cpu, gpu).
Zero3Estimator = Callable[..., tuple[int, int, int]]
Zero2Estimator = Callable[..., tuple[int, int]]


@dataclass(frozen=True)
class Estimators:
    zero3: Zero3Estimator
    zero2: Zero2Estimator
    source: str


def fallback_zero3(
    total_params: int,
    largest_layer_params: int,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = True,
    cpu_offload_params: bool = True,
    zero_init: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int, int]:
    """DeepSpeed 0.19 ``estimate_zero3_model_states_mem_needs``: (cpu/node, gpu, 4 x largest)."""
    total_gpus = num_nodes * num_gpus_per_node
    per_node = 1 / num_nodes
    largest = 4 * largest_layer_params
    if cpu_offload and cpu_offload_params:
        gpu = largest
        factor = 18 * per_node if zero_init else max(4 * num_gpus_per_node, 18 * per_node)
        cpu = total_params * factor * additional_buffer_factor
    elif cpu_offload:
        gpu = largest + int(2 * total_params / total_gpus)
        factor = 16 * per_node if zero_init else max(4 * num_gpus_per_node, 16 * per_node)
        cpu = total_params * factor * additional_buffer_factor
    else:
        gpu = largest + int(18 * total_params / total_gpus)
        loaded = largest_layer_params if zero_init else total_params
        cpu = loaded * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu), int(gpu), largest


def fallback_zero2(
    total_params: int,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int]:
    """DeepSpeed 0.19 ``estimate_zero2_model_states_mem_needs``: (cpu/node, gpu)."""
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        gpu = 2 * total_params
        cpu = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        gpu = 2 * total_params + int(18 * total_params / total_gpus)
        cpu = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu), int(gpu)


FALLBACK = Estimators(
    fallback_zero3, fallback_zero2, "fallback formulas (DeepSpeed 0.19's, deepspeed not importable)"
)


def load_estimators() -> Estimators:
    """DeepSpeed's estimators (CPU accelerator unless one is set), else the fallback formulas."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    except (ImportError, OSError, RuntimeError) as err:
        log.warning("deepspeed not importable (%s); using the fallback formulas", err)
        return FALLBACK
    return Estimators(
        estimate_zero3_model_states_mem_needs,
        estimate_zero2_model_states_mem_needs,
        f"deepspeed {deepspeed.__version__} estimators",
    )


def lora_trainable_params(shape: ModelShape, lora_r: int) -> int:
    """LoRA A (r x in) and B (out x r) for every block linear: r x (in + out) each."""
    return shape.layers * sum(lora_r * (a + b) for a, b in shape.block_linears().values())


def frozen_base_bytes(shape: ModelShape, method: str) -> float:
    """Bytes of the frozen base weights: none for full FT, bf16 for LoRA, NF4 linears for QLoRA."""
    if method == "full":
        return 0.0
    if method == "lora":
        return float(BF16_BYTES * shape.total_params)
    rest = shape.total_params - shape.linear_params
    return shape.linear_params * NF4_DOUBLE_QUANT_BYTES + BF16_BYTES * rest


def trainable_params(shape: ModelShape, method: str, lora_r: int) -> int:
    return shape.total_params if method == "full" else lora_trainable_params(shape, lora_r)


def activation_bytes(shape: ModelShape, inputs: PlanInputs) -> int:
    """Korthikanti et al.'s per-block estimate, checkpointed or not, plus fp32 logits (see top)."""
    s, b, h = inputs.max_length, inputs.micro_batch, shape.hidden
    one_block = s * b * (34 * h + 5 * shape.heads * s)
    if inputs.gradient_checkpointing:
        kept = shape.layers * 2 * s * b * h + one_block
    else:
        kept = shape.layers * one_block
    return kept + b * s * shape.vocab * 4


def model_state_bytes(
    shape: ModelShape,
    method: str,
    stage: int,
    offload: bool,
    inputs: PlanInputs,
    estimators: Estimators,
) -> tuple[float, float]:
    """(GPU bytes per GPU, CPU bytes per node) of params, grads and optimizer states (see top)."""
    trainable = trainable_params(shape, method, inputs.lora_r)
    frozen = frozen_base_bytes(shape, method)
    gpn, nodes, factor = inputs.gpus_per_node, inputs.nodes, ADDITIONAL_BUFFER_FACTOR
    if stage == 3:
        cpu, gpu, _ = estimators.zero3(
            trainable, shape.largest_layer_params, gpn, nodes, offload, offload, True, factor
        )
        if offload and method != "full":
            loading, _, _ = estimators.zero3(
                trainable, shape.largest_layer_params, gpn, nodes, False, False, True, factor
            )
            return float(gpu), cpu + frozen / nodes * factor + loading
        if offload:
            return float(gpu), float(cpu)
        return gpu + frozen / inputs.total_gpus, float(cpu)
    if stage == 2:
        cpu, gpu = estimators.zero2(trainable, gpn, nodes, offload, factor)
    else:
        _, gpu = estimators.zero2(trainable, 1, 1, False, factor)
        cpu, _ = estimators.zero2(trainable, gpn, nodes, False, factor)
    return gpu + frozen, cpu + frozen * gpn * factor


@dataclass(frozen=True)
class PlanRow:
    """One method x ZeRO stage x offload combination; memory in bytes."""

    method: str
    zero_stage: int
    offload: bool
    model_states: float
    activations: float
    buffer: float
    cpu_per_node: float
    fits_gpu: bool
    fits_cpu: bool

    @property
    def gpu_total(self) -> float:
        return self.model_states + self.activations + self.buffer

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_cpu

    @property
    def offload_label(self) -> str:
        if not self.offload:
            return "none"
        return "optimizer+params" if self.zero_stage == 3 else "optimizer"

    @property
    def deepspeed(self) -> str | None:
        """The shipped DeepSpeed config this row is (components/finetune/deepspeed/<name>.json)."""
        return SHIPPED_DEEPSPEED.get((self.zero_stage, self.offload))

    def describe(self) -> str:
        offload = "" if not self.offload else f" with {self.offload_label} offload"
        return f"{self.method} ZeRO-{self.zero_stage}{offload}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "zero_stage": self.zero_stage,
            "offload": self.offload_label,
            "deepspeed": self.deepspeed,
            "model_states_gib": in_gib(self.model_states),
            "activations_gib": in_gib(self.activations),
            "buffer_gib": in_gib(self.buffer),
            "gpu_total_gib": in_gib(self.gpu_total),
            "cpu_per_node_gib": in_gib(self.cpu_per_node),
            "model_states_bytes": int(self.model_states),
            "gpu_total_bytes": int(self.gpu_total),
            "cpu_per_node_bytes": int(self.cpu_per_node),
            "fits": self.fits,
            "fits_gpu": self.fits_gpu,
            "fits_cpu": self.fits_cpu,
        }


def in_gib(value: float) -> float:
    """Bytes as GiB rounded to 0.01, as every table, reason and JSON field shows them."""
    return round(value / GIB, 2)


def plan_rows(
    shape: ModelShape, methods: Iterable[str], inputs: PlanInputs, estimators: Estimators
) -> list[PlanRow]:
    """Every combination for each method, in display order."""
    activations = float(activation_bytes(shape, inputs))
    buffer = inputs.buffer_gib * GIB
    rows = []
    for method in methods:
        for stage, offload in COMBINATIONS:
            gpu, cpu = model_state_bytes(shape, method, stage, offload, inputs, estimators)
            fits_gpu = gpu + activations + buffer <= inputs.gpu_limit_bytes
            fits_cpu = cpu <= inputs.cpu_memory_gib_per_node * GIB
            row = PlanRow(method, stage, offload, gpu, activations, buffer, cpu, fits_gpu, fits_cpu)
            rows.append(row)
    return rows
