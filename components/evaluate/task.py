"""The evaluate stage as a pipeline task: the served candidate against the base student.

    endpoint.json -> candidate answers (served endpoint) ─┐
    finetune's model / finetuned_url -> fine-tuned ───────┤  (compare_finetuned: same items)
    base_model / base_url -> base answers (served too) ───┼─> verifiable suite (accuracy by category)
                                                          ├─> pairwise judge (teacher, both orders)
    benchmarks -> lm-evaluation-harness on both endpoints ┘
                  -> MLflow: metrics, per-item tables, comparison figure, HTML report, results
                     JSON; alias ``champion`` on the registered version when the candidate wins

Every answer and verdict is checkpointed as it arrives (``<checkpoint_root>/evaluate/<models
fingerprint>/evaluation.partial.jsonl``), keyed by a digest of what produced it; a killed or
re-run evaluation asks only what it does not have, and does not even start a model server when
it has everything.

The candidate is what ships (fine-tuned, then quantized); the fine-tuned model before
quantization is asked the same items so the report tells the training effect from the
quantization effect. It is only evidence: the ``champion`` decision reads the candidate and the
base alone. A fine-tuned model nobody can serve is a recorded skip (``finetuned_skipped``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtune.components.common.checkpoint import RecordCheckpoint, fingerprint
from rtune.components.common.stage import StageContext
from rtune.components.common.student import stage_config
from rtune.components.evaluate.answers import (
    ChatModel,
    Question,
    SharedCheckpoint,
    ask_all,
    pending,
)
from rtune.components.evaluate.config import EvaluateConfig
from rtune.components.evaluate.evaluation import (
    FINETUNED,
    ROLES,
    Evaluation,
    answer_texts,
    assemble,
    decide,
    mean_latency,
    questions,
)
from rtune.components.evaluate.judge import (
    HeldoutItem,
    JudgeJob,
    load_heldout,
    pending_jobs,
    run_judge,
)
from rtune.components.evaluate.outputs import log_inputs, publish
from rtune.components.evaluate.suite import SuiteItem, load_suite

CHECKPOINT_HEADER = "rtune-evaluate-v1"  # identity lives in each key's digest


@dataclass
class EvaluateSummary:
    values: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {**self.values, "candidate_beats_base": float(self.values["candidate_beats_base"])}

    def line(self) -> str:
        v = self.values
        parts = []
        if "suite_accuracy_candidate" in v:
            parts.append(
                f"suite accuracy {v['suite_accuracy_candidate']:.2f} vs base "
                f"{v.get('suite_accuracy_base', float('nan')):.2f}"
            )
        if "judge_wins" in v:
            parts.append(
                f"judge wins/ties/losses {v['judge_wins']}/{v.get('judge_ties', 0)}/"
                f"{v.get('judge_losses', 0)}"
            )
        return "; ".join([*parts, str(v["decision"])])

    def artifact_metadata(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self.values.items()
            if isinstance(v, str | int | float) and "/" not in k
        }


@dataclass
class EvaluateStage:
    """The served candidate's endpoint spec (and the fine-tuned model's folder) in; results
    JSON and an HTML report out."""

    config: EvaluateConfig
    endpoint: Path
    results: Path | None = None
    report: Path | None = None
    progress: bool = True
    name: str = "evaluate"
    finetuned: Path | None = None  # the finetune stage's model (before quantization)

    @classmethod
    def from_parameters(
        cls,
        student: Mapping[str, Any] | None,
        evaluate: Mapping[str, Any] | None,
        endpoint: Path,
        results: Path | None,
        report: Path | None,
        finetuned: Path | None = None,
    ) -> EvaluateStage:
        config = stage_config(EvaluateConfig, "evaluate", evaluate, student)
        return cls(config, endpoint, results, report, finetuned=finetuned)

    def finetuned_skip(self) -> str:
        """Why the fine-tuned model cannot be evaluated ('' = it can): served at
        ``finetuned_url``, or a model folder this stage serves on loopback."""
        if self.config.finetuned_url:
            return ""
        if self.finetuned is None:
            return (
                "no fine-tuned model to compare: set evaluate.finetuned_url, or run the stage "
                "with the finetune stage's model"
            )
        if not (self.finetuned / "config.json").exists() and not _store_uri(self.finetuned):
            return f"no model in {self.finetuned} (config.json missing, no MODEL_URI.txt)"
        return ""

    def run(self, context: StageContext) -> EvaluateSummary:
        from rtune.components.evaluate.champion import promote
        from rtune.components.evaluate.lm_eval import NOT_INSTALLED, lm_eval_installed
        from rtune.components.serve.endpoint import EndpointSpec

        config, run = self.config, context.run
        if config.lm_eval_tasks and not lm_eval_installed():
            raise RuntimeError(NOT_INSTALLED.format(tasks=config.lm_eval_tasks))
        spec = EndpointSpec.load(self.endpoint)
        suite = load_suite(config.suite, config.suite_limit) if config.suite_limit != 0 else []
        heldout = (
            load_heldout(config.heldout, config.judge_limit) if config.judge_limit != 0 else []
        )
        started = time.perf_counter()
        log_inputs(run, config, suite, heldout)
        skipped = self.finetuned_skip() if config.compare_finetuned else ""
        finetuned = config.compare_finetuned and not skipped
        evaluation, latency = _evaluate(
            spec,
            config,
            suite,
            heldout,
            context.checkpoint_dir,
            self.progress,
            self.finetuned if finetuned else None,
            finetuned,
        )
        decision = decide(config, evaluation.metrics)
        evidence = {decision.metric: decision.candidate}
        promotion = promote(run, decision.beats, config.champion_alias, evidence)
        summary = {
            **evaluation.metrics,
            **latency,
            "primary_metric": decision.metric,
            "primary_candidate": decision.candidate,
            "primary_reference": decision.reference,
            "candidate_beats_base": decision.beats,
            "champion_version": promotion.version,
            "decision": f"{decision.note}; {promotion.note}",
            "seconds": round(time.perf_counter() - started, 1),
            **({"finetuned_skipped": skipped} if skipped else {}),
        }
        publish(run, summary, evaluation, self.report, self.results)
        return EvaluateSummary(summary)


def _evaluate(
    spec: Any,
    config: EvaluateConfig,
    suite: Sequence[SuiteItem],
    heldout: Sequence[HeldoutItem],
    checkpoint_dir: Path,
    progress: bool,
    finetuned_model: Path | None = None,
    finetuned: bool = False,
) -> tuple[Evaluation, dict[str, float]]:
    """Answers from every model (the candidate, the fine-tuned one when ``finetuned``, the
    base), lm-eval on each, the judge's verdicts -> the evaluation."""
    reasoning = (
        "reflection" if "reflection" in (config.reasoning_format, spec.reasoning_format) else "none"
    )
    identity = {"candidate": candidate_identity(spec), "base": base_identity(config)}
    servers = {
        "candidate": (spec.server or "auto") if spec.kind == "local" else None,
        "base": None if config.base_url else config.server,
    }
    openers: dict[str, Callable[[], AbstractContextManager[Any]]] = {
        "candidate": lambda: _candidate_endpoint(spec, config),
        "base": lambda: base_endpoint(config, reasoning),
    }
    roles: tuple[str, ...] = ROLES
    if finetuned:
        roles = (ROLES[0], FINETUNED, ROLES[1])
        identity[FINETUNED] = finetuned_identity(config, finetuned_model)
        servers[FINETUNED] = None if config.finetuned_url else config.server
        openers[FINETUNED] = lambda: finetuned_endpoint(config, finetuned_model, reasoning, spec)
    # the folder is named by the pair that ships, so a run that adds the fine-tuned model reuses
    # what an earlier two-model run already asked
    work = checkpoint_dir / fingerprint("evaluate", identity["candidate"], identity["base"])
    texts: dict[str, dict[str, dict[str, str]]] = {}
    lm_eval: dict[str, dict[str, float]] = {}
    latency: dict[str, float] = {}
    with RecordCheckpoint(work / "evaluation.partial.jsonl", CHECKPOINT_HEADER) as checkpoint:
        store = SharedCheckpoint(checkpoint)
        for role in roles:
            shaped = fingerprint(identity[role], config.result_shaping(), reasoning)
            asked = questions(suite, heldout, role, shaped)
            lm_key = f"lm_eval/{role}#{fingerprint(shaped, config.lm_eval_tasks, config.lm_eval_limit)[:12]}"
            concurrency = config.answer_concurrency(_local_server(servers[role]))
            _answer(openers[role], role, asked, lm_key, store, config, concurrency, work, progress)
            texts[role] = answer_texts(asked, store.done, reasoning)
            lm_eval[role] = store.done.get(lm_key, {})
            latency[f"answer_latency_s_{role}"] = mean_latency(asked, store.done)
        judge = fingerprint(config.judge_config().result_shaping())
        if heldout:
            _judge(config, heldout, texts, store, judge, progress)
        evaluation = assemble(suite, heldout, texts, store.done, lm_eval, judge)
    return evaluation, latency


def _answer(
    opener: Callable[[], AbstractContextManager[Any]],
    role: str,
    asked: Sequence[Question],
    lm_key: str,
    store: SharedCheckpoint,
    config: EvaluateConfig,
    concurrency: int,
    work: Path,
    progress: bool,
) -> None:
    """Open the endpoint only if something is missing: answers, or lm-eval results."""
    needs_lm = bool(config.lm_eval_tasks) and lm_key not in store.done
    if not pending(asked, store.done) and not needs_lm:
        return
    with opener() as endpoint:
        ask_all(
            endpoint,
            asked,
            store,
            config.max_new_tokens,
            config.temperature,
            concurrency,
            desc=f"{role} answers",
            progress=progress,
        )
        if needs_lm:
            store.add(lm_key, benchmarks(endpoint, config, work / "lm_eval" / role))


def _judge(
    config: EvaluateConfig,
    heldout: Sequence[HeldoutItem],
    texts: Mapping[str, Mapping[str, Mapping[str, str]]],
    store: SharedCheckpoint,
    judge: str,
    progress: bool,
) -> None:
    """Build the judge (a teacher backend) only when a verdict is missing; checkpoint each.
    Each model the base is compared with (the candidate; the fine-tuned one too when it was
    asked) is judged against the base's answers on every held-out item, in both orders."""
    from tqdm import tqdm

    from rtune.components.teacher.factory import make_teacher

    base = texts["base"]["heldout"]
    others = [texts[role]["heldout"] for role in (ROLES[0], FINETUNED) if role in texts]

    def jobs_of(prefill: bool) -> list[JudgeJob]:
        found: dict[str, JudgeJob] = {}
        for other in others:
            for job in pending_jobs(heldout, other, base, store.done, judge, prefill=prefill):
                found.setdefault(job.key, job)  # identical answers share their verdict
        return list(found.values())

    if not jobs_of(False):
        return
    teacher = make_teacher(config.judge_config())
    jobs = jobs_of(teacher.prefills)
    total = 2 * len(heldout) * len(others)
    with tqdm(
        total=total, initial=total - len(jobs), desc="judge verdicts", disable=not progress
    ) as bar:

        def record(key: str, verdict: dict[str, Any]) -> None:
            store.add(key, verdict)
            bar.update(1)

        run_judge(teacher, jobs, record)


def benchmarks(endpoint: Any, config: EvaluateConfig, out: Path) -> dict[str, float]:
    """lm-eval metrics for one endpoint: generative tasks via chat, loglikelihood via completions."""
    from rtune.components.evaluate.lm_eval import run_lm_eval

    common = {
        "limit": config.lm_eval_limit,
        "num_concurrent": config.lm_eval_concurrency,
        "api_key_env": endpoint.api_key_env,
    }
    results: dict[str, float] = {}
    if config.benchmarks:
        results |= run_lm_eval(
            endpoint.base_url,
            endpoint.model,
            config.benchmarks,
            out / "chat",
            cache=out / "chat-cache" / "requests",
            **common,
        )
    if config.loglikelihood_benchmarks:
        results |= run_lm_eval(
            endpoint.base_url,
            endpoint.model,
            config.loglikelihood_benchmarks,
            out / "completions",
            cache=out / "completions-cache" / "requests",
            loglikelihood=True,
            tokenizer=str(lm_eval_tokenizer(config)),
            **common,
        )
    return results


def lm_eval_tokenizer(config: EvaluateConfig) -> Path:
    """A local folder with the tokenizer the harness counts loglikelihood tokens with: the
    student's own (the served models share it). The served model's *name* would send the
    harness to a hub, which a cluster pod cannot reach (``HF_HUB_OFFLINE=1`` in the images)."""
    from rtune.components.common.models import resolve_tokenizer

    return resolve_tokenizer(config.lm_eval_tokenizer or config.base_model)


# -- endpoints and identities ------------------------------------------------------------------


@contextmanager
def _candidate_endpoint(spec: Any, config: EvaluateConfig) -> Iterator[ChatModel]:
    from rtune.components.serve.endpoint import open_endpoint

    with open_endpoint(spec, timeout_s=config.timeout_s) as endpoint:
        yield endpoint


@contextmanager
def base_endpoint(config: EvaluateConfig, reasoning_format: str = "none") -> Iterator[ChatModel]:
    """The base student: a served model at ``base_url``, or ``base_model`` served on loopback."""
    if config.base_url:
        with _served(config, "base", reasoning_format) as endpoint:
            yield endpoint
        return
    from rtune.components.common.models import resolve_model

    with _local(config, resolve_model(config.base_model), reasoning_format) as endpoint:
        yield endpoint


@contextmanager
def finetuned_endpoint(
    config: EvaluateConfig,
    folder: Path | None,
    reasoning_format: str = "none",
    candidate: Any = None,
) -> Iterator[ChatModel]:
    """The fine-tuned model before quantization: served at ``finetuned_url``; or, when the
    candidate is on KServe and the model in object storage (a cluster run), served the same way
    for this evaluation only; or the model folder (downloaded when in the store) served on
    loopback with the base's local server."""
    if config.finetuned_url:
        with _served(config, "finetuned", reasoning_format) as endpoint:
            yield endpoint
        return
    if folder is None:
        raise ValueError("the fine-tuned model needs finetuned_url or a model folder")
    uri = _store_uri(folder)
    if uri and candidate is not None and candidate.kind == "kserve":
        with finetuned_on_kserve(candidate, uri, config, reasoning_format) as endpoint:
            yield endpoint
        return
    from rtune.components.serve.task import local_model_path

    with _local(config, local_model_path(folder), reasoning_format) as endpoint:
        yield endpoint


@contextmanager
def finetuned_on_kserve(
    candidate: Any, storage_uri: str, config: EvaluateConfig, reasoning_format: str
) -> Iterator[ChatModel]:
    """A sibling of the candidate's InferenceService (``<name>-ft``: same runtime, arguments,
    resources and service account) serving ``storage_uri``; deleted when the answers are in,
    also on failure. A 70B model is not loaded into the evaluation pod."""
    from kubernetes import client

    from rtune.components.common.k8s_workload import WorkloadRef, load_api_client
    from rtune.components.serve.client import ChatEndpoint
    from rtune.components.serve.kserve import (
        INFERENCE_SERVICES,
        create_or_update,
        sibling_service,
        wait_ready,
    )

    served = WorkloadRef(INFERENCE_SERVICES, candidate.namespace, candidate.name)
    with load_api_client() as api:
        custom = client.CustomObjectsApi(api)
        found = served.get(custom)
        if found is None:
            raise RuntimeError(
                f"{served} (the candidate) is gone: the fine-tuned model is served like it, so "
                "it must exist while evaluate runs"
            )
        sibling = sibling_service(found, f"{candidate.name}-ft", storage_uri, "evaluate")
        ref = WorkloadRef(INFERENCE_SERVICES, candidate.namespace, sibling["metadata"]["name"])
        try:
            create_or_update(custom, sibling)
            ready = wait_ready(
                custom, ref.namespace, ref.name, config.finetuned_ready_timeout_s, 5.0
            )
            yield ChatEndpoint(
                ready.base_url,
                candidate.model,
                api_key_env=candidate.api_key_env,
                timeout_s=config.timeout_s,
                reasoning_format=reasoning_format,
            )
        finally:
            if ref.delete(custom):
                print(f"deleted {ref} (served the fine-tuned model for this evaluation)")


@contextmanager
def _served(config: EvaluateConfig, prefix: str, reasoning_format: str) -> Iterator[ChatModel]:
    """The model at ``<prefix>_url`` answering to ``<prefix>_served_model``."""
    from rtune.components.serve.client import ChatEndpoint

    yield ChatEndpoint(
        getattr(config, f"{prefix}_url"),
        getattr(config, f"{prefix}_served_model"),
        api_key_env=getattr(config, f"{prefix}_api_key_env"),
        timeout_s=config.timeout_s,
        reasoning_format=reasoning_format,
    )


@contextmanager
def _local(config: EvaluateConfig, folder: Path, reasoning_format: str) -> Iterator[ChatModel]:
    from rtune.components.serve.local_server import LocalServer

    with LocalServer(folder, server=config.server, reasoning_format=reasoning_format) as server:
        yield server.endpoint(timeout_s=config.timeout_s)


def _local_server(server: str | None) -> str | None:
    """The server a local endpoint will run (``auto`` resolved); ``None`` for a served one."""
    if server is None:
        return None
    from rtune.components.serve.local_server import resolve_server

    return resolve_server(server)


def model_signature(folder: Path) -> str:
    """Config text + weight file sizes and times: a model re-trained into the same folder is a
    different model."""
    config = folder / "config.json"
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    return fingerprint(config.read_text(encoding="utf-8") if config.exists() else "", stats)


def candidate_identity(spec: Any) -> str:
    if spec.kind == "local":
        return f"local:{spec.model_path}:{model_signature(Path(spec.model_path))}"
    return f"{spec.kind}:{spec.base_url}:{spec.model}"


def base_identity(config: EvaluateConfig) -> str:
    if config.base_url:
        return f"remote:{config.base_url}:{config.base_served_model}"
    from rtune.components.common.models import resolve_model

    path = resolve_model(config.base_model)
    return f"local:{path}:{model_signature(path)}"


def finetuned_identity(config: EvaluateConfig, folder: Path | None) -> str:
    if config.finetuned_url:
        return f"remote:{config.finetuned_url}:{config.finetuned_served_model}"
    if folder is None:  # finetuned_skip() turns this into a recorded skip before we get here
        raise ValueError("the fine-tuned model needs finetuned_url or a model folder")
    if uri := _store_uri(folder):  # the run's own store prefix: unique per trained model
        return f"store:{uri}"
    return f"local:{folder}:{model_signature(folder)}"


def _store_uri(folder: Path) -> str:
    """The object-store URI a cluster Model artifact points at ('' for a folder with weights)."""
    from rtune.components.serve.task import model_store_uri

    return model_store_uri(folder)
