"""The pipeline compiles to KFP IR with the cluster settings, without torch, and without secrets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rtune.components.common.records import InputError
from rtune.pipelines.config import CONFIG_DIR, load_run_config
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT


def _compile(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "pipeline.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "rtune.pipelines.cli", "compile", "-o", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    return {"spec": docs[0], "platform": docs[1] if len(docs) > 1 else {}, "text": out.read_text()}


def test_compiling_never_imports_torch() -> None:
    code = (
        "import sys; import rtune.pipelines.reflection_tuning, rtune.pipelines.config; "
        "from rtune.pipelines.config import load_run_config; load_run_config(); "
        "bad = [m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _stage_tasks(spec: dict) -> dict:
    """The stages: the tasks inside the exit handler's DAG (finalize runs after them)."""
    (handler,) = [
        t
        for t in spec["root"]["dag"]["tasks"].values()
        if "exit-handler" in t["componentRef"]["name"]
    ]
    return spec["components"][handler["componentRef"]["name"]]["dag"]["tasks"]


def test_compiled_pipeline_has_every_stage_and_cluster_settings(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, "--config", str(CONFIG_DIR / "llama3-8b.yaml"))
    spec, platform = compiled["spec"], compiled["platform"]
    tasks = _stage_tasks(spec)
    stages = {
        "prepare",
        "reflect-instruction",
        "plan-shards",
        "select-ifd",
        "reflect-response",
        "select-rifd",
        "finetune",
        "quantize",
        "serve",
        "evaluate",
    }
    assert stages <= set(tasks)
    # the DESIGN.md §2 tail: finetune -> quantize -> serve -> evaluate
    assert tasks["quantize"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model",
        "producerTask": "finetune",
    }
    assert tasks["serve"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "quantized",
        "producerTask": "quantize",
    }
    assert tasks["evaluate"]["inputs"]["artifacts"]["endpoint"]["taskOutputArtifact"] == {
        "outputArtifactKey": "endpoint",
        "producerTask": "serve",
    }
    assert sum(1 for name in tasks if name.startswith("for-loop")) == 2  # ParallelFor over shards
    assert tasks["reflect-instruction"]["retryPolicy"]["maxRetryCount"] == 3
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["teacher"]["defaultValue"]["backend"] == "openai"
    assert defaults["scoring"]["defaultValue"]["num_shards"] == 8
    assert defaults["student"]["defaultValue"]["template"] == "chat"  # an instruct student
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]

    def secret(name: str) -> dict:
        """executor -> its entries mounting Secret ``name``."""
        return {
            label: [m for m in e.get("secretAsEnv", []) if m["secretName"] == name]
            for label, e in executors.items()
            if any(m["secretName"] == name for m in e.get("secretAsEnv", []))
        }

    teacher = secret("rtune-teacher")  # the teacher stages, the judge, preflight: required
    assert set(teacher) == {
        "exec-reflect-instruction",
        "exec-reflect-response",
        "exec-evaluate",
        "exec-preflight",
    }
    for (mapping,) in teacher.values():
        assert mapping["keyToEnv"] == [{"secretKey": "api_key", "envVar": "OPENAI_API_KEY"}]
        assert mapping["optional"] is False
    s3 = secret("rtune-s3")  # every task that reads or writes s3://: keys required, endpoint not
    assert {"exec-prepare", "exec-score-shard", "exec-finetune", "exec-quantize"} <= set(s3)
    assert "exec-select-ifd" not in s3 and "exec-plan-shards" not in s3
    for keys, endpoint in s3.values():
        assert keys["optional"] is False and endpoint["optional"] is True
        assert [k["envVar"] for k in endpoint["keyToEnv"]] == ["AWS_ENDPOINT_URL"]
    login = secret("rtune-mlflow-auth")  # tracking is an http MLflow behind basic-auth: all log in
    assert set(login) == set(executors)
    for (mapping,) in login.values():
        assert {k["envVar"] for k in mapping["keyToEnv"]} == {
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
        }
        assert mapping["optional"] is False
    served = secret("rtune-serve")  # the served student's key: only its clients
    assert set(served) == {"exec-serve", "exec-evaluate"}
    for (mapping,) in served.values():
        assert mapping["keyToEnv"] == [{"secretKey": "api_key", "envVar": "RTUNE_SERVE_API_KEY"}]
    volume = executors["exec-score-shard"]["pvcMount"][0]
    assert (volume["constant"], volume["mountPath"]) == ("rtune-work", "/mnt/rtune")
    assert executors["exec-score-shard"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert executors["exec-score-shard"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    containers = spec["deploymentSpec"]["executors"]
    scoring = [c["container"] for name, c in containers.items() if "score-shard" in name]
    assert scoring and all(c["resources"]["accelerator"]["resourceCount"] == "1" for c in scoring)
    assert all(c["image"].startswith("ghcr.io/rtune/rtune-train:") for c in scoring)  # CUDA
    (train,) = [c["container"] for name, c in containers.items() if "finetune" in name]
    assert train["image"].startswith("ghcr.io/rtune/rtune-train:")
    assert train["resources"]["accelerator"]["resourceCount"] == "8"  # cluster.finetune.gpus
    assert train["resources"]["resourceMemoryRequest"] == "512Gi"
    (squeeze,) = [c["container"] for name, c in containers.items() if "quantize" in name]
    assert squeeze["image"].startswith("ghcr.io/rtune/rtune-quantize:")
    assert squeeze["resources"]["accelerator"]["resourceCount"] == "1"  # cluster.quantize.gpus


def test_the_dag_owns_run_id_images_and_closing(tmp_path: Path) -> None:
    """Run id from the pod label (not a task input: cacheable), kfp not installed at run time,
    and the MLflow parent run closed by an exit handler, whatever happened."""
    compiled = _compile(tmp_path, "--config", str(CONFIG_DIR / "llama3-8b.yaml"))
    spec, platform = compiled["spec"], compiled["platform"]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, container in spec["deploymentSpec"]["executors"].items():
        command = " ".join(container["container"]["command"])
        assert "pip install" not in command, name
        assert {
            "name": "KFP_RUN_ID",
            "fieldPath": "metadata.labels['pipeline/runid']",
        } in executors[name]["fieldPathAsEnv"], name
    for component in spec["components"].values():
        assert "kfp_run_id" not in component.get("inputDefinitions", {}).get("parameters", {})
    root = spec["root"]["dag"]["tasks"]
    assert root["finalize"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["finalize"]["dependentTasks"] == ["exit-handler-1"]


def test_compiled_yaml_holds_no_secret_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-should-never-appear-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    compiled = _compile(tmp_path, "--config", str(CONFIG_DIR / "llama3-70b.yaml"))
    assert secret not in compiled["text"]


def test_image_registry_and_tag_are_overridable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTUNE_IMAGE_REGISTRY", "registry.example.org/ml")
    monkeypatch.setenv("RTUNE_IMAGE_TAG", "1.2.3")
    compiled = _compile(tmp_path)
    images = {
        c["container"]["image"] for c in compiled["spec"]["deploymentSpec"]["executors"].values()
    }
    platform = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    names = {m["secretName"] for e in platform.values() for m in e.get("secretAsEnv", [])}
    assert not names & {"rtune-mlflow-auth", "rtune-serve"}  # local sqlite MLflow, no served key
    assert images == {
        "registry.example.org/ml/rtune-base:1.2.3",
        "registry.example.org/ml/rtune-train:1.2.3",
        "registry.example.org/ml/rtune-quantize:1.2.3",
    }


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path: Path) -> None:
    config = load_run_config(path)
    args = config.pipeline_arguments()
    assert set(args) == {
        "seed_uri",
        "student",
        "prepare_config",
        "teacher",
        "scoring",
        "selection",
        "finetune",
        "quantize",
        "serve",
        "evaluate",
        "tracking",
        "checkpoint_root",
    }


def test_config_typos_and_bad_overrides_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown key") as info:
        load_run_config(None, ["teacher.backnd=openai"])
    assert "teacher" in str(info.value) and "valid keys" in str(info.value)
    with pytest.raises(InputError, match="bad --set"):
        load_run_config(None, ["teacher.backend"])
    config = load_run_config(None, ["prepare.limit=4", "selection.policy=reference"])
    assert config.section("prepare").limit == 4
    assert config.section("selection").policy == "reference"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rtune.pipelines.cli",
            "compile",
            "-o",
            str(tmp_path / "p.yaml"),
            "--set",
            "student.template=nope",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert (
        result.returncode == 2 and "Traceback" not in result.stderr and "template" in result.stderr
    )


def test_scoring_gpus_per_shard_come_from_the_cluster_section(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, "--config", str(CONFIG_DIR / "llama3-70b.yaml"))
    executors = compiled["spec"]["deploymentSpec"]["executors"]
    limits = {
        c["container"]["resources"]["accelerator"]["resourceCount"]
        for name, c in executors.items()
        if "score-shard" in name
    }
    assert limits == {"4"}  # cluster.scoring.gpus of the 70B config


def test_paper_config_is_the_papers_setup_and_compiles(tmp_path: Path) -> None:
    """paper-llama2-7b.yaml: base Llama-2-7B, vicuna, the reference rule and hyperparameters."""
    config = load_run_config(CONFIG_DIR / "paper-llama2-7b.yaml")
    student, finetune = config.section("scoring"), config.section("finetune")
    assert student.model.endswith("meta-llama/Llama-2-7b-hf") and student.template == "vicuna"
    assert (finetune.template, finetune.max_length, finetune.method) == ("vicuna", 2048, "full")
    assert (finetune.learning_rate, finetune.epochs, finetune.global_batch_size) == (2e-5, 3, 128)
    assert (finetune.warmup_ratio, finetune.weight_decay) == (0.03, 0.0)
    selection = config.section("selection")
    assert (selection.policy, selection.drop_ifd_above, selection.keep_top) == (
        "reference",
        None,
        None,
    )
    compiled = _compile(tmp_path, "--config", str(CONFIG_DIR / "paper-llama2-7b.yaml"))
    assert "score-shard" in compiled["text"] and "Llama-2-7b-hf" in compiled["text"]
