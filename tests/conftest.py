"""Shared fixtures: the embedded default model, a tiny random-weight model, isolated caches."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

# Servers that run in the test process in threads (moto's werkzeug, http.server fakes) log through
# handlers that may hold a stream pytest has since closed (each test's captured stderr); logging
# then prints "--- Logging error ---" with a traceback into whatever test runs at that moment, and
# the tests that assert a clean stderr fail for another test's server. Request logs are noise here.
logging.getLogger("werkzeug").setLevel(logging.ERROR)
logging.raiseExceptions = False

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The real embedded default (SmolLM2-135M-Instruct, fp32 HF folder), provisioned once."""
    from rtune.components.common.models import provision_embedded_model

    return provision_embedded_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Path:
    """A random-weight 2-layer Llama with the embedded model's tokenizer and chat template.

    Fast enough for tests that need a real model but not real language (formulas, batching, IO).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def rtune_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private RTUNE_CACHE for tests that write checkpoints/downloads (the model stays shared)."""
    cache = tmp_path / "rtune-cache"
    (cache / "models").mkdir(parents=True)
    from rtune.components.common.models import EMBEDDED_NAME, embedded_model_dir

    shared = embedded_model_dir()
    if shared.exists():
        (cache / "models" / EMBEDDED_NAME).symlink_to(shared)
    monkeypatch.setenv("RTUNE_CACHE", str(cache))
    return cache


class RecordingMetrics:
    """A KFP ``Metrics`` stand-in for stage tasks: remembers what was logged."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def log_metric(self, metric: str, value: float) -> None:
        self.values[metric] = value
