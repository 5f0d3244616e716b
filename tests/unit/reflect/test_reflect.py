"""The two reflection stages end to end with a scripted in-process teacher: the data contract,
every fallback, resuming after a crash, bad input, the config and the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from rtune.components.common.config import flatten, from_dict
from rtune.components.common.records import InputError, read_jsonl, write_jsonl
from rtune.components.common.stage import SUMMARY_MARK
from rtune.components.reflect_instruction.reflect import reflect_instructions
from rtune.components.reflect_response.reflect import reflect_responses
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.factory import make_teacher
from rtune.components.teacher.openai_backend import OpenAITeacher
from rtune.components.teacher.protocol import Completion, OnDone, TeacherRequest
from rtune.pipelines.cli import main
from tests.fakes.openai_server import FakeOpenAIServer, echo_reply, sample_instruction

META_KEYS = {
    "model",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "attempts",
    "parse_status",
    "error",
    "rounds",
    "critique",
    "reasons",
    "prompt_style",
    "sample_cut_tokens",
}
CONFIG = TeacherConfig()


class Crash(RuntimeError):
    """Stands in for a kill in the middle of a run."""


class ScriptedTeacher:
    """A teacher in-process: ``reply(instruction)`` gives the text or a failed Completion."""

    prefills = False
    structured = False

    def __init__(
        self, reply: Callable[[str], str | Completion] | None = None, crash_after: int | None = None
    ) -> None:
        self.reply = reply
        self.crash_after = crash_after
        self.asked: list[str] = []

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        for index, request in enumerate(requests):
            if self.crash_after is not None and len(self.asked) >= self.crash_after:
                raise Crash("killed")
            body = {"messages": list(request.messages)}
            instruction = sample_instruction(body)
            self.asked.append(instruction)
            answer = self.reply(instruction) if self.reply else echo_reply(body)
            if isinstance(answer, str):
                answer = Completion(answer, "scripted", 100, 20, 0.01)
            on_done(index, answer)


def prepared(count: int = 3) -> list[dict]:
    records = [
        {
            "id": f"r{i}",
            "instruction": f"Task {i}: explain rain.",
            "input": "",
            "output": f"Answer {i}.",
            "flags": [],
        }
        for i in range(count)
    ]
    if count > 1:
        records[1].update(input="In one line.", source="alpaca", flags=["too_long"])
    return records


def phase1_output(tmp_path: Path, winners: Sequence[str]) -> Path:
    source = tmp_path / "prepared.jsonl"
    write_jsonl(source, prepared(len(winners)))
    reflect_instructions(
        source, tmp_path / "phase1.jsonl", CONFIG, teacher=ScriptedTeacher(), progress=False
    )
    records = read_jsonl(tmp_path / "phase1.jsonl")
    for record, winner in zip(records, winners, strict=True):
        record["phase1"] = {"winner": winner, "reason": "test"}
        record["candidates"]["ori"]["scores"] = {"ifd": 0.9}
    write_jsonl(tmp_path / "selected1.jsonl", records)
    return tmp_path / "selected1.jsonl"


def test_instruction_stage_writes_ori_and_Q_per_the_contract(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", prepared())
    summary = reflect_instructions(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        CONFIG,
        teacher=ScriptedTeacher(),
        progress=False,
    )
    records = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in records] == ["r0", "r1", "r2"]
    second = records[1]
    assert second["source"] == "alpaca" and second["flags"] == ["too_long"]
    assert second["candidates"]["ori"] == {
        "instruction": "Task 1: explain rain.",
        "input": "In one line.",
        "output": "Answer 1.",
    }
    q = second["candidates"]["Q"]
    assert q["input"] == "" and q["instruction"].startswith("Task 1: explain rain.")
    assert q["output"] == "Step by step answer to: Task 1: explain rain."
    meta = second["teacher"]["instruction"]
    assert set(meta) == META_KEYS
    assert meta["parse_status"] == "ok" and meta["error"] is None and meta["attempts"] == 1
    assert summary.as_dict()["parse_ok"] == 3 and summary.prompt_tokens == 300
    assert summary.completed_now == 3 and summary.resumed_from_checkpoint == 0
    assert not (tmp_path / "out.jsonl.partial.jsonl").exists()


def test_every_failure_keeps_ori_as_Q_and_says_why(tmp_path: Path) -> None:
    replies: dict[str, str | Completion] = {
        "Task 0: explain rain.": "I would not change anything.",
        "Task 1: explain rain.": "[New Instruction]\n...\n[New Answer]\n...",
        "Task 2: explain rain.": Completion(
            "", "scripted", None, None, 3.0, attempts=5, error="HTTP 503: overloaded"
        ),
    }
    write_jsonl(tmp_path / "in.jsonl", prepared())
    summary = reflect_instructions(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        TeacherConfig(max_error_rate=1.0),  # 1 of 3 failed for good: accepted here
        teacher=ScriptedTeacher(replies.__getitem__),
        progress=False,
    )
    records = read_jsonl(tmp_path / "out.jsonl")
    statuses = [r["teacher"]["instruction"]["parse_status"] for r in records]
    assert statuses == ["fallback_parse", "fallback_placeholder", "fallback_error"]
    for record in records:
        assert record["candidates"]["Q"] == record["candidates"]["ori"]
        assert record["teacher"]["instruction"]["error"]
    assert records[2]["teacher"]["instruction"]["attempts"] == 5
    flat = summary.as_dict()
    assert flat["parse_failures"] == 3 and flat["parse_failure_rate"] == 1.0
    assert flat["fallback_parse"] == flat["fallback_placeholder"] == flat["fallback_error"] == 1
    # the two replies that arrived were each repaired once (a second request): 4 x 100 tokens
    assert flat["usage_unreported"] == 1 and flat["prompt_tokens"] == 400
    assert flat["repaired"] == 2 and records[0]["teacher"]["instruction"]["rounds"] == 2


def test_summary_is_flat_numbers_for_mlflow(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", prepared())
    flat = reflect_instructions(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        CONFIG,
        teacher=ScriptedTeacher(),
        progress=False,
    ).as_dict()
    required = {
        "records",
        "completed_now",
        "resumed_from_checkpoint",
        "parse_ok",
        "parse_failures",
        "parse_failure_rate",
        "prompt_tokens",
        "completion_tokens",
        "seconds",
        "records_per_s",
    }
    assert required <= set(flat)
    assert all(isinstance(value, int | float) for value in flat.values())
    assert flat["records_per_s"] > 0 and flat["seconds"] > 0


def test_response_stage_adds_A_for_ori_and_QA_for_Q(tmp_path: Path) -> None:
    source = phase1_output(tmp_path, ["ori", "Q", "ori"])
    summary = reflect_responses(
        source, tmp_path / "phase2.jsonl", CONFIG, teacher=ScriptedTeacher(), progress=False
    )
    first, second, _ = read_jsonl(tmp_path / "phase2.jsonl")
    assert set(first["candidates"]) == {"ori", "Q", "A"}
    assert first["candidates"]["A"] == {
        "instruction": "Task 0: explain rain.",
        "input": "",
        "output": "A more detailed answer to: Task 0: explain rain.",
    }
    assert first["candidates"]["ori"]["scores"] == {"ifd": 0.9}
    assert set(second["candidates"]) == {"ori", "Q", "QA"}
    qa = second["candidates"]["QA"]
    assert qa["instruction"] == second["candidates"]["Q"]["instruction"] and qa["input"] == ""
    assert qa["output"].startswith("A more detailed answer to: Task 1: explain rain.")
    assert set(second["teacher"]) == {"instruction", "response"}
    assert set(second["teacher"]["response"]) == META_KEYS
    assert summary.parse_ok == 3


def test_response_fallback_copies_the_winners_answer(tmp_path: Path) -> None:
    source = phase1_output(tmp_path, ["Q"])
    reflect_responses(
        source,
        tmp_path / "phase2.jsonl",
        CONFIG,
        teacher=ScriptedTeacher(lambda _: "no markers at all"),
        progress=False,
    )
    [record] = read_jsonl(tmp_path / "phase2.jsonl")
    assert record["candidates"]["QA"] == {**record["candidates"]["Q"], "input": ""}
    assert record["teacher"]["response"]["parse_status"] == "fallback_parse"


def test_response_stage_reflects_plain_input_as_the_records_own_answer(tmp_path: Path) -> None:
    """A prepared file with no phase-1 output: each record's own answer is reflected (winner
    ``ori``), as the reference reflects any file; the record reads as phase-1 output after."""
    write_jsonl(tmp_path / "in.jsonl", prepared(2))
    summary = reflect_responses(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        CONFIG,
        teacher=ScriptedTeacher(),
        progress=False,
    )
    first, second = read_jsonl(tmp_path / "out.jsonl")
    assert summary.parse_ok == 2
    assert first["phase1"]["winner"] == "ori" and "plain input" in first["phase1"]["reason"]
    assert first["candidates"]["ori"] == {
        "instruction": "Task 0: explain rain.",
        "input": "",
        "output": "Answer 0.",
    }
    assert first["candidates"]["A"]["output"] == "A more detailed answer to: Task 0: explain rain."
    assert second["candidates"]["A"]["input"] == "In one line." and "QA" not in second["candidates"]
    assert first["teacher"]["response"]["parse_status"] == "ok"


def test_phase1_output_without_its_selection_is_still_refused(tmp_path: Path) -> None:
    """Records with candidates but no phase-1 winner are half-way: guessing ``ori`` would hide
    a skipped selection, so the fix is named."""
    source = phase1_output(tmp_path, ["ori"])
    records = read_jsonl(source)
    del records[0]["phase1"]
    write_jsonl(tmp_path / "half.jsonl", records)
    with pytest.raises(InputError) as raised:
        reflect_responses(
            tmp_path / "half.jsonl",
            tmp_path / "out.jsonl",
            CONFIG,
            teacher=ScriptedTeacher(),
            progress=False,
        )
    assert raised.value.field == "phase1.winner" and raised.value.record == "r0"
    assert "select --phase ifd" in raised.value.fix


@pytest.mark.parametrize(
    ("records", "field"),
    [
        ([{"id": "a", "instruction": "", "output": "x"}], "instruction"),
        ([{"id": "a", "instruction": "x"}], "output"),
        ([{"id": "a", "instruction": "x", "output": "y", "input": 3}], "input"),
        ([{"id": "a", "instruction": "x", "output": "y"}] * 2, "id"),
        ([{"instruction": "x", "output": "y"}], "id"),
    ],
)
def test_bad_input_names_the_record_and_field(tmp_path: Path, records: list, field: str) -> None:
    write_jsonl(tmp_path / "in.jsonl", records)
    with pytest.raises(InputError) as raised:
        reflect_instructions(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            CONFIG,
            teacher=ScriptedTeacher(),
            progress=False,
        )
    assert raised.value.field == field and "in.jsonl" in str(raised.value)


def test_a_crashed_run_resumes_with_only_the_unfinished_records(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", prepared(8))
    first = ScriptedTeacher(crash_after=3)
    with pytest.raises(Crash):
        reflect_instructions(
            tmp_path / "in.jsonl", tmp_path / "out.jsonl", CONFIG, teacher=first, progress=False
        )
    checkpoint = tmp_path / "out.jsonl.partial.jsonl"
    assert len(checkpoint.read_text().splitlines()) == 1 + 3  # header + 3 results
    assert not (tmp_path / "out.jsonl").exists()
    second = ScriptedTeacher()
    faster = TeacherConfig(concurrency=64, batch_size=2, timeout_s=5)  # speed knobs may change
    summary = reflect_instructions(
        tmp_path / "in.jsonl", tmp_path / "out.jsonl", faster, teacher=second, progress=False
    )
    assert second.asked == [f"Task {i}: explain rain." for i in range(3, 8)]
    assert summary.resumed_from_checkpoint == 3 and summary.completed_now == 5
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == [f"r{i}" for i in range(8)]
    assert not checkpoint.exists()


def test_records_the_teacher_failed_on_are_retried_when_resuming(tmp_path: Path) -> None:
    def down_for_r0(instruction: str) -> str | Completion:
        if instruction.startswith("Task 0"):
            return Completion("", "scripted", None, None, 1.0, 3, "HTTP 503: down")
        return echo_reply(
            {
                "messages": [
                    {"role": "user", "content": f"<instruction>\n{instruction}\n</instruction>"}
                ]
            }
        )

    write_jsonl(tmp_path / "in.jsonl", prepared(4))
    with pytest.raises(Crash):
        reflect_instructions(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            CONFIG,
            teacher=ScriptedTeacher(down_for_r0, crash_after=2),
            progress=False,
        )
    again = ScriptedTeacher()
    summary = reflect_instructions(
        tmp_path / "in.jsonl", tmp_path / "out.jsonl", CONFIG, teacher=again, progress=False
    )
    assert again.asked == [
        "Task 0: explain rain.",
        "Task 2: explain rain.",
        "Task 3: explain rain.",
    ]
    assert summary.resumed_from_checkpoint == 1 and summary.fallback_error == 0


def test_a_record_edited_between_a_crash_and_the_rerun_is_asked_again(tmp_path: Path) -> None:
    """The checkpoint remembers what the teacher saw: a record whose instruction, input or answer
    changed since the crash is redone; untouched records are reused."""
    write_jsonl(tmp_path / "in.jsonl", prepared(4))
    with pytest.raises(Crash):
        reflect_instructions(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            CONFIG,
            teacher=ScriptedTeacher(crash_after=3),
            progress=False,
        )
    edited = prepared(4)
    edited[0]["instruction"] = "Task 0: explain snow."
    edited[1]["input"] = "In two lines."
    edited[2]["output"] = "A better answer 2."
    write_jsonl(tmp_path / "in.jsonl", edited)
    again = ScriptedTeacher()
    summary = reflect_instructions(
        tmp_path / "in.jsonl", tmp_path / "out.jsonl", CONFIG, teacher=again, progress=False
    )
    assert again.asked == [
        "Task 0: explain snow.",
        "Task 1: explain rain.",
        "Task 2: explain rain.",
        "Task 3: explain rain.",
    ]
    assert summary.resumed_from_checkpoint == 0 and summary.completed_now == 4
    q0 = read_jsonl(tmp_path / "out.jsonl")[0]["candidates"]["Q"]
    assert q0["instruction"].startswith("Task 0: explain snow.")


def test_an_untouched_record_is_reused_when_others_are_edited_or_added(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", prepared(3))
    with pytest.raises(Crash):
        reflect_instructions(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            CONFIG,
            teacher=ScriptedTeacher(crash_after=2),
            progress=False,
        )
    edited = prepared(4)
    edited[0]["output"] = "A better answer 0."
    write_jsonl(tmp_path / "in.jsonl", edited)
    again = ScriptedTeacher()
    summary = reflect_instructions(
        tmp_path / "in.jsonl", tmp_path / "out.jsonl", CONFIG, teacher=again, progress=False
    )
    assert again.asked == [
        "Task 0: explain rain.",
        "Task 2: explain rain.",
        "Task 3: explain rain.",
    ]
    assert summary.resumed_from_checkpoint == 1
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["r0", "r1", "r2", "r3"]


def test_a_checkpoint_made_with_other_settings_is_set_aside(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", prepared(4))
    checkpoint = tmp_path / "ckpt" / "phase1.jsonl"
    with pytest.raises(Crash):
        reflect_instructions(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            CONFIG,
            checkpoint_path=checkpoint,
            teacher=ScriptedTeacher(crash_after=2),
            progress=False,
        )
    again = ScriptedTeacher()
    summary = reflect_instructions(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        TeacherConfig(max_new_tokens=64),
        checkpoint_path=checkpoint,
        teacher=again,
        progress=False,
    )
    assert len(again.asked) == 4 and summary.resumed_from_checkpoint == 0
    assert checkpoint.with_name("phase1.jsonl.stale").exists()


def test_empty_input_writes_empty_output_without_building_a_teacher(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("")
    vllm_config = TeacherConfig(backend="vllm")  # would fail to build here: no vllm installed
    summary = reflect_instructions(
        tmp_path / "in.jsonl", tmp_path / "out.jsonl", vllm_config, progress=False
    )
    assert summary.records == 0 and (tmp_path / "out.jsonl").read_text() == ""


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backend": "llama"}, "backend"),
        ({"concurrency": 0}, "concurrency"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"backoff_s": 5, "max_backoff_s": 1}, "backoff"),
        ({"temperature": -0.1}, "temperature"),
        ({"url": "localhost:8000"}, "http://"),
        ({"backend": "openai"}, "--teacher-model"),
        ({"structured_output": True}, "openai backend"),
    ],
)
def test_config_validation_explains_the_fix(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TeacherConfig(**values)


@pytest.mark.parametrize("pasted", ["sk-abc-123", "hf_AbCdEf0123456789"])
def test_a_pasted_api_key_is_refused_without_echoing_it(pasted: str) -> None:
    with pytest.raises(InputError) as raised:
        from_dict(TeacherConfig, {"api_key_env": pasted}, "teacher")
    assert "NAME of an environment variable" in str(raised.value)
    assert pasted not in str(raised.value)


def test_config_flattens_for_mlflow_with_the_key_name_only() -> None:
    flat = flatten(TeacherConfig(backend="openai", url="http://h:8000/v1", model="m"))
    assert flat["api_key_env"] == "OPENAI_API_KEY" and flat["backend"] == "openai"


def test_factory_builds_the_named_backend() -> None:
    teacher = make_teacher(TeacherConfig(backend="openai", url="http://127.0.0.1:9/v1"))
    assert isinstance(teacher, OpenAITeacher) and not teacher.prefills


@pytest.fixture(autouse=True)
def only_the_reflect_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``rtune`` entry point with just this subcommand registered, so these tests do not
    depend on the other stages' commands (tests/integration/test_reflect_resume.py runs the full CLI)."""
    monkeypatch.setattr("rtune.pipelines.cli.COMMANDS", ("reflect",))


def run_cli(*args: str) -> int:
    return main(["reflect", *args, "--no-progress", "--no-tracking"])


def test_cli_runs_both_stages_and_prints_one_summary_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_jsonl(tmp_path / "in.jsonl", prepared())
    with FakeOpenAIServer() as server:
        code = run_cli(
            "--stage",
            "instruction",
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--teacher",
            "openai",
            "--teacher-url",
            server.url,
            "--concurrency",
            "2",
            "--max-attempts",
            "2",
            "--timeout",
            "5",
            "--max-new-tokens",
            "64",
            "--api-key-env",
            "NO_SUCH_KEY",
        )
        captured = capsys.readouterr()
        assert code == 0
        # the runner's mark line (stderr: what `rtune run` shows) and the command's own (stdout)
        err = captured.err.replace("\r", "\n").splitlines()
        marks = [line for line in err if line.startswith(SUMMARY_MARK)]
        lines = captured.out.strip().splitlines()
        assert len(marks) == 1 and marks[0].startswith(f"{SUMMARY_MARK}reflect_instruction: ")
        assert len(lines) == 1 and "records=3" in lines[0] and "parse_ok=3" in lines[0]
        assert lines[0].endswith(f"-> {tmp_path / 'out.jsonl'}")
        assert server.completions[0].body["max_tokens"] == 64
        records = read_jsonl(tmp_path / "out.jsonl")
        for record in records:
            record["phase1"] = {"winner": "Q", "reason": "test"}
        write_jsonl(tmp_path / "sel.jsonl", records)
        code = run_cli(
            "--stage",
            "response",
            "--input",
            str(tmp_path / "sel.jsonl"),
            "--output",
            str(tmp_path / "out2.jsonl"),
            "--teacher",
            "openai",
            "--teacher-url",
            server.url,
        )
    assert code == 0 and "reflect response: records=3" in capsys.readouterr().out
    assert all("QA" in r["candidates"] for r in read_jsonl(tmp_path / "out2.jsonl"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--teacher", "openai", "--teacher-url", "http://127.0.0.1:9/v1", "--concurrency", "0"],
            "concurrency must be > 0",
        ),
        (["--teacher", "openai"], "--teacher-model"),
    ],
)
def test_cli_bad_flags_exit_2_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", prepared(1))
    code = run_cli(
        "--stage",
        "instruction",
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        str(tmp_path / "out.jsonl"),
        *args,
    )
    assert code == 2 and message in capsys.readouterr().err


def test_cli_missing_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(
        "--stage",
        "response",
        "--input",
        str(tmp_path / "nope.jsonl"),
        "--output",
        str(tmp_path / "out.jsonl"),
        "--teacher",
        "openai",
        "--teacher-url",
        "http://127.0.0.1:9/v1",
    )
    assert code == 2 and "nope.jsonl" in capsys.readouterr().err


def test_checkpoint_lines_hold_results_not_prompts(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", prepared(3))
    with pytest.raises(Crash):
        reflect_instructions(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            CONFIG,
            teacher=ScriptedTeacher(crash_after=1),
            progress=False,
        )
    lines = (tmp_path / "out.jsonl.partial.jsonl").read_text().splitlines()
    entry = json.loads(lines[1])
    assert entry["key"].startswith("r0#")  # the id and a digest of the sample the teacher saw
    assert set(entry["result"]) == {"fields", "meta"}
    assert set(entry["result"]["meta"]) == META_KEYS


def test_cli_reflects_the_answers_of_a_plain_prepared_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No phase-1 output needed: ``--stage response`` on prepared records reflects their own
    answers (it exited 2 asking for phase-1 output before)."""
    write_jsonl(tmp_path / "in.jsonl", prepared(2))
    with FakeOpenAIServer() as server:
        code = run_cli(
            "--stage",
            "response",
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--teacher",
            "openai",
            "--teacher-url",
            server.url,
            "--report",
            str(tmp_path / "report.html"),
        )
    assert code == 0, capsys.readouterr().err
    records = read_jsonl(tmp_path / "out.jsonl")
    assert [set(r["candidates"]) for r in records] == [{"ori", "A"}, {"ori", "A"}]
    assert "It could be more specific" in (tmp_path / "report.html").read_text()
