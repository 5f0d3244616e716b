"""Scoring stages: ``rtune score`` on flat records, and candidate scoring inside the DAG.

* ``score_file``: flat records (instruction / input / output) -> the same records plus the score
  fields (ifd, rifd, ifd_loss, rifd_loss, the four mean losses, reason).
* ``score_candidates``: records carrying ``candidates`` -> one row per scored candidate,
  ``{"id", "candidate", "scores"}``. Each phase scores only what its rule reads (DESIGN §3):
  phase ``ifd`` the IFD of ``ori`` and ``Q`` (two passes each; r-IFD only where IFD is missing,
  for the reason the rule quotes); phase ``rifd`` the reflected response (``A`` or ``QA``) and the
  r-IFD of the phase-1 winner it came from, whose row then holds both scores. The winner's IFD
  losses are carried forward from its phase-1 scores in the record, and the instruction-alone
  pass is run once for the winner and its new answer (same instruction). Records are split round-robin into ``num_shards``
  deterministic shards (``dsl.ParallelFor`` over shards, then the selection merges the score
  files); finished candidates go to a per-record checkpoint, so a killed shard resumes.

The model is loaded only when something is left to score (imports stay lazy for ``component.py``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rtune.components.common.checkpoint import RecordCheckpoint, fingerprint
from rtune.components.common.record_schema import (
    NEW_CANDIDATE,
    candidate,
    candidate_names,
    candidate_scores,
)
from rtune.components.common.records import (
    InputError,
    Record,
    index_by_id,
    read_jsonl,
    read_records,
    write_jsonl,
)
from rtune.components.scoring.config import ScoringConfig
from rtune.components.scoring.formulas import (
    BOTH_SCORES,
    IFD,
    REASON_FIELD,
    Scores,
    known_losses,
)

log = logging.getLogger(__name__)

Phase = Literal["ifd", "rifd"]
PHASE_CANDIDATES: dict[str, tuple[str, ...]] = {"ifd": ("ori", "Q"), "rifd": ("A", "QA")}
OLD_CANDIDATE = {new: old for old, new in NEW_CANDIDATE.items()}  # A <- ori, QA <- Q
PHASE1_SCORES = (IFD,)  # the phase-1 rule reads IFD(ori) vs IFD(Q), nothing else
Need = tuple[str, tuple[str, ...], tuple[tuple[str, float], ...]]  # name, scores, carried losses
TEXT_FIELDS_FIX = (
    "every candidate needs string fields 'instruction' and 'output' ('input' optional)"
)
EMPTY_INPUT_FIX = (
    "give a file with at least one record; if an earlier stage wrote it, check that stage's "
    "output and log"
)


@dataclass
class ScoreSummary:
    """What a scoring stage did (``as_dict`` gives numbers for MLflow metrics)."""

    records: int = 0
    candidates: int = 0
    scored: int = 0
    unscorable: int = 0
    resumed: int = 0
    passes: int = 0
    unique_passes: int = 0
    carried_passes: int = 0
    exact_passes: int = 0
    tokens: int = 0
    forward_tokens: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0

    @property
    def records_per_s(self) -> float:
        """Records scored per second in this run (resumed candidates not counted)."""
        fresh = self.candidates - self.resumed
        if self.seconds <= 0 or self.candidates == 0:
            return 0.0
        return self.records * fresh / self.candidates / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        values = {key: float(value) for key, value in asdict(self).items()}
        values["records_per_s"] = self.records_per_s
        values["tokens_per_s"] = self.tokens_per_s
        return values

    def line(self) -> str:
        """One human line for the CLI and logs."""
        return (
            f"{self.records} records, {self.candidates} candidates: {self.scored} scored, "
            f"{self.unscorable} unscorable, {self.resumed} resumed; {self.passes} passes "
            f"({self.unique_passes} run, {self.carried_passes} carried forward), {self.tokens} tokens in {self.seconds:.1f} s "
            f"({self.records_per_s:.2f} records/s, {self.tokens_per_s:.0f} tokens/s)"
        )


def score_file(
    input_path: Path, output_path: Path, config: ScoringConfig, progress: bool = True
) -> ScoreSummary:
    """Score flat records (JSONL, or a JSON array as Alpaca ships): each record gains the score
    fields at top level; unscorable records get null scores and a ``reason``."""
    records = read_flat_records(Path(input_path))
    require_records(records, Path(input_path))
    from rtune.components.scoring.scorer import ScoringCandidate

    candidates = [
        ScoringCandidate(str(i), r["instruction"], r.get("input") or "", r["output"])
        for i, r in enumerate(records)
    ]
    summary = ScoreSummary(records=len(records), candidates=len(candidates))
    scores = _score(candidates, config, summary, progress, on_scored=None)
    write_jsonl(output_path, ({**r, **scores[str(i)]} for i, r in enumerate(records)))
    _count_outcomes(summary, scores.values())
    log.info("score_file: %s", summary.line())
    return summary


def score_candidates(
    records_path: Path,
    output_path: Path,
    config: ScoringConfig,
    phase: Phase,
    shard_index: int = 0,
    num_shards: int = 1,
    checkpoint_path: Path | None = None,
    progress: bool = True,
) -> ScoreSummary:
    """Score this shard's candidates of ``phase`` and write ``{"id","candidate","scores"}`` rows.

    The checkpoint (default: ``<output>.partial.jsonl`` beside the output) is fingerprinted with
    the score-changing config and the candidate texts, and deleted once the output is written.
    """
    records_path, output_path = Path(records_path), Path(output_path)
    records = read_jsonl(records_path)
    require_records(records, records_path)
    index_by_id(records, str(records_path))
    shard = shard_records(records, shard_index, num_shards)
    if not shard:
        log.warning(
            "shard %d of %d has no records (%d records in %s): writing an empty score file",
            shard_index,
            num_shards,
            len(records),
            records_path,
        )
    candidates = candidates_for_phase(shard, phase, str(records_path))
    summary = ScoreSummary(records=len(shard), candidates=len(candidates))
    work = fingerprint(
        config.result_fields(),
        phase,
        [(c.key, c.instruction, c.input, c.output, c.scores, c.known) for c in candidates],
    )
    checkpoint_path = checkpoint_path or output_path.with_name(output_path.name + ".partial.jsonl")
    checkpoint = RecordCheckpoint(checkpoint_path, work)
    try:
        todo = [c for c in candidates if c.key not in checkpoint.done]
        summary.resumed = len(candidates) - len(todo)
        _score(todo, config, summary, progress, on_scored=checkpoint.add)
        scores = dict(checkpoint.done)
        write_jsonl(output_path, [_score_row(c.key, scores[c.key]) for c in candidates])
        checkpoint.remove()
    finally:
        checkpoint.close()
    _count_outcomes(summary, scores.values())
    log.info("score_candidates %s shard %d/%d: %s", phase, shard_index, num_shards, summary.line())
    return summary


def require_records(records: Sequence[Record], path: Path) -> None:
    """Scoring nothing is a mistake upstream (a wrong path, a stage that wrote nothing): say so
    instead of writing an empty file that the next stage would take as a result."""
    if not records:
        raise InputError(str(path), "no records to score (the file is empty)", EMPTY_INPUT_FIX)


def shard_records(records: Sequence[Record], shard_index: int, num_shards: int) -> list[Record]:
    """Records ``shard_index, shard_index + num_shards, ...``: a deterministic round-robin split
    (every record in exactly one shard; long and short records spread evenly)."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(
            f"shard_index must be in [0, num_shards) and num_shards >= 1, "
            f"got shard_index={shard_index}, num_shards={num_shards}"
        )
    return list(records[shard_index::num_shards])


def candidates_for_phase(records: Sequence[Record], phase: str, source: str) -> list[Any]:
    """The candidates a phase scores, each with the scores its rule reads: IFD of ``ori`` and
    ``Q`` (ifd); both scores of whichever of ``A``/``QA`` the record has and of the phase-1
    candidate it reflects, whose phase-1 losses are carried (rifd). A record missing them is an
    error saying which stage adds them."""
    from rtune.components.scoring.scorer import ScoringCandidate

    if phase not in PHASE_CANDIDATES:
        raise ValueError(f"unknown phase {phase!r}; valid phases are {sorted(PHASE_CANDIDATES)}")
    out = []
    for record in records:
        for name, wanted, carried in _phase_needs(record, phase, source):
            fields = _candidate_texts(record, name, source)
            key = candidate_key(record["id"], name)
            out.append(ScoringCandidate(key, *fields, scores=wanted, known=carried))
    return out


def _phase_needs(record: Record, phase: str, source: str) -> list[Need]:
    """(candidate, scores to compute, losses carried from phase 1) for one record."""
    if phase == "ifd":
        return [(name, PHASE1_SCORES, ()) for name in _phase_names(record, phase, source)]
    needs: list[Need] = []
    for new in _phase_names(record, phase, source):
        old = OLD_CANDIDATE[new]
        carried = known_losses(candidate_scores(record, old, source))
        needs += [(old, BOTH_SCORES, tuple(sorted(carried.items()))), (new, BOTH_SCORES, ())]
    return needs


def candidate_key(record_id: str, candidate: str) -> str:
    """Checkpoint/result key of one candidate of one record (unambiguous for any id)."""
    return json.dumps([record_id, candidate], ensure_ascii=False)


def read_flat_records(path: Path) -> list[Record]:
    """Flat records from JSONL or a JSON array, each checked for instruction/output strings."""
    records = read_records(path)
    for number, record in enumerate(records, start=1):
        _check_texts(record, str(path), record.get("id") or number, prefix="")
    return records


def _score(
    candidates: Sequence[Any],
    config: ScoringConfig,
    summary: ScoreSummary,
    progress: bool,
    on_scored: Any,
) -> dict[str, Scores]:
    if not candidates:
        return {}
    from rtune.components.scoring.scorer import StudentScorer

    began = time.perf_counter()
    scorer = StudentScorer.load(config)
    summary.load_seconds = time.perf_counter() - began
    results, stats = scorer.score(candidates, on_scored=on_scored, progress=progress)
    summary.passes, summary.unique_passes = stats.passes, stats.unique_passes
    summary.carried_passes, summary.exact_passes = stats.carried_passes, stats.exact_passes
    summary.tokens, summary.forward_tokens = stats.tokens, stats.forward_tokens
    summary.seconds = stats.seconds
    return results


def _count_outcomes(summary: ScoreSummary, scores: Any) -> None:
    reasons = [s.get(REASON_FIELD) for s in scores]
    summary.unscorable = sum(1 for reason in reasons if reason)
    summary.scored = len(reasons) - summary.unscorable


def _score_row(key: str, scores: Scores) -> Record:
    record_id, candidate = json.loads(key)
    return {"id": record_id, "candidate": candidate, "scores": scores}


def _phase_names(record: Record, phase: str, source: str) -> list[str]:
    candidates = candidate_names(record, source)
    if phase == "ifd":
        for name in PHASE_CANDIDATES["ifd"]:
            if name not in candidates:
                raise InputError(
                    source,
                    f"record has no candidate {name!r}",
                    "run the instruction reflection first (it adds candidates ori and Q)",
                    record=record["id"],
                    field=f"candidates.{name}",
                )
        return list(PHASE_CANDIDATES["ifd"])
    names = [name for name in PHASE_CANDIDATES["rifd"] if name in candidates]
    if not names:
        raise InputError(
            source,
            "record has no reflected response (candidate 'A' or 'QA')",
            "run the response reflection first (`rtune reflect --stage response`)",
            record=record["id"],
            field="candidates",
        )
    return names


def _candidate_texts(record: Record, name: str, source: str) -> tuple[str, str, str]:
    chosen = candidate(record, name, source, TEXT_FIELDS_FIX)
    return chosen.instruction, chosen.input, chosen.output


def _check_texts(item: Record, source: str, record: str | int, prefix: str) -> None:
    """``instruction`` and ``output`` must be strings; ``input`` a string, null or absent."""
    for field_name in ("instruction", "output"):
        if field_name not in item:
            problem = f"missing field {field_name!r}"
        elif not isinstance(item[field_name], str):
            problem = (
                f"field {field_name!r} must be a string, got {type(item[field_name]).__name__}"
            )
        else:
            continue
        raise InputError(source, problem, TEXT_FIELDS_FIX, record=record, field=prefix + field_name)
    if item.get("input") is not None and not isinstance(item["input"], str):
        raise InputError(
            source,
            f"field 'input' must be a string, got {type(item['input']).__name__}",
            TEXT_FIELDS_FIX,
            record=record,
            field=prefix + "input",
        )
