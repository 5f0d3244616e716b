"""A teacher that is down must not pass for a finished stage: above ``max_error_rate`` records
whose request failed for good, the stage stops - no output, the checkpoint kept for a rerun,
one message with the rate and the distinct errors - in the library, the CLI and the task."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from rtune.components.common.records import Record, read_jsonl, write_jsonl
from rtune.components.common.stage import StageSettings, run_stage
from rtune.components.reflect_instruction.reflect import reflect_instructions
from rtune.components.reflect_instruction.task import ReflectStage
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.health import TeacherUnavailable
from rtune.components.teacher.protocol import Completion, OnDone, TeacherRequest
from rtune.pipelines.cli import main
from tests.fakes.openai_server import FakeOpenAIServer, Fault, echo_reply, sample_instruction

Reply = Callable[[str], str | Completion]


class ScriptedTeacher:
    """In-process teacher: ``reply(instruction)`` is the reply text or a failed Completion."""

    prefills = False
    structured = False

    def __init__(self, reply: Reply | None = None) -> None:
        self.reply = reply
        self.asked: list[str] = []

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        for index, request in enumerate(requests):
            body = {"messages": list(request.messages)}
            instruction = sample_instruction(body)
            self.asked.append(instruction)
            answer = self.reply(instruction) if self.reply else echo_reply(body)
            if isinstance(answer, str):
                answer = Completion(answer, "scripted", 100, 20, 0.01)
            on_done(index, answer)


def failed(error: str) -> Completion:
    return Completion("", "scripted", None, None, 1.0, attempts=5, error=error)


def records(count: int) -> list[Record]:
    return [
        {"id": f"r{i}", "instruction": f"Task {i}: explain rain.", "input": "", "output": "Rain."}
        for i in range(count)
    ]


def live_except(errors: dict[int, str]) -> Reply:
    """Answers every record but those numbered in ``errors``, which fail with that error."""

    def reply(instruction: str) -> str | Completion:
        number = int(instruction.split(":")[0].removeprefix("Task "))
        if number in errors:
            return failed(errors[number])
        return echo_reply({"messages": [{"role": "user", "content": wrap(instruction)}]})

    return reply


def wrap(instruction: str) -> str:
    return f"<instruction>\n{instruction}\n</instruction>"


def run(tmp_path: Path, teacher: ScriptedTeacher, **config: object) -> object:
    return reflect_instructions(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        TeacherConfig(**config),  # type: ignore[arg-type]
        teacher=teacher,
        progress=False,
    )


def test_a_dead_teacher_stops_the_stage_and_a_rerun_resumes_the_finished_records(
    tmp_path: Path,
) -> None:
    write_jsonl(tmp_path / "in.jsonl", records(4))
    down = {1: "HTTP 503: overloaded", 2: "HTTP 503: overloaded", 3: "connection error: refused"}
    with pytest.raises(TeacherUnavailable) as raised:
        run(tmp_path, ScriptedTeacher(live_except(down)))
    message = str(raised.value)
    assert "3 of 4 records (75.0%" in message and "max_error_rate 20.0%" in message
    assert message.count("HTTP 503: overloaded") == 1 and "connection error: refused" in message
    assert not (tmp_path / "out.jsonl").exists()  # no copies of the old answers as "reflections"
    checkpoint = tmp_path / "out.jsonl.partial.jsonl"
    assert str(checkpoint) in message and checkpoint.exists()
    metrics = raised.value.metrics  # the run's numbers are still counted
    assert metrics["fallback_error"] == 3 and metrics["parse_ok"] == 1
    assert metrics["prompt_tokens"] == 100 and metrics["usage_unreported"] == 3

    alive = ScriptedTeacher()
    summary = run(tmp_path, alive)
    assert alive.asked == [
        "Task 1: explain rain.",
        "Task 2: explain rain.",
        "Task 3: explain rain.",
    ]
    assert summary.resumed_from_checkpoint == 1 and summary.parse_ok == 4  # type: ignore[attr-defined]
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["r0", "r1", "r2", "r3"]
    assert not checkpoint.exists()


def test_an_error_rate_at_the_limit_passes_and_above_it_fails(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", records(5))
    one_down = live_except({4: "HTTP 500: boom"})
    summary = run(tmp_path, ScriptedTeacher(one_down))  # 1 of 5 = 20 %: not above the default
    assert summary.fallback_error == 1  # type: ignore[attr-defined]
    last = read_jsonl(tmp_path / "out.jsonl")[4]
    assert last["candidates"]["Q"] == last["candidates"]["ori"]
    with pytest.raises(TeacherUnavailable, match=r"max_error_rate 10\.0%"):
        run(tmp_path, ScriptedTeacher(one_down), max_error_rate=0.1)


def test_unparseable_replies_are_not_teacher_errors(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", records(3))
    summary = run(tmp_path, ScriptedTeacher(lambda _: "Looks fine to me."), max_error_rate=0.0)
    assert summary.fallback_parse == 3 and summary.fallback_error == 0  # type: ignore[attr-defined]
    assert (tmp_path / "out.jsonl").exists()


def test_the_message_shows_a_few_distinct_errors_and_counts_the_rest(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", records(6))
    errors = {i: f"HTTP 50{i}: error number {i}" for i in range(6)}
    with pytest.raises(TeacherUnavailable) as raised:
        run(tmp_path, ScriptedTeacher(live_except(errors)))
    message = str(raised.value)
    assert all(errors[i] in message for i in range(3))
    assert not any(errors[i] in message for i in range(3, 6))
    assert "3 other errors" in message


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_max_error_rate_is_a_fraction(rate: float) -> None:
    with pytest.raises(ValueError, match="max_error_rate"):
        TeacherConfig(max_error_rate=rate)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def reflect_cli(tmp_path: Path, url: str, *extra: str) -> int:
    return main(
        [
            "reflect",
            "--stage",
            "instruction",
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--teacher",
            "openai",
            "--teacher-url",
            url,
            "--teacher-model",
            "m",
            "--max-attempts",
            "1",
            "--no-progress",
            "--no-tracking",
            *extra,
        ]
    )


def test_cli_exits_1_with_one_message_when_the_teacher_is_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rtune.pipelines.cli.COMMANDS", ("reflect",))
    write_jsonl(tmp_path / "in.jsonl", records(2))
    code = reflect_cli(tmp_path, closed_port_url())
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("rtune reflect:")]
    assert code == 1 and len(errors) == 1
    assert "2 of 2 records (100.0%" in errors[0] and "connection error" in errors[0]
    assert "reflect instruction: records=" not in captured.out  # no success line
    assert not (tmp_path / "out.jsonl").exists()
    assert (tmp_path / "out.jsonl.partial.jsonl").exists()

    code = reflect_cli(tmp_path, closed_port_url(), "--max-error-rate", "1")
    assert code == 0 and (tmp_path / "out.jsonl").exists()  # a deliberate choice to accept it


class Sink:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def log_metric(self, metric: str, value: float) -> None:
        self.values[metric] = value


def test_the_task_fails_and_its_rerun_against_a_live_teacher_resumes(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", records(4))
    ckpt = str(tmp_path / "ck")
    output = tmp_path / "q.jsonl"
    teacher = {"backend": "openai", "model": "m", "concurrency": 1, "max_attempts": 1}
    with FakeOpenAIServer() as server:
        server.inject(*[Fault(status=503)] * 3)
        sink = Sink()
        with pytest.raises(TeacherUnavailable, match="3 of 4 records"):
            run_stage(
                ReflectStage.from_parameters(
                    "instruction", {**teacher, "url": server.url}, tmp_path / "in.jsonl", output
                ),
                StageSettings({"enabled": False}, ckpt, sink, run_id="run-1"),
            )
    assert sink.values["fallback_error"] == 3 and sink.values["parse_ok"] == 1
    assert not output.exists()
    with FakeOpenAIServer() as live:  # another address: the URL does not shape the answers
        values = run_stage(
            ReflectStage.from_parameters(
                "instruction", {**teacher, "url": live.url}, tmp_path / "in.jsonl", output
            ),
            StageSettings({"enabled": False}, ckpt, run_id="run-1"),
        ).as_dict()
        asked = len(live.completions)
    assert asked == 3 and values["resumed_from_checkpoint"] == 1 and values["parse_ok"] == 4
    assert [r["id"] for r in read_jsonl(output)] == ["r0", "r1", "r2", "r3"]
