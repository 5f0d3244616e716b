"""The fine-tune stage's typed config (``finetune:`` in the pipeline YAML).

Defaults run on the embedded default model on one CPU process: LoRA, fp32, no DeepSpeed. The
8B/70B configs set the method's reference hyperparameters (lr 2e-5, 3 epochs, global batch 128,
warmup 0.03, max length 2048) and ZeRO-3 (see ``rtune plan`` for why each topology fits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
    epochs: float = 3.0
    max_steps: int = field(default=-1, metadata={"help": "> 0 overrides epochs"})
    learning_rate: float = 2e-5
    global_batch_size: int = 128
    max_tokens_per_batch: int = field(
        default=0,
        metadata={"help": "packed row budget; 0 = max_length; longer records get their own row"},
    )
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )
    precision: str = field(default="auto", metadata={"help": "auto = bf16 on GPU, fp32 on CPU"})
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    packing: bool = field(default=True, metadata={"help": "false = padded batches (baseline)"})
    deepspeed: str = field(default="", metadata={"help": "'' | zero3 | zero3_offload | path.json"})
    launcher: str = "local"
    nproc_per_node: int = 1
    nodes: int = 1
    gpus_per_node: int = 0
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1
    seed: int = 42
    merge: bool = field(default=True, metadata={"help": "also write base+adapter merged model"})
    registered_model: str = "rtune-student"
    model_store: str = field(default="", metadata={"help": "s3:// prefix to upload the model to"})
    namespace: str = field(default="", metadata={"help": "cluster jobs: '' = the pod's namespace"})
    job_timeout_s: int = 7 * 24 * 3600

    def __post_init__(self) -> None:
        _one_of("method", self.method, METHODS)
        _one_of("launcher", self.launcher, LAUNCHERS)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("attn_implementation", self.attn_implementation, ATTENTION)
        _one_of("template", self.template, tuple(TEMPLATES))
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
