"""The verifiable suite on fixed answers: number extraction, every format rule (right, wrong and
edge cases), scoring of the <output> part only, accuracy per category, and bad suite files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtune.components.common.records import InputError
from rtune.components.evaluate.suite import (
    CHECKS,
    SuiteItem,
    check_answer,
    extract_final_number,
    load_suite,
    parse_number,
    score_suite,
    scored_text,
    suite_rows,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the answer is 42", 42),
        ("42.", 42),
        ("It costs $1,200 in total.", 1200),
        ("She ate 3/4 of the pizza.", 0.75),
        ("1 1/2 cups", 1.5),
        ("3 / 4", 0.75),
        ("-7 degrees", -7),
        ("4 - 11 = -7", -7),
        ("-$5", -5),
        ("It grew by 15%.", 15),
        ("$1,200.50", 1200.5),
        ("238 + 467 = 705 apples", 705),
        ("\\boxed{72}", 72),
        ("steps...\n#### 13", 13),
        ("Answer: <number>\nAnswer: 60", 60),  # the echoed template has no number
        ("The answer is 705 because 238 + 467 = 705 and 1 + 1 = 2", 705),  # marker beats last
        ("17 x 24: first 17 x 20 = 340, then 17 x 4 = 68, so 408", 408),  # no marker: last
        ("Final answer: 3.5 hours", 3.5),
    ],
)
def test_final_number_is_extracted(text: str, expected: float) -> None:
    assert extract_final_number(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["no number here", "", "Answer: <number>", "five apples"])
def test_no_number_gives_none(text: str) -> None:
    assert extract_final_number(text) is None


def test_parse_number_rejects_division_by_zero_and_words() -> None:
    assert parse_number("1/0") is None
    assert parse_number("seven") is None


def _arith(answer: float, tolerance: float = 0.0) -> SuiteItem:
    return SuiteItem("a", "arithmetic", "q", answer=answer, tolerance=tolerance)


def test_arithmetic_right_wrong_and_tolerance() -> None:
    assert check_answer(_arith(705), "Answer: 705").passed
    wrong = check_answer(_arith(705), "Answer: 704")
    assert not wrong.passed and wrong.extracted == "704" and "expected 705" in wrong.reason
    assert check_answer(_arith(0.75), "3/4").passed
    assert not check_answer(_arith(33.33), "33.3").passed
    assert check_answer(_arith(33.33, tolerance=0.05), "33.3").passed
    missing = check_answer(_arith(1), "I am not sure")
    assert not missing.passed and missing.reason == "no number in the answer"
    assert check_answer(_arith(1), "   ").reason == "empty answer"


def _format(*checks: dict[str, object]) -> SuiteItem:
    return SuiteItem("f", "format", "q", checks=tuple(checks))


FORMAT_CASES = [
    ({"type": "bullet_count", "count": 3}, "- a\n- b\n* c", "- a\n- b"),
    ({"type": "numbered_count", "count": 4}, "1. a\n2. b\n3) c\n4. d", "1. a\n2. b\n3. c"),
    ({"type": "lowercase"}, "all quiet here.", "All quiet here."),
    ({"type": "uppercase"}, "WET FLOOR! 2 STEPS", "Wet floor"),
    (
        {"type": "include_words", "words": ["river", "bridge"]},
        "The River under the bridge.",
        "a river",
    ),
    ({"type": "exclude_words", "words": ["cat"]}, "A small concatenated feline.", "My Cat sleeps."),
    ({"type": "max_words", "count": 5}, "one two three four five", "one two three four five six"),
    ({"type": "min_words", "count": 3}, "one two three", "one two"),
    (
        {"type": "json_keys", "keys": ["name", "age"]},
        '```json\n{"name": "A", "age": 3}\n```',
        '{"name": "A"}',
    ),
    (
        {"type": "ends_with", "phrase": "See you soon."},
        "Bye for now. see you soon.  ",
        "See you soon. Bye",
    ),
    (
        {"type": "starts_with", "word": "Morning"},
        "morning coffee is best.",
        "Coffee in the morning.",
    ),
    ({"type": "paragraph_count", "count": 2}, "One.\n\nTwo.", "One.\nStill one."),
    ({"type": "no_commas"}, "Sunny and warm.", "Sunny, warm."),
    ({"type": "wrapped_in_quotes"}, '"Hello there!"', "Hello there!"),
    ({"type": "title"}, "<<Rain>>\ndrops fall", "Rain\ndrops fall"),
]


@pytest.mark.parametrize(
    ("rule", "good", "bad"), FORMAT_CASES, ids=[c[0]["type"] for c in FORMAT_CASES]
)
def test_format_rule_passes_good_and_fails_bad(
    rule: dict[str, object], good: str, bad: str
) -> None:
    assert check_answer(_format(rule), good).passed, good
    verdict = check_answer(_format(rule), bad)
    assert not verdict.passed and verdict.reason.startswith(f"{rule['type']}:")


def test_every_rule_has_a_case() -> None:
    assert {case[0]["type"] for case in FORMAT_CASES} == set(CHECKS)


def test_edge_cases_of_format_rules() -> None:
    assert not check_answer(_format({"type": "json_keys", "keys": ["a"]}), "[1, 2]").passed
    assert not check_answer(_format({"type": "json_keys", "keys": ["a"]}), "{a: 1}").passed
    assert not check_answer(_format({"type": "uppercase"}), "123 !!").passed  # no letters
    assert not check_answer(_format({"type": "wrapped_in_quotes"}), '""').passed
    both = check_answer(
        _format({"type": "lowercase"}, {"type": "max_words", "count": 1}), "Two Words"
    )
    assert not both.passed and "lowercase" in both.reason and "max_words" in both.reason


def test_only_the_output_part_is_scored_under_the_reflection_format() -> None:
    text = "<thinking>maybe 12 * 15 = 170<reflection>no: 180</reflection></thinking><output>Answer: 180</output>"
    assert scored_text(text, "reflection") == "Answer: 180"
    assert scored_text(text, "none") == text
    assert check_answer(_arith(180), scored_text(text, "reflection")).passed
    tricky = "<thinking>the answer is 999</thinking><output>- a\n- b</output>"
    bullets = _format({"type": "bullet_count", "count": 2})
    assert check_answer(bullets, scored_text(tricky, "reflection")).passed
    assert not check_answer(bullets, tricky).passed
    assert scored_text("no tags, 42", "reflection") == "no tags, 42"


def test_accuracy_overall_and_per_category_and_rows() -> None:
    items = [_arith(1), SuiteItem("b", "arithmetic", "q", answer=2), _format({"type": "lowercase"})]
    items = [
        SuiteItem(f"i{n}", i.category, i.prompt, answer=i.answer, checks=i.checks)
        for n, i in enumerate(items)
    ]
    answers = {
        "candidate": {"i0": "1", "i1": "3", "i2": "ok"},
        "base": {"i0": "0", "i1": "0", "i2": "OK"},
    }
    verdicts = {
        role: {i.id: check_answer(i, answers[role][i.id]) for i in items} for role in answers
    }
    score = score_suite(items, verdicts["candidate"])
    assert (score.items, score.passed) == (3, 2)
    assert score.accuracy == pytest.approx(2 / 3)
    assert score.category_accuracy("arithmetic") == pytest.approx(0.5)
    assert score.category_accuracy("format") == 1.0
    assert score_suite(items, verdicts["base"]).accuracy == 0.0
    rows = suite_rows(items, answers, verdicts)
    assert [r["id"] for r in rows] == ["i0", "i1", "i2"]
    assert rows[1]["candidate_extracted"] == "3" and rows[1]["candidate_passed"] is False
    assert rows[2]["expected"] == "lowercase" and rows[2]["base_reason"].startswith("lowercase")


def test_builtin_suite_loads_and_its_own_answers_pass() -> None:
    items = load_suite("builtin:suite")
    categories = [i.category for i in items]
    assert categories.count("arithmetic") >= 20 and categories.count("format") >= 14
    assert len({i.id for i in items}) == len(items)
    for item in items:
        if item.answer is not None:  # the stated answer, written the way a model would
            assert check_answer(item, f"So the result is clear.\nAnswer: {item.answer:g}").passed
    first = [i.category for i in load_suite("builtin:suite", limit=4)]
    assert first == ["arithmetic", "format", "arithmetic", "format"]  # a small limit covers both
    assert load_suite("builtin:suite", limit=0) == []


def _write(path: Path, *records: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"id": "x", "category": "arithmetic", "prompt": "q"}, "answer"),
        ({"id": "x", "category": "arithmetic", "prompt": "q", "answer": "12"}, "answer"),
        (
            {"id": "x", "category": "arithmetic", "prompt": "q", "answer": 1, "tolerance": -1},
            "tolerance",
        ),
        ({"id": "x", "category": "poetry", "prompt": "q"}, "category"),
        ({"id": "x", "category": "format", "prompt": ""}, "prompt"),
        ({"id": "x", "category": "format", "prompt": "q", "checks": []}, "checks"),
        (
            {"id": "x", "category": "format", "prompt": "q", "checks": [{"type": "rhymes"}]},
            "checks",
        ),
        (
            {"id": "x", "category": "format", "prompt": "q", "checks": [{"type": "max_words"}]},
            "checks",
        ),
        ({"category": "format", "prompt": "q", "checks": [{"type": "lowercase"}]}, "id"),
    ],
)
def test_bad_suite_lines_name_file_line_and_field(
    tmp_path: Path, record: dict[str, object], field: str
) -> None:
    good = {"id": "ok", "category": "arithmetic", "prompt": "q", "answer": 1}
    path = _write(tmp_path / "suite.jsonl", good, "", record)
    with pytest.raises(InputError) as caught:
        load_suite(str(path))
    error = caught.value
    assert (error.file, error.line, error.field) == (str(path), 3, field)
    assert str(path) in str(error) and "line 3" in str(error)


def test_duplicate_ids_broken_json_and_missing_files(tmp_path: Path) -> None:
    item = {"id": "a", "category": "arithmetic", "prompt": "q", "answer": 1}
    with pytest.raises(InputError, match="duplicate id"):
        load_suite(str(_write(tmp_path / "dup.jsonl", item, item)))
    with pytest.raises(InputError, match="invalid JSON") as caught:
        load_suite(str(_write(tmp_path / "broken.jsonl", item, "{not json")))
    assert caught.value.line == 2
    with pytest.raises(InputError, match="does not exist"):
        load_suite(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InputError, match="builtin:suite"):
        load_suite("builtin:nope")
