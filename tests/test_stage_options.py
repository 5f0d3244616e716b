"""The one-stage commands read their section of a pipeline config the same way."""

from __future__ import annotations

import pytest

from rtune.pipelines.cli import make_parser
from rtune.pipelines.commands.stage_options import cli_run_id, load_stage_config

REQUIRED = {
    "finetune": ["--selected", "s.jsonl", "--output-dir", "out"],
    "quantize": ["--model", "m", "--selected", "s.jsonl", "--output-dir", "out"],
    "evaluate": ["--model-path", "m", "--output-dir", "out"],
}


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_stage_commands_take_config_overrides_and_tracking_switch(command: str) -> None:
    args = make_parser().parse_args(
        [command, *REQUIRED[command], "--set", f"{command}.seed=1", "--no-tracking"]
    )
    assert args.overrides == [f"{command}.seed=1"] and args.no_tracking
    assert args.checkpoint_root == "" and args.config is None


def test_no_tracking_switches_mlflow_off_and_overrides_reach_the_section() -> None:
    args = make_parser().parse_args(
        ["quantize", *REQUIRED["quantize"], "--set", "quantize.method=w8a8", "--no-tracking"]
    )
    config, tracking = load_stage_config(args)
    assert config.quantize["method"] == "w8a8"
    assert tracking["enabled"] is False
    args = make_parser().parse_args(["quantize", *REQUIRED["quantize"]])
    assert load_stage_config(args)[1].get("enabled", True) is True


def test_each_cli_run_is_its_own_pipeline_run() -> None:
    first, second = cli_run_id(), cli_run_id()
    assert first.startswith("cli-") and first != second
