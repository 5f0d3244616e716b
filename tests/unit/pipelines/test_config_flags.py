"""One CLI grammar for every stage command (pipelines/commands/config_flags.py): flags generated
from the config dataclasses, ``--set`` after them, ``--checkpoint-root``, ``--no-tracking``, and a
run id of its own for every CLI run. Parsed by the real ``rtune`` parser and loaded by the same
functions the commands call; the runner sees what the flags said."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtune.components.common.response_format import FOLLOWS_TEACHER
from rtune.components.common.stage import RUN_ID_ENV, StageContext, run_stage
from rtune.components.common.student import student_fields
from rtune.components.evaluate.config import EvaluateConfig
from rtune.components.finetune.config import FinetuneConfig
from rtune.components.teacher.config import TeacherConfig
from rtune.pipelines.cli import main, make_parser
from rtune.pipelines.commands.config_flags import (
    add_config_options,
    load_command_config,
    stage_settings,
)

FINETUNE = ["finetune", "--selected", "s.jsonl", "--output-dir", "out"]


def parse(*argv: str) -> argparse.Namespace:
    return make_parser().parse_args(list(argv))


def help_text(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        parse(*argv, "--help")
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


@dataclass
class ProbeSummary:
    def as_dict(self) -> dict[str, Any]:
        return {}

    def line(self) -> str:
        return "probe"


@dataclass
class ProbeStage:
    """A stage that only remembers what the runner gave it."""

    config: Any
    name: str = "finetune"
    seen: list[StageContext] = field(default_factory=list)

    def run(self, context: StageContext) -> ProbeSummary:
        self.seen.append(context)
        return ProbeSummary()


def run_probe(args: argparse.Namespace) -> StageContext:
    """What a stage command does with its arguments, with a probe for the stage."""
    config = load_command_config(args)
    stage = ProbeStage(config.section("finetune"))
    run_stage(stage, stage_settings(config))
    (context,) = stage.seen
    return context


REFLECT = ["reflect", "--stage", "instruction", "--input", "in.jsonl", "--output", "out.jsonl"]


@pytest.mark.parametrize(
    ("argv", "section", "cls"),
    [(REFLECT, "teacher", TeacherConfig), (FINETUNE, "finetune", FinetuneConfig)],
)
def test_each_flag_says_its_fields_help_and_key(
    capsys: pytest.CaptureFixture[str], argv: list[str], section: str, cls: type
) -> None:
    """The field's ``help`` metadata is the flag's help: one source of help text."""
    shown = help_text(*argv, capsys=capsys)
    mirrored = student_fields(cls)
    follows = {f.name for f in dataclasses.fields(cls) if FOLLOWS_TEACHER in f.metadata}
    helped = [
        f
        for f in dataclasses.fields(cls)
        if f.name not in {*mirrored, *follows} and "help" in f.metadata
    ]
    assert len(helped) >= 8
    for f in helped:
        flag = "--" + f.name.replace("_", "-")
        words = " ".join(f.metadata["help"].split())
        metavar = "[BOOL]" if "bool" in str(f.type) else f.name.upper()  # switches
        assert f"{flag} {metavar} {words} [{section}.{f.name}]" in shown, f.name


def test_model_is_the_students_flag() -> None:
    """``--model`` sets ``student.model``, which the stage reads: no ``--set finetune.model``."""
    config = load_command_config(parse(*FINETUNE, "--model", "/models/mine", "--no-tracking"))
    assert config.student.model == "/models/mine"
    assert config.section("finetune").model == "/models/mine"
    assert config.section("evaluate").base_model == "/models/mine"


def test_a_name_two_sections_share_gets_the_section_prefix() -> None:
    """Teacher and evaluate both have ``concurrency``; the student keeps ``--model``."""
    parser = argparse.ArgumentParser()
    add_config_options(parser, {"teacher": TeacherConfig, "evaluate": EvaluateConfig})
    args = parser.parse_args(
        [
            *("--model", "/student", "--teacher-model", "big-teacher"),
            *("--teacher-concurrency", "7", "--evaluate-concurrency", "3", "--no-tracking"),
        ]
    )
    config = load_command_config(args)
    assert config.student.model == "/student"
    assert config.section("teacher").model == "big-teacher"
    assert config.section("teacher").concurrency == 7
    assert config.section("evaluate").concurrency == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--concurrency", "7"])  # ambiguous: no bare flag for it


def test_a_commands_own_flag_wins_and_the_setting_gets_the_section_prefix() -> None:
    """``rtune evaluate --model`` is the served name; the student's model is ``--student-model``."""
    args = parse(
        *("evaluate", "--endpoint-url", "http://127.0.0.1:9/v1", "--output-dir", "out"),
        *("--model", "served-name", "--student-model", "/base", "--no-tracking"),
    )
    assert args.model == "served-name"
    config = load_command_config(args)
    assert config.student.model == "/base"
    assert config.section("evaluate").base_model == "/base"


def test_old_flags_are_aliases_of_their_settings() -> None:
    args = parse(
        *("reflect", "--stage", "instruction", "--input", "in.jsonl", "--output", "out.jsonl"),
        *("--teacher", "openai", "--teacher-url", "http://127.0.0.1:9/v1"),
        *("--teacher-model", "m", "--timeout", "7", "--no-tracking"),
    )
    teacher = load_command_config(args).section("teacher")
    assert (teacher.backend, teacher.url, teacher.model, teacher.timeout_s) == (
        "openai",
        "http://127.0.0.1:9/v1",
        "m",
        7,
    )
    args = parse(
        *("evaluate", "--model-path", "m", "--output-dir", "out"),
        *("--base-model", "/base", "--judge-model", "j", "--no-tracking"),
    )
    config = load_command_config(args)
    assert config.student.model == "/base" and config.section("evaluate").judge["model"] == "j"


def test_set_comes_after_the_flags_and_flags_after_the_config_file(tmp_path: Path) -> None:
    run_config = tmp_path / "run.yaml"
    run_config.write_text(yaml.safe_dump({"finetune": {"learning_rate": 0.01}}))
    base = [*FINETUNE, "--config", str(run_config), "--no-tracking"]
    flag = load_command_config(parse(*base, "--learning-rate", "0.02"))
    assert flag.section("finetune").learning_rate == 0.02
    # --set wins wherever it stands on the command line
    both = parse(*base, "--set", "finetune.learning_rate=0.03", "--learning-rate", "0.02")
    assert load_command_config(both).section("finetune").learning_rate == 0.03


def test_checkpoint_root_is_where_the_stage_keeps_its_checkpoints(tmp_path: Path) -> None:
    run_config = tmp_path / "run.yaml"
    run_config.write_text(yaml.safe_dump({"checkpoint_root": str(tmp_path / "from-file")}))
    args = parse(
        *FINETUNE,
        *("--config", str(run_config), "--checkpoint-root", str(tmp_path / "ck")),
        "--no-tracking",
    )
    assert run_probe(args).checkpoint_dir == tmp_path / "ck" / "finetune"


def test_no_tracking_keeps_the_stage_out_of_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    assert load_command_config(parse(*FINETUNE)).section("tracking").enabled is True
    context = run_probe(parse(*FINETUNE, "--no-tracking"))
    assert not context.run.active and not store.exists()


def test_every_cli_run_is_a_pipeline_run_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command is its own parent run in MLflow - also where ``$KFP_RUN_ID`` is set (a
    ``rtune run`` earlier in the same process sets it)."""
    import mlflow

    from rtune.components.common.records import write_jsonl
    from rtune.components.common.tracking import PIPELINE_TAG, ROLE_TAG
    from tests.fakes.openai_server import FakeOpenAIServer

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(RUN_ID_ENV, "local-left-behind")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "r0", "instruction": "Add 1 and 2.", "input": "", "output": "3"}],
    )
    with FakeOpenAIServer() as server:
        for n in (1, 2):
            code = main(
                [
                    *("reflect", "--stage", "instruction", "--no-progress"),
                    *("--input", str(tmp_path / "in.jsonl")),
                    *("--output", str(tmp_path / f"out{n}.jsonl")),
                    *("--teacher", "openai", "--teacher-url", server.url, "--teacher-model", "m"),
                    *("--set", "tracking.experiment=cli-runs"),
                ]
            )
            assert code == 0, capsys.readouterr().err
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("cli-runs")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = 'pipeline'")
    run_ids = sorted(r.data.tags[PIPELINE_TAG] for r in runs)
    assert len(run_ids) == 2 and run_ids[0] != run_ids[1]
    assert all(run_id.startswith("cli-") for run_id in run_ids), run_ids
