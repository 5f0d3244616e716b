"""Per-GPU memory plan for fine-tuning: method x ZeRO stage x offload, and the config that fits.

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

**Recommendation** (``recommend``): among the fitting rows of the requested method, prefer ZeRO-3
without offload (the distributed default, no PCIe traffic), then ZeRO-3 with optimizer+parameter
offload (slower, but the way a large model fits on few GPUs). ZeRO-2 and ZeRO-0 are shown for
comparison and recommended only when no ZeRO-3 row fits and one of them does (ZeRO-3 needs the
least GPU memory, so this happens only through CPU RAM). If nothing fits, the recommendation says
so and names how many nodes would make a ZeRO-3 row fit and which lighter methods fit now.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from rtune.components.common.records import InputError

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
PREFERENCE = ((3, False), (3, True), (2, False), (2, True), (0, False))
SHIPPED_DEEPSPEED = {(3, False): "zero3", (3, True): "zero3_offload"}
MAX_SUGGESTED_NODES = 64
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
            "model_states_gib": _gib(self.model_states),
            "activations_gib": _gib(self.activations),
            "buffer_gib": _gib(self.buffer),
            "gpu_total_gib": _gib(self.gpu_total),
            "cpu_per_node_gib": _gib(self.cpu_per_node),
            "model_states_bytes": int(self.model_states),
            "gpu_total_bytes": int(self.gpu_total),
            "cpu_per_node_bytes": int(self.cpu_per_node),
            "fits": self.fits,
            "fits_gpu": self.fits_gpu,
            "fits_cpu": self.fits_cpu,
        }


def _gib(value: float) -> float:
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


@dataclass
class Recommendation:
    """The chosen row of one method (None when nothing fits), why, and where it is shipped."""

    method: str
    row: PlanRow | None
    reason: str
    nodes: int
    gpus_per_node: int
    pipeline_configs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        row = self.row
        return {
            "method": self.method,
            "fits": row is not None,
            "zero_stage": row.zero_stage if row else None,
            "offload": row.offload_label if row else None,
            "deepspeed": row.deepspeed if row else None,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "gpu_total_gib": _gib(row.gpu_total) if row else None,
            "cpu_per_node_gib": _gib(row.cpu_per_node) if row else None,
            "pipeline_configs": self.pipeline_configs,
            "reason": self.reason,
        }


def recommend(
    shape: ModelShape, method: str, inputs: PlanInputs, estimators: Estimators
) -> Recommendation:
    """Apply the preference order (see top) to ``method``'s rows; explain the choice."""
    rows = {(r.zero_stage, r.offload): r for r in plan_rows(shape, [method], inputs, estimators)}
    chosen = next((rows[key] for key in PREFERENCE if rows[key].fits), None)
    base = Recommendation(method, chosen, "", inputs.nodes, inputs.gpus_per_node)
    if chosen is None:
        base.reason = _nothing_fits(shape, method, inputs, estimators, rows)
    elif chosen.zero_stage == 3 and not chosen.offload:
        base.reason = "ZeRO-3 without offload fits: the distributed default, no CPU<->GPU traffic"
    elif chosen.zero_stage == 3:
        base.reason = (
            f"ZeRO-3 without offload needs {_need(rows[3, False], inputs)}; offloading the "
            f"optimizer states and parameters to CPU brings it to {_gib(chosen.gpu_total)} GiB "
            f"per GPU at {_gib(chosen.cpu_per_node)} GiB CPU per node"
        )
    else:
        base.reason = (
            f"ZeRO-3 does not fit (without offload: {_need(rows[3, False], inputs)}; with "
            f"offload: {_need(rows[3, True], inputs)}), {chosen.describe()} does"
        )
    return base


def _need(row: PlanRow, inputs: PlanInputs) -> str:
    """What a row needs against the limits, for a reason sentence."""
    parts = [f"{_gib(row.gpu_total)} GiB per GPU (limit {_gib(inputs.gpu_limit_bytes)})"]
    if not row.fits_cpu:
        parts.append(
            f"{_gib(row.cpu_per_node)} GiB CPU per node (have {inputs.cpu_memory_gib_per_node:g})"
        )
    return " and ".join(parts)


def _nothing_fits(
    shape: ModelShape,
    method: str,
    inputs: PlanInputs,
    estimators: Estimators,
    rows: Mapping[Any, PlanRow],
) -> str:
    """Say that nothing fits, the smallest need, how many nodes would fit, and lighter methods."""
    smallest = min(rows.values(), key=lambda r: r.gpu_total)
    advice = [
        f"nothing fits for {method}: the smallest per-GPU need is {smallest.describe()}, {_need(smallest, inputs)}"
    ]
    for nodes in range(inputs.nodes + 1, MAX_SUGGESTED_NODES + 1):
        bigger = replace(inputs, nodes=nodes)
        fitting = [
            r
            for r in plan_rows(shape, [method], bigger, estimators)
            if r.fits and r.zero_stage == 3
        ]
        if fitting:
            advice.append(
                f"{nodes} nodes x {inputs.gpus_per_node} GPUs would fit {fitting[0].describe()}"
            )
            break
    else:
        advice.append(f"no ZeRO-3 row fits even on {MAX_SUGGESTED_NODES} nodes: use larger GPUs")
    lighter = [m for m in METHODS if _lighter(m, method)]
    fits_now = [
        m for m in lighter if any(r.fits for r in plan_rows(shape, [m], inputs, estimators))
    ]
    if fits_now:
        advice.append(f"or use --method {' / '.join(fits_now)}, which fits on this hardware")
    elif lighter:
        advice.append(f"--method {' / '.join(lighter)} does not fit either")
    return "; ".join(advice)


def _lighter(candidate: str, method: str) -> bool:
    order = {"qlora": 0, "lora": 1, "full": 2}
    return order[candidate] < order[method]


def config_model_size(config: Mapping[str, Any]) -> str | None:
    """The size token ("8B", "70B", "135M") of a pipeline config's student, when it names one."""
    for section in ("finetune", "scoring"):
        model = (config.get(section) or {}).get("model")
        if model == "default":
            return "135M"
        match = re.search(
            r"(?<![\d.])(\d+(?:\.\d+)?[BM])(?![A-Za-z])", str(model or ""), re.IGNORECASE
        )
        if match:
            return match.group(1).upper()
    return None


def matching_pipeline_configs(
    recommendation: Recommendation, size: str, config_dir: Path
) -> list[Path]:
    """Shipped pipeline YAMLs whose ``finetune:`` section is this recommendation (same model size)."""
    row = recommendation.row
    if row is None or row.deepspeed is None:
        return []
    wanted = {
        "method": recommendation.method,
        "deepspeed": row.deepspeed,
        "nodes": recommendation.nodes,
        "gpus_per_node": recommendation.gpus_per_node,
    }
    matches = []
    for path in sorted(config_dir.glob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        finetune = config.get("finetune") or {}
        same_size = not size or config_model_size(config) in (None, size)
        if same_size and all(finetune.get(key) == value for key, value in wanted.items()):
            matches.append(path)
    return matches


def plan_json(
    shape: ModelShape,
    inputs: PlanInputs,
    estimators: Estimators,
    rows: list[PlanRow],
    recommendations: list[Recommendation],
) -> dict[str, Any]:
    """The plan as JSON-ready data (``rtune plan --json``): GiB rounded, bytes exact."""
    return {
        "model": {
            "name": shape.name,
            "size": shape.size or None,
            "total_params": shape.total_params,
            "largest_layer_params": shape.largest_layer_params,
            "lora_trainable_params": lora_trainable_params(shape, inputs.lora_r),
        },
        "inputs": asdict(inputs),
        "gpu_limit_gib": _gib(inputs.gpu_limit_bytes),
        "estimator": estimators.source,
        "rows": [row.to_dict() for row in rows],
        "recommendations": [rec.to_dict() for rec in recommendations],
    }


def header_lines(
    shape: ModelShape, methods: Iterable[str], inputs: PlanInputs, estimators: Estimators
) -> list[str]:
    """The model, the hardware and the assumptions, above the table."""
    lines = [
        f"model: {shape.name}: {shape.total_params / 1e9:.2f} B params, largest layer "
        f"{shape.largest_layer_params / 1e6:.1f} M (hidden {shape.hidden}, {shape.layers} layers, "
        f"vocab {shape.vocab})",
        f"hardware: {inputs.nodes} node(s) x {inputs.gpus_per_node} GPU(s) of {inputs.gpu_memory_gib:g} GiB "
        f"(fits if <= {GPU_HEADROOM:.0%} = {_gib(inputs.gpu_limit_bytes)} GiB), "
        f"{inputs.cpu_memory_gib_per_node:g} GiB CPU RAM per node",
        f"run: max_length {inputs.max_length}, micro batch {inputs.micro_batch}, gradient checkpointing "
        f"{'on' if inputs.gradient_checkpointing else 'off'}, buffer {inputs.buffer_gib:g} GiB per GPU "
        "(CUDA context, NCCL, fragmentation)",
        f"model states: {estimators.source}",
    ]
    if any(m != "full" for m in methods):
        trainable = lora_trainable_params(shape, inputs.lora_r)
        lines.append(
            f"lora/qlora: r={inputs.lora_r} on q,k,v,o,gate,up,down: {trainable / 1e6:.1f} M trainable; "
            f"frozen base bf16 (lora) or NF4 (qlora)"
        )
    return lines


def format_table(rows: list[PlanRow]) -> list[str]:
    """One line per row, memory in GiB."""
    head = f"{'method':<6} {'zero':>4}  {'offload':<16} {'states':>9} {'activ.':>8} {'buffer':>7} {'GPU total':>10} {'CPU/node':>10}  fits"
    lines = [head, "-" * len(head)]
    for r in rows:
        fits = (
            "yes"
            if r.fits
            else "no ("
            + ", ".join(part for part, ok in (("GPU", r.fits_gpu), ("CPU", r.fits_cpu)) if not ok)
            + ")"
        )
        lines.append(
            f"{r.method:<6} {r.zero_stage:>4}  {r.offload_label:<16} {_gib(r.model_states):>9.2f} "
            f"{_gib(r.activations):>8.2f} {_gib(r.buffer):>7.2f} {_gib(r.gpu_total):>10.2f} "
            f"{_gib(r.cpu_per_node):>10.2f}  {fits}"
        )
    return lines


def format_recommendation(rec: Recommendation) -> list[str]:
    """The recommended config, the shipped names it maps to, and why."""
    row = rec.row
    if row is None:
        return [f"recommended ({rec.method}): none fits", f"  why: {rec.reason}"]
    if row.deepspeed:
        shipped = f"DeepSpeed config: components/finetune/deepspeed/{row.deepspeed}.json"
    else:
        shipped = (
            f"no shipped DeepSpeed config: write a JSON with zero_optimization.stage {row.zero_stage}"
            + (" and offload_optimizer cpu" if row.offload else "")
        )
    lines = [
        f"recommended ({rec.method}): ZeRO-{row.zero_stage}, offload {row.offload_label} -> "
        f"finetune: method {rec.method}, deepspeed {row.deepspeed or '(none shipped)'}, "
        f"nodes {rec.nodes}, gpus_per_node {rec.gpus_per_node}",
        f"  {shipped}",
    ]
    if rec.pipeline_configs:
        lines.append(f"  matches: {', '.join(rec.pipeline_configs)}")
    lines.append(f"  why: {rec.reason}")
    return lines
