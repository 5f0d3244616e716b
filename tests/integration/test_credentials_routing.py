"""Every request carries only the credential configured for the endpoint it goes to.

The evaluate pod holds the teacher's key under ``OPENAI_API_KEY`` (the name the ``openai`` SDK
and lm-eval read by default). The whole evaluate stage runs against three loopback servers that
note every ``Authorization`` header: the candidate (which has a key of its own), the base (none)
and the judge (a teacher backend: the teacher's key is its own). The suite and judge answers and
the real lm-eval harness must each present only the key of the endpoint they talk to.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtune.components.evaluate import lm_eval
from rtune.components.serve.endpoint import EndpointSpec
from tests.fakes.openai_server import Body, FakeOpenAIServer
from tests.integration.test_evaluate_task import run_evaluate
from tests.unit.evaluate.test_evaluate_lm_eval import TASK_YAML

pytestmark = pytest.mark.integration

TEACHER_KEY = "sk-teacher-only-for-the-judge"
CANDIDATE_KEY = "sk-candidate-own-key"


def verdict(body: Body) -> str:
    return "7 7\nBoth answers are equally helpful."


@pytest.fixture()
def local_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A two-question lm-eval task read from disk (no download), added with --include_path."""
    data = tmp_path / "arith.jsonl"
    data.write_text(
        '{"question": "What is 2 + 3?", "answer": "5"}\n{"question": "What is 7 * 6?", "answer": "42"}\n'
    )
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "rtune_arith.yaml").write_text(TASK_YAML.format(data=data))
    command = lm_eval.lm_eval_command
    monkeypatch.setattr(
        lm_eval,
        "lm_eval_command",
        lambda *a, **k: [*command(*a, **k), "--include_path", str(tmp_path / "tasks")],
    )
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return "rtune_arith"


@pytest.fixture()
def servers() -> Iterator[dict[str, FakeOpenAIServer]]:
    with (
        FakeOpenAIServer(reply=lambda body: "Answer: 5", model="candidate") as candidate,
        FakeOpenAIServer(reply=lambda body: "Answer: 6", model="base") as base,
        FakeOpenAIServer(reply=verdict, model="judge") as judge,
    ):
        yield {"candidate": candidate, "base": base, "judge": judge}


def test_each_endpoint_sees_only_its_own_key(
    servers: dict[str, FakeOpenAIServer],
    local_task: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("OPENAI_API_KEY", TEACHER_KEY)
    monkeypatch.setenv("RTUNE_CANDIDATE_KEY", CANDIDATE_KEY)
    candidate, base, judge = servers["candidate"], servers["base"], servers["judge"]
    spec = EndpointSpec(
        kind="kserve", base_url=candidate.url, model="candidate", api_key_env="RTUNE_CANDIDATE_KEY"
    ).save(tmp_path / "endpoint.json")
    config: dict[str, Any] = {
        "suite_limit": 2,
        "judge_limit": 1,
        "base_url": base.url,
        "base_served_model": "base",
        "judge": {
            "backend": "openai",
            "url": judge.url,
            "model": "judge",
            "api_key_env": "OPENAI_API_KEY",
            "max_attempts": 1,
        },
        "benchmarks": [local_task],
        "lm_eval_limit": 2,
        "lm_eval_concurrency": 1,
    }
    summary = run_evaluate(
        spec, config, {"enabled": False}, "keys", None, None,
        checkpoint_root=str(tmp_path / "ck"),
    )  # fmt: skip
    assert "lm_eval/rtune_arith/exact_match_strict-match_base" in summary
    asked = {role: len(server.completions) for role, server in servers.items()}
    # 2 suite + 1 held-out answers + 2 lm-eval questions per student; both orders for the judge
    assert asked == {"candidate": 5, "base": 5, "judge": 2}
    assert set(candidate.authorizations) == {f"Bearer {CANDIDATE_KEY}"}
    assert set(base.authorizations) == {"Bearer EMPTY"}
    assert set(judge.authorizations) == {f"Bearer {TEACHER_KEY}"}
