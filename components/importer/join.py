"""Imported candidates joined to the seed, in the shapes the teacher stages write.

How the four candidates map to the two phases (DESIGN.md §3):

* phase 1 (what ``reflect_instruction`` writes): ``ori`` = the seed record's own texts, ``Q`` =
  the imported reflected instruction with its answer. The student's IFD then picks the winner
  (``select_ifd``) exactly as for a teacher's candidates.
* phase 2 (what ``reflect_response`` writes): the winner's reflected answer - ``A`` (ori's
  instruction, the A file's answer) when ``ori`` won, ``QA`` (Q's instruction, the QA file's
  answer) when ``Q`` won. The other one is never scored, as with a teacher that only reflects
  the winner. Until phase 1 has chosen, both wait in a ``responses`` file keyed by id.

The join to the seed: by id when the imported samples carry ids, else by position - after
dropping exact duplicates as ``prepare`` does, so that record *i* of the prepared seed meets
sample *i*; samples past the prepared ones (``prepare.limit``) are left unused and counted.
``ori``'s instruction and input must be the seed record's. A candidate that copies what it
reflects (the reference scripts' fallback when the teacher's reply did not parse) gets
``parse_status`` ``unchanged``, which the selection rules treat as a teacher fallback.

With ``teacher.response_format: reflection`` a phase-2 answer must be in the reflection format
(``reflection_problem``), as a teacher's must: one that is not becomes what a teacher's unusable
reply becomes - the candidate copies the winner's answer, ``parse_status`` is ``fallback_parse``
and the reason (file, record, candidate, what is wrong) is kept in ``teacher.response.reasons`` and
counted, so the run goes on and the selection never keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rtune.components.common.record_schema import (
    NEW_CANDIDATE,
    ORI,
    QA,
    A,
    Candidate,
    Q,
    SeedRecord,
    candidate,
    phase1_winner,
    with_candidate,
    with_teacher_meta,
)
from rtune.components.common.records import InputError, Record, index_by_id
from rtune.components.common.response_format import PLAIN, REFLECTION, reflection_problem
from rtune.components.importer.sources import ImportedReflections, ImportedSample
from rtune.components.teacher.parsing import FALLBACK_PARSE

OK, UNCHANGED = "ok", "unchanged"
SOURCE = "imported"
SEED_FIX = (
    "the ori file must be the seed the reflections were made from: the same records in the "
    "same order (or with the same ids as the seed)"
)
PHASE1_FIX = "import phase 2 on the records phase-1 selection (`rtune select --phase ifd`) wrote"
RESPONSES_FIX = "give the responses file `rtune import` wrote for these records"


@dataclass
class ImportSummary:
    """What an import step wrote; :meth:`as_dict` feeds MLflow and the Kubeflow UI."""

    phase: str  # instruction | response
    records: int = 0
    unchanged: int = 0  # candidates that copy what they reflect (reference fallback)
    unused_samples: int = 0  # imported samples no prepared record asked for
    new_candidates: dict[str, int] = field(default_factory=dict)
    not_in_format: int = 0  # phase-2 answers not in the run's response format (fell back)

    def as_dict(self) -> dict[str, float]:
        counts = {f"candidate_{name}": float(n) for name, n in self.new_candidates.items()}
        return {
            "records": float(self.records),
            "unchanged": float(self.unchanged),
            "unused_samples": float(self.unused_samples),
            "not_in_format": float(self.not_in_format),
            **counts,
        }

    def line(self) -> str:
        made = ", ".join(f"{name}={n}" for name, n in sorted(self.new_candidates.items()))
        malformed = (
            f", {self.not_in_format} not in the reflection format (fell back to the phase-1 answer)"
            if self.not_in_format
            else ""
        )
        return (
            f"imported {self.phase} candidates for {self.records} records ({made}; "
            f"{self.unchanged} unchanged, {self.unused_samples} imported samples unused"
            f"{malformed}); no teacher called"
        )


@dataclass
class Phase1Import:
    records: list[Record]  # as reflect_instruction writes them: candidates ori and Q
    responses: list[Record]  # {"id", "A", "QA"}: phase 2's candidates, by id
    summary: ImportSummary


def import_phase1(
    records: list[Record], reflections: ImportedReflections, seed_source: str
) -> Phase1Import:
    """The prepared ``records`` with their imported ``ori``/``Q``; ``A``/``QA`` kept for later."""
    index_by_id(records, seed_source)  # prepared records: ids, unique
    pairs, unused = match_seed(records, reflections, seed_source)
    summary = ImportSummary("instruction", unused_samples=unused, new_candidates={Q: 0})
    out, responses = [], []
    for record, sample in pairs:
        seed = SeedRecord.from_dict(record, seed_source)
        ori = Candidate(seed.instruction, seed.input, seed.output)
        q = sample.candidates[Q]
        status = UNCHANGED if _texts(q) == _texts(sample.candidates[ORI]) else OK
        with_candidates = {**record, "candidates": {ORI: ori.to_dict(), Q: q.to_dict()}}
        out.append(with_teacher_meta(with_candidates, "instruction", _meta(status)))
        responses.append({"id": seed.id, **{n: sample.candidates[n].to_dict() for n in (A, QA)}})
        summary.records += 1
        summary.new_candidates[Q] += 1
        summary.unchanged += status == UNCHANGED
    return Phase1Import(out, responses, summary)


def match_seed(
    records: list[Record], reflections: ImportedReflections, seed_source: str
) -> tuple[list[tuple[Record, ImportedSample]], int]:
    """Each prepared record with its imported sample, checked; and how many samples went unused."""
    samples = reflections.samples
    by_id = bool(samples) and all(sample.id is not None for sample in samples)
    pairs = (
        _match_by_id(records, samples, reflections.ori_file, seed_source)
        if by_id
        else _match_by_position(records, samples, reflections.ori_file, seed_source)
    )
    for record, sample in pairs:
        _check_seed(record, sample, seed_source)
    return pairs, len(samples) - len(pairs)


def _match_by_id(
    records: list[Record], samples: list[ImportedSample], ori_file: str, seed_source: str
) -> list[tuple[Record, ImportedSample]]:
    index = {sample.id: sample for sample in samples}
    pairs = []
    for record in records:
        rid = str(record.get("id"))
        if rid not in index:
            raise InputError(
                seed_source,
                f"has no imported candidates: no sample with id {rid!r} in {ori_file}",
                SEED_FIX,
                record=rid,
                field="id",
            )
        pairs.append((record, index[rid]))
    return pairs


def _match_by_position(
    records: list[Record], samples: list[ImportedSample], ori_file: str, seed_source: str
) -> list[tuple[Record, ImportedSample]]:
    seen: set[tuple[str, str, str]] = set()
    distinct = []
    for sample in samples:  # prepare keeps the first of exact duplicates; so do we
        key = _texts(sample.candidates[ORI])
        if key not in seen:
            seen.add(key)
            distinct.append(sample)
    if len(distinct) < len(records):
        raise InputError(
            ori_file,
            f"has {len(distinct)} distinct samples but the seed ({seed_source}) has "
            f"{len(records)} records",
            SEED_FIX,
        )
    return list(zip(records, distinct[: len(records)], strict=True))


def _check_seed(record: Record, sample: ImportedSample, seed_source: str) -> None:
    seed = SeedRecord.from_dict(record, seed_source)
    ori = sample.candidates[ORI]
    for name in ("instruction", "input"):
        mine, theirs = getattr(ori, name), getattr(seed, name)
        if mine != theirs:
            raise sample.where.error(
                f"ori's {name} {_short(mine)} is not seed record {seed.id!r}'s {_short(theirs)}",
                SEED_FIX,
                field=name,
            )


def attach_responses(
    records: list[Record],
    responses: list[Record],
    source: str,
    responses_source: str,
    response_format: str = PLAIN,
) -> tuple[list[Record], ImportSummary]:
    """Phase 2: each record gains its winner's imported reflected answer (``A`` or ``QA``);
    with ``response_format`` reflection an answer not in that format falls back (module doc)."""
    by_id = index_by_id(responses, responses_source)
    summary = ImportSummary("response", new_candidates={A: 0, QA: 0})
    out = []
    for record in records:
        winner = phase1_winner(record, source, PHASE1_FIX)
        name, rid = NEW_CANDIDATE[winner], str(record.get("id"))
        row = by_id.get(rid)
        if row is None:
            problem = f"has no imported answers for record {rid!r}"
            raise InputError(responses_source, problem, RESPONSES_FIX, record=rid, field="id")
        base = candidate(record, winner, source, PHASE1_FIX)
        answer = Candidate.from_dict(row.get(name), responses_source, rid, name, RESPONSES_FIX)
        untagged = reflection_problem(answer.output) if response_format == REFLECTION else None
        if untagged:
            reason = (
                f"{name}.output of record {rid!r} in {responses_source} is not in the reflection "
                f"format: {untagged}; the phase-1 answer stands in"
            )
            new, meta = base, {**_meta(FALLBACK_PARSE), "error": reason, "reasons": [reason]}
            summary.not_in_format += 1
        else:
            new = Candidate(base.instruction, base.input, answer.output)
            meta = _meta(UNCHANGED if answer.output == base.output else OK)
        out.append(with_teacher_meta(with_candidate(record, name, new), "response", meta))
        summary.records += 1
        summary.new_candidates[name] += 1
        summary.unchanged += meta["parse_status"] == UNCHANGED
    return out, summary


def _meta(status: str) -> dict[str, Any]:
    """The ``teacher.<phase>`` metadata of an imported candidate: no model, no tokens."""
    return {"parse_status": status, "source": SOURCE}


def _texts(candidate: Candidate) -> tuple[str, str, str]:
    return candidate.instruction, candidate.input, candidate.output


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
