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

Every other reply with a missing or placeholder field gets one *repair* round instead (every
backend; ``teacher.repair``): the reply goes back to the teacher with what was wrong and the
format it must follow. Fields then fall back one by one (``teacher.fallback``, see ``outcome``).
A sample longer than ``teacher.max_sample_tokens`` is sent with its answer cut (``sample_cut``).
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
from rtune.components.teacher.outcome import (
    finalize,
    merge_rounds,
    read_round,
    repairable,
    what_was_wrong,
)
from rtune.components.teacher.parsing import (
    FALLBACK_ERROR,
    FALLBACK_PARSE,
    FALLBACK_TRUNCATED,
    OK,
    PARSE_STATUSES,
    PARTIAL,
    brief_critique,
    extract_markers,
    leading_fields,
    reply_body,
    usable_critique,
)
from rtune.components.teacher.phase_spec import CRITIQUE_KEY, PhaseSpec
from rtune.components.teacher.prompts import (
    build_request,
    continuation_prefill,
    phase_for,
    repair_request,
)
from rtune.components.teacher.protocol import Completion, Teacher, TeacherRequest
from rtune.components.teacher.sample_cut import cut_to_budget, token_counter

log = logging.getLogger(__name__)
Sample = dict[str, str]
Result = dict[str, Any]  # {"fields": {key: text} | None, "meta": {...teacher metadata...}}
PENDING = "pending"  # a checkpointed first-round result's key for what its second round sends


@dataclass(frozen=True)
class StagePlan:
    """How a reflection stage maps records to the sample the teacher judges, and back.

    ``phase`` names the phase (instruction | response; its wording comes from
    ``teacher.prompt_style``); ``sample(record, source)`` returns {instruction, input, output} or
    raises ``InputError``; ``attach(record, sample, result)`` returns the output record.
    """

    phase: str
    sample: Callable[[Record, str], Sample]
    attach: Callable[[Record, Sample, Result], Record]

    def wording(self, config: TeacherConfig) -> PhaseSpec:
        return phase_for(config.prompt_style, self.phase, config.response_format)


@dataclass
class ReflectSummary:
    """What a reflection run did, as numbers (``as_dict`` is ready for ``mlflow.log_metrics``).

    Counts cover every record in the output, resumed ones included; ``continued`` is how many
    records needed a second round (``repaired``: of those, how many were repair rounds);
    ``sample_cut`` how many were sent with their answer cut to ``max_sample_tokens``; ``records_per_s`` is the teacher throughput of this run:
    records completed now over the run's wall time.
    """

    records: int
    completed_now: int
    resumed_from_checkpoint: int
    parse_ok: int
    partial: int
    fallback_parse: int
    fallback_placeholder: int
    fallback_error: int
    fallback_truncated: int
    continued: int
    repaired: int
    sample_cut: int
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
            f"partial={self.partial} "
            f"fallback_error={self.fallback_error} "
            f"fallback_truncated={self.fallback_truncated} continued={self.continued} "
            f"repaired={self.repaired} sample_cut={self.sample_cut} "
            f"tokens={self.prompt_tokens}+"
            f"{self.completion_tokens} seconds={self.seconds:.1f} "
            f"records_per_s={self.records_per_s:.2f}"
        )


def default_checkpoint_path(output_path: Path) -> Path:
    """``<output>.partial.jsonl`` beside the output."""
    return output_path.with_name(output_path.name + ".partial.jsonl")


def continuation(
    phase: PhaseSpec, completion: Completion, sample: Sample, result: Result
) -> str | None:
    """The second-round prefill for a prefilled reply that ended its turn after some real
    leading sections but before the rest (no markers for them at all), else ``None``.

    Not for a reply the budget cut after its critique (its last field may be unfinished: the fix
    there is a bigger budget; a cut inside the critique is ``past_a_long_critique``), nor for one
    with placeholders or no usable first section (nothing to build on).
    """
    statuses = {problem["status"] for problem in result["problems"].values()}
    if completion.prefill and completion.truncated:
        return past_a_long_critique(phase, completion)
    if not completion.prefill or FALLBACK_PARSE not in statuses:
        return None
    written = leading_fields(phase, completion.text, sample, completion.prefill)
    if not written or len(written) == len(phase.prefilled_fields):
        return None
    return continuation_prefill(phase, written)


def past_a_long_critique(phase: PhaseSpec, completion: Completion) -> str | None:
    """For a prefilled reply the budget cut while it was still writing its critique (a small
    model repeats itself there until ``max_new_tokens`` is spent): the continuation with the
    critique kept to its first sentences (``brief_critique``) and the first output's marker, so
    the local budget goes to the rewrite. ``None`` when the reply got past the critique."""
    if phase.prefilled_fields[0].key != CRITIQUE_KEY:
        return None
    found = extract_markers(reply_body(phase, completion.prefill + completion.text), phase)
    critique = usable_critique(brief_critique(found.get(CRITIQUE_KEY, "")))
    if critique is None or any(spec.key in found for spec in phase.outputs):
        return None
    return continuation_prefill(phase, {CRITIQUE_KEY: critique})


def second_round(
    phase: PhaseSpec, completion: Completion, sample: Sample, result: Result, config: TeacherConfig
) -> dict[str, str] | None:
    """What a first-round result's second round sends, or ``None`` when it needs none: a
    continuation prefill (``{"prefill": ...}``) for a prefilled reply that stopped early, else a
    repair (``{"reply": ..., "problem": ...}``) for a reply with a missing or placeholder field."""
    if not result["problems"]:
        return None
    if completion.prefill and (follow := continuation(phase, completion, sample, result)):
        why = (
            "the critique ran into max_new_tokens; kept its first sentences"
            if completion.truncated
            else "the reply ended its turn early"
        )
        return {"prefill": follow, "why": why}
    if config.repair and repairable(result):
        return {"reply": completion.text, "problem": what_was_wrong(result)}
    return None


def round_two_reason(plan: Mapping[str, str]) -> str:
    """The record's reason line for its second round."""
    if "prefill" in plan:
        why = plan.get("why", "the reply ended its turn early")
        return f"continued: {why}; asked again with the next marker"
    return f"repaired: {plan['problem']}"


def record_key(rid: str, sample: Sample) -> str:
    """A record's checkpoint key: its id and a digest of the sample the teacher judges. An answer
    is only reused for the very text it was written about."""
    return f"{rid}#{fingerprint(sample)[:16]}"


def needs_teacher(result: Result | None) -> bool:
    """Not done yet, waiting for its second round, or the teacher failed for good last time
    (worth another run's try)."""
    return result is None or PENDING in result or result["meta"]["parse_status"] == FALLBACK_ERROR


def teacher_view(
    samples: Mapping[str, Sample], config: TeacherConfig, teacher: Teacher
) -> dict[str, tuple[Sample, int]]:
    """Each record's sample as the teacher sees it, cut to ``max_sample_tokens``, and the number
    of answer tokens cut (0 when it fits)."""
    count = token_counter(teacher)
    return {
        key: cut_to_budget(sample, config.max_sample_tokens, count)
        for key, sample in samples.items()
    }


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
    phase = plan.wording(config)
    records = index_by_id(read_jsonl(input_path), str(input_path))
    samples = {rid: plan.sample(record, str(input_path)) for rid, record in records.items()}
    keys = {rid: record_key(rid, sample) for rid, sample in samples.items()}
    work = fingerprint(phase.name, phase.version(), config.result_shaping())
    checkpoint = RecordCheckpoint(checkpoint_path or default_checkpoint_path(output_path), work)
    with checkpoint:
        todo = [keys[rid] for rid in records if needs_teacher(checkpoint.done.get(keys[rid]))]
        if todo:
            _ask_teacher(
                phase,
                todo,
                {keys[rid]: sample for rid, sample in samples.items()},
                checkpoint,
                teacher or _build(config),
                config,
                _progress_bar(phase.name, len(records), todo, progress),
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
    log.debug("%s -> %s", summary.line(phase.name), output_path)
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
    result as it lands. Records that need a second round (``second_round``: a continuation or a
    repair) get it once the first round is over; records resumed while pending start there."""
    views = teacher_view({key: samples[key] for key in todo}, config, teacher)
    counts = {"fallbacks": 0, "second_rounds": 0}

    def request(key: str) -> TeacherRequest:
        return build_request(
            phase,
            views[key][0],
            few_shot=config.few_shot,
            structured=teacher.structured,
            prefill=teacher.prefills,
        )

    def follow_up(key: str) -> TeacherRequest:
        plan = checkpoint.done[key][PENDING]
        if "prefill" in plan:
            return replace(request(key), prefill=plan["prefill"])
        return repair_request(phase, request(key), plan["reply"], plan["problem"])

    def finish(key: str, result: Result) -> None:
        final = finalize(result, config.fallback, config.prompt_style, views[key][1])
        checkpoint.add(key, final)
        counts["fallbacks"] += final["meta"]["parse_status"] != OK
        counts["second_rounds"] += final["meta"]["rounds"] > 1
        bar.set_postfix(refresh=False, **counts)
        bar.update(1)

    def first_round(key: str, completion: Completion) -> None:
        result = read_round(phase, completion, samples[key], config.max_new_tokens)
        plan = second_round(phase, completion, samples[key], result, config)
        if plan is None:
            finish(key, result)
        else:
            checkpoint.add(key, {**result, PENDING: plan})

    def last_round(key: str, completion: Completion) -> None:
        first = checkpoint.done[key]
        second = read_round(phase, completion, samples[key], config.max_new_tokens)
        finish(key, merge_rounds(first, second, round_two_reason(first[PENDING])))

    def pending(key: str) -> bool:
        return PENDING in (checkpoint.done.get(key) or {})

    with bar:
        fresh = [key for key in todo if not pending(key)]
        _run(teacher, [(key, request(key)) for key in fresh], first_round)
        waiting = [key for key in todo if pending(key)]
        _run(teacher, [(key, follow_up(key)) for key in waiting], last_round)
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
        partial=status[PARTIAL],
        fallback_parse=status["fallback_parse"],
        fallback_placeholder=status["fallback_placeholder"],
        fallback_error=status[FALLBACK_ERROR],
        fallback_truncated=status[FALLBACK_TRUNCATED],
        continued=sum(m.get("rounds", 1) > 1 for m in metas),
        repaired=sum(_has_reason(m, "repaired") for m in metas),
        sample_cut=sum(bool(m.get("sample_cut_tokens")) for m in metas),
        prompt_tokens=sum(m["prompt_tokens"] or 0 for m in metas),
        completion_tokens=sum(m["completion_tokens"] or 0 for m in metas),
        usage_unreported=sum(m["prompt_tokens"] is None for m in metas),
        seconds=round(seconds, 3),
    )


def _has_reason(meta: Mapping[str, Any], prefix: str) -> bool:
    return any(str(reason).startswith(prefix) for reason in meta.get("reasons") or ())
