"""Run a teacher over a JSONL file as a resumable stage.

Each record's result (parsed fields + teacher metadata) is appended to a per-record checkpoint
the moment the teacher finishes it, so a run killed at any point - SIGKILL included - resumes
with only the records that never finished (and those whose teacher failed for good, which get
another chance). Each result is keyed by the record's id *and* a digest of the sample the teacher
saw (instruction, input, answer), so a record edited between a killed run and its rerun is asked
again while untouched ones - and records added since - reuse or get their answers. The file as a
whole is fingerprinted by the phase's prompt wording and the config fields that shape answers; a
mismatching checkpoint is set aside rather than mixed in. The final file is written atomically,
every input id exactly once, in input order; then the checkpoint is deleted - unless the teacher
failed for good on more than ``max_error_rate`` of the records: then nothing is written, the
checkpoint stays and ``TeacherUnavailable`` says why (see ``health``).

Backends that prefill the assistant turn get a second round for replies that ended their turn
early: a small model often writes the new instruction and stops without ever writing
``[New Answer]``. Such a record is asked again with the assistant turn prefilled up to and
including the missing field's marker, so the model can only go on with that field; its metadata
then covers both rounds (tokens, latency and attempts summed, ``rounds`` = 2). A first-round
reply waiting for its second round is checkpointed as *pending* under the record's own key (a
later line for the key replaces it), so a run killed between the rounds resumes at round two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rtune.components.common.checkpoint import RecordCheckpoint, fingerprint
from rtune.components.common.records import Record, index_by_id, read_jsonl, write_jsonl
from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.health import check_error_rate
from rtune.components.teacher.parsing import (
    FALLBACK_ERROR,
    FALLBACK_PARSE,
    FALLBACK_TRUNCATED,
    OK,
    PARSE_STATUSES,
    leading_fields,
    parse_reply,
    unfinished_field,
)
from rtune.components.teacher.prompts import PhaseSpec, build_request, continuation_prefill
from rtune.components.teacher.protocol import Completion, Teacher, TeacherRequest

log = logging.getLogger(__name__)
Sample = dict[str, str]
Result = dict[str, Any]  # {"fields": {key: text} | None, "meta": {...teacher metadata...}}
PENDING = "pending"  # a checkpointed first-round result's key for its second-round prefill


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

    Counts cover every record in the output, resumed ones included; ``continued`` is how many
    records needed a second round; ``records_per_s`` is the teacher throughput of this run:
    records completed now over the run's wall time.
    """

    records: int
    completed_now: int
    resumed_from_checkpoint: int
    parse_ok: int
    fallback_parse: int
    fallback_placeholder: int
    fallback_error: int
    fallback_truncated: int
    continued: int
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
            f"fallback_error={self.fallback_error} "
            f"fallback_truncated={self.fallback_truncated} continued={self.continued} "
            f"tokens={self.prompt_tokens}+"
            f"{self.completion_tokens} seconds={self.seconds:.1f} "
            f"records_per_s={self.records_per_s:.2f}"
        )


def default_checkpoint_path(output_path: Path) -> Path:
    """``<output>.partial.jsonl`` beside the output."""
    return output_path.with_name(output_path.name + ".partial.jsonl")


def reflection_result(
    phase: PhaseSpec, completion: Completion, sample: Sample, max_new_tokens: int
) -> Result:
    """Parse one completion into the checkpointed result: fields (or None) + metadata.

    A reply cut at the token budget before it finished a field is ``fallback_truncated`` even
    when it parses: the parsed answer would end mid-sentence.
    """
    if completion.failed:
        fields, status, error = None, FALLBACK_ERROR, completion.error
    else:
        parsed = parse_reply(phase, completion.text, sample, completion.prefill)
        fields, status, error = parsed.fields, parsed.status, parsed.reason
        cut = (
            unfinished_field(phase, completion.text, completion.prefill)
            if completion.truncated
            else None
        )
        if cut is not None:
            fields, status = None, FALLBACK_TRUNCATED
            error = (
                f"reply cut at max_new_tokens={max_new_tokens} before {cut} was finished; "
                "raise teacher.max_new_tokens"
            )
    meta = {
        "model": completion.model,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "latency_s": round(completion.latency_s, 4),
        "attempts": completion.attempts,
        "parse_status": status,
        "error": error,
        "rounds": 1,
    }
    return {"fields": fields, "meta": meta}


def continuation(
    phase: PhaseSpec, completion: Completion, sample: Sample, result: Result
) -> str | None:
    """The second-round prefill for a prefilled reply that ended its turn after some real
    leading fields but before the rest (no markers for them at all), else ``None``.

    Not for a reply the budget cut (its last field may be unfinished: the fix there is a bigger
    budget), nor for one with placeholders or no usable first field (nothing to build on).
    """
    if (
        not completion.prefill
        or completion.truncated
        or result["meta"]["parse_status"] != FALLBACK_PARSE
    ):
        return None
    written = leading_fields(phase, completion.text, sample, completion.prefill)
    if not written or len(written) == len(phase.outputs):
        return None
    return continuation_prefill(phase, written)


def _tokens(first: int | None, second: int | None) -> int | None:
    """Tokens over two rounds; unknown if either round's usage is unknown."""
    return None if first is None or second is None else first + second


def combined_result(first: Mapping[str, Any], second: Result) -> Result:
    """The second round's fields and status, with the cost of both rounds (``first`` is the
    first round's metadata)."""
    meta = second["meta"]
    return {
        "fields": second["fields"],
        "meta": {
            **meta,
            "prompt_tokens": _tokens(first["prompt_tokens"], meta["prompt_tokens"]),
            "completion_tokens": _tokens(first["completion_tokens"], meta["completion_tokens"]),
            "latency_s": round(first["latency_s"] + meta["latency_s"], 4),
            "attempts": first["attempts"] + meta["attempts"],
            "rounds": first.get("rounds", 1) + 1,
        },
    }


def record_key(rid: str, sample: Sample) -> str:
    """A record's checkpoint key: its id and a digest of the sample the teacher judges. An answer
    is only reused for the very text it was written about."""
    return f"{rid}#{fingerprint(sample)[:16]}"


def needs_teacher(result: Result | None) -> bool:
    """Not done yet, waiting for its second round, or the teacher failed for good last time
    (worth another run's try)."""
    return result is None or PENDING in result or result["meta"]["parse_status"] == FALLBACK_ERROR


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
    never loads a model. Raises ``TeacherUnavailable`` (output not written, checkpoint kept) when
    more than ``config.max_error_rate`` of the records failed for good.
    """
    started = time.perf_counter()
    records = index_by_id(read_jsonl(input_path), str(input_path))
    samples = {rid: plan.sample(record, str(input_path)) for rid, record in records.items()}
    keys = {rid: record_key(rid, sample) for rid, sample in samples.items()}
    work = fingerprint(plan.phase.name, plan.phase.version(), config.result_shaping())
    checkpoint = RecordCheckpoint(checkpoint_path or default_checkpoint_path(output_path), work)
    with checkpoint:
        todo = [keys[rid] for rid in records if needs_teacher(checkpoint.done.get(keys[rid]))]
        if todo:
            _ask_teacher(
                plan.phase,
                todo,
                {keys[rid]: sample for rid, sample in samples.items()},
                checkpoint,
                teacher or _build(config),
                config,
                _progress_bar(plan.phase.name, len(records), todo, progress),
            )
        results = {rid: checkpoint.done[key] for rid, key in keys.items()}
    summary = summarize(results.values(), len(todo), time.perf_counter() - started)
    check_error_rate(
        [result["meta"] for result in results.values()],
        config.max_error_rate,
        output_path,
        checkpoint.path,
        summary.as_dict(),
    )
    write_jsonl(
        output_path,
        (plan.attach(record, samples[rid], results[rid]) for rid, record in records.items()),
    )
    checkpoint.remove()
    log.debug("%s -> %s", summary.line(plan.phase.name), output_path)
    return summary


def _build(config: TeacherConfig) -> Teacher:
    from rtune.components.teacher.factory import make_teacher

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
    """Send the pending records (``todo`` and ``samples`` go by ``record_key``); checkpoint each
    result as it lands. Records whose first-round
    reply stopped early (see ``continuation``) go to a second round once the first is over;
    records resumed while pending start there."""
    continues = teacher.prefills and not teacher.structured
    counts = {"fallbacks": 0, "continued": 0}

    def request(key: str, prefill: str | None = None) -> TeacherRequest:
        base = build_request(
            phase,
            samples[key],
            few_shot=config.few_shot,
            structured=teacher.structured,
            prefill=teacher.prefills,
        )
        return base if prefill is None else replace(base, prefill=prefill)

    def finish(key: str, result: Result) -> None:
        checkpoint.add(key, result)
        counts["fallbacks"] += result["meta"]["parse_status"] != OK
        counts["continued"] += result["meta"]["rounds"] > 1
        bar.set_postfix(refresh=False, **counts)
        bar.update(1)

    def first_round(key: str, completion: Completion) -> None:
        result = reflection_result(phase, completion, samples[key], config.max_new_tokens)
        follow = continuation(phase, completion, samples[key], result) if continues else None
        if follow is None:
            finish(key, result)
        else:
            checkpoint.add(key, {**result, PENDING: follow})

    def second_round(key: str, completion: Completion) -> None:
        result = reflection_result(phase, completion, samples[key], config.max_new_tokens)
        finish(key, combined_result(checkpoint.done[key]["meta"], result))

    def pending(key: str) -> bool:
        return PENDING in (checkpoint.done.get(key) or {})

    with bar:
        fresh = [key for key in todo if not pending(key)]
        _run(teacher, [(key, request(key)) for key in fresh], first_round)
        waiting = [key for key in todo if pending(key)]
        _run(
            teacher,
            [(key, request(key, checkpoint.done[key][PENDING])) for key in waiting],
            second_round,
        )
    missing = [key for key in todo if key not in checkpoint.done or pending(key)]
    if missing:
        raise RuntimeError(
            f"the teacher returned no result for {len(missing)} record(s), "
            f"e.g. {missing[0]!r}; re-run to resume them"
        )


def _run(
    teacher: Teacher,
    jobs: list[tuple[str, TeacherRequest]],
    handle: Callable[[str, Completion], None],
) -> None:
    """Ask the teacher for every (record key, request) job and hand each completion, with its
    request's prefill attached (the parser puts it back), to ``handle``."""
    if not jobs:
        return

    def on_done(index: int, completion: Completion) -> None:
        key, request = jobs[index]
        handle(key, completion.with_prefill(request.prefill))

    teacher.complete_many([request for _, request in jobs], on_done)


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
        fallback_truncated=status[FALLBACK_TRUNCATED],
        continued=sum(m.get("rounds", 1) > 1 for m in metas),
        prompt_tokens=sum(m["prompt_tokens"] or 0 for m in metas),
        completion_tokens=sum(m["completion_tokens"] or 0 for m in metas),
        usage_unreported=sum(m["prompt_tokens"] is None for m in metas),
        seconds=round(seconds, 3),
    )
