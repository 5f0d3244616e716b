"""The fine-tune stage's typed config (``finetune:`` in the pipeline YAML).

Defaults run on the embedded default model on one CPU process: LoRA, fp32, no DeepSpeed. The
8B/70B configs set the method's reference hyperparameters (lr 2e-5, 3 epochs, global batch 128,
warmup 0.03, max length 2048) and ZeRO-3 (see ``rtune plan`` for why each topology fits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rtune.components.common.response_format import check_response_format, response_format_field
from rtune.components.common.student import student_field
from rtune.components.scoring.templates import TEMPLATES

METHODS = ("lora", "qlora", "full")
LAUNCHERS = ("local", "torchrun", "trainjob", "pytorchjob")
PRECISIONS = ("auto", "bf16", "fp32")
ATTENTION = ("sdpa", "eager", "flash_attention_2")
DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"
SHIPPED_DEEPSPEED = {"zero3": "zero3.json", "zero3_offload": "zero3_offload.json"}


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning of the student on the selected records (loss on response tokens).

    Batches are counted in *records*: ``global_batch_size`` records per optimizer step over all
    ranks; each device step packs whole records into one row of at most ``max_tokens_per_batch``
    tokens (padding-free; position ids restart per record so no record attends to another; a
    longer record gets a row of its own).
    """

    model: str = student_field("model")
    method: str = field(default="lora", metadata={"help": "lora | qlora (4-bit, GPU) | full"})
    template: str = student_field("template")
    max_length: int = student_field("max_length")
    response_format: str = response_format_field()
    epochs: float = field(
        default=3.0, metadata={"help": "passes over the selected records (reference: 3)"}
    )
    max_steps: int = field(default=-1, metadata={"help": "> 0 overrides epochs"})
    learning_rate: float = field(
        default=2e-5,
        metadata={"help": "peak learning rate (reference full FT: 2e-5; LoRA: higher)"},
    )
    global_batch_size: int = field(
        default=128, metadata={"help": "records per optimizer step over all ranks (reference: 128)"}
    )
    max_tokens_per_batch: int = field(
        default=0,
        metadata={"help": "packed row budget; 0 = max_length; longer records get their own row"},
    )
    warmup_ratio: float = field(
        default=0.03,
        metadata={"help": "share of steps warming the learning rate up (reference: 0.03)"},
    )
    lr_scheduler: str = field(
        default="cosine",
        metadata={"help": "transformers scheduler name (cosine, linear, constant, ...)"},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (reference: 0)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling (alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        metadata={"help": "modules that get LoRA adapters (comma-separated)"},
    )
    precision: str = field(default="auto", metadata={"help": "auto = bf16 on GPU, fp32 on CPU"})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute activations in the backward pass (less memory, ~30 % slower)"},
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={"help": "sdpa | eager | flash_attention_2 (GPU, varlen packed rows)"},
    )
    packing: bool = field(default=True, metadata={"help": "false = padded batches (baseline)"})
    deepspeed: str = field(default="", metadata={"help": "'' | zero3 | zero3_offload | path.json"})
    launcher: str = field(
        default="local",
        metadata={
            "help": "local (this process) | torchrun (ranks in the pod) | trainjob | pytorchjob"
        },
    )
    nproc_per_node: int = field(
        default=1, metadata={"help": "training processes per node (torchrun / cluster jobs)"}
    )
    nodes: int = field(default=1, metadata={"help": "nodes of a TrainJob / PyTorchJob"})
    gpus_per_node: int = field(
        default=0, metadata={"help": "GPUs each training process's node has"}
    )
    save_steps: int = field(
        default=50,
        metadata={
            "help": "checkpoint every N optimizer steps (a killed run resumes from the last)"
        },
    )
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept"})
    logging_steps: int = field(
        default=1, metadata={"help": "log loss / lr / tokens per second every N steps"}
    )
    seed: int = field(default=42, metadata={"help": "random seed (data order, LoRA init)"})
    merge: bool = field(default=True, metadata={"help": "also write base+adapter merged model"})
    registered_model: str = field(
        default="rtune-student", metadata={"help": "MLflow registered model name (alias candidate)"}
    )
    model_store: str = field(default="", metadata={"help": "s3:// prefix to upload the model to"})
    namespace: str = field(default="", metadata={"help": "cluster jobs: '' = the pod's namespace"})
    job_timeout_s: int = field(
        default=7 * 24 * 3600,
        metadata={"help": "give up waiting for a cluster job after this many seconds"},
    )

    def __post_init__(self) -> None:
        _one_of("method", self.method, METHODS)
        _one_of("launcher", self.launcher, LAUNCHERS)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("attn_implementation", self.attn_implementation, ATTENTION)
        _one_of("template", self.template, tuple(TEMPLATES))
        check_response_format(self.response_format)
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [m.strip() for m in self.lora_target_modules.split(",")]
        for name in ("max_length", "global_batch_size", "nproc_per_node", "nodes", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens_per_batch < 0:
            raise ValueError("max_tokens_per_batch must be 0 (= max_length) or a token count")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        if (
            self.deepspeed
            and self.deepspeed not in SHIPPED_DEEPSPEED
            and not self.deepspeed.endswith(".json")
        ):
            raise ValueError(
                f"deepspeed must be '' , one of {sorted(SHIPPED_DEEPSPEED)} or a path to a .json config"
            )

    @property
    def row_tokens(self) -> int:
        """Tokens per packed device row."""
        return self.max_tokens_per_batch or self.max_length

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    def deepspeed_config_path(self) -> Path | None:
        """The DeepSpeed JSON to use: a shipped one by name, or the user's file."""
        if not self.deepspeed:
            return None
        if self.deepspeed in SHIPPED_DEEPSPEED:
            return DEEPSPEED_DIR / SHIPPED_DEEPSPEED[self.deepspeed]
        return Path(self.deepspeed)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
