"""Records IO, typed configs, checkpoints and the HTML report: the shared core every stage uses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rtune.components.common import reports
from rtune.components.common.checkpoint import RecordCheckpoint, fingerprint
from rtune.components.common.config import flatten, from_dict
from rtune.components.common.records import InputError, index_by_id, read_jsonl, write_jsonl


def test_input_error_names_file_line_field_and_fix() -> None:
    err = InputError(
        "data.jsonl", "is empty", "give every record an output", line=7, field="output"
    )
    text = str(err)
    assert text.startswith("data.jsonl, line 7, field 'output': is empty")
    assert "fix: give every record an output" in text


def test_read_jsonl_reports_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": \n', encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_jsonl(path)
    assert info.value.line == 3 and "invalid JSON" in str(info.value)


def test_write_jsonl_is_atomic_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "out" / "r.jsonl"
    records = [{"id": "a", "text": "héllo\nworld"}, {"id": "b", "n": 1}]
    assert write_jsonl(path, records) == 2
    assert read_jsonl(path) == records
    assert [p.name for p in path.parent.iterdir()] == ["r.jsonl"]  # no temp file left behind


def test_index_by_id_rejects_duplicates() -> None:
    with pytest.raises(InputError, match="duplicate id"):
        index_by_id([{"id": "a"}, {"id": "a"}], "s.jsonl")


@dataclass
class _Inner:
    depth: int = 1


@dataclass
class _Config:
    name: str = "x"
    count: int = 2
    ratio: float = 0.5
    limit: int | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_key: str = ""
    inner: _Inner = field(default_factory=_Inner)

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")


def test_from_dict_coerces_kfp_floats_and_builds_nested() -> None:
    config = from_dict(_Config, {"count": 3.0, "limit": 8.0, "ratio": 1.0, "inner": {"depth": 4.0}})
    assert config.count == 3 and isinstance(config.count, int)
    assert config.limit == 8 and isinstance(config.limit, int)
    assert config.inner.depth == 4


def test_from_dict_unknown_key_and_validation_are_input_errors() -> None:
    with pytest.raises(InputError, match=r"unknown key\(s\) \['cuont'\]") as info:
        from_dict(_Config, {"cuont": 1}, "run.yaml: teacher")
    assert "valid keys are" in str(info.value)
    with pytest.raises(InputError, match="count must be >= 0"):
        from_dict(_Config, {"count": -1})


def test_flatten_keeps_env_var_names_but_never_secret_values() -> None:
    flat = flatten(_Config(api_key="sk-live-123"))
    assert flat["inner.depth"] == "1" and flat["api_key_env"] == "OPENAI_API_KEY"
    assert "api_key" not in flat and "sk-live-123" not in json.dumps(flat)
    assert flatten({"tokenizer": "default", "max_new_tokens": 8, "auth_token": "x"}) == {
        "tokenizer": "default",
        "max_new_tokens": "8",
    }


def test_checkpoint_resumes_ignores_torn_line_and_sets_stale_aside(tmp_path: Path) -> None:
    path = tmp_path / "c.partial.jsonl"
    key = fingerprint(["a", "b", "c"], {"model": "m"})
    with RecordCheckpoint(path, key) as checkpoint:
        checkpoint.add("a", {"text": "A"})
        checkpoint.add("b", {"text": "B"})
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "c", "result": {"te')  # a SIGKILL mid-write
    resumed = RecordCheckpoint(path, key)
    assert resumed.done == {"a": {"text": "A"}, "b": {"text": "B"}}
    assert resumed.pending(["a", "b", "c"]) == ["c"]
    resumed.add("c", {"text": "C"})
    resumed.close()
    assert RecordCheckpoint(path, key).done["c"] == {"text": "C"}
    other = RecordCheckpoint(path, fingerprint("different config"))
    assert other.done == {}
    assert path.with_name(path.name + ".stale").exists()


def test_html_report_is_self_contained_with_figures() -> None:
    records = [
        {
            "id": "1",
            "decision": "A",
            "phase1": {"winner": "ori"},
            "candidates": {
                "ori": {"scores": {"ifd": 0.6, "rifd": 0.9}},
                "Q": {"scores": {"ifd": 0.8}},
                "A": {"scores": {"rifd": 0.5}},
            },
        },
        {
            "id": "2",
            "decision": "dropped",
            "phase1": {"winner": "Q"},
            "candidates": {
                "ori": {"scores": {"ifd": 0.9}},
                "Q": {"scores": {"ifd": 0.7, "rifd": 0.8}},
                "QA": {"scores": {"rifd": 1.2}},
            },
        },
    ]
    figures = {
        "ifd": reports.figure_ifd_ori_vs_q(records),
        "decisions": reports.figure_decisions(records),
    }
    assert "1/2 harder" in figures["ifd"].axes[0].get_title()
    page = reports.html_report("t <run>", {"kept": 1}, figures, [{"id": "1", "x": 0.123456}])
    assert page.count("data:image/png;base64,") == 2
    assert "t &lt;run&gt;" in page and "0.1235" in page and "http" not in page
