"""Is the teacher answering at all? The error-rate gate at the end of a reflection stage.

A record whose request failed for good (``fallback_error``) keeps its original text, which is
right for a few bad records and wrong for a dead endpoint: with every request refused the stage
would write the old answers as "reflections" and the pipeline would go on to train on data that
was never reflected. Above ``max_error_rate`` the stage therefore stops before writing its output
and keeps its checkpoint, so a rerun with a working teacher redoes only the failed records. A
reply the parser could not use is not a teacher error: the teacher answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rtune.components.teacher.parsing import FALLBACK_ERROR

ERRORS_SHOWN = 3


class TeacherUnavailable(RuntimeError):
    """The teacher failed for good on more records than ``max_error_rate`` allows.

    ``metrics`` holds the stage summary's numbers (tokens, statuses), so a task can still log
    what the failed run cost and why it stopped.
    """

    def __init__(self, message: str, metrics: Mapping[str, float]) -> None:
        super().__init__(message)
        self.metrics = dict(metrics)


def distinct_errors(metas: Sequence[Mapping[str, Any]]) -> list[str]:
    """The different errors of records that failed for good, each once, in input order."""
    errors = (str(m["error"]) for m in metas if m["parse_status"] == FALLBACK_ERROR)
    return list(dict.fromkeys(errors))


def check_error_rate(
    metas: Sequence[Mapping[str, Any]],
    max_rate: float,
    output: Path,
    checkpoint: Path,
    metrics: Mapping[str, float],
) -> None:
    """Raise ``TeacherUnavailable`` when the share of ``fallback_error`` records in ``metas``
    (every record of the stage, in input order) is above ``max_rate``."""
    failed = sum(m["parse_status"] == FALLBACK_ERROR for m in metas)
    rate = failed / len(metas) if metas else 0.0
    if rate <= max_rate:
        return
    errors = distinct_errors(metas)
    shown = "; ".join(repr(e) for e in errors[:ERRORS_SHOWN])
    more = f" (and {len(errors) - ERRORS_SHOWN} other errors)" if len(errors) > ERRORS_SHOWN else ""
    raise TeacherUnavailable(
        f"the teacher failed for good on {failed} of {len(metas)} records ({rate:.1%}, above "
        f"max_error_rate {max_rate:.1%}): {shown}{more}. {output} was not written; the "
        f"{len(metas) - failed} finished record(s) stay in {checkpoint} and a rerun resumes "
        "them. Fix the teacher (URL, API key, server health) and run again, or raise "
        "--max-error-rate (teacher.max_error_rate) to keep the original text for failed records.",
        metrics,
    )
