"""A scoring pod too small for the student is refused when compiling, with the size it needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtune.components.common.errors import InputError
from rtune.pipelines.config import CONFIG_DIR, check_for_cluster, load_run_config
from rtune.pipelines.pod_sizes import student_shape


def config(name: str, *overrides: str):  # type: ignore[no-untyped-def]
    return load_run_config(CONFIG_DIR / f"{name}.yaml", list(overrides))


@pytest.mark.parametrize("name", ["llama3-8b", "llama3-70b", "rehearsal"])
def test_the_shipped_cluster_configs_fit_their_students(name: str) -> None:
    check_for_cluster(config(name))


def test_a_70b_student_in_a_small_scoring_pod_is_refused_with_the_size_it_needs() -> None:
    small = config("llama3-70b", "cluster.scoring.gpus=1", "cluster.scoring.memory=16Gi")
    with pytest.raises(InputError) as caught:
        check_for_cluster(small)
    message = str(caught.value)
    assert "cluster.scoring" in message and "Llama-3.1-70B" in message
    assert "{gpus: 2, memory: 149Gi}" in message  # 1.2 x 131 GiB over 80Gi GPUs; 1.1 x 131 + 4


def test_smaller_gpus_need_more_of_them() -> None:
    check_for_cluster(config("llama3-70b", "cluster.gpu_memory=40Gi"))  # 4 x 40 >= 1.2 x 131.5
    with pytest.raises(InputError, match=r"gpus: 4,"):
        check_for_cluster(config("llama3-70b", "cluster.gpu_memory=40Gi", "cluster.scoring.gpus=3"))


def test_fp32_weights_count_twice_bf16s() -> None:
    with pytest.raises(InputError, match=r"gpus: 1, memory: 37Gi"):
        check_for_cluster(
            config("llama3-8b", "student.dtype=float32", "cluster.scoring.memory=32Gi")
        )


def test_shape_from_the_name_or_a_local_config(tmp_path: Path) -> None:
    assert student_shape("s3://m/meta-llama/Llama-3.1-70B-Instruct").size == "70B"  # type: ignore[union-attr]
    assert student_shape("s3://m/smollm2-135m-instruct").size == "135M"  # type: ignore[union-attr]
    assert student_shape("s3://m/some-model") is None  # unknown: not checked
    assert student_shape("s3://m/Llama-3.1-8B-v1.5") is not None
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "vocab_size": 100,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            }
        )
    )
    assert student_shape(str(tmp_path)).hidden == 64  # type: ignore[union-attr]


def test_a_bad_memory_quantity_names_its_field() -> None:
    with pytest.raises(InputError, match=r"cluster\.scoring\.memory '64 gigs'"):
        check_for_cluster(config("llama3-8b", "cluster.scoring.memory=64 gigs"))
