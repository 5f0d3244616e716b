"""The rehearsal's run config is llama3-8b.yaml with only sizes, paths, counts and CPU stand-ins."""

from __future__ import annotations

from typing import Any

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


def test_rehearsal_config_differs_from_the_8b_config_only_where_allowed() -> None:
    cluster = _flat(yaml.safe_load((CONFIGS / "llama3-8b.yaml").read_text()))
    rehearsal = _flat(yaml.safe_load((CONFIGS / "rehearsal.yaml").read_text()))
    differing = {k for k in cluster.keys() | rehearsal.keys() if cluster.get(k) != rehearsal.get(k)}
    assert differing - set(ALLOWED) == set(), "wiring differs from llama3-8b.yaml"
    assert rehearsal["student.model"].startswith("s3://")  # the student still comes from S3
    assert rehearsal["tracking.tracking_uri"] == cluster["tracking.tracking_uri"]
    assert rehearsal["teacher.url"] == cluster["teacher.url"]
    assert rehearsal["checkpoint_root"] == cluster["checkpoint_root"]
