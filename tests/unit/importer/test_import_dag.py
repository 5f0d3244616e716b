"""With ``teacher.backend=imported`` the compiled pipeline has no teacher task: the import steps
stand where the teacher stages stood, and the rest of the DAG is wired as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rtune.components.common.records import InputError
from rtune.pipelines.config import CONFIG_DIR, load_run_config
from rtune.pipelines.packaging import compile_ir

IMPORTED = ["teacher.backend=imported", "teacher.import_uri=s3://data/reflections/"]


def compiled(tmp_path: Path, overrides: list[str]) -> tuple[dict, dict]:
    """(the stages' tasks, the Kubernetes executors) of the pipeline for llama3-8b + overrides."""
    config = load_run_config(CONFIG_DIR / "llama3-8b.yaml", overrides)
    spec, platform = yaml.safe_load_all(compile_ir(config, tmp_path / "p.yaml").read_text())
    (handler,) = [
        t
        for t in spec["root"]["dag"]["tasks"].values()
        if "exit-handler" in t["componentRef"]["name"]
    ]
    tasks = spec["components"][handler["componentRef"]["name"]]["dag"]["tasks"]
    return tasks, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def producer(task: dict, artifact: str) -> tuple[str, str]:
    ref = task["inputs"]["artifacts"][artifact]["taskOutputArtifact"]
    return ref["producerTask"], ref["outputArtifactKey"]


def test_compiled_pipeline_has_no_teacher_tasks_when_backend_imported(tmp_path: Path) -> None:
    tasks, executors = compiled(tmp_path, IMPORTED)
    assert not {"reflect-instruction", "reflect-response"} & set(tasks)
    assert producer(tasks["import-reflections"], "records") == ("prepare", "prepared")
    assert producer(tasks["select-ifd"], "candidates") == ("import-reflections", "candidates")
    attach = tasks["attach-imported-responses"]
    assert producer(attach, "records") == ("select-ifd", "selected")
    assert producer(attach, "responses") == ("import-reflections", "responses")
    assert producer(tasks["select-rifd"], "candidates") == (
        "attach-imported-responses",
        "candidates",
    )
    assert "retryPolicy" not in tasks["import-reflections"]  # no flaky remote teacher to retry
    assert {"finetune", "quantize", "serve", "evaluate"} <= set(tasks)
    with_teacher_key = [
        name
        for name, e in executors.items()
        if any(m["secretName"] == "rtune-teacher" for m in e.get("secretAsEnv", []))
    ]
    # llama3-8b's judge is served: evaluate and preflight (which probes it) still get its key
    assert set(with_teacher_key) == {"exec-evaluate", "exec-preflight"}
    s3 = [m["secretName"] for m in executors["exec-import-reflections"]["secretAsEnv"]]
    assert "rtune-s3" in s3  # the reflections are read from s3://


def test_the_teacher_pipeline_is_unchanged_without_imported(tmp_path: Path) -> None:
    tasks, _ = compiled(tmp_path, [])
    assert {"reflect-instruction", "reflect-response"} <= set(tasks)
    assert not {"import-reflections", "attach-imported-responses"} & set(tasks)


def test_imported_backend_keeps_the_default_judge_and_needs_its_uri() -> None:
    config = load_run_config(None, IMPORTED, default=None)
    assert config.section("teacher").import_uri == "s3://data/reflections/"
    assert config.section("evaluate").judge_config().backend == "transformers"
    with pytest.raises(InputError) as err:
        load_run_config(None, ["teacher.backend=imported"], default=None)
    assert "import_uri" in str(err.value)


def test_reflect_with_the_imported_backend_points_at_rtune_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No teacher stands behind ``imported``: reflecting with it is refused (never a silent
    fall-back to the local model)."""
    from rtune.components.common.records import write_jsonl
    from rtune.pipelines.cli import main

    prepared = tmp_path / "prepared.jsonl"
    write_jsonl(prepared, [{"id": "r1", "instruction": "Hi.", "input": "", "output": "Hello."}])
    argv = ["reflect", "--stage", "instruction", "--input", str(prepared), "--no-tracking"]
    argv += [
        "--output",
        str(tmp_path / "q.jsonl"),
        "--no-progress",
        *[part for item in IMPORTED for part in ("--set", item)],
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "rtune import" in err and not (tmp_path / "q.jsonl").exists()
