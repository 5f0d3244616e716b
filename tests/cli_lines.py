"""What a stage command prints: its result on stdout, the stage runner's line on stderr."""

from __future__ import annotations

from rtune.components.common.stage import SUMMARY_MARK


def summary_line(stderr: str) -> str:
    """The runner's ``rtune-summary`` line among progress bars (split on newlines and ``\\r``)."""
    parts = stderr.replace("\r", "\n").splitlines()
    return next(part for part in parts if part.startswith(SUMMARY_MARK))
