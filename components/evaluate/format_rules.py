"""The format rules of the verifiable suite, checked by code (the IFEval kind of instruction).

Each rule takes the answer text and its parameters and returns ``""`` when the rule holds, else
what is wrong (the reason a suite item failed). ``CHECKS`` names them for the suite's JSONL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

BULLET = re.compile(r"^\s*[-*•]\s+\S")
NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S")
WORD = re.compile(r"[A-Za-z0-9']+")


def _lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()]


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def _strip_fence(text: str) -> str:
    """JSON inside a Markdown code fence counts as JSON."""
    match = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, re.DOTALL)
    return match.group(1) if match else text.strip()


def _bullet_count(text: str, count: int) -> str:
    found = sum(bool(BULLET.match(line)) for line in _lines(text))
    return "" if found == count else f"{found} bullet points, expected {count}"


def _numbered_count(text: str, count: int) -> str:
    found = sum(bool(NUMBERED.match(line)) for line in _lines(text))
    return "" if found == count else f"{found} numbered items, expected {count}"


def _lowercase(text: str) -> str:
    return "" if text == text.lower() and text.strip() else "has upper-case letters"


def _uppercase(text: str) -> str:
    letters = [c for c in text if c.isalpha()]
    return "" if letters and text == text.upper() else "has lower-case letters"


def _include_words(text: str, words: Sequence[str]) -> str:
    missing = [w for w in words if not _has_word(text, w)]
    return f"missing {missing}" if missing else ""


def _exclude_words(text: str, words: Sequence[str]) -> str:
    present = [w for w in words if _has_word(text, w)]
    return f"uses {present}" if present else ""


def _max_words(text: str, count: int) -> str:
    found = len(WORD.findall(text))
    return "" if 0 < found <= count else f"{found} words, at most {count} allowed"


def _min_words(text: str, count: int) -> str:
    found = len(WORD.findall(text))
    return "" if found >= count else f"{found} words, at least {count} needed"


def _json_keys(text: str, keys: Sequence[str]) -> str:
    try:
        value = json.loads(_strip_fence(text))
    except json.JSONDecodeError:
        return "not valid JSON"
    if not isinstance(value, dict):
        return "JSON but not an object"
    missing = [k for k in keys if k not in value]
    return f"JSON object without keys {missing}" if missing else ""


def _ends_with(text: str, phrase: str) -> str:
    ok = text.strip().lower().endswith(phrase.strip().lower())
    return "" if ok else f"does not end with {phrase!r}"


def _starts_with(text: str, word: str) -> str:
    first = WORD.findall(text)[:1]
    return "" if first and first[0].lower() == word.lower() else f"does not start with {word!r}"


def _paragraph_count(text: str, count: int) -> str:
    found = len([p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()])
    return "" if found == count else f"{found} paragraphs, expected {count}"


def _no_commas(text: str) -> str:
    return "has commas" if "," in text or not text.strip() else ""


def _wrapped_in_quotes(text: str) -> str:
    body = text.strip()
    quoted = len(body) > 2 and body[0] in '"“' and body[-1] in '"”'
    return "" if quoted else "not wrapped in double quotes"


def _title(text: str) -> str:
    return "" if re.search(r"<<[^<>\n]+>>", text) else "no <<title>>"


CHECKS: dict[str, Callable[..., str]] = {
    "bullet_count": _bullet_count,
    "numbered_count": _numbered_count,
    "lowercase": _lowercase,
    "uppercase": _uppercase,
    "include_words": _include_words,
    "exclude_words": _exclude_words,
    "max_words": _max_words,
    "min_words": _min_words,
    "json_keys": _json_keys,
    "ends_with": _ends_with,
    "starts_with": _starts_with,
    "paragraph_count": _paragraph_count,
    "no_commas": _no_commas,
    "wrapped_in_quotes": _wrapped_in_quotes,
    "title": _title,
}
