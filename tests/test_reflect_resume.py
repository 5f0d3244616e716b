"""Kill ``rtune reflect`` with SIGKILL mid-run, run it again: it finishes only what was left.

The CLI runs as a real subprocess against the loopback OpenAI-compatible server, which answers
slowly (0.3 s, two requests in flight) so the kill lands while some records are checkpointed
and others are not. The server's request log shows which records were asked, and how often.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtune.components.common.records import read_jsonl, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.integration
RECORDS = 16
CONCURRENCY = 2
ROOT = Path(__file__).resolve().parents[1]


def instruction(i: int) -> str:
    return f"Record {i}: explain how tides work."


def reflect_command(server_url: str, source: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rtune.pipelines.cli",
        "reflect",
        "--stage",
        "instruction",
        "--input",
        str(source),
        "--output",
        str(output),
        "--teacher",
        "openai",
        "--teacher-url",
        server_url,
        "--teacher-model",
        "fake-teacher",
        "--concurrency",
        str(CONCURRENCY),
        "--api-key-env",
        "RTUNE_RESUME_TEST_KEY",
        "--no-progress",
    ]


def checkpointed_ids(path: Path) -> list[str]:
    """Record ids of complete result lines (a torn last line from the kill is not a result); a
    line's key is the record id, ``#`` and a digest of the sample."""
    if not path.exists():
        return []
    keys = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "key" in entry:
            keys.append(entry["key"].rsplit("#", 1)[0])
    return keys


def kill_when_partly_done(process: subprocess.Popen[bytes], checkpoint: Path) -> list[str]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        done = checkpointed_ids(checkpoint)
        if len(done) >= 4:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return checkpointed_ids(checkpoint)
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"the run ended or stalled before the kill (exit {process.poll()})")


def test_sigkilled_run_resumes_with_only_the_remaining_records(tmp_path: Path) -> None:
    source, output = tmp_path / "prepared.jsonl", tmp_path / "reflected.jsonl"
    checkpoint = tmp_path / "reflected.jsonl.partial.jsonl"
    ids = [f"rec-{i:02d}" for i in range(RECORDS)]
    write_jsonl(
        source,
        [
            {
                "id": rid,
                "instruction": instruction(i),
                "input": "",
                "output": "The Moon pulls the sea.",
            }
            for i, rid in enumerate(ids)
        ],
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RTUNE_RESUME_TEST_KEY", None)
    with FakeOpenAIServer(delay_s=0.3) as server:
        command = reflect_command(server.url, source, output)
        first = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        done_before = kill_when_partly_done(first, checkpoint)
        assert 4 <= len(done_before) < RECORDS and not output.exists()
        time.sleep(0.5)  # let requests already on the wire reach the server's log
        asked_before = server.requests_per_instruction()
        second = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        )
        asked_total = server.requests_per_instruction()

    assert second.returncode == 0, second.stderr
    records = read_jsonl(output)
    assert [r["id"] for r in records] == ids  # every id exactly once, in input order
    assert all(r["teacher"]["instruction"]["parse_status"] == "ok" for r in records)
    assert not checkpoint.exists()

    by_id = {rid: instruction(i) for i, rid in enumerate(ids)}
    for rid in done_before:  # finished before the kill: never asked again
        assert asked_total[by_id[rid]] == 1, rid
    asked_twice = [rid for rid in ids if asked_total[by_id[rid]] > 1]
    in_flight_at_kill = {rid for rid in ids if asked_before[by_id[rid]]} - set(done_before)
    assert set(asked_twice) <= in_flight_at_kill and len(in_flight_at_kill) <= CONCURRENCY
    assert all(asked_total[by_id[rid]] >= 1 for rid in ids)
    assert sum(asked_total.values()) <= RECORDS + CONCURRENCY

    summary = second.stdout.strip().splitlines()[-1]
    assert f"resumed={len(done_before)}" in summary
    assert f"completed_now={RECORDS - len(done_before)}" in summary
