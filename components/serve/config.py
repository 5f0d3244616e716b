"""The serve stage's typed config (``serve:`` in the pipeline YAML).

Defaults serve the model locally (``transformers serve`` on CPU, vLLM where a GPU and vLLM are
there) for the smoke test; ``backend: kserve`` deploys it as a KServe InferenceService on the
shipped ``rtune-vllm`` runtime instead. Either way clients name the model ``served_name()``.

The API key never appears here: ``api_key_env`` names the environment variable that holds it, so
the config can be logged to MLflow, written to YAML and printed without leaking a secret.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from rtune.components.serve.access import check_env_name, check_served_name
from rtune.components.serve.client import REASONING_FORMATS, SMOKE_PROMPT
from rtune.components.serve.local_server import SERVERS

BACKENDS = ("local", "kserve")
RUN_SUFFIX_LENGTH = 9  # "-" + 8 hex
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SCHEMES = ("s3://", "gs://", "pvc://", "hf://", "https://", "oci://")


@dataclass
class ServeConfig:
    """Where the model is served and how the stage checks that it answers."""

    backend: str = field(default="local", metadata={"help": "local | kserve"})
    server: str = field(default="auto", metadata={"help": "local: auto | transformers | vllm"})
    port: int = field(default=0, metadata={"help": "local: 0 = a free port"})
    startup_timeout_s: float = field(
        default=600.0, metadata={"help": "local: wait this long for the server's /health"}
    )
    reasoning_format: str = field(
        default="none", metadata={"help": "reflection = return <thinking>/<reflection> apart"}
    )
    served_model_name: str = field(
        default="", metadata={"help": "the model name clients send; '' = the name setting"}
    )
    api_key_env: str = field(
        default="",
        metadata={
            "help": "NAME of the env var holding the API key clients must send ('' = none); "
            "local: the front enforces it; kserve: recorded for clients"
        },
    )
    smoke_prompt: str = field(
        default=SMOKE_PROMPT,
        metadata={"help": "the one chat request that proves the endpoint answers"},
    )
    smoke_max_tokens: int = field(default=16, metadata={"help": "tokens the smoke test asks for"})
    # KServe
    name: str = field(
        default="rtune-student",
        metadata={"help": "InferenceService name (per_run: its prefix); the served model's name"},
    )
    per_run: bool = field(
        default=True,
        metadata={
            "help": "kserve: one InferenceService per run, <name>-<run hash>, so a run never "
            "replaces another's model (false: every run updates <name> in place)"
        },
    )
    namespace: str = field(default="", metadata={"help": "'' = the pod's namespace"})
    runtime: str = field(
        default="rtune-vllm",
        metadata={"help": "KServe ServingRuntime name (manifests/base/vllm-servingruntime.yaml)"},
    )
    gpus: int = field(
        default=1, metadata={"help": "per replica; > 1 adds --tensor-parallel-size; 0 = runtime's"}
    )
    cpu: str = field(default="", metadata={"help": "'' = the runtime's request"})
    memory: str = field(default="", metadata={"help": "'' = the runtime's request"})
    timeout_s: float = field(default=1800.0, metadata={"help": "wait for Ready at most this long"})
    poll_interval_s: float = field(
        default=10.0, metadata={"help": "KServe: seconds between readiness checks"}
    )
    service_account: str = field(
        default="", metadata={"help": "pulls the model from S3 (KServe storage initializer)"}
    )
    storage_uri: str = field(
        default="", metadata={"help": "'' = the model artifact's MODEL_URI.txt"}
    )
    min_replicas: int = field(
        default=1, metadata={"help": "KServe: minimum replicas (0 = scale to zero)"}
    )
    max_replicas: int = field(default=1, metadata={"help": "KServe: maximum replicas"})
    extra_args: list[str] = field(
        default_factory=list, metadata={"help": "more vLLM flags, e.g. --max-model-len=8192"}
    )

    def __post_init__(self) -> None:
        _one_of("backend", self.backend, BACKENDS)
        _one_of("server", self.server, SERVERS)
        _one_of("reasoning_format", self.reasoning_format, REASONING_FORMATS)
        if isinstance(self.extra_args, str):
            self.extra_args = self.extra_args.split()
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be 0 (a free port) or a TCP port, got {self.port}")
        for name in ("startup_timeout_s", "timeout_s", "poll_interval_s", "smoke_max_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.gpus < 0 or self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError(
                "need gpus >= 0, min_replicas >= 0 and max_replicas >= max(1, min_replicas); got "
                f"gpus={self.gpus}, min_replicas={self.min_replicas}, max_replicas={self.max_replicas}"
            )
        longest = 45 - (RUN_SUFFIX_LENGTH if self.per_run else 0)
        if len(self.name) > longest or not _DNS_1035.match(self.name):
            raise ValueError(
                f"name {self.name!r} must be a DNS-1035 label of at most {longest} characters "
                "(a-z, 0-9, '-', starting with a letter): KServe derives service names from it"
            )
        check_served_name("served_model_name", self.served_model_name)
        check_env_name("api_key_env", self.api_key_env)
        if self.storage_uri and not self.storage_uri.startswith(_SCHEMES):
            raise ValueError(
                f"storage_uri {self.storage_uri!r} must start with one of {list(_SCHEMES)}"
            )

    def instance_name(self, run_id: str) -> str:
        """The InferenceService's name: ``name``, or ``name-<8 hex of sha256(run id)>`` per run."""
        if not self.per_run:
            return self.name
        return f"{self.name}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"

    def served_name(self) -> str:
        """The model name clients send: ``served_model_name``, else the InferenceService
        ``name`` (so a client reaches a local and a KServe model under the same name)."""
        return self.served_model_name or self.name


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
