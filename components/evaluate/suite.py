"""The built-in verifiable suite: arithmetic with exact numeric answers, format rules checked by code.

An item is a prompt plus what makes an answer right, so no judge model is involved:

* ``arithmetic`` items carry ``answer`` (a number). The answer's *final number* is extracted
  (``extract_final_number``) and compared with ``|x - answer| <= max(abs_tol, rel_tol * |answer|)``.
* ``format`` items carry ``checks``: a list of ``{"type": ..., params}`` rules (``CHECKS``); the
  answer passes when every rule holds.

With the reflection format only the ``<output>`` part of an answer is scored (``scored_text``), as
the Reflection-70B benchmarks do. Accuracy = passed / items, overall and per category.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from rtune.components.common.records import InputError
from rtune.components.evaluate.datafiles import numbered_records, resolve_data_file, text_field
from rtune.components.evaluate.format_rules import CHECKS

CATEGORIES = ("arithmetic", "format")
DEFAULT_REL_TOL = 1e-6
DEFAULT_ABS_TOL = 1e-6


@dataclass(frozen=True)
class SuiteItem:
    """One verifiable prompt: ``answer`` for arithmetic, ``checks`` for format items."""

    id: str
    category: str
    prompt: str
    skill: str = ""
    answer: float | None = None
    tolerance: float = 0.0
    checks: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Verdict:
    """Whether an answer passed, what was read from it, and why it failed (empty when it passed)."""

    passed: bool
    extracted: str = ""
    reason: str = ""


# -- numbers ----------------------------------------------------------------------------------

_NUMBER = (
    r"(?:-\$?|\$-?)?"
    r"(?:\d+ \d+/\d+|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?)"
)
NUMBER = re.compile(rf"(?<![\w.]){_NUMBER}%?")
_MARKERS = (
    re.compile(r"\\boxed\{([^{}]*)\}"),
    re.compile(r"####\s*([^\n]*)"),
    re.compile(r"\b(?:final answer|answer)\b\s*(?:is|:|=)?\s*:?\s*([^\n]*)", re.IGNORECASE),
    re.compile(r"\b(?:result|total)\s+(?:is|=|:)\s*([^\n]*)", re.IGNORECASE),
)


def parse_number(text: str) -> float | None:
    """``"$1,200"`` -> 1200, ``"3/4"`` -> 0.75, ``"1 1/2"`` -> 1.5, ``"-7"`` -> -7, ``"15%"``
    -> 15 (the percent value: the suite's percentage questions ask for the number of percent)."""
    clean = re.sub(r"\s*/\s*", "/", text.replace("$", "").replace(",", "").replace("%", "")).strip()
    sign = -1.0 if clean.startswith("-") else 1.0
    try:
        return sign * float(sum(Fraction(part) for part in clean.lstrip("-").split()))
    except (ValueError, ZeroDivisionError):
        return None


def numbers_in(text: str) -> list[str]:
    return [m.group(0) for m in NUMBER.finditer(text)]


def extract_final_number(text: str) -> float | None:
    """The number an answer ends on, preferring explicit markers.

    Order: ``\\boxed{x}``, ``#### x``, the last "answer is/Answer: x", the last "result/total is
    x"; within the chosen marker's text, its first number. Without any marker, the last number
    in the text (a worked answer ends on its result; "=" is no marker: "17 x 20 = 340, then
    17 x 4 = 68, so 408" ends on 408). Thousands separators, currency, percent signs and fractions are
    understood; a trailing full stop is not part of the number.
    """
    for marker in _MARKERS:
        for match in reversed(list(marker.finditer(text))):
            found = numbers_in(match.group(1))
            if found:
                return parse_number(found[0])
    found = numbers_in(text)
    return parse_number(found[-1]) if found else None


def close_enough(value: float, expected: float, tolerance: float = 0.0) -> bool:
    """``|value - expected| <= max(abs_tol, rel_tol * |expected|)``; ``tolerance`` widens abs_tol."""
    allowed = max(DEFAULT_ABS_TOL, tolerance, DEFAULT_REL_TOL * abs(expected))
    return abs(value - expected) <= allowed


def check_arithmetic(item: SuiteItem, text: str) -> Verdict:
    assert item.answer is not None
    value = extract_final_number(text)
    if value is None:
        return Verdict(False, "", "no number in the answer")
    shown = f"{value:g}"
    if close_enough(value, item.answer, item.tolerance):
        return Verdict(True, shown)
    return Verdict(False, shown, f"expected {item.answer:g}")


# -- format rules -----------------------------------------------------------------------------


def check_format(item: SuiteItem, text: str) -> Verdict:
    """Every rule of the item must hold; the reason lists each broken rule."""
    problems = []
    for rule in item.checks:
        params = {k: v for k, v in rule.items() if k != "type"}
        problem = CHECKS[rule["type"]](text, **params)
        if problem:
            problems.append(f"{rule['type']}: {problem}")
    return Verdict(not problems, "", "; ".join(problems))


def check_answer(item: SuiteItem, text: str) -> Verdict:
    if not text.strip():
        return Verdict(False, "", "empty answer")
    return (
        check_arithmetic(item, text) if item.category == "arithmetic" else check_format(item, text)
    )


def scored_text(content: str, reasoning_format: str) -> str:
    """The part of an answer that is scored: the ``<output>`` part under the reflection format
    (the served API usually returns it as ``content`` already; splitting again is harmless)."""
    if reasoning_format != "reflection":
        return content
    from rtune.components.serve.reasoning import split_reflection

    return split_reflection(content).content


# -- loading ----------------------------------------------------------------------------------


def load_suite(spec: str, limit: int | None = None) -> list[SuiteItem]:
    """Read and validate suite items (bad input names file, line and field)."""
    path = resolve_data_file(spec, "builtin:suite")
    items: list[SuiteItem] = []
    seen: set[str] = set()
    for line, record in numbered_records(path):
        item = _suite_item(record, str(path), line)
        if item.id in seen:
            raise InputError(str(path), "duplicate id", "ids must be unique", line=line, field="id")
        seen.add(item.id)
        items.append(item)
    return items if limit is None else items[:limit]


def _suite_item(record: Mapping[str, Any], source: str, line: int) -> SuiteItem:
    item_id = text_field(record, "id", source, line)
    category = text_field(record, "category", source, line)
    prompt = text_field(record, "prompt", source, line)
    if category not in CATEGORIES:
        raise InputError(
            source,
            f"unknown category {category!r}",
            f"use one of {list(CATEGORIES)}",
            line=line,
            field="category",
        )
    item = SuiteItem(item_id, category, prompt, str(record.get("skill", "")))
    if category == "arithmetic":
        answer, tolerance = _answer(record, source, line)
        return replace(item, answer=answer, tolerance=tolerance)
    return replace(item, checks=_checks(record.get("checks"), source, line))


def _answer(record: Mapping[str, Any], source: str, line: int) -> tuple[float, float]:
    answer = record.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int | float):
        raise InputError(
            source,
            "arithmetic items need a numeric 'answer'",
            "set answer to the exact number",
            line=line,
            field="answer",
        )
    tolerance = record.get("tolerance", 0.0)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance < 0:
        raise InputError(
            source,
            "'tolerance' must be a number >= 0",
            "set tolerance, e.g. 0.01",
            line=line,
            field="tolerance",
        )
    return float(answer), float(tolerance)


def _checks(value: Any, source: str, line: int) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise InputError(
            source,
            "format items need a non-empty 'checks' list",
            'e.g. [{"type": "lowercase"}]',
            line=line,
            field="checks",
        )
    for rule in value:
        if not isinstance(rule, dict) or rule.get("type") not in CHECKS:
            raise InputError(
                source,
                f"unknown check {rule!r}",
                f"each check needs a 'type' in {sorted(CHECKS)}",
                line=line,
                field="checks",
            )
        try:
            CHECKS[rule["type"]]("probe text", **{k: v for k, v in rule.items() if k != "type"})
        except TypeError as err:
            raise InputError(
                source,
                f"check {rule['type']!r}: {err}",
                "fix the check's parameters",
                line=line,
                field="checks",
            ) from None
    return tuple(value)


# -- scoring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteScore:
    """Accuracy overall and per category for one model."""

    items: int
    passed: int
    by_category: dict[str, tuple[int, int]]  # category -> (passed, items)

    @property
    def accuracy(self) -> float:
        return self.passed / self.items if self.items else float("nan")

    def category_accuracy(self, category: str) -> float:
        passed, items = self.by_category.get(category, (0, 0))
        return passed / items if items else float("nan")


def score_suite(items: Sequence[SuiteItem], verdicts: Mapping[str, Verdict]) -> SuiteScore:
    """Accuracy over the items that have a verdict (all of them once the run finished)."""
    by_category: dict[str, tuple[int, int]] = {}
    passed = 0
    for item in items:
        ok = verdicts[item.id].passed
        passed += ok
        done, total = by_category.get(item.category, (0, 0))
        by_category[item.category] = (done + ok, total + 1)
    return SuiteScore(len(items), passed, by_category)


def suite_rows(
    items: Sequence[SuiteItem],
    answers: Mapping[str, Mapping[str, str]],
    verdicts: Mapping[str, Mapping[str, Verdict]],
) -> list[dict[str, Any]]:
    """One row per item for the table: the prompt, what is expected, and each model's answer,
    extracted value, pass/fail and failure reason. ``answers``/``verdicts`` are keyed by model
    role (``candidate``, ``base``) then item id."""
    rows = []
    for item in items:
        row: dict[str, Any] = {
            "id": item.id,
            "category": item.category,
            "skill": item.skill,
            "prompt": item.prompt,
            "expected": f"{item.answer:g}" if item.answer is not None else _describe(item.checks),
        }
        for role in answers:
            verdict = verdicts[role][item.id]
            row[f"{role}_answer"] = answers[role][item.id]
            row[f"{role}_extracted"] = verdict.extracted
            row[f"{role}_passed"] = verdict.passed
            row[f"{role}_reason"] = verdict.reason
        rows.append(row)
    return rows


def _describe(checks: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for rule in checks:
        params = ", ".join(f"{k}={v}" for k, v in rule.items() if k != "type")
        parts.append(f"{rule['type']}({params})" if params else str(rule["type"]))
    return "; ".join(parts)
