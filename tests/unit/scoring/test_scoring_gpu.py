"""Scoring on a GPU gives the CPU's scores (runs where CUDA is; skipped on CPU-only machines)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_fp32_scores_on_the_gpu_equal_the_cpus(tiny_model_dir: Path) -> None:
    from rtune.components.common.models import load_causal_lm, load_tokenizer
    from rtune.components.scoring.config import ScoringConfig
    from rtune.components.scoring.scorer import ScoringCandidate, StudentScorer

    config = ScoringConfig(model=str(tiny_model_dir))
    tokenizer = load_tokenizer(tiny_model_dir)
    candidates = [
        ScoringCandidate(str(i), f"Explain topic {i} in two sentences.", "", f"Topic {i} is big.")
        for i in range(6)
    ]
    on_cpu, _ = StudentScorer(
        load_causal_lm(tiny_model_dir, "float32", "cpu"), tokenizer, config
    ).score(candidates)
    gpu_model = load_causal_lm(tiny_model_dir, "float32", "auto")
    assert next(gpu_model.parameters()).device.type == "cuda"
    on_gpu, _ = StudentScorer(gpu_model, tokenizer, config).score(candidates)
    for key, scores in on_cpu.items():
        assert scores.ifd == pytest.approx(on_gpu[key].ifd, rel=1e-3)
        assert scores.rifd == pytest.approx(on_gpu[key].rifd, rel=1e-3)
