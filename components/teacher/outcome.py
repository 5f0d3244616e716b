"""From teacher replies to one record's result: read each round, merge two, fall back per field.

A record gets at most two rounds. The first reply is read field by field (``read_round``). When
some field is unusable a second round may follow (the runner decides: a continuation for a
prefilled reply that ended its turn early, else one *repair* that sends the reply back with what
was wrong); ``merge_rounds`` keeps every usable field of either round, the later one winning.
``finalize`` then applies ``teacher.fallback``:

* ``per_field`` (default, the reference's post-processing): every usable field is kept and only the
  unusable ones fall back to the original text - a good new instruction survives an answer that
  was cut or missing. ``parse_status`` is ``partial`` when some fields fell back.
* ``whole`` (earlier releases): any unusable field discards the reply.

The final metadata records the critique, the prompt style, how many answer tokens the sample lost
to the teacher's budget, and one ``reasons`` line per repair, continuation, cut and fallback.
"""

from __future__ import annotations

from typing import Any

from rtune.components.teacher.parsing import (
    FALLBACK_ERROR,
    FALLBACK_PARSE,
    FALLBACK_PLACEHOLDER,
    FALLBACK_TRUNCATED,
    OK,
    PARTIAL,
    ReplyFields,
    read_reply,
)
from rtune.components.teacher.phase_spec import PhaseSpec
from rtune.components.teacher.protocol import Completion

Result = dict[str, Any]
COST_KEYS = ("prompt_tokens", "completion_tokens")
# Which problem names a record's status when it keeps no field: a failed request, then a cut
# reply, then a missing field, then a placeholder (the order of earlier releases' checks).
PRECEDENCE = (FALLBACK_ERROR, FALLBACK_TRUNCATED, FALLBACK_PARSE, FALLBACK_PLACEHOLDER)


def cost_meta(completion: Completion) -> dict[str, Any]:
    return {
        "model": completion.model,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "latency_s": round(completion.latency_s, 4),
        "attempts": completion.attempts,
        "rounds": 1,
        "reasons": [],
    }


def read_round(
    phase: PhaseSpec, completion: Completion, sample: dict[str, str], max_new_tokens: int
) -> Result:
    """One round's reading: usable ``fields``, a ``problems`` entry per other output field
    (``{"status", "reason"}``), the ``critique`` and the round's cost. A failed request makes
    every field ``fallback_error``."""
    meta = cost_meta(completion)
    if completion.failed:
        problem = {"status": FALLBACK_ERROR, "reason": completion.error}
        return {
            "fields": {},
            "problems": {f.key: dict(problem) for f in phase.outputs},
            "critique": None,
            "meta": meta,
        }
    read = read_reply(phase, completion.text, sample, completion.prefill, completion.truncated)
    return {
        "fields": read.usable,
        "problems": _problems(read, max_new_tokens),
        "critique": read.critique,
        "meta": meta,
    }


def _problems(read: ReplyFields, max_new_tokens: int) -> dict[str, dict[str, str]]:
    problems = {}
    for key, problem in read.problems.items():
        reason = problem.reason
        if problem.status == FALLBACK_TRUNCATED:
            reason = (
                f"reply cut at max_new_tokens={max_new_tokens} before {key} was finished; "
                "raise teacher.max_new_tokens"
            )
        problems[key] = {"status": problem.status, "reason": reason}
    return problems


def what_was_wrong(result: Result) -> str:
    """The problems of a round in one phrase, for the repair request and the record's reasons."""
    return "; ".join(problem["reason"] for problem in result["problems"].values())


def repairable(result: Result) -> bool:
    """Worth a repair round: the reply arrived but some field is missing or a placeholder. Not a
    failed request (the backend already retried it) nor a reply the budget cut (asking again
    would be cut again: the fix is a bigger ``max_new_tokens``)."""
    statuses = {problem["status"] for problem in result["problems"].values()}
    return bool(statuses - {FALLBACK_ERROR, FALLBACK_TRUNCATED})


def _tokens(first: int | None, second: int | None) -> int | None:
    """Tokens over two rounds; unknown if either round's usage is unknown."""
    return None if first is None or second is None else first + second


def merge_rounds(first: Result, second: Result, why: str) -> Result:
    """Both rounds as one result: every usable field (the second round's on a clash), the other
    fields' latest problem, the latest critique, and the cost of both; ``why`` (the repair or
    continuation) joins the reasons."""
    fields = {**first["fields"], **second["fields"]}
    keys = [*first["problems"], *(k for k in second["problems"] if k not in first["problems"])]
    problems = {
        key: second["problems"].get(key) or first["problems"][key]
        for key in keys
        if key not in fields
    }
    one, two = first["meta"], second["meta"]
    meta = {
        **two,
        **{key: _tokens(one[key], two[key]) for key in COST_KEYS},
        "latency_s": round(one["latency_s"] + two["latency_s"], 4),
        "attempts": one["attempts"] + two["attempts"],
        "rounds": one.get("rounds", 1) + 1,
        "reasons": [*one.get("reasons", []), why],
    }
    critique = second["critique"] or first["critique"]
    return {"fields": fields, "problems": problems, "critique": critique, "meta": meta}


def finalize(result: Result, fallback: str, style: str, cut_tokens: int) -> Result:
    """The record's checkpointed result: ``fields`` to use (``None``: keep the original) and the
    metadata written on the record (see module doc)."""
    fields, problems = result["fields"], result["problems"]
    meta = dict(result["meta"])
    reasons = list(meta.pop("reasons", []))
    if cut_tokens:
        reasons.insert(0, f"sample cut: the answer lost {cut_tokens} tokens to max_sample_tokens")
    kept: dict[str, str] | None
    error: str | None
    if not problems:
        status, error, kept = OK, None, dict(fields)
    else:
        first = min(problems.values(), key=lambda problem: PRECEDENCE.index(problem["status"]))
        error = "; ".join(dict.fromkeys(str(problem["reason"]) for problem in problems.values()))
        partial = fallback == "per_field" and bool(fields)
        status, kept = (PARTIAL, dict(fields)) if partial else (first["status"], None)
        for key, problem in problems.items():
            reasons.append(f"fallback {key}: {problem['status']}, kept the original")
        if kept is None and fields:
            reasons.append(f"fallback whole: dropped the usable {', '.join(sorted(fields))}")
    meta.update(
        parse_status=status,
        error=error,
        critique=result["critique"],
        reasons=reasons,
        prompt_style=style,
        sample_cut_tokens=cut_tokens,
    )
    return {"fields": kept, "meta": meta}
