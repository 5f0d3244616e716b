"""Imported reflections through scoring and selection with no teacher: the README's example,
command by command (tiny random-weight student), and what MLflow records of the source."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rtune.components.common.records import read_jsonl
from rtune.pipelines.cli import main
from tests.paths import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "import"
MARK = "<!-- import-example -->"
TEACHER_MODULES = (  # what calling a teacher would have to import
    "rtune.components.teacher.factory",
    "rtune.components.teacher.runner",
    "rtune.components.teacher.openai_backend",
    "rtune.components.teacher.transformers_backend",
    "torch",
)


def readme_commands() -> list[list[str]]:
    """The ``rtune`` commands of the README's import example, as argument lists."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(re.escape(MARK) + r"\s*```bash\n(.*?)```", text, re.S)
    assert block, f"README lost its {MARK} example"
    joined = block.group(1).replace("\\\n", " ")
    lines = [line.split("#")[0].strip() for line in joined.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("rtune ")]


@pytest.fixture()
def tracked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    return uri


def test_readme_example_imports_scores_and_selects_without_a_teacher(
    tmp_path: Path,
    tiny_model_dir: Path,
    tracked: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    work = tmp_path / "work"
    commands = readme_commands()
    assert [c[0] for c in commands] == [
        "prepare", "import", "score", "select", "import", "score", "select"
    ]  # fmt: skip
    for argv in commands:
        argv = [a.replace("work/", f"{work}/") for a in argv]
        if argv[0] == "score":
            argv += ["--model", str(tiny_model_dir), "--no-progress", "--max-length", "256"]
        assert main(argv) == 0, (argv, capsys.readouterr().err)

    reference = {
        name: json.loads((EXAMPLE / "reference" / f"{name}.json").read_text(encoding="utf-8"))
        for name in ("ori", "Q", "A", "QA")
    }
    decided = read_jsonl(work / "decisions.jsonl")
    assert [r["instruction"] for r in decided] == [r["instruction"] for r in reference["ori"]]
    for index, record in enumerate(decided):
        # the teacher's metadata says imported: no model, no tokens, no latency
        assert set(record["teacher"]) == {"instruction", "response"}
        for meta in record["teacher"].values():
            assert set(meta) == {"parse_status", "source"} and meta["source"] == "imported"
        assert record["candidates"]["Q"]["output"] == reference["Q"][index]["output"]
        new = "A" if record["phase1"]["winner"] == "ori" else "QA"
        assert set(record["candidates"]) == {"ori", "Q", new}  # only the winner's answer
        assert record["candidates"][new]["output"] == reference[new][index]["output"]
        assert "scores" in record["candidates"][new] and record["decision"] in {new, "dropped"}
    # Q.json[2] copies ori (the reference's fallback): selected as a teacher fallback
    assert decided[2]["phase1"] == {"winner": "ori", "reason": "teacher fallback (unchanged)"}

    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    by_stage = {r.data.tags.get("rtune.stage"): r for r in runs}
    source = by_stage["import_reflections"].data.tags["rtune.candidates_source"]
    for name in ("ori", "Q", "A", "QA"):
        path = EXAMPLE / "reference" / f"{name}.json"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"examples/import/reference/{name}.json sha256:{digest}" in source
    parents = [r for r in runs if r.data.tags.get("rtune.role") == "pipeline"]
    assert any(p.data.tags.get("rtune.candidates_source") == source for p in parents)
    assert "reflect_instruction" not in by_stage and "reflect_response" not in by_stage


def test_import_never_loads_a_teacher_or_a_model(tmp_path: Path) -> None:
    """Both import steps in a fresh interpreter: no teacher client, runner or torch is imported."""
    prepared = tmp_path / "prepared.jsonl"
    rows = [
        {"id": f"s{i}", "flags": [], **r} for i, r in enumerate(read_jsonl(EXAMPLE / "seed.jsonl"))
    ]
    prepared.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code = f"""
import json, sys
from rtune.pipelines.cli import main
from rtune.components.common.records import read_jsonl, write_jsonl
work = {str(tmp_path)!r}
assert main(["import", "--no-tracking", "--records", work + "/prepared.jsonl",
             "--source", {str(EXAMPLE / "candidates.jsonl")!r}, "--output", work + "/q.jsonl"]) == 0
records = read_jsonl(work + "/q.jsonl")
write_jsonl(work + "/p1.jsonl", [{{**r, "phase1": {{"winner": "Q", "reason": "t"}}}} for r in records])
assert main(["import", "--no-tracking", "--stage", "response", "--records", work + "/p1.jsonl",
             "--responses", work + "/q.responses.jsonl", "--output", work + "/qa.jsonl"]) == 0
print(json.dumps([m for m in {list(TEACHER_MODULES)!r} if m in sys.modules]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    answered = read_jsonl(tmp_path / "qa.jsonl")
    assert [r["candidates"]["QA"]["instruction"] for r in answered] == [
        r["candidates"]["Q"]["instruction"] for r in answered
    ]
    assert len(answered) == len(rows)


@pytest.mark.integration
def test_reflections_on_s3_are_read_and_recorded_by_uri_without_credentials(
    tmp_path: Path, tracked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The four files under an s3:// prefix (moto's S3 server): imported as from a folder, and
    MLflow names them by URI and sha256 - never the S3 credentials the task read them with."""
    import mlflow

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.common.storage import upload_dir
    from rtune.components.importer.task import ImportStage
    from tests.servers import S3_ENV, moto_s3, use_s3

    prepared = tmp_path / "prepared.jsonl"
    assert main(["prepare", "--no-tracking", "--input", str(EXAMPLE / "seed.jsonl"),
                 "--output", str(prepared), "--count-tokens", "false"]) == 0  # fmt: skip
    with moto_s3() as endpoint:
        use_s3(monkeypatch, endpoint, tmp_path / "cache", "data")
        upload_dir(EXAMPLE / "reference", "s3://data/reflections/")
        teacher = {"backend": "imported", "import_uri": "s3://data/reflections"}
        stage = ImportStage.from_parameters(
            teacher, prepared, tmp_path / "q.jsonl", tmp_path / "r.jsonl"
        )
        summary = run_stage(stage, StageSettings(run_id="kfp-s3"))
    assert summary.records == 4 and len(read_jsonl(tmp_path / "r.jsonl")) == 4
    (run,) = [
        r
        for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
        if r.data.tags.get("rtune.stage") == "import_reflections"
    ]
    source = run.data.tags["rtune.candidates_source"]
    digest = hashlib.sha256((EXAMPLE / "reference" / "QA.json").read_bytes()).hexdigest()
    assert f"s3://data/reflections/QA.json sha256:{digest}" in source
    logged = json.dumps([run.data.tags, run.data.params])
    assert run.data.params["import_uri"] == "s3://data/reflections"
    assert not [v for v in S3_ENV.values() if len(v) > 8 and v in logged]
