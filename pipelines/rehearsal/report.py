"""One line per task and a verdict: what passed, what each pod read and wrote, why one failed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rtune.pipelines.rehearsal.objectstore import S3Access

STATUS_MARK = {"PASS": "ok  ", "FAIL": "FAIL", "SKIP": "skip", "CACHED": "hit ", "STOP": "stop"}


@dataclass
class TaskReport:
    name: str
    status: str  # PASS | FAIL | SKIP | CACHED
    seconds: float = 0.0
    attempts: int = 0
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    detail: str = ""
    log: Path | None = None

    def line(self) -> str:
        mark = STATUS_MARK.get(self.status, self.status)
        tries = f" x{self.attempts}" if self.attempts > 1 else ""
        head = f"{mark} {self.name:<22} {self.seconds:7.1f} s{tries}"
        parts = []
        if self.reads:
            parts.append("read " + ", ".join(self.reads))
        if self.writes:
            parts.append("wrote " + ", ".join(self.writes))
        body = "; ".join(parts)
        if self.status == "FAIL" and self.detail:
            first = self.detail.strip().splitlines()[0] if self.detail.strip() else ""
            body = f"{first}  [log: {self.log}]" if self.log else first
        elif self.detail:
            body = f"{body}  ({self.detail})" if body else self.detail
        return f"{head}  {body}".rstrip()


def summarize_access(accesses: Iterable[S3Access], identity: str) -> tuple[list[str], list[str]]:
    """``s3://bucket/prefix`` read and written by ``identity`` (object keys folded to 3 levels)."""
    reads: dict[str, None] = {}
    writes: dict[str, None] = {}
    for access in accesses:
        if access.identity != identity or access.status >= 400 or not access.key:
            continue
        prefix = "/".join(access.key.split("/")[:3])
        target = writes if access.method in ("PUT", "POST") else reads
        target[f"s3://{access.bucket}/{prefix}"] = None
    return list(reads)[:4], list(writes)[:4]


def verdict(reports: Sequence[TaskReport], until: str = "") -> tuple[bool, str]:
    failed = [r.name for r in reports if r.status == "FAIL"]
    ran = sum(r.status in ("PASS", "CACHED") for r in reports)
    if failed:
        return False, f"FAILED: {len(failed)} task(s) failed ({', '.join(failed)}); {ran} passed"
    scope = f" (through {until})" if until else ""
    return True, f"PASSED: {ran} task(s) ran as a cluster would run them{scope}"


def leaked(secrets: Iterable[str], reports: Sequence[TaskReport]) -> list[str]:
    """Tasks whose log shows a secret value (it must never be printed)."""
    values = [s for s in secrets if s]
    found = []
    for report in reports:
        if report.log is not None and report.log.exists():
            text = report.log.read_text(encoding="utf-8", errors="replace")
            if any(value in text for value in values):
                found.append(report.name)
    return found
