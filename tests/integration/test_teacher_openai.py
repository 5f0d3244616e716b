"""The openai backend against a real HTTP server on loopback: retries, backoff, timeouts,
bounded concurrency, structured output, and an API key that never leaks."""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from rtune.components.common.config import flatten, from_dict
from rtune.components.common.records import read_jsonl, write_jsonl
from rtune.components.reflect_instruction.reflect import reflect_instructions
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.openai_backend import OpenAITeacher, retry_after_seconds, retry_delay
from rtune.components.teacher.parsing import OK, parse_reply
from rtune.components.teacher.prompts import INSTRUCTION_PHASE, build_request
from rtune.components.teacher.protocol import Completion, TeacherRequest
from tests.fakes.openai_server import Body, FakeOpenAIServer, Fault, echo_reply, sample_instruction

pytestmark = pytest.mark.integration
SECRET = "sk-test-SECRET-0123456789"
WAIT_S = 30.0  # how long a held reply waits for its event: only a broken backend runs into it
Sleep = Callable[[float], Awaitable[None]]


def sample(i: int | str) -> dict[str, str]:
    return {"instruction": f"Task {i}: describe the water cycle.", "input": "", "output": "Rain."}


def ask(
    url: str,
    samples: list[dict[str, str]],
    sleep: Sleep | None = None,
    **overrides: object,
) -> list[tuple[int, Completion]]:
    """Run the backend on ``samples``; return (index, completion) in the order they arrived.
    ``sleep`` replaces the backend's wait between attempts."""
    settings: dict[str, object] = {
        "backend": "openai",
        "url": url,
        "backoff_s": 0.01,
        "max_backoff_s": 2.0,
        "timeout_s": 5.0,
        "max_attempts": 3,
    }
    settings.update(overrides)
    config = TeacherConfig(**settings)  # type: ignore[arg-type]
    teacher = OpenAITeacher(config, api_key="test-key", **({"sleep": sleep} if sleep else {}))
    requests = [
        build_request(
            INSTRUCTION_PHASE, s, few_shot=False, structured=teacher.structured, prefill=False
        )
        for s in samples
    ]
    arrived: list[tuple[int, Completion]] = []
    teacher.complete_many(requests, lambda index, c: arrived.append((index, c)))
    return arrived


def test_every_request_comes_back_once_with_text_usage_and_model() -> None:
    with FakeOpenAIServer() as server:
        arrived = ask(server.url, [sample(i) for i in range(5)])
        bodies = [r.body for r in server.completions]
    assert all("stop" not in body and body["temperature"] == 0.0 for body in bodies)
    assert sorted(index for index, _ in arrived) == [0, 1, 2, 3, 4]
    for index, completion in arrived:
        assert completion.error is None and completion.attempts == 1
        assert completion.model == "fake-teacher"  # model "default" -> the server's first model
        assert completion.prompt_tokens and completion.prompt_tokens > 0
        assert completion.completion_tokens and completion.completion_tokens > 0
        parsed = parse_reply(INSTRUCTION_PHASE, completion.text, sample(index))
        assert parsed.status == OK
        assert parsed.fields and f"Task {index}:" in parsed.fields["new_instruction"]


class RecordedWaits:
    """The backend's wait between attempts, recorded instead of slept: the test reads which
    delays the client chose, not how long the machine took."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def test_429_is_retried_after_the_servers_retry_after() -> None:
    waits = RecordedWaits()
    with FakeOpenAIServer() as server:
        server.inject(Fault(status=429, retry_after=0.8))
        [(_, completion)] = ask(server.url, [sample(0)], sleep=waits)
        asked = len(server.completions)
    assert completion.error is None and completion.attempts == 2 and asked == 2
    assert waits.delays == [0.8]  # backoff_s is 0.01: the header set the wait


def test_retry_after_is_capped_by_max_backoff() -> None:
    waits = RecordedWaits()
    with FakeOpenAIServer() as server:
        server.inject(Fault(status=429, retry_after=60))
        [(_, completion)] = ask(server.url, [sample(0)], sleep=waits, max_backoff_s=0.3)
    assert completion.attempts == 2 and completion.error is None
    assert waits.delays == [0.3]


def test_without_retry_after_the_backoff_doubles() -> None:
    waits = RecordedWaits()
    with FakeOpenAIServer() as server:
        server.inject(Fault(status=503), Fault(status=503), Fault(status=503))
        [(_, completion)] = ask(
            server.url, [sample(0)], sleep=waits, max_attempts=4, backoff_s=1, max_backoff_s=10
        )
    assert completion.attempts == 4 and completion.error is None
    low = [0.5, 1.0, 2.0]  # "equal jitter": between half of base * 2**(n-1) and all of it
    assert all(lo <= d <= 2 * lo for lo, d in zip(low, waits.delays, strict=True))


def test_persistent_500s_end_in_fallback_error_with_attempts_counted(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": "r1", **sample(1)}])
    with FakeOpenAIServer() as server:
        server.inject(*[Fault(status=500)] * 3)
        summary = reflect_instructions(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            progress=False,
            config=TeacherConfig(
                backend="openai",
                url=server.url,
                model="m",
                max_attempts=3,
                backoff_s=0.01,
                max_backoff_s=0.05,
                max_error_rate=1.0,  # the one record fails for good: keep the stage going
            ),
        )
        requests = len(server.completions)
    [record] = read_jsonl(tmp_path / "out.jsonl")
    meta = record["teacher"]["instruction"]
    assert requests == 3
    assert meta["parse_status"] == "fallback_error" and meta["attempts"] == 3
    assert meta["error"].startswith("HTTP 500")
    assert record["candidates"]["Q"] == record["candidates"]["ori"]
    assert summary.fallback_error == 1 and summary.parse_failures == 1


def test_a_hang_past_the_timeout_is_cut_and_retried() -> None:
    with FakeOpenAIServer() as server:
        server.inject(Fault(hang_s=600))  # ends only when the server closes
        [(_, completion)] = ask(server.url, [sample(0)], timeout_s=2.0)
        asked = len(server.completions)
    assert completion.error is None and completion.attempts == 2 and asked == 2
    assert completion.latency_s >= 2.0  # the first attempt waited out its deadline


@pytest.mark.parametrize(
    ("raw_body", "reason"),
    [
        ("<html>502 Bad Gateway</html>", "not JSON"),
        ('{"id": "x", "choices": []}', "no choices"),
        ('{"choices": [{"index": 0}]}', "no choices"),
        ('{"unexpected": true}', "no choices"),
    ],
)
def test_malformed_server_replies_become_record_errors_not_crashes(
    raw_body: str, reason: str
) -> None:
    with FakeOpenAIServer() as server:
        server.inject(Fault(raw_body=raw_body), Fault(raw_body=raw_body))
        samples = [sample(0), sample(1), sample(2)]
        arrived = dict(ask(server.url, samples, max_attempts=1, concurrency=1))  # in order
    assert arrived[2].error is None  # the other records are unaffected
    for index in (0, 1):
        assert arrived[index].error is not None and reason in arrived[index].error


def test_a_reply_that_is_not_json_is_retried() -> None:
    with FakeOpenAIServer() as server:
        server.inject(Fault(raw_body="<html>502 Bad Gateway</html>"))
        [(_, completion)] = ask(server.url, [sample(0)])
    assert completion.error is None and completion.attempts == 2


def test_client_errors_are_not_retried() -> None:
    with FakeOpenAIServer() as server:
        server.inject(Fault(status=400, message="bad request: max_tokens too large"))
        [(_, completion)] = ask(server.url, [sample(0)])
        assert len(server.completions) == 1
    assert completion.attempts == 1
    assert completion.error is not None and completion.error.startswith("HTTP 400")


class FullHouse:
    """A reply that holds the first ``size`` requests until all of them are being answered at
    once, then answers everyone: the server's peak in flight reaches ``size`` exactly when the
    client really sends that many together (a client that does not is caught by the timeout)."""

    def __init__(self, size: int) -> None:
        self.barrier = threading.Barrier(size, timeout=WAIT_S)
        self.full = threading.Event()

    def __call__(self, body: Body) -> str:
        if not self.full.is_set():
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait()
            self.full.set()
        return echo_reply(body)


def test_concurrency_is_bounded_and_used() -> None:
    with FakeOpenAIServer(reply=FullHouse(3)) as server:
        arrived = ask(server.url, [sample(i) for i in range(12)], concurrency=3)
        peak = server.max_in_flight
    assert sorted(index for index, _ in arrived) == list(range(12))
    assert peak == 3  # three really overlapped, and never a fourth


def test_results_are_handed_back_as_they_complete() -> None:
    """The slow record's reply is released only by the caller having received the other two:
    a backend that held results back until every request was done would never release it."""
    others_delivered = threading.Event()
    released: list[bool] = []

    def slow_until_others_delivered(body: Body) -> str:
        if "slow" in sample_instruction(body):
            released.append(others_delivered.wait(WAIT_S))
        return echo_reply(body)

    arrived: list[int] = []

    def on_done(index: int, completion: Completion) -> None:
        arrived.append(index)
        if sorted(arrived) == [1, 2]:
            others_delivered.set()

    config = TeacherConfig(backend="openai", model="m", concurrency=3, url="http://127.0.0.1:9/v1")
    with FakeOpenAIServer(reply=slow_until_others_delivered) as server:
        config.url = server.url
        OpenAITeacher(config, api_key="k").complete_many(
            [request_for(sample("slow")), request_for(sample(1)), request_for(sample(2))], on_done
        )
    assert released == [True] and arrived[-1] == 0


def test_unreachable_server_fails_each_record_after_its_attempts() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    [(_, completion)] = ask(url, [sample(0)], model="m", max_attempts=2)
    assert completion.attempts == 2
    assert completion.error is not None and completion.error.startswith("connection error")
    with pytest.raises(RuntimeError, match="--teacher-model"):
        ask(url, [sample(0)], max_attempts=1)


def test_structured_output_sends_the_json_schema(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": "r1", **sample(1)}])
    with FakeOpenAIServer() as server:
        summary = reflect_instructions(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            progress=False,
            config=TeacherConfig(backend="openai", url=server.url, structured_output=True),
        )
        [request] = server.completions
    response_format = request.body["response_format"]
    assert response_format["type"] == "json_schema"
    schema = response_format["json_schema"]["schema"]
    assert schema["required"] == ["critique", "new_instruction", "new_answer"]  # critique first
    [record] = read_jsonl(tmp_path / "out.jsonl")
    assert summary.parse_ok == 1 and record["teacher"]["instruction"]["critique"]
    assert record["candidates"]["Q"]["instruction"].startswith("Task 1:")


def test_api_key_is_used_but_never_written_or_logged(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RTUNE_TEST_TEACHER_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", **sample(i)} for i in range(3)])
    config = from_dict(
        TeacherConfig,
        {
            "backend": "openai",
            "url": "http://127.0.0.1:1/v1",
            "api_key_env": "RTUNE_TEST_TEACHER_KEY",
            "max_error_rate": 1.0,
        },
    )
    with FakeOpenAIServer() as server:
        config.url = server.url
        # A careless server that echoes the key in its error message:
        server.inject(Fault(status=401, message=f"invalid key {SECRET}"))
        summary = reflect_instructions(
            tmp_path / "in.jsonl", tmp_path / "out.jsonl", config, progress=False
        )
        authorizations = {r.authorization for r in server.completions}
    assert authorizations == {f"Bearer {SECRET}"}
    written = (tmp_path / "out.jsonl").read_text()
    errors = [r["teacher"]["instruction"]["error"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert any(e and "***" in e for e in errors)
    captured = capsys.readouterr()
    for text in (
        written,
        caplog.text,
        captured.out,
        captured.err,
        str(summary.as_dict()),
        str(flatten(config)),
        repr(config),
    ):
        assert SECRET not in text
    assert summary.records == 3 and summary.fallback_error == 1


def request_for(s: dict[str, str]) -> TeacherRequest:
    return build_request(INSTRUCTION_PHASE, s, few_shot=False, structured=False, prefill=False)


def test_unset_key_variable_sends_a_placeholder_and_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("RTUNE_UNSET_KEY", raising=False)
    with FakeOpenAIServer() as server:
        teacher = OpenAITeacher(
            TeacherConfig(backend="openai", url=server.url, api_key_env="RTUNE_UNSET_KEY")
        )
        request = build_request(
            INSTRUCTION_PHASE, sample(0), few_shot=False, structured=False, prefill=False
        )
        teacher.complete_many([request], lambda index, completion: None)
        [logged] = server.completions
    assert logged.authorization == "Bearer EMPTY"
    assert "RTUNE_UNSET_KEY" in caplog.text


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    assert retry_delay(1, None, 1.0, 60.0, rng=lambda: 0.0) == 0.5
    assert retry_delay(1, None, 1.0, 60.0, rng=lambda: 1.0) == 1.0
    assert retry_delay(4, None, 1.0, 60.0, rng=lambda: 1.0) == 8.0
    assert retry_delay(20, None, 1.0, 60.0, rng=lambda: 1.0) == 60.0
    assert retry_delay(1, 7.0, 1.0, 60.0) == 7.0
    assert retry_delay(1, 600.0, 1.0, 60.0) == 60.0


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
    assert retry_after_seconds(None) is None


def test_a_failing_callback_stops_the_run_and_cancels_what_is_in_flight() -> None:
    """Only the first request is answered; the others hang until the test lets them go. The
    failing callback must end ``complete_many`` while they still hang: a backend that waited
    for its requests in flight, or went on sending, would be held until the gate opened."""
    gate = threading.Event()
    arrivals = itertools.count()
    answered: list[int] = []

    def first_only(body: Body) -> str:
        if next(arrivals) > 0:
            gate.wait(WAIT_S)
        answered.append(1)
        return echo_reply(body)

    def disk_full(index: int, completion: Completion) -> None:
        raise OSError("No space left on device")

    config = TeacherConfig(backend="openai", model="m", concurrency=2, url="http://127.0.0.1:9/v1")
    with FakeOpenAIServer(reply=first_only) as server:
        config.url = server.url
        with pytest.raises(OSError, match="No space left"):
            OpenAITeacher(config, api_key="k").complete_many(
                [request_for(sample(i)) for i in range(8)], disk_full
            )
        answered_when_stopped = len(answered)
        asked = len(server.completions)
        gate.set()
    assert answered_when_stopped == 1
    assert asked <= 3  # the two first in flight, and at most the one sent after the first answer
