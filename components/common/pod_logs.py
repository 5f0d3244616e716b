"""Follow one pod's log while a cluster workload runs: the pod is found by labels (e.g. a training
job's node 0), and each read returns only the lines not shown before.

    tail = LogTail(client.CoreV1Api(api), "team-a", {"training.kubeflow.org/job-name": "x",
                   "training.kubeflow.org/replica-type": "master"}, "pytorch", log=print)
    for line in tail.new_lines():   # call once per poll
        print(line)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from rtune.components.common.k8s_workload import Logger, short_error


def timestamp_key(stamp: str) -> str:
    """A sortable key for the kubelet's RFC 3339 timestamps, whose fraction drops trailing zeros."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{seconds}.{fraction:0<9}"


@dataclass
class LogTail:
    """Best-effort tail of a pod's log: each ``new_lines()`` returns only lines not seen before.

    Uses ``timestamps=True`` and remembers the newest timestamp printed; later reads ask for the
    seconds since the previous read plus a margin (``since_seconds`` is judged by the kubelet's
    clock, so only the elapsed time matters) and drop lines at or before that timestamp. Any
    error is reported once through ``log`` and never raised: the logs are a courtesy, the
    workload's conditions decide success.
    """

    core: Any
    namespace: str
    labels: dict[str, str]
    container: str
    log: Logger = print
    first_tail_lines: int = 1000
    margin_s: int = 5
    pod: str = ""
    last_key: str = ""
    seen_at_last: set[str] = field(default_factory=set)
    last_read: float = 0.0
    failed: bool = False

    def new_lines(self) -> list[str]:
        try:
            return self._read_new()
        except Exception as error:  # any failure: the workload is still followed by its status
            if not self.failed:
                self.failed = True
                self.log(
                    f"(log streaming of {self.namespace}/{self.pod or 'node 0'} failed, the job is "
                    f"still being followed: {type(error).__name__}: {short_error(error)})"
                )
            return []

    def _read_new(self) -> list[str]:
        pod = self._newest_pod()
        if pod is None:
            return []
        if pod != self.pod:
            self.pod, self.last_key, self.seen_at_last, self.last_read = pod, "", set(), 0.0
        now = time.monotonic()
        kwargs: dict[str, Any] = {"container": self.container, "timestamps": True}
        if self.last_read:
            kwargs["since_seconds"] = math.ceil(now - self.last_read) + self.margin_s
        else:
            kwargs["tail_lines"] = self.first_tail_lines
        text = self.core.read_namespaced_pod_log(self.pod, self.namespace, **kwargs)
        self.last_read = now
        return self._unseen(text or "")

    def _newest_pod(self) -> str | None:
        """Newest running-or-finished pod carrying all the labels (checked here too)."""
        selector = ",".join(f"{k}={v}" for k, v in self.labels.items())
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        ours = [
            p
            for p in pods
            if self.labels.items() <= (p.metadata.labels or {}).items()
            and (p.status is None or p.status.phase != "Pending")
        ]
        if not ours:
            return None
        ours.sort(key=lambda p: (str(p.metadata.creation_timestamp or ""), p.metadata.name))
        return str(ours[-1].metadata.name)

    def _unseen(self, text: str) -> list[str]:
        lines: list[str] = []
        for raw in text.splitlines():
            stamp, _, line = raw.partition(" ")
            key = timestamp_key(stamp)
            if key < self.last_key or (key == self.last_key and raw in self.seen_at_last):
                continue
            if key > self.last_key:
                self.last_key, self.seen_at_last = key, set()
            self.seen_at_last.add(raw)
            lines.append(line)
        return lines
