"""A kill, a full disk or a node crash can cut a checkpoint's last line anywhere, also inside a
multi-byte UTF-8 character: the rerun drops that line, keeps every finished result and redoes
only the torn one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtune.components.common.checkpoint import RecordCheckpoint, fingerprint
from rtune.components.common.records import read_jsonl, write_jsonl
from rtune.components.reflect_instruction.reflect import reflect_instructions
from rtune.components.teacher.config import TeacherConfig
from tests.fakes.openai_server import FakeOpenAIServer

KEY = fingerprint(["a", "b", "c"], {"model": "m"})


def torn_inside_a_character(entry: dict[str, object]) -> bytes:
    """The line as the old writer (``ensure_ascii=False``) put it, cut after the first byte of
    its last multi-byte character."""
    data = json.dumps(entry, ensure_ascii=False).encode("utf-8")
    last_multibyte = max(i for i, byte in enumerate(data) if byte >= 0xC0)
    return data[: last_multibyte + 1]


@pytest.mark.parametrize("text", ["café", "日本語", "emoji \U0001f600"])
def test_torn_multibyte_last_line_is_dropped_and_redone(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.partial.jsonl"
    with RecordCheckpoint(path, KEY) as checkpoint:
        checkpoint.add("a", {"text": f"A {text}"})
        checkpoint.add("b", {"text": f"B {text}"})
    with path.open("ab") as handle:
        handle.write(torn_inside_a_character({"key": "c", "result": {"text": f"C {text}"}}))

    resumed = RecordCheckpoint(path, KEY)
    assert resumed.done == {"a": {"text": f"A {text}"}, "b": {"text": f"B {text}"}}
    assert resumed.pending(["a", "b", "c"]) == ["c"]
    resumed.add("c", {"text": f"C {text}"})
    resumed.close()
    # the torn line now sits in the middle of the file: still dropped, nothing else lost
    again = RecordCheckpoint(path, KEY)
    assert again.done == {key: {"text": f"{key.upper()} {text}"} for key in "abc"}
    assert not path.with_name(path.name + ".stale").exists()


def test_checkpoint_lines_cannot_be_cut_inside_a_character(tmp_path: Path) -> None:
    """Lines are written as ASCII (``\\u`` escapes), so a cut can only fall between bytes of
    JSON syntax; lone surrogates from a teacher reply survive the round trip too."""
    path = tmp_path / "c.partial.jsonl"
    with RecordCheckpoint(path, KEY) as checkpoint:
        checkpoint.add("a", {"text": "日本語 \U0001f600", "odd": "\ud800"})
    assert path.read_bytes().isascii()
    assert RecordCheckpoint(path, KEY).done["a"] == {"text": "日本語 \U0001f600", "odd": "\ud800"}


def test_reflect_resumes_past_a_torn_multibyte_line(tmp_path: Path) -> None:
    """The stage-level story: a reflect run whose checkpoint ends in a torn multi-byte line asks
    the teacher again for that record only."""
    ids = [f"r{i}" for i in range(4)]
    source = tmp_path / "in.jsonl"
    write_jsonl(
        source,
        [
            {"id": rid, "instruction": f"Décris le café n°{i}.", "input": "", "output": "Noir."}
            for i, rid in enumerate(ids)
        ],
    )
    output = tmp_path / "out.jsonl"
    checkpoint = tmp_path / "out.jsonl.partial.jsonl"
    config = TeacherConfig(backend="openai", model="fake-teacher", concurrency=1, timeout_s=5)

    output.mkdir()  # the final write fails: every record is checkpointed, the file stays
    with FakeOpenAIServer() as server:
        with pytest.raises(OSError):
            reflect_instructions(source, output, _at(config, server.url), progress=False)
        assert server.requests_for("Décris") == len(ids)
    output.rmdir()

    lines = checkpoint.read_bytes().splitlines()
    last = json.loads(lines[-1])
    assert last["key"].split("#")[0] == ids[-1]  # keyed by id and the text the teacher saw
    checkpoint.write_bytes(b"\n".join(lines[:-1]) + b"\n" + torn_inside_a_character(last))

    with FakeOpenAIServer() as server:
        reflect_instructions(source, output, _at(config, server.url), progress=False)
        assert server.requests_for("Décris le café n°3.") == 1
        assert server.requests_for("Décris") == 1  # the three finished records: not asked
    assert [record["id"] for record in read_jsonl(output)] == ids
    assert not checkpoint.exists()


def _at(config: TeacherConfig, url: str) -> TeacherConfig:
    from dataclasses import replace

    return replace(config, url=url)
