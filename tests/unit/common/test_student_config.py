"""The student is configured once: every stage that reads a student setting gets it from there."""

from __future__ import annotations

import pytest

from rtune.components.common.errors import InputError
from rtune.components.common.student import stage_config
from rtune.components.evaluate.config import EvaluateConfig
from rtune.components.finetune.config import FinetuneConfig
from rtune.components.prepare.config import PrepareConfig
from rtune.components.quantize.config import QuantizeConfig
from rtune.components.scoring.config import ScoringConfig
from rtune.pipelines.config import CONFIG_DIR, load_run_config

STAGES = {
    "prepare_config": ("prepare", PrepareConfig),
    "scoring": ("scoring", ScoringConfig),
    "finetune": ("finetune", FinetuneConfig),
    "quantize": ("quantize", QuantizeConfig),
    "evaluate": ("evaluate", EvaluateConfig),
}


def stage_configs(*overrides: str) -> dict[str, object]:
    """Each stage's typed config as its task builds it from the pipeline's arguments."""
    args = load_run_config(CONFIG_DIR / "llama3-8b.yaml", list(overrides)).pipeline_arguments()
    return {
        section: stage_config(cls, section, args[parameter], args["student"])
        for parameter, (section, cls) in STAGES.items()
    }


def test_one_template_change_reaches_every_stage_that_formats_prompts() -> None:
    configs = stage_configs("student.template=alpaca", "student.max_length=512")
    for name in ("scoring", "finetune", "quantize"):
        assert configs[name].template == "alpaca", name  # type: ignore[attr-defined]
    for name in ("prepare", "scoring", "finetune"):
        assert configs[name].max_length == 512, name  # type: ignore[attr-defined]
    before = stage_configs()
    assert before["scoring"].template == "chat"  # type: ignore[attr-defined]


def test_one_model_change_reaches_scoring_training_and_the_evaluated_base() -> None:
    configs = stage_configs("student.model=s3://models/other-student")
    assert configs["scoring"].model == "s3://models/other-student"  # type: ignore[attr-defined]
    assert configs["finetune"].model == "s3://models/other-student"  # type: ignore[attr-defined]
    assert configs["evaluate"].base_model == "s3://models/other-student"  # type: ignore[attr-defined]
    assert configs["prepare"].tokenizer == "s3://models/other-student"  # type: ignore[attr-defined]


@pytest.mark.parametrize("key", ["scoring.template", "finetune.max_length", "scoring.model"])
def test_a_stage_section_that_sets_a_student_setting_is_refused(key: str) -> None:
    with pytest.raises(InputError, match="belongs to the student") as caught:
        load_run_config(CONFIG_DIR / "llama3-8b.yaml", [f"{key}=x"])
    assert f"student.{key.split('.')[1]}" in str(caught.value)
