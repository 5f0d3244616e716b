"""``teacher.response_format`` is set once and decides the answer format of the whole run: the
stages that train on the answers follow it, serve and evaluate split the tags, and a section that
disagrees is refused with the keys to fix."""

from __future__ import annotations

import pytest

from rtune.components.common.config import flatten
from rtune.components.common.errors import InputError
from rtune.components.common.student import stage_config
from rtune.components.evaluate.config import EvaluateConfig
from rtune.components.finetune.config import FinetuneConfig
from rtune.components.quantize.config import QuantizeConfig
from rtune.components.serve.config import ServeConfig
from rtune.components.teacher.config import TeacherConfig
from rtune.pipelines.config import load_run_config

REFLECTION = "teacher.response_format=reflection"
STAGES = {
    "finetune": (FinetuneConfig, "response_format"),
    "quantize": (QuantizeConfig, "response_format"),
    "serve": (ServeConfig, "reasoning_format"),
    "evaluate": (EvaluateConfig, "reasoning_format"),
}


def built_by_the_tasks(*overrides: str) -> dict[str, object]:
    """Each stage's typed config as its KFP task rebuilds it from the pipeline arguments."""
    args = load_run_config(overrides=list(overrides)).pipeline_arguments()
    return {
        name: stage_config(cls, name, args[name], args["student"])
        for name, (cls, _) in STAGES.items()
    }


def test_a_reflection_teacher_sets_the_format_of_every_stage_after_it() -> None:
    configs = built_by_the_tasks(REFLECTION)
    for name, (_, key) in STAGES.items():
        assert getattr(configs[name], key) == "reflection", name
    plain = built_by_the_tasks()
    assert [getattr(plain[n], k) for n, (_, k) in STAGES.items()] == [
        "plain",
        "plain",
        "none",
        "none",
    ]


def test_the_format_is_a_tracked_param_of_the_stages_that_use_it() -> None:
    configs = built_by_the_tasks(REFLECTION)
    assert flatten(configs["finetune"])["response_format"] == "reflection"
    assert flatten(TeacherConfig(response_format="reflection"))["response_format"] == "reflection"


@pytest.mark.parametrize("section", ["serve", "evaluate"])
def test_a_stage_that_would_not_split_the_tags_is_refused_naming_both_keys(section: str) -> None:
    with pytest.raises(InputError) as caught:
        load_run_config(overrides=[REFLECTION, f"{section}.reasoning_format=none"])
    message = str(caught.value)
    assert f"{section}.reasoning_format" in message and "teacher.response_format" in message
    agreeing = load_run_config(overrides=[REFLECTION, f"{section}.reasoning_format=reflection"])
    assert agreeing.section(section).reasoning_format == "reflection"


def test_a_plain_teacher_leaves_an_explicit_reasoning_format_alone() -> None:
    config = load_run_config(overrides=["serve.reasoning_format=reflection"])
    assert config.section("serve").reasoning_format == "reflection"
    assert config.section("finetune").response_format == "plain"


@pytest.mark.parametrize("section", ["finetune", "quantize"])
def test_the_training_format_is_configured_on_the_teacher_only(section: str) -> None:
    with pytest.raises(InputError, match=r"set teacher\.response_format") as caught:
        load_run_config(overrides=[f"{section}.response_format=reflection"])
    assert f"{section}.response_format" in str(caught.value)


def test_only_the_teacher_has_a_response_format_flag() -> None:
    from rtune.pipelines.commands.config_flags import setting_flags

    keys = {
        s.key
        for s in setting_flags({"finetune": FinetuneConfig, "teacher": TeacherConfig}).values()
    }
    assert "teacher.response_format" in keys and "finetune.response_format" not in keys
