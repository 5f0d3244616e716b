"""The pairwise judge on fixed answers and fixed verdicts: prompt, score parsing, the both-orders
outcome rule, win rate and winning score, unparseable and failed verdicts (never wins), resume,
and held-out files (builtin, user file, bad lines)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from rtune.components.common.records import InputError
from rtune.components.evaluate.judge import (
    FIRST_SCORE,
    LOSS,
    TIE,
    UNPARSEABLE,
    WIN,
    HeldoutItem,
    item_outcome,
    judge_request,
    judge_rows,
    load_heldout,
    parse_scores,
    pending_jobs,
    run_judge,
    summarize,
)
from rtune.components.teacher.protocol import Completion, OnDone, TeacherRequest


@pytest.mark.parametrize(
    ("text", "scores"),
    [
        ("8 7", (8, 7)),
        ("8 7\nAssistant 1 was more detailed than Assistant 2.", (8, 7)),
        ("Assistant 1: 8\nAssistant 2: 7", (8, 7)),
        ("Assistant 1's score: 9/10, Assistant 2's score: 6/10", (9, 6)),
        ("8/10 and 6/10", (8, 6)),
        ("Scores: 8, 7", (8, 7)),
        ("Scores: 8\n7", (8, 7)),
        ("Scores: 7.5 8", (7.5, 8)),
        ("Here are my ratings.\n6 9", (6, 9)),
        ("Assistant 1 receives 8 out of 10 and Assistant 2 receives 6 out of 10.", (8, 6)),
        ("10 1", (10, 1)),
    ],
)
def test_scores_are_parsed(text: str, scores: tuple[float, float]) -> None:
    assert parse_scores(text) == scores


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Both answers are fine.",
        "11 3",
        "8",
        "8\nthe second one is weaker",
        "Scores: -",
        "Scores: 1, 2, 3, 4, 5, 6, 7, 8,",  # the 135M model counts instead of judging
        "8 7 5",
    ],
)
def test_unreadable_verdicts_give_none(text: str) -> None:
    assert parse_scores(text) is None


@pytest.mark.parametrize(
    ("cb", "bc", "outcome"),
    [
        ((8, 6), (5, 9), WIN),  # candidate higher in both orders
        ((8, 6), (7, 7), WIN),  # higher in one, equal in the other
        ((7, 7), (6, 8), WIN),
        ((5, 9), (9, 4), LOSS),  # base higher in both
        ((6, 6), (8, 7), LOSS),
        ((7, 7), (7, 7), TIE),
        ((9, 5), (9, 5), TIE),  # the judge prefers whoever is first: position bias cancels
        (None, (5, 9), UNPARSEABLE),
        ((8, 6), None, UNPARSEABLE),
    ],
)
def test_outcome_uses_both_orders(
    cb: Sequence[float] | None, bc: Sequence[float] | None, outcome: str
) -> None:
    assert item_outcome(cb, bc) == outcome


def test_win_rate_and_winning_score() -> None:
    summary = summarize([WIN, WIN, WIN, TIE, LOSS, UNPARSEABLE])
    assert (summary.wins, summary.ties, summary.losses, summary.unparseable) == (3, 1, 1, 1)
    assert summary.judged == 5
    assert summary.win_rate == pytest.approx((3 + 0.5) / 5)
    assert summary.winning_score == pytest.approx((3 - 1) / 5 + 1)
    metrics = summary.metrics()
    assert metrics["judge_items"] == 6 and metrics["judge_unparseable"] == 1
    nothing = summarize([UNPARSEABLE, UNPARSEABLE])
    assert nothing.win_rate is None and nothing.winning_score is None
    assert "judge_win_rate" not in nothing.metrics()  # no made-up rate
    assert nothing.metrics()["judge_wins"] == 0


def test_prompt_shows_both_answers_in_the_asked_order() -> None:
    item = HeldoutItem("h1", "Rewrite it shorter.", "A very long sentence.")
    cb = judge_request(item, "CANDIDATE", "BASE", "cb", prefill=False)
    bc = judge_request(item, "CANDIDATE", "BASE", "bc", prefill=True)
    text = cb.messages[-1]["content"]
    assert "[Question]\nRewrite it shorter." in text and "[Input]\nA very long sentence." in text
    assert text.index("CANDIDATE") < text.index("BASE")
    assert "Assistant 1's Answer]\nCANDIDATE" in text
    other = bc.messages[-1]["content"]
    assert other.index("BASE") < other.index("CANDIDATE")
    assert "1 to 10" in text and "first line" in text
    assert cb.prefill == "" and cb.stop == ()
    assert bc.prefill == FIRST_SCORE and "out of" in bc.stop


ANSWER = re.compile(r"\[The Start of Assistant (\d)'s Answer\]\n(.*?)\n\[The End", re.DOTALL)


class FixedJudge:
    """A teacher that scores answers by a fixed rule: 8 with 'GOOD', 3 otherwise, and writes
    prose without scores for answers containing 'CONFUSE'. Optionally fails one request."""

    prefills = False
    structured = False

    def __init__(self, fail_on: str = "") -> None:
        self.asked: list[TeacherRequest] = []
        self.fail_on = fail_on

    def verdict(self, request: TeacherRequest) -> Completion:
        answers = dict(ANSWER.findall(request.messages[-1]["content"]))
        if self.fail_on and self.fail_on in answers["1"]:
            return Completion("", "judge", None, None, 0.0, error="HTTP 500 after 5 attempts")
        if any("CONFUSE" in a for a in answers.values()):
            return Completion("Both are interesting.", "judge", 10, 3, 0.01)
        score = [8 if "GOOD" in answers[n] else 3 for n in ("1", "2")]
        return Completion(f"{score[0]} {score[1]}\nReasons.", "judge", 10, 3, 0.01)

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        self.asked.extend(requests)
        for index, request in enumerate(requests):
            on_done(index, self.verdict(request))


ITEMS = [HeldoutItem(f"h{n}", f"Question {n}?") for n in range(5)]
CANDIDATE = {"h0": "GOOD a", "h1": "GOOD b", "h2": "meh", "h3": "CONFUSE", "h4": "GOOD c"}
BASE = {"h0": "meh", "h1": "GOOD x", "h2": "GOOD y", "h3": "meh", "h4": "meh"}


def test_judge_runs_both_orders_and_aggregates() -> None:
    judge, done = FixedJudge(), {}
    jobs = pending_jobs(ITEMS, CANDIDATE, BASE, done, judge="j1")
    assert len(jobs) == 10
    run_judge(judge, jobs, done.__setitem__)
    rows, outcomes = judge_rows(ITEMS, CANDIDATE, BASE, done, judge="j1")
    assert outcomes == [WIN, TIE, LOSS, UNPARSEABLE, WIN]
    assert rows[0]["scores_candidate_first"] == "8 3" and rows[0]["scores_base_first"] == "3 8"
    assert rows[3]["scores_candidate_first"] == "unparseable"
    assert rows[3]["verdict_candidate_first"] == "Both are interesting."
    summary = summarize(outcomes)
    assert summary.win_rate == pytest.approx((2 + 0.5) / 4)
    assert summary.winning_score == pytest.approx((2 - 1) / 4 + 1)


def test_resume_asks_only_missing_and_failed_verdicts() -> None:
    done: dict[str, dict[str, object]] = {}
    run_judge(
        FixedJudge(fail_on="GOOD a"), pending_jobs(ITEMS, CANDIDATE, BASE, done), done.__setitem__
    )
    failed = [v for v in done.values() if v["error"] and not v["text"]]
    assert len(failed) == 1  # the request that failed is recorded, as a failure
    rows, outcomes = judge_rows(ITEMS, CANDIDATE, BASE, done)
    assert outcomes[0] == UNPARSEABLE and rows[0]["verdict_candidate_first"].startswith(
        "error: HTTP 500"
    )
    again = FixedJudge()
    jobs = pending_jobs(ITEMS, CANDIDATE, BASE, done)
    assert len(jobs) == 1  # the failed one; the unparseable 'CONFUSE' verdicts are final
    run_judge(again, jobs, done.__setitem__)
    assert len(again.asked) == 1
    assert judge_rows(ITEMS, CANDIDATE, BASE, done)[1][0] == WIN
    changed = {**CANDIDATE, "h2": "GOOD now"}  # a new answer is judged again
    assert len(pending_jobs(ITEMS, changed, BASE, done)) == 2
    assert len(pending_jobs(ITEMS, CANDIDATE, BASE, done, judge="another judge")) == 10


def test_builtin_heldout_is_not_in_the_seed_data() -> None:
    items = load_heldout("builtin:heldout")
    assert len(items) >= 20 and len({i.id for i in items}) == len(items)
    assert any(i.input for i in items)
    seed = Path("components/prepare/data/seed.jsonl").read_text(encoding="utf-8").splitlines()
    seed_instructions = {
        json.loads(line)["instruction"].strip().lower() for line in seed if line.strip()
    }
    assert not {i.instruction.strip().lower() for i in items} & seed_instructions
    assert [i.id for i in load_heldout("builtin:heldout", limit=3)] == [i.id for i in items[:3]]


def test_user_heldout_file_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"instruction": "Say hi."}\n\n{"instruction": "Translate.", "input": "Hallo", "id": "t"}\n'
    )
    items = load_heldout(str(path))
    assert items == [HeldoutItem("line-1", "Say hi.", ""), HeldoutItem("t", "Translate.", "Hallo")]
    for bad, field in (
        ('{"input": "x"}', "instruction"),
        ('{"instruction": "ok", "input": 3}', "input"),
    ):
        path.write_text('{"instruction": "Say hi."}\n' + bad + "\n")
        with pytest.raises(InputError) as caught:
            load_heldout(str(path))
        assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), 2, field)
    path.write_text('{"instruction": "a", "id": "x"}\n{"instruction": "b", "id": "x"}\n')
    with pytest.raises(InputError, match="duplicate id"):
        load_heldout(str(path))


class PrefillingJudge:
    """A local-style judge: it continues the prefilled verdict with one number per round,
    9 for an answer with 'GOOD' and 4 otherwise (or text without a number for 'CONFUSE')."""

    prefills = True
    structured = False

    def __init__(self) -> None:
        self.rounds: list[list[str]] = []

    def continuation(self, request: TeacherRequest) -> str:
        answers = dict(ANSWER.findall(request.messages[-1]["content"]))
        number = "2" if "Assistant 2 gets" in request.prefill else "1"
        if "CONFUSE" in answers[number]:
            return " quite good overall"
        return f" {9 if 'GOOD' in answers[number] else 4} out of"

    def complete_many(self, requests: Sequence[TeacherRequest], on_done: OnDone) -> None:
        self.rounds.append([r.prefill for r in requests])
        for index, request in enumerate(requests):
            on_done(index, Completion(self.continuation(request), "local", 300, 3, 0.1))


def test_a_prefilling_judge_writes_one_score_per_round() -> None:
    judge, done = PrefillingJudge(), {}
    run_judge(judge, pending_jobs(ITEMS, CANDIDATE, BASE, done, prefill=True), done.__setitem__)
    assert len(judge.rounds) == 2 and set(judge.rounds[0]) == {FIRST_SCORE}
    assert len(judge.rounds[1]) == 9  # h3 with the candidate first gave no first score
    rows, outcomes = judge_rows(ITEMS, CANDIDATE, BASE, done)
    assert outcomes == [WIN, TIE, LOSS, UNPARSEABLE, WIN]
    assert rows[0]["verdict_candidate_first"] == (
        "Assistant 1 gets a score of 9 out of 10. Assistant 2 gets a score of 4 out of"
    )
    assert rows[0]["scores_candidate_first"] == "9 4"
    assert rows[3]["verdict_candidate_first"] == "Assistant 1 gets a score of quite good overall"
