"""Pairwise judge in the style of the method's own evaluation (Vicuna-style, as Reflection-Tuning
and Cherry LLM report it): the teacher rates two answers to one held-out instruction from 1 to 10.

Position bias is cancelled by asking twice, once in each order: ``cb`` shows the candidate as
Assistant 1 and the base as Assistant 2, ``bc`` the other way round. Per item:

* **win** - the candidate scores higher in both orders, or higher in one and equal in the other;
* **loss** - the same for the base;
* **tie** - equal in both, or each ahead in one order (the judge changed its mind with the order);
* **unparseable** - a verdict without two readable scores (or a failed request): recorded as
  such, never counted as a win, and left out of the rates below.

Over the ``n = wins + ties + losses`` judged items:

* ``win_rate = (wins + 0.5 * ties) / n`` (0.5 = as good as the base);
* ``winning_score = (wins - losses) / n + 1`` (the papers' "winning score"; 1 = as good).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rtune.components.common.checkpoint import fingerprint
from rtune.components.common.records import InputError
from rtune.components.evaluate.datafiles import numbered_records, resolve_data_file, text_field
from rtune.components.teacher.protocol import Completion, Teacher, TeacherRequest

ORDERS = ("cb", "bc")  # candidate first, base first
WIN, TIE, LOSS, UNPARSEABLE = "win", "tie", "loss", "unparseable"
SYSTEM = "You are a fair, careful judge of the answers AI assistants give to users."
JUDGE_TASK = (
    "Rate how helpful, relevant, accurate and detailed each answer is. Give each assistant an "
    "overall score from 1 to 10, where a higher score means a better answer.\n"
    "On the first line write only the two scores, Assistant 1's first and Assistant 2's "
    "second, separated by a space. Then explain your scores in a few sentences. Judge the "
    "content only: neither the order of the answers nor their length may sway you."
)
FIRST_SCORE = "Assistant 1 gets a score of"
SECOND_SCORE = "{first} out of 10. Assistant 2 gets a score of"
SCORE_STOP = ("out of", "/", ",", ".", "\n")  # a local judge stops right after its number
MIN_SCORE, MAX_SCORE = 0.0, 10.0


@dataclass(frozen=True)
class HeldoutItem:
    id: str
    instruction: str
    input: str = ""


def load_heldout(spec: str, limit: int | None = None) -> list[HeldoutItem]:
    """Held-out instructions (JSONL with ``instruction`` and optional ``input``/``id``)."""
    path = resolve_data_file(spec, "builtin:heldout")
    items: list[HeldoutItem] = []
    seen: set[str] = set()
    for line, record in numbered_records(path):
        instruction = text_field(record, "instruction", str(path), line)
        extra = text_field(record, "input", str(path), line, required=False)
        item_id = str(record.get("id") or f"line-{line}")
        if item_id in seen:
            raise InputError(
                str(path), f"duplicate id {item_id!r}", "ids must be unique", line=line, field="id"
            )
        seen.add(item_id)
        items.append(HeldoutItem(item_id, instruction, extra))
    return items if limit is None else items[:limit]


def question_text(item: HeldoutItem) -> str:
    """What the student is asked: the instruction, then its input on a new paragraph."""
    return f"{item.instruction}\n\n{item.input}" if item.input else item.instruction


def judge_prompt(item: HeldoutItem, first: str, second: str) -> str:
    sections = [f"[Question]\n{item.instruction}"]
    if item.input:
        sections.append(f"[Input]\n{item.input}")
    for number, answer in ((1, first), (2, second)):
        sections.append(
            f"[The Start of Assistant {number}'s Answer]\n{answer.strip()}\n"
            f"[The End of Assistant {number}'s Answer]"
        )
    sections.append(JUDGE_TASK)
    return "\n\n".join(sections)


def judge_request(
    item: HeldoutItem, candidate: str, base: str, order: str, prefill: bool
) -> TeacherRequest:
    """The request for one order. A backend that prefills (a small local judge) has its verdict
    written for it up to Assistant 1's score and stops after the number (``second_round`` then
    asks for Assistant 2's): the 135M default model asked for "two scores on the first line"
    counts "1, 2, 3, 4, ..." instead."""
    first, second = (candidate, base) if order == "cb" else (base, candidate)
    return TeacherRequest(
        messages=(
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": judge_prompt(item, first, second)},
        ),
        prefill=FIRST_SCORE if prefill else "",
        stop=SCORE_STOP if prefill else (),
    )


def second_round(request: TeacherRequest, completion: Completion) -> TeacherRequest | None:
    """For a prefilled first round that wrote Assistant 1's score: the same request, prefilled
    up to Assistant 2's score. ``None`` when there is no score to continue from."""
    found = _scores_in(completion.text.split("\n", 1)[0])
    if completion.failed or not found or not MIN_SCORE <= found[0] <= MAX_SCORE:
        return None
    prefill = f"{request.prefill} {SECOND_SCORE.format(first=f'{found[0]:g}')}"
    return replace(request, prefill=prefill)


# -- reading a verdict ------------------------------------------------------------------------

_SCORE = r"(\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*10)?"
LABELLED = re.compile(
    rf"assistant\s*1\b[^\d\n]{{0,40}}?{_SCORE}.*?assistant\s*2\b[^\d\n]{{0,40}}?{_SCORE}",
    re.IGNORECASE | re.DOTALL,
)
SCORE = re.compile(rf"(?<![\w.]){_SCORE}")
LABEL = re.compile(r"assistant\s*[12]\b", re.IGNORECASE)


def parse_scores(text: str) -> tuple[float, float] | None:
    """(Assistant 1's score, Assistant 2's score), or ``None`` when the verdict has no two
    scores in 0..10.

    Read in this order: labelled scores anywhere ("Assistant 1: 8 ... Assistant 2: 7"), else
    the first line that has numbers, which must hold exactly two ("8 7", "8/10 and 6/10",
    "Scores: 8, 7") - or one, with the other alone on the next line ("8\\n7"). "/10" and "out
    of 10" are denominators, not scores. A line counting "1, 2, 3, 4" is no verdict.
    """
    labelled = LABELLED.search(text)
    if labelled:
        return _in_range(float(labelled.group(1)), float(labelled.group(2)))
    lines = [LABEL.sub(" ", line) for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        found = _scores_in(line)
        if len(found) == 1 and index + 1 < len(lines):
            found += _scores_in(lines[index + 1])
        if found:
            return _in_range(found[0], found[1]) if len(found) == 2 else None
    return None


def _scores_in(line: str) -> list[float]:
    return [float(match.group(1)) for match in SCORE.finditer(line)]


def _in_range(first: float, second: float) -> tuple[float, float] | None:
    ok = all(MIN_SCORE <= s <= MAX_SCORE for s in (first, second))
    return (first, second) if ok else None


def verdict_record(completion: Completion) -> dict[str, Any]:
    """What is checkpointed per (item, order): the judge's text, the scores or why not."""
    if completion.failed:
        return {"text": "", "scores": None, "error": completion.error}
    text = completion.prefill + completion.text
    scores = parse_scores(text)
    return {
        "text": text,
        "scores": list(scores) if scores else None,
        "error": None if scores else "no two scores in 0..10",
    }


# -- outcomes ---------------------------------------------------------------------------------


def item_outcome(cb: Sequence[float] | None, bc: Sequence[float] | None) -> str:
    """Win/tie/loss of the candidate from both orders (see the module docstring)."""
    if cb is None or bc is None:
        return UNPARSEABLE
    ahead = [_sign(cb[0] - cb[1]), _sign(bc[1] - bc[0])]  # candidate minus base, per order
    if min(ahead) >= 0 and sum(ahead) > 0:
        return WIN
    if max(ahead) <= 0 and sum(ahead) < 0:
        return LOSS
    return TIE


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


@dataclass(frozen=True)
class JudgeSummary:
    wins: int
    ties: int
    losses: int
    unparseable: int

    @property
    def judged(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_rate(self) -> float | None:
        return (self.wins + 0.5 * self.ties) / self.judged if self.judged else None

    @property
    def winning_score(self) -> float | None:
        return (self.wins - self.losses) / self.judged + 1 if self.judged else None

    def metrics(self) -> dict[str, float]:
        """Counts always; the rates only when at least one item was judged (no made-up value)."""
        values: dict[str, float] = {
            "judge_wins": self.wins,
            "judge_ties": self.ties,
            "judge_losses": self.losses,
            "judge_unparseable": self.unparseable,
            "judge_items": self.judged + self.unparseable,
        }
        if self.win_rate is not None and self.winning_score is not None:
            values["judge_win_rate"] = self.win_rate
            values["judge_winning_score"] = self.winning_score
        return values


def summarize(outcomes: Sequence[str]) -> JudgeSummary:
    return JudgeSummary(
        outcomes.count(WIN), outcomes.count(TIE), outcomes.count(LOSS), outcomes.count(UNPARSEABLE)
    )


# -- running ----------------------------------------------------------------------------------


def verdict_key(item: HeldoutItem, order: str, candidate: str, base: str, judge: str) -> str:
    """``judge/<order>/<item id>#<digest>``: the digest covers the judge's identity, the
    question and both answers, so a verdict is reused only for exactly what it judged."""
    digest = fingerprint(judge, order, question_text(item), candidate, base, JUDGE_TASK)[:12]
    return f"judge/{order}/{item.id}#{digest}"


@dataclass(frozen=True)
class JudgeJob:
    key: str
    request: TeacherRequest


def pending_jobs(
    items: Sequence[HeldoutItem],
    candidate: Mapping[str, str],
    base: Mapping[str, str],
    done: Mapping[str, Any],
    judge: str = "",
    prefill: bool = False,
) -> list[JudgeJob]:
    """The (item, order) verdicts still to ask: not in ``done``, or failed there. ``judge``
    identifies the judge (its result-shaping config) in the keys; ``prefill`` whether its
    backend starts the assistant turn."""
    jobs = []
    for item in items:
        for order in ORDERS:
            key = verdict_key(item, order, candidate[item.id], base[item.id], judge)
            if _needs_judge(done.get(key)):
                request = judge_request(item, candidate[item.id], base[item.id], order, prefill)
                jobs.append(JudgeJob(key, request))
    return jobs


def run_judge(
    teacher: Teacher, jobs: Sequence[JudgeJob], record: Callable[[str, dict[str, Any]], None]
) -> None:
    """Ask the judge; ``record(key, verdict)`` is called as each verdict is final (checkpoint
    it). Prefilled first rounds that wrote Assistant 1's score go on to a second round."""
    if not jobs:
        return
    follow: list[JudgeJob] = []

    def first(index: int, completion: Completion) -> None:
        job = jobs[index]
        completion = completion.with_prefill(job.request.prefill)
        again = second_round(job.request, completion) if job.request.prefill else None
        if again is None:
            record(job.key, verdict_record(completion))
        else:
            follow.append(JudgeJob(job.key, again))

    def second(index: int, completion: Completion) -> None:
        job = follow[index]
        record(job.key, verdict_record(completion.with_prefill(job.request.prefill)))

    teacher.complete_many([job.request for job in jobs], first)
    if follow:
        teacher.complete_many([job.request for job in follow], second)


def _needs_judge(verdict: Mapping[str, Any] | None) -> bool:
    """Not asked yet, or the request failed for good last time (worth another try); a verdict
    that arrived but did not parse is final: asking again would give the same text."""
    return verdict is None or (verdict["scores"] is None and not verdict["text"])


def judge_rows(
    items: Sequence[HeldoutItem],
    candidate: Mapping[str, str],
    base: Mapping[str, str],
    verdicts: Mapping[str, Mapping[str, Any]],
    judge: str = "",
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-item table rows and outcomes (in item order)."""
    rows, outcomes = [], []
    for item in items:
        cb, bc = (
            verdicts[verdict_key(item, order, candidate[item.id], base[item.id], judge)]
            for order in ORDERS
        )
        outcome = item_outcome(cb["scores"], bc["scores"])
        outcomes.append(outcome)
        rows.append(
            {
                "id": item.id,
                "instruction": question_text(item),
                "candidate_answer": candidate[item.id],
                "base_answer": base[item.id],
                "scores_candidate_first": _shown(cb["scores"]),
                "scores_base_first": _shown(bc["scores"]),
                "outcome": outcome,
                "verdict_candidate_first": cb["text"] or f"error: {cb['error']}",
                "verdict_base_first": bc["text"] or f"error: {bc['error']}",
            }
        )
    return rows, outcomes


def _shown(scores: Sequence[float] | None) -> str:
    return " ".join(f"{s:g}" for s in scores) if scores else "unparseable"
