"""Every stage command's ``--help`` says what input it takes."""

from __future__ import annotations

import pytest

from rtune.pipelines.cli import make_parser


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        make_parser().parse_args([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("command", "phrases"),
    [
        ("reflect", ["prepared records", "no phase-1 output", "`rtune select --phase ifd`"]),
        ("score", ["records with instruction, input, output", "reflect_response"]),
        ("select", ["phase ifd takes the reflect_instruction output", "reflect_response output"]),
        ("finetune", ["flat training records (JSONL: instruction, input, output)"]),
    ],
)
def test_help_names_the_input(
    command: str, phrases: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(command, capsys)
    for phrase in phrases:
        assert phrase in text
