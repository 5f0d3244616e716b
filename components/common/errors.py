"""The one error type for bad input: told to a person, printed by the CLI as one message (exit 2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class InputError(ValueError):
    """Bad user input, told to a person: which file, which line/record, which field, and the fix.

    The CLI prints ``str(error)`` and exits with code 2 instead of showing a traceback.
    """

    file: str
    problem: str
    fix: str
    line: int | None = None
    record: str | int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.record is not None:
            where.append(
                f"record {self.record!r}"
                if isinstance(self.record, str)
                else f"record #{self.record}"
            )
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{': '.join([', '.join(where), self.problem])}\n  fix: {self.fix}"


class RecordNotWritable(InputError):
    """A record holds a value standard JSON cannot carry (NaN, Infinity, a lone surrogate).

    Input is checked on read, so this means a stage computed such a value; nothing is written.
    """
