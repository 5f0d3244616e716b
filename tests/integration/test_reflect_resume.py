"""Kill ``rtune reflect`` with SIGKILL mid-run, run it again: it finishes only what was left.

The CLI runs as a real subprocess against the loopback OpenAI-compatible server. The server
answers the first ``ANSWERED`` requests and holds every later one until the test opens a gate,
so the kill lands in a known state - ``ANSWERED`` records checkpointed, ``CONCURRENCY`` requests
in flight, nothing else sent - without depending on how fast the machine is. The server's
request log shows which records were asked, and how often.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rtune.components.common.records import read_jsonl, write_jsonl
from tests.fakes.openai_server import Body, FakeOpenAIServer, echo_reply
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.integration
RECORDS = 16
CONCURRENCY = 2
ANSWERED = 4  # requests answered before the gate; later ones wait for it
WAIT_S = 90.0  # a guard against a run that stalls, not a measurement
ROOT = REPO_ROOT


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
        "--no-tracking",
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


class Gate:
    """The server's reply: the first ``ANSWERED`` requests at once, later ones once ``opened``.
    ``all_in`` is set when ``ANSWERED + CONCURRENCY`` requests have arrived: the client then has
    its whole concurrency waiting and sends nothing more."""

    def __init__(self) -> None:
        self.arrivals = itertools.count(1)
        self.opened = threading.Event()
        self.all_in = threading.Event()

    def __call__(self, body: Body) -> str:
        arrival = next(self.arrivals)
        if arrival >= ANSWERED + CONCURRENCY:
            self.all_in.set()
        if arrival > ANSWERED:
            self.opened.wait(WAIT_S)
        return echo_reply(body)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    """Poll ``condition`` while ``process`` runs (a file another process writes has no event)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run ended or stalled before the kill (exit {process.poll()})")
        time.sleep(0.02)


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
    # The CLI must import `rtune` from where this test does (a worktree's shim, an install).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))}
    env.pop("RTUNE_RESUME_TEST_KEY", None)
    gate = Gate()
    with FakeOpenAIServer(reply=gate) as server:
        command = reflect_command(server.url, source, output)
        first = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: len(checkpointed_ids(checkpoint)) >= ANSWERED, first)
        wait_for(gate.all_in.is_set, first)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        done_before = checkpointed_ids(checkpoint)
        asked_before = server.requests_per_instruction()
        written_before = output.exists()
        gate.opened.set()  # the rerun's requests (and the dead run's held ones) are answered
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
    assert len(done_before) == ANSWERED and not written_before
    in_flight_at_kill = {rid for rid in ids if asked_before[by_id[rid]]} - set(done_before)
    assert len(in_flight_at_kill) == CONCURRENCY
    assert sum(asked_before.values()) == ANSWERED + CONCURRENCY
    for rid in ids:  # finished before the kill: never asked again; in flight: asked again
        assert asked_total[by_id[rid]] == (2 if rid in in_flight_at_kill else 1), rid

    summary = second.stdout.strip().splitlines()[-1]
    assert f"resumed={len(done_before)}" in summary
    assert f"completed_now={RECORDS - len(done_before)}" in summary
