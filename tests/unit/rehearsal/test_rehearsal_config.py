"""The rehearsal's run config is llama3-8b.yaml with only sizes, paths, counts and CPU stand-ins."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.paths import REPO_ROOT

CONFIGS = REPO_ROOT / "pipelines" / "configs"
# key -> why it may differ (anything else differing is wiring, and must not)
ALLOWED = {
    "seed_uri": "path: the rehearsal stages its own seed file",
    "student.model": "path: the embedded student, staged in the rehearsal's S3",
    "student.dtype": "CPU stand-in: bf16 matmuls are 7x slower than fp32 on this CPU",
    "prepare.limit": "count: 4 records",
    "teacher.concurrency": "size",
    "teacher.max_new_tokens": "size",
    "scoring.num_shards": "count: 2 shards",
    "selection.policy": "data: the stand-in teacher's rewrites rarely pass the reference rule",
    "finetune.max_tokens_per_batch": "size (CPU rows)",
    "finetune.epochs": "count",
    "finetune.max_steps": "count",
    "finetune.global_batch_size": "size",
    "finetune.attn_implementation": "CPU stand-in: flash-attention needs a GPU",
    "finetune.nproc_per_node": "count: 2 ranks on loopback",
    "finetune.save_steps": "count: checkpoint every step",
    "quantize.group_size": "size: the 135M model's widths are multiples of 64, not 128",
    "quantize.calibration_records": "count",
    "quantize.max_seq_length": "size",
    "quantize.heldout_records": "count",
    "quantize.max_perplexity_increase": "threshold: int4 costs a 135M model ~27 %",
}


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(
            _flat(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}")
        )
    return flat


# the 70B rehearsal (TrainJob, KServe, evaluate) shrinks a few more sizes
ALLOWED_70B = {
    **ALLOWED,
    "finetune.deepspeed": "CPU stand-in: offload's DeepSpeedCPUAdam is a compiled CUDA-era op",
    "finetune.nproc_per_node": "count: one rank per node, two nodes on loopback",
    "evaluate.judge_limit": "count",
    "evaluate.suite_limit": "count",
    "evaluate.max_new_tokens": "size",
    "evaluate.concurrency": "count: 2 CPU cores",
    "evaluate.benchmarks": "data: lm-eval's task data comes from the hub at image build",
    "evaluate.loglikelihood_benchmarks": "data: as evaluate.benchmarks",
}


@pytest.mark.parametrize(
    ("cluster_config", "rehearsal_config", "allowed"),
    [
        ("llama3-8b.yaml", "rehearsal.yaml", ALLOWED),
        ("llama3-70b.yaml", "rehearsal-70b.yaml", ALLOWED_70B),
    ],
)
def test_rehearsal_config_differs_from_its_cluster_config_only_where_allowed(
    cluster_config: str, rehearsal_config: str, allowed: dict[str, str]
) -> None:
    cluster = _flat(yaml.safe_load((CONFIGS / cluster_config).read_text()))
    rehearsal = _flat(yaml.safe_load((CONFIGS / rehearsal_config).read_text()))
    differing = {k for k in cluster.keys() | rehearsal.keys() if cluster.get(k) != rehearsal.get(k)}
    assert differing - set(allowed) == set(), f"wiring differs from {cluster_config}"
    assert rehearsal["student.model"].startswith("s3://")  # the student still comes from S3
    assert rehearsal["tracking.tracking_uri"] == cluster["tracking.tracking_uri"]
    assert rehearsal["teacher.url"] == cluster["teacher.url"]
    assert rehearsal["checkpoint_root"] == cluster["checkpoint_root"]
