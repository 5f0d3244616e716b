"""A quiet console for ``rtune run``: one line per stage, every task's full log in a file.

``kfp.local`` prints each task's executor input, its streamed log and its outputs to stdout. While
the pipeline runs, :class:`RunConsole` stands in for ``sys.stdout``: it writes everything to
``<logs>/<task>.log`` (and ``pipeline.log``) and prints to the terminal only "started" and
"done in N s" lines carrying the stage's own summary line (which the stage runner prints with
:data:`~rtune.components.common.stage.SUMMARY_MARK`). A failed task prints the path of its log.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import IO

from rtune.components.common.stage import SUMMARY_MARK

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '(?P<task>[^']+)'")
FINISHED = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)")


class RunConsole(io.TextIOBase):
    def __init__(self, terminal: IO[str], logs: Path, verbose: bool = False) -> None:
        self.terminal = terminal
        self.logs = logs
        self.verbose = verbose
        logs.mkdir(parents=True, exist_ok=True)
        self.all = (logs / "pipeline.log").open("a", encoding="utf-8")
        self.task: str | None = None
        self.task_log: IO[str] | None = None
        self.started = 0.0
        self.summary = ""
        self.failed: list[tuple[str, Path]] = []
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.all.closed:  # a logging handler made during the run outlives it: to the terminal
            return self.terminal.write(text)
        if self.verbose:
            self.terminal.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        if self.all.closed:
            return
        self.all.flush()
        if self.task_log is not None:
            self.task_log.flush()
        self.terminal.flush()

    def _line(self, raw: str) -> None:
        line = ANSI.sub("", raw)
        self.all.write(line + "\n")
        started = STARTED.search(line)
        if started:
            self._start(started["task"])
        if self.task_log is not None:
            self.task_log.write(line + "\n")
        mark = line.find(SUMMARY_MARK)
        if mark >= 0:
            self.summary = line[mark + len(SUMMARY_MARK) :].split(": ", 1)[-1]
        finished = FINISHED.search(line)
        if finished:
            self._finish(finished["task"], finished["status"])

    def _start(self, task: str) -> None:
        self._close_task()
        self.task, self.started, self.summary = task, time.monotonic(), ""
        self.task_log = (self.logs / f"{task}.log").open("w", encoding="utf-8")
        self._say(f"  … {task}")

    def _finish(self, task: str, status: str) -> None:
        seconds = time.monotonic() - self.started
        log = self.logs / f"{task}.log"
        if status == "SUCCESS":
            detail = f"  {self.summary}" if self.summary else ""
            self._say(f"  ok   {task:<24} {seconds:6.1f} s{detail}")
        else:
            self.failed.append((task, log))
            self._say(f"  FAIL {task:<24} {seconds:6.1f} s  log: {log}")
        self._close_task()

    def _close_task(self) -> None:
        if self.task_log is not None:
            self.task_log.close()
        self.task_log, self.task = None, None

    def _say(self, text: str) -> None:
        if not self.verbose:
            self.terminal.write(text + "\n")
            self.terminal.flush()

    def close(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        self._close_task()
        self.all.close()
        super().close()
