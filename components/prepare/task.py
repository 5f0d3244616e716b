"""The `prepare` stage: validate and normalise the seed data; log it as the run's ``seed`` dataset."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtune.components.common.records import read_jsonl
from rtune.components.common.stage import StageContext
from rtune.components.common.student import stage_config
from rtune.components.prepare.config import PrepareConfig
from rtune.components.prepare.prepare import SEED_URI, PrepareSummary, prepare_dataset, seed_path


@dataclass
class PrepareStage:
    """Seed data (``seed_uri``: builtin:seed, a path or s3:// URI) in; contract JSONL out."""

    config: PrepareConfig
    seed_uri: str
    output: Path
    name: str = "prepare"
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.params = {"seed_uri": self.source}

    @classmethod
    def from_parameters(
        cls,
        seed_uri: str,
        student: Mapping[str, Any] | None,
        section: Mapping[str, Any] | None,
        output: Path,
    ) -> PrepareStage:
        return cls(stage_config(PrepareConfig, "prepare", section, student), seed_uri, output)

    @property
    def source(self) -> str:
        return str(seed_path()) if self.seed_uri == SEED_URI else self.seed_uri

    def run(self, context: StageContext) -> PrepareSummary:
        summary = prepare_dataset(self.seed_uri, self.output, self.config)
        context.run.log_dataset(
            read_jsonl(self.output), source=self.source, name="seed", context="seed", to_parent=True
        )
        return summary
