"""The import steps as stages: they stand where ``reflect_instruction`` and ``reflect_response``
stand in the DAG, write what those write, and call no teacher.

* :class:`ImportStage` (phase 1): prepared records + the import source -> records with ``ori`` and
  ``Q`` (as ``reflect_instruction``), and a ``responses`` file holding ``A``/``QA`` by id.
* :class:`AttachStage` (phase 2): phase-1 selected records + ``responses`` -> records with the
  winner's ``A`` or ``QA`` (as ``reflect_response``).

MLflow gets the source on the stage run and the pipeline's parent run: the tag
``rtune.candidates_source`` (each file's name and sha256), so a run says which reflections it
was selected from. A URI is logged as given, minus any credentials (``redact_credentials``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtune.components.common.config import from_dict
from rtune.components.common.records import Record, read_jsonl, write_jsonl
from rtune.components.common.response_format import PLAIN
from rtune.components.common.stage import StageContext
from rtune.components.importer.join import ImportSummary, attach_responses, import_phase1
from rtune.components.importer.sources import read_reflections
from rtune.components.teacher.config import IMPORTED, TeacherConfig

SOURCE_TAG = "rtune.candidates_source"
PHASE_CANDIDATES = {"instruction": ("ori", "Q"), "response": ("A", "QA")}


@dataclass
class ImportConfig:
    """Where the imported reflections are (the teacher section's ``import_uri``)."""

    import_uri: str = field(
        metadata={"help": "folder / s3:// prefix with ori, Q, A, QA .json(l), or one JSONL"}
    )
    response_format: str = field(
        default=PLAIN,
        metadata={"help": "teacher.response_format: reflection checks the A/QA answers' tags"},
    )

    @classmethod
    def from_teacher(cls, teacher: Mapping[str, Any] | None) -> ImportConfig:
        config = from_dict(TeacherConfig, teacher, "teacher")
        if config.backend != IMPORTED or not config.import_uri:
            raise ValueError("the import stages need teacher.backend=imported and its import_uri")
        return cls(config.import_uri, config.response_format)


@dataclass
class ImportStage:
    config: ImportConfig
    records: Path  # prepared seed records
    candidates: Path  # out: records with ori and Q
    responses: Path  # out: {"id", "A", "QA"} rows for AttachStage
    name: str = "import_reflections"

    @classmethod
    def from_parameters(
        cls, teacher: Mapping[str, Any] | None, records: Path, candidates: Path, responses: Path
    ) -> ImportStage:
        return cls(ImportConfig.from_teacher(teacher), records, candidates, responses)

    def run(self, context: StageContext) -> ImportSummary:
        reflections = read_reflections(self.config.import_uri)
        imported = import_phase1(read_jsonl(self.records), reflections, str(self.records))
        write_jsonl(self.candidates, imported.records)
        write_jsonl(self.responses, imported.responses)
        context.run.set_tags({SOURCE_TAG: reflections.provenance()}, to_parent=True)
        _log_candidates(context, imported.records, "instruction", self.candidates)
        return imported.summary


@dataclass
class AttachStage:
    config: ImportConfig
    records: Path  # phase-1 selected records (phase1.winner set)
    responses: Path  # what ImportStage wrote
    candidates: Path  # out: records with A or QA
    name: str = "attach_imported_responses"

    @classmethod
    def from_parameters(
        cls, teacher: Mapping[str, Any] | None, records: Path, responses: Path, candidates: Path
    ) -> AttachStage:
        return cls(ImportConfig.from_teacher(teacher), records, responses, candidates)

    def run(self, context: StageContext) -> ImportSummary:
        records, summary = attach_responses(
            read_jsonl(self.records),
            read_jsonl(self.responses),
            str(self.records),
            str(self.responses),
            self.config.response_format,
        )
        write_jsonl(self.candidates, records)
        _log_candidates(context, records, "response", self.candidates)
        return summary


def _log_candidates(context: StageContext, records: list[Record], phase: str, path: Path) -> None:
    """The ``candidates`` dataset, flat as the teacher stages log it: one row per candidate."""
    rows = [
        {"id": r["id"], "candidate": name, **r["candidates"][name]}
        for r in records
        for name in PHASE_CANDIDATES[phase]
        if name in r["candidates"]
    ]
    context.run.log_dataset(
        rows, source=str(path), name=f"candidates-{phase}", context="candidates"
    )
