"""Run a teacher over a JSONL file as a resumable stage.

Each record's result (parsed fields + teacher metadata) is appended to a per-record checkpoint
the moment the teacher finishes it, so a run killed at any point - SIGKILL included - resumes
with only the records that never finished (and those whose teacher failed for good, which get
another chance). The checkpoint is keyed by record id and fingerprinted by the input ids, the
phase's prompt wording and the config fields that shape answers; a mismatching checkpoint is set
aside rather than mixed in. The final file is written atomically, every input id exactly once,
in input order; then the checkpoint is deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.common.checkpoint import RecordCheckpoint, fingerprint
from components.common.records import Record, index_by_id, read_jsonl, write_jsonl
from components.teacher.config import TeacherConfig
from components.teacher.parsing import FALLBACK_ERROR, OK, PARSE_STATUSES, parse_reply
from components.teacher.prompts import PhaseSpec, build_request
from components.teacher.protocol import Completion, Teacher

log = logging.getLogger(__name__)
Sample = dict[str, str]
Result = dict[str, Any]  # {"fields": {key: text} | None, "meta": {...teacher metadata...}}


@dataclass(frozen=True)
class StagePlan:
    """How a reflection stage maps records to the sample the teacher judges, and back.

    ``sample(record, source)`` returns {instruction, input, output} or raises ``InputError``;
    ``attach(record, sample, result)`` returns the output record.
    """

    phase: PhaseSpec
    sample: Callable[[Record, str], Sample]
    attach: Callable[[Record, Sample, Result], Record]


@dataclass
class ReflectSummary:
    """What a reflection run did, as numbers (``as_dict`` is ready for ``mlflow.log_metrics``).

    Counts cover every record in the output, resumed ones included; ``records_per_s`` is the
    teacher throughput of this run: records completed now over the run's wall time.
    """

    records: int
    completed_now: int
    resumed_from_checkpoint: int
    parse_ok: int
    fallback_parse: int
    fallback_placeholder: int
    fallback_error: int
    prompt_tokens: int
    completion_tokens: int
    usage_unreported: int
    seconds: float

    @property
    def parse_failures(self) -> int:
        return self.records - self.parse_ok

    @property
    def parse_failure_rate(self) -> float:
        return self.parse_failures / self.records if self.records else 0.0

    @property
    def records_per_s(self) -> float:
        return self.completed_now / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        flat: dict[str, float] = dict(asdict(self))
        flat.update(
            parse_failures=self.parse_failures,
            parse_failure_rate=self.parse_failure_rate,
            records_per_s=self.records_per_s,
        )
        return flat

    def line(self, phase: str) -> str:
        """The CLI's one-line report."""
        return (
            f"reflect {phase}: records={self.records} completed_now={self.completed_now} "
            f"resumed={self.resumed_from_checkpoint} parse_ok={self.parse_ok} "
            f"parse_failures={self.parse_failures} ({self.parse_failure_rate:.1%}) "
            f"fallback_error={self.fallback_error} tokens={self.prompt_tokens}+"
            f"{self.completion_tokens} seconds={self.seconds:.1f} "
            f"records_per_s={self.records_per_s:.2f}"
        )


def default_checkpoint_path(output_path: Path) -> Path:
    """``<output>.partial.jsonl`` beside the output."""
    return output_path.with_name(output_path.name + ".partial.jsonl")


def reflection_result(phase: PhaseSpec, completion: Completion, sample: Sample) -> Result:
    """Parse one completion into the checkpointed result: fields (or None) + metadata."""
    if completion.failed:
        fields, status, error = None, FALLBACK_ERROR, completion.error
    else:
        parsed = parse_reply(phase, completion.text, sample, completion.prefill)
        fields, status, error = parsed.fields, parsed.status, parsed.reason
    meta = {
        "model": completion.model,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "latency_s": round(completion.latency_s, 4),
        "attempts": completion.attempts,
        "parse_status": status,
        "error": error,
    }
    return {"fields": fields, "meta": meta}


def needs_teacher(result: Result | None) -> bool:
    """Not done yet, or the teacher failed for good last time (worth another run's try)."""
    return result is None or result["meta"]["parse_status"] == FALLBACK_ERROR


def reflect_stage(
    plan: StagePlan,
    input_path: Path,
    output_path: Path,
    config: TeacherConfig,
    checkpoint_path: Path | None = None,
    teacher: Teacher | None = None,
    progress: bool = True,
) -> ReflectSummary:
    """Reflect every record of ``input_path`` into ``output_path``; resumable (see module doc).

    The teacher is built only if some record still needs it, so re-running a finished stage
    never loads a model.
    """
    started = time.perf_counter()
    records = index_by_id(read_jsonl(input_path), str(input_path))
    samples = {rid: plan.sample(record, str(input_path)) for rid, record in records.items()}
    work = fingerprint(
        plan.phase.name, plan.phase.version(), list(records), config.result_shaping()
    )
    checkpoint = RecordCheckpoint(checkpoint_path or default_checkpoint_path(output_path), work)
    with checkpoint:
        todo = [rid for rid in records if needs_teacher(checkpoint.done.get(rid))]
        if todo:
            _ask_teacher(
                plan.phase,
                todo,
                samples,
                checkpoint,
                teacher or _build(config),
                config,
                _progress_bar(plan.phase.name, len(records), todo, progress),
            )
        results: dict[str, Result] = dict(checkpoint.done)
    write_jsonl(
        output_path,
        (plan.attach(record, samples[rid], results[rid]) for rid, record in records.items()),
    )
    checkpoint.remove()
    summary = summarize(results.values(), len(todo), time.perf_counter() - started)
    log.debug("%s -> %s", summary.line(plan.phase.name), output_path)
    return summary


def _build(config: TeacherConfig) -> Teacher:
    from components.teacher.factory import make_teacher

    return make_teacher(config)


def _progress_bar(phase: str, total: int, todo: list[str], enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=total - len(todo),
        unit="rec",
        desc=f"reflect {phase}",
        disable=not enabled,
        dynamic_ncols=True,
    )


def _ask_teacher(
    phase: PhaseSpec,
    todo: list[str],
    samples: Mapping[str, Sample],
    checkpoint: RecordCheckpoint,
    teacher: Teacher,
    config: TeacherConfig,
    bar: Any,
) -> None:
    """Send the pending records; checkpoint each result as it lands."""
    requests = [
        build_request(
            phase,
            samples[rid],
            few_shot=config.few_shot,
            structured=teacher.structured,
            prefill=teacher.prefills,
        )
        for rid in todo
    ]
    fallbacks = 0

    def on_done(index: int, completion: Completion) -> None:
        nonlocal fallbacks
        rid = todo[index]
        result = reflection_result(phase, completion, samples[rid])
        checkpoint.add(rid, result)
        fallbacks += result["meta"]["parse_status"] != OK
        bar.set_postfix(fallbacks=fallbacks, refresh=False)
        bar.update(1)

    with bar:
        teacher.complete_many(requests, on_done)
    missing = [rid for rid in todo if rid not in checkpoint.done]
    if missing:
        raise RuntimeError(
            f"the teacher returned no result for {len(missing)} record(s), "
            f"e.g. {missing[0]!r}; re-run to resume them"
        )


def summarize(results: Iterable[Result], completed_now: int, seconds: float) -> ReflectSummary:
    """Count statuses and tokens over every record's metadata (unreported usage is counted, not
    taken as zero tokens)."""
    metas = [result["meta"] for result in results]
    status = {name: sum(m["parse_status"] == name for m in metas) for name in PARSE_STATUSES}
    return ReflectSummary(
        records=len(metas),
        completed_now=completed_now,
        resumed_from_checkpoint=len(metas) - completed_now,
        parse_ok=status[OK],
        fallback_parse=status["fallback_parse"],
        fallback_placeholder=status["fallback_placeholder"],
        fallback_error=status[FALLBACK_ERROR],
        prompt_tokens=sum(m["prompt_tokens"] or 0 for m in metas),
        completion_tokens=sum(m["completion_tokens"] or 0 for m in metas),
        usage_unreported=sum(m["prompt_tokens"] is None for m in metas),
        seconds=round(seconds, 3),
    )
