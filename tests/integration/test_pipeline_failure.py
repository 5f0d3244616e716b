"""A failing pipeline still closes its MLflow run, FAILED, naming the stage that failed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_a_failed_stage_is_named_and_the_parent_run_closed_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from rtune.pipelines.commands.run import closing_lines, run_locally

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    terminal = io.StringIO()
    monkeypatch.setattr("sys.stdout", terminal)
    result = run_locally(
        None,
        [f"seed_uri={tmp_path / 'no-such-seed.jsonl'}", f"local.pipeline_root={tmp_path / 'runs'}"],
    )
    assert not result.succeeded
    assert [task for task, _ in result.failed] == ["prepare"]
    parent = mlflow.MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id)
    assert parent.info.status == "FAILED"  # closed by the exit handler, not left RUNNING
    assert parent.data.tags["rtune.failed_stages"] == "prepare"
    shown = terminal.getvalue()
    assert "FAIL prepare" in shown and str(result.logs / "prepare.log") in shown
    assert "executor_input" not in shown  # the console stays quiet; the log file has it
    assert "failed: prepare" in "\n".join(closing_lines(result))
    assert "no-such-seed" in (result.logs / "prepare.log").read_text()
