"""The evaluate stage with real parts only: the candidate and the base served by `transformers
serve` on loopback (LocalServer, started by the stage from the endpoint spec and base_model) and
the judge on the transformers backend. The tiny random-weight Llama keeps it fast: its words are
noise, so the test checks the plumbing, not the quality (verdicts may be unparseable, and are
then counted as such). Python's audit events say what each run started and loaded."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rtune.components.serve.endpoint import EndpointSpec
from tests.integration.test_evaluate_task import run_evaluate

pytestmark = [pytest.mark.slow, pytest.mark.integration]


class Activity:
    """Processes this process starts and files of one model folder it opens (besides
    ``config.json``, which identifying a model reads), from the audit events ``subprocess.Popen``
    and ``open``: a model server is a process, a model or tokenizer load opens its files."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = str(model_dir)
        self.started: list[str] = []
        self.opened: set[str] = set()
        self._on = False
        sys.addaudithook(self._event)  # stays for the session: a no-op while not recording

    @contextmanager
    def recording(self) -> Iterator[Activity]:
        self.started, self.opened, self._on = [], set(), True
        try:
            yield self
        finally:
            self._on = False

    def _event(self, event: str, args: tuple[Any, ...]) -> None:
        if not self._on:
            return
        if event == "subprocess.Popen":  # (executable, args, cwd, env)
            command = args[1] if isinstance(args[1], list | tuple) else [args[1]]
            self.started.append(Path(os.fsdecode(command[0])).name)
        elif event == "open" and isinstance(args[0], str | bytes):
            path = os.fsdecode(args[0])
            if path.startswith(self.model_dir) and Path(path).name != "config.json":
                self.opened.add(Path(path).name)


def test_local_servers_and_local_judge_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = EndpointSpec(
        kind="local",
        base_url="",
        model=str(tiny_model_dir),
        model_path=str(tiny_model_dir),
        server="transformers",
    ).save(tmp_path / "endpoint.json")
    config = {
        "suite_limit": 3,
        "judge_limit": 2,
        "max_new_tokens": 12,
        "server": "transformers",
        "judge": {"model": str(tiny_model_dir), "max_new_tokens": 8},
    }
    student = {"model": str(tiny_model_dir)}  # the base student
    activity = Activity(tiny_model_dir)
    with activity.recording():
        summary = run_evaluate(
            spec, config, {"enabled": False}, "local", tmp_path / "report.html",
            tmp_path / "results.json", checkpoint_root=str(tmp_path / "ck"), student=student,
        )  # fmt: skip
    assert activity.started == ["transformers", "transformers"]  # candidate and base servers
    assert "tokenizer_config.json" in activity.opened  # the judge, loaded in this process
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["id"] for row in results["suite"]] == ["arith-01", "format-01", "arith-02"]
    assert all(isinstance(row["candidate_answer"], str) for row in results["suite"])
    assert summary["suite_items"] == 3
    judged = summary["judge_wins"] + summary["judge_ties"] + summary["judge_losses"]
    assert judged + summary["judge_unparseable"] == 2
    for row in results["judge"]:
        assert row["verdict_candidate_first"].startswith("Assistant 1 gets a score of")
    assert summary["answer_latency_s_candidate"] > 0
    with activity.recording():
        again = run_evaluate(
            spec, config, {"enabled": False}, "local", None, None,
            checkpoint_root=str(tmp_path / "ck"), student=student,
        )  # fmt: skip
    # everything checkpointed: no server started, no model loaded
    assert activity.started == [] and activity.opened == set()
    assert again["suite_accuracy_candidate"] == summary["suite_accuracy_candidate"]
