"""Student scoring as pipeline tasks: plan shards, score one shard (``dsl.ParallelFor`` body)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtune.components.common.stage import StageContext
from rtune.components.common.student import stage_config
from rtune.components.scoring.config import ScoringConfig
from rtune.components.scoring.stage import ScoreSummary


def plan_shard_indices(scoring: Mapping[str, Any] | None) -> list[int]:
    """``[0, ..., num_shards-1]`` (the student does not matter for the plan)."""
    num_shards = int((scoring or {}).get("num_shards", 1))
    if num_shards < 1:
        raise ValueError(f"scoring.num_shards must be >= 1, got {num_shards}")
    return list(range(num_shards))


@dataclass
class ScoreShardStage:
    """One shard of one phase's candidates in; ``{"id","candidate","scores"}`` rows out."""

    config: ScoringConfig
    phase: str
    shard_index: int
    records: Path
    scores: Path
    checkpoint_path: Path | None = (
        None  # None: the runner's folder (a CLI puts it beside the output)
    )
    progress: bool = True
    name: str = ""
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or f"score_{self.phase}-shard-{int(self.shard_index)}"
        self.params = {"phase": self.phase, "shard_index": str(self.shard_index)}

    @classmethod
    def from_parameters(
        cls,
        student: Mapping[str, Any] | None,
        scoring: Mapping[str, Any] | None,
        phase: str,
        shard_index: int,
        records: Path,
        scores: Path,
    ) -> ScoreShardStage:
        config = stage_config(ScoringConfig, "scoring", scoring, student)
        return cls(config, phase, int(shard_index), records, scores)

    def checkpoint_identity(self) -> tuple[Any, ...]:
        """What the scores depend on: phase, shard, the settings that change scores, the input.

        ``batch_tokens`` is left out on purpose: lowering it after an out-of-memory error (the
        usual reason to re-run) must resume, not start over.
        """
        text = Path(self.records).read_bytes().decode("utf-8", "replace")
        shard = (self.phase, self.shard_index, self.config.num_shards)
        return (*shard, self.config.result_fields(), text)

    def run(self, context: StageContext) -> ScoreSummary:
        from rtune.components.scoring.stage import score_candidates

        return score_candidates(
            Path(self.records),
            Path(self.scores),
            self.config,
            self.phase,
            shard_index=self.shard_index,
            num_shards=self.config.num_shards,
            checkpoint_path=self.checkpoint_path or context.checkpoint(*self.checkpoint_identity()),
            progress=self.progress,
        )


@dataclass
class ScoreFileStage:
    """Flat records (instruction, input, output) in; the same records with their scores out."""

    config: ScoringConfig
    records: Path
    scored: Path
    progress: bool = True
    name: str = "score"

    def run(self, context: StageContext) -> ScoreSummary:
        from rtune.components.scoring.stage import score_file

        return score_file(Path(self.records), Path(self.scored), self.config, self.progress)
