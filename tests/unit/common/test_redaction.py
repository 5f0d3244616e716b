"""Credentials written into URLs (``https://user:pass@host``, ``?token=...``) never reach MLflow
params, tags or logged text and JSON, the stage's summary line, nor the evaluate stage's
messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.config import flatten, redact_credentials
from rtune.components.common.stage import StageContext, StageSettings, run_stage

PASSWORD = "s3cr3t-pw"
TOKEN = "tok-9f8e7d"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://alice:s3cr3t-pw@teacher.example/v1", "https://***@teacher.example/v1"),
        ("http://tok-9f8e7d@10.0.0.1:8000/v1", "http://***@10.0.0.1:8000/v1"),
        (
            "judge https://a:s3cr3t-pw@j/v1 and base http://b:tok-9f8e7d@b:80/v1.",
            "judge https://***@j/v1 and base http://***@b:80/v1.",
        ),
        (
            "https://h/data.jsonl?X-Amz-Credential=AK%2F1&X-Amz-Signature=ab12&part=2",
            "https://h/data.jsonl?X-Amz-Credential=***&X-Amz-Signature=***&part=2",
        ),
        ("https://h/v1?api_key=tok-9f8e7d&sig=x#top", "https://h/v1?api_key=***&sig=***#top"),
        ("https://h/v1?signal=1&monkey=2", "https://h/v1?signal=1&monkey=2"),
        ("s3://bucket/runs/kfp-1/model", "s3://bucket/runs/kfp-1/model"),
        ("mail ops@example.com at 10:30", "mail ops@example.com at 10:30"),
        ('{"url": "https://u:s3cr3t-pw@h/v1"}', '{"url": "https://***@h/v1"}'),
    ],
)
def test_redact_credentials(text: str, shown: str) -> None:
    assert redact_credentials(text) == shown


@dataclass
class _Section:
    url: str = f"https://alice:{PASSWORD}@teacher.example/v1"
    api_key_env: str = "OPENAI_API_KEY"


@dataclass
class _Config:
    base_url: str = f"http://{TOKEN}@base.example/v1"
    seed: str = f"https://data.example/seed.jsonl?token={TOKEN}"
    teacher: _Section = field(default_factory=_Section)
    judge: dict[str, Any] = field(
        default_factory=lambda: {"url": f"https://bob:{PASSWORD}@judge.example/v1"}
    )


def test_flatten_hides_credentials_inside_values() -> None:
    flat = flatten(_Config())
    assert flat["teacher.url"] == "https://***@teacher.example/v1"
    assert flat["judge.url"] == "https://***@judge.example/v1"
    assert flat["base_url"] == "http://***@base.example/v1"
    assert flat["seed"] == "https://data.example/seed.jsonl?token=***"
    assert flat["teacher.api_key_env"] == "OPENAI_API_KEY"


@dataclass
class _Served:
    endpoint: str

    def as_dict(self) -> dict[str, Any]:
        return {"smoke_ok": 1.0}

    def line(self) -> str:
        return f"served at {self.endpoint}"


@dataclass
class _LeakyStage:
    """A stage that hands a URL with a password to everything a stage can log."""

    config: _Config
    endpoint: str
    name: str = "serve"
    run_ids: tuple[str | None, str | None] = (None, None)

    def run(self, context: StageContext) -> _Served:
        run, endpoint = context.run, self.endpoint
        run.set_tags({"rtune.endpoint": endpoint}, to_parent=True)
        run.log_json({"base_url": endpoint, "ok": True}, "serve/endpoint.json")
        run.log_text(f"served at {endpoint}?token={TOKEN}", "serve/notes.txt")
        run.log_dataset([{"id": "a"}], f"https://u:{PASSWORD}@data.example/seed.jsonl", "s", "seed")
        self.run_ids = (run.run_id, run.parent_run_id)
        return _Served(endpoint)


def test_nothing_secret_reaches_the_mlflow_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Params (also extra ones, and the parent's copy), tags on the stage and the parent run,
    logged JSON and text, a dataset's source, and the summary line (tag and log line), read back
    from a real (sqlite) MLflow store."""
    import mlflow

    tracking = {"experiment": "redact", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    endpoint = f"https://alice:{PASSWORD}@student.example/v1"
    stage = _LeakyStage(_Config(), endpoint)
    settings = StageSettings(tracking=tracking, run_id="kfp-r", extra_params={"endpoint": endpoint})
    run_stage(stage, settings)
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    stage_id, parent_id = stage.run_ids
    assert stage_id is not None and parent_id is not None
    client = mlflow.MlflowClient(tracking["tracking_uri"])
    stage, parent = client.get_run(stage_id), client.get_run(parent_id)
    logged = {
        "params": stage.data.params,
        "tags": stage.data.tags,
        "parent_tags": parent.data.tags,
        "parent_params": parent.data.params,
        "printed": printed,
        "json": Path(client.download_artifacts(stage_id, "serve/endpoint.json")).read_text(),
        "text": Path(client.download_artifacts(stage_id, "serve/notes.txt")).read_text(),
        "dataset": [d.dataset.source for d in stage.inputs.dataset_inputs],
    }
    shown = json.dumps(logged)
    assert PASSWORD not in shown and TOKEN not in shown
    assert stage.data.params["endpoint"] == "https://***@student.example/v1"
    assert parent.data.params["serve.endpoint"] == "https://***@student.example/v1"
    assert stage.data.tags["rtune.summary"] == "served at https://***@student.example/v1"
    assert "rtune-summary serve: served at https://***@student.example/v1" in printed
    assert parent.data.tags["rtune.endpoint"] == "https://***@student.example/v1"
    assert json.loads(logged["json"]) == {"base_url": "https://***@student.example/v1", "ok": True}
    assert "data.example/seed.jsonl" in logged["dataset"][0]


def test_a_bad_base_url_is_named_without_its_password() -> None:
    from rtune.components.common.config import from_dict
    from rtune.components.common.records import InputError
    from rtune.components.evaluate.config import EvaluateConfig

    with pytest.raises(InputError, match="base_url must start with") as info:
        from_dict(EvaluateConfig, {"base_url": f"htps://u:{PASSWORD}@h/v1"}, "evaluate")
    assert PASSWORD not in str(info.value) and "htps://***@h/v1" in str(info.value)


@dataclass
class _Shard:
    config: _Config
    name: str
    params: dict[str, str]
    run_ids: tuple[str | None, str | None] = (None, None)

    def run(self, context: StageContext) -> _Served:
        self.run_ids = (context.run.run_id, context.run.parent_run_id)
        return _Served("x")


def test_a_shards_index_stays_on_its_own_run(tmp_path: Path) -> None:
    """Parallel shards share the parent run: their differing ``shard_index`` would make the
    second write of that write-once param fail (seen when kfp.local ran two shards at once)."""
    import mlflow

    tracking = {"experiment": "shards", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    settings = StageSettings(tracking=tracking, run_id="kfp-shards")
    shard = _Shard(_Config(), "score_rifd-shard-1", {"phase": "rifd", "shard_index": "1"})
    run_stage(shard, settings)
    stage_id, parent_id = shard.run_ids
    assert stage_id is not None and parent_id is not None
    client = mlflow.MlflowClient(tracking["tracking_uri"])
    assert client.get_run(stage_id).data.params["shard_index"] == "1"
    parent = client.get_run(parent_id).data.params
    assert parent["score_rifd.phase"] == "rifd" and "score_rifd.shard_index" not in parent
