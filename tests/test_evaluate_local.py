"""The evaluate stage with real parts only: the candidate and the base served by `transformers
serve` on loopback (LocalServer, started by the stage from the endpoint spec and base_model) and
the judge on the transformers backend. The tiny random-weight Llama keeps it fast: its words are
noise, so the test checks the plumbing, not the quality (verdicts may be unparseable, and are
then counted as such)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rtune.components.evaluate.task import run_evaluate
from rtune.components.serve.endpoint import EndpointSpec

pytestmark = [pytest.mark.slow, pytest.mark.integration]


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
        "base_model": str(tiny_model_dir),
        "server": "transformers",
        "judge": {"model": str(tiny_model_dir), "max_new_tokens": 8},
    }
    summary = run_evaluate(
        spec, config, {"enabled": False}, "local", tmp_path / "report.html",
        tmp_path / "results.json", checkpoint_root=str(tmp_path / "ck"), progress=False,
    )  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["id"] for row in results["suite"]] == ["arith-01", "format-01", "arith-02"]
    assert all(isinstance(row["candidate_answer"], str) for row in results["suite"])
    assert summary["suite_items"] == 3
    judged = summary["judge_wins"] + summary["judge_ties"] + summary["judge_losses"]
    assert judged + summary["judge_unparseable"] == 2
    for row in results["judge"]:
        assert row["verdict_candidate_first"].startswith("Assistant 1 gets a score of")
    assert summary["answer_latency_s_candidate"] > 0
    began = time.monotonic()
    again = run_evaluate(
        spec, config, {"enabled": False}, "local", None, None,
        checkpoint_root=str(tmp_path / "ck"), progress=False,
    )  # fmt: skip
    assert time.monotonic() - began < 10  # everything checkpointed: no server, no model load
    assert again["suite_accuracy_candidate"] == summary["suite_accuracy_candidate"]
