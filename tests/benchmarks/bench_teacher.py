"""Teacher throughput: many requests in flight vs one at a time, against a slow loopback server.

    .venv/bin/python tests/benchmarks/bench_teacher.py [--records 64] [--delay 0.2] [--concurrency 32]

Runs the real instruction-reflection stage (``reflect_instructions`` with the ``openai`` backend)
twice against the fake OpenAI-compatible server answering every request after a fixed delay:
once with ``concurrency`` requests in flight, once with one. The server runs in its own process,
as a real teacher endpoint would, so it does not compete with the client for the GIL. A teacher endpoint is latency-bound,
so throughput should grow almost linearly with concurrency: the target is a speed-up of at least
20x at concurrency 32, with no record lost. Exits 1 when either fails.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `components` and `tests` importable

import openai  # noqa: E402, F401  (imported up front: neither run should pay the one-off ~0.4 s)

from rtune.components.common.records import read_jsonl, write_jsonl  # noqa: E402
from rtune.components.reflect_instruction.reflect import reflect_instructions  # noqa: E402
from rtune.components.teacher.config import TeacherConfig  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402

SEED = ROOT / "components" / "prepare" / "data" / "seed.jsonl"
TARGET_SPEEDUP = 20.0


@dataclass
class Run:
    concurrency: int
    records: int
    seconds: float
    records_per_s: float
    peak_in_flight: int
    lost: int


def make_records(count: int) -> list[dict[str, str]]:
    """``count`` prepared-style records: the shipped seed rows, repeated with new ids if short."""
    seed = read_jsonl(SEED) if SEED.exists() else []
    rows = seed or [{"instruction": "Explain photosynthesis.", "input": "", "output": "Plants."}]
    return [
        {
            "id": f"bench-{i:04d}",
            "instruction": f"{rows[i % len(rows)]['instruction']} (#{i})",
            "input": rows[i % len(rows)].get("input", ""),
            "output": rows[i % len(rows)]["output"],
        }
        for i in range(count)
    ]


def serve(delay_s: float, pipe: Connection) -> None:
    """Child process: run the server, send its URL, on request send its peak in-flight count."""
    with FakeOpenAIServer(delay_s=delay_s) as server:
        pipe.send(server.url)
        pipe.recv()
        pipe.send(server.max_in_flight)


@contextmanager
def server_process(delay_s: float) -> Iterator[tuple[str, Connection]]:
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(target=serve, args=(delay_s, theirs))
    child.start()
    try:
        yield ours.recv(), ours
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.terminate()


def run_stage(source: Path, workdir: Path, concurrency: int, delay_s: float) -> Run:
    output = workdir / f"reflected-c{concurrency}.jsonl"
    with server_process(delay_s) as (url, pipe):
        config = TeacherConfig(
            backend="openai", url=url, model="fake-teacher", concurrency=concurrency, timeout_s=30
        )
        summary = reflect_instructions(source, output, config, progress=False)
        pipe.send("peak?")
        peak = pipe.recv()
    wanted = [r["id"] for r in read_jsonl(source)]
    got = [r["id"] for r in read_jsonl(output)]
    lost = len(set(wanted) - set(got)) + abs(len(got) - len(set(got)))
    return Run(concurrency, summary.records, summary.seconds, summary.records_per_s, peak, lost)


def print_table(runs: list[Run], delay_s: float) -> None:
    print(f"\nteacher throughput, loopback server answering after {delay_s * 1000:.0f} ms")
    print(
        f"{'concurrency':>11} | {'records':>7} | {'seconds':>7} | {'records/s':>9} | "
        f"{'peak in flight':>14} | {'lost':>4}"
    )
    print("-" * 70)
    for run in runs:
        print(
            f"{run.concurrency:>11} | {run.records:>7} | {run.seconds:>7.2f} | "
            f"{run.records_per_s:>9.1f} | {run.peak_in_flight:>14} | {run.lost:>4}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.2, help="server reply delay, seconds")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-teacher-") as tmp:
        workdir = Path(tmp)
        source = workdir / "prepared.jsonl"
        write_jsonl(source, make_records(args.records))
        runs = [run_stage(source, workdir, c, args.delay) for c in (args.concurrency, 1)]
    print_table(runs, args.delay)
    speedup = runs[0].records_per_s / runs[1].records_per_s
    lost = sum(run.lost for run in runs)
    verdict = "ok" if speedup >= TARGET_SPEEDUP and lost == 0 else "BELOW TARGET"
    print(
        f"\nspeed-up {args.concurrency} vs 1: {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x); "
        f"records lost: {lost} (must be 0) -> {verdict}"
    )
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
