"""A GPU task whose pod has no GPUs fails at once with a clear line (not hours later on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtune.components.common.gpus import (
    EXPECTED_GPUS_ENV,
    GpusNotVisible,
    require_cuda,
    require_gpu_devices,
    visible_gpu_devices,
)


def fake_dev(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).touch()
    return tmp_path


def test_counts_only_gpu_device_files(tmp_path: Path) -> None:
    dev = fake_dev(tmp_path, "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null")
    assert visible_gpu_devices(dev) == 2


def test_a_pod_with_fewer_devices_than_requested_is_refused(tmp_path: Path) -> None:
    dev = fake_dev(tmp_path, "nvidia0", "nvidiactl")
    require_gpu_devices({EXPECTED_GPUS_ENV: "1"}, dev)  # one asked, one there
    with pytest.raises(GpusNotVisible, match=r"requested 2 GPU\(s\) but the container sees 1"):
        require_gpu_devices({EXPECTED_GPUS_ENV: "2"}, dev)


def test_cpu_tasks_need_no_devices(tmp_path: Path) -> None:
    require_gpu_devices({}, tmp_path)
    require_gpu_devices({EXPECTED_GPUS_ENV: "0"}, tmp_path)
    require_cuda(False, {})


def test_a_gpu_task_never_falls_back_to_the_cpu() -> None:
    with pytest.raises(GpusNotVisible, match="torch cannot use CUDA"):
        require_cuda(False, {EXPECTED_GPUS_ENV: "1"})
    require_cuda(True, {EXPECTED_GPUS_ENV: "1"})


def test_the_stage_runner_checks_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtune.components.common.stage import StageSettings, run_stage

    monkeypatch.setenv(EXPECTED_GPUS_ENV, "64")  # no machine here has 64 GPUs

    class NeverRuns:
        name, config = "prepare", {}

        def run(self, context: object) -> object:
            raise AssertionError("the stage ran although its GPUs are missing")

    settings = StageSettings(tracking={"enabled": False}, checkpoint_root=str(tmp_path))
    with pytest.raises(GpusNotVisible, match="requested 64 GPU"):
        run_stage(NeverRuns(), settings)  # type: ignore[arg-type]


def test_gpu_tasks_are_told_how_many_gpus_their_pod_requested(tmp_path: Path) -> None:
    import yaml

    from rtune.pipelines.config import CONFIG_DIR, load_run_config
    from rtune.pipelines.packaging import compile_ir

    out = tmp_path / "p.yaml"
    compile_ir(load_run_config(CONFIG_DIR / "llama3-8b.yaml"), out)
    executors = yaml.safe_load_all(out.read_text()).__next__()["deploymentSpec"]["executors"]
    told = {
        name: {e["name"]: e["value"] for e in body["container"].get("env", [])}.get(
            EXPECTED_GPUS_ENV
        )
        for name, body in executors.items()
    }
    assert told["exec-finetune"] == "8" and told["exec-quantize"] == "1"
    assert told["exec-score-shard"] == "1" and told["exec-prepare"] is None
