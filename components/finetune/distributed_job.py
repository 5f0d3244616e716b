"""Multi-node training through the cluster: create a Kubeflow Trainer ``TrainJob`` (or a Training
Operator v1 ``PyTorchJob``), follow node 0's log, wait, and fail with the job's own error.

    spec = DistributedJobSpec(name=job_name(run_id, "finetune"), ...)   # .training_jobs
    result = run_distributed_job(spec, load_api_client())               # common.k8s_workload

The object comes from :mod:`.training_jobs`; creating, adopting and waiting are the shared
:mod:`rtune.components.common.k8s_workload` lifecycle. What is this kind's own: a job is done on
its success condition (``Complete`` / ``Succeeded``), failed on ``Failed`` (reason and message
copied into the error), and node 0's new log lines are printed on every poll.

Idempotent by name: a retried KFP task computes the same ``job_name`` and adopts the job it
created before (same ``rtune/kfp-run-id`` label) instead of starting a second one. On failure or
timeout the job is left in the cluster for inspection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from rtune.components.common.k8s_workload import (
    Logger,
    Polling,
    create_or_adopt,
    newest_true_condition,
    require_rtune_owner,
    true_condition,
    wait_for,
)
from rtune.components.common.pod_logs import LogTail
from rtune.components.finetune.training_jobs import (
    FAILED_CONDITION,
    KINDS,
    DistributedJobSpec,
    build_job,
)

DEFAULT_TIMEOUT_S = 3 * 24 * 3600.0
ADOPT_FIX = "delete it or run with another task name"


class DistributedJobFailed(RuntimeError):
    """The job reached its ``Failed`` condition; the text is the job's own reason and message."""

    def __init__(self, kind: str, namespace: str, name: str, reason: str, message: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        self.reason, self.message = reason, message
        super().__init__(
            f"{kind} {namespace}/{name} failed: {reason or 'no reason given'}: "
            f"{message or 'no message given'}\n"
            f"  the job is left in the cluster for inspection: "
            f"kubectl describe {kind.lower()} {name} -n {namespace}"
        )


class DistributedJobTimeout(TimeoutError):
    """The job did not reach a terminal condition in time. It is left running, not deleted."""


@dataclass(frozen=True)
class JobResult:
    """How the job ended: ``reason``/``message`` are copied from its success condition."""

    kind: str
    namespace: str
    name: str
    adopted: bool
    reason: str
    message: str
    elapsed_s: float


def outcome(spec: DistributedJobSpec, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The success condition when done; raises DistributedJobFailed on the Failed condition."""
    failed = true_condition(obj, FAILED_CONDITION)
    if failed is not None:
        reason, message = failed.get("reason", ""), failed.get("message", "")
        raise DistributedJobFailed(spec.kind, spec.namespace, spec.name, reason, message)
    return true_condition(obj, KINDS[spec.kind].success_condition)


@dataclass
class JobRules:
    """The job's rules for the shared wait: print node 0's new lines, then judge the conditions
    (so a finished job's last lines are shown before it is judged)."""

    spec: DistributedJobSpec
    tail: LogTail
    log: Logger

    def judge(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        for line in self.tail.new_lines():
            self.log(f"[{self.spec.name} node-0] {line}")
        return outcome(self.spec, obj)

    def deleted(self) -> Exception:
        spec = self.spec
        return DistributedJobFailed(
            spec.kind, spec.namespace, spec.name, "Deleted", "the job was deleted while waiting"
        )

    def timed_out(self, timeout_s: float, last: Mapping[str, Any] | None) -> Exception:
        kind, ns, name = self.spec.kind, self.spec.namespace, self.spec.name
        state = newest_true_condition(last or {})
        return DistributedJobTimeout(
            f"{kind} {ns}/{name} did not finish within {timeout_s:g} s (last state: {state}). It "
            f"was left in the cluster, still running, for inspection: kubectl describe "
            f"{kind.lower()} {name} -n {ns}; delete it with kubectl delete {kind.lower()} {name} "
            f"-n {ns}"
        )


def create_or_adopt_job(
    custom: Any, spec: DistributedJobSpec, log: Logger = print
) -> tuple[dict[str, Any], bool]:
    """Create the job, or adopt the one a previous attempt of this task created. (obj, adopted)."""
    ref = spec.ref
    obj, created = create_or_adopt(
        custom,
        ref,
        build_job(spec),
        lambda found: require_rtune_owner(found, ref, ADOPT_FIX, spec.kfp_run_id),
    )
    if not created:
        log(f"adopting existing {ref} ({newest_true_condition(obj)})")
        return obj, True
    log(
        f"created {ref}: {spec.nodes} node(s) x {spec.procs_per_node} process(es), "
        f"{spec.gpus_per_node} GPU(s) per node, env {sorted(spec.env) + sorted(spec.secret_env)}"
    )
    return obj, False


def run_distributed_job(
    spec: DistributedJobSpec,
    api_client: client.ApiClient,
    *,
    poll_interval_s: float = 10.0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    log: Logger = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> JobResult:
    """Create (or adopt) the job, print node 0's new log lines every poll, wait for the end.

    Returns on the success condition; raises ``DistributedJobFailed`` with the job's own reason
    and message on ``Failed``; raises ``DistributedJobTimeout`` after ``timeout_s`` (the job is
    left running). A job adopted already finished is judged at once, without waiting or logs.
    ``sleep`` and ``clock`` are the waits and the time (tests pass a clock they move themselves).
    """
    info = KINDS[spec.kind]
    custom = client.CustomObjectsApi(api_client)
    start = clock()
    obj, adopted = create_or_adopt_job(custom, spec, log)
    done = outcome(spec, obj)  # an adopted job may have ended: judged now, no waiting
    if done is None:
        core = client.CoreV1Api(api_client)
        tail = LogTail(core, spec.namespace, info.node0_labels(spec.name), info.log_container, log)
        polling = Polling(timeout_s, poll_interval_s, sleep, clock)
        rules = JobRules(spec, tail, log)
        done = wait_for(custom, spec.ref, rules, polling, current=obj, start=start)
    return _result(spec, adopted, done, clock() - start, log)


def _result(
    spec: DistributedJobSpec, adopted: bool, done: Mapping[str, Any], elapsed_s: float, log: Logger
) -> JobResult:
    result = JobResult(
        kind=spec.kind,
        namespace=spec.namespace,
        name=spec.name,
        adopted=adopted,
        reason=str(done.get("reason", "")),
        message=str(done.get("message", "")),
        elapsed_s=elapsed_s,
    )
    state = KINDS[spec.kind].success_condition
    log(f"{spec.kind} {spec.namespace}/{spec.name} {state}: {result.reason} {result.message}")
    return result
