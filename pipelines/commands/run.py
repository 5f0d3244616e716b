"""``rtune run [--config F] [--set k=v ...]``: the whole pipeline locally through ``kfp.local``.

Each stage runs as a subprocess of this Python (``SubprocessRunner(use_venv=False)``); outputs go
under ``local.pipeline_root`` (default ``./rtune-runs``) and MLflow runs to ``$MLFLOW_TRACKING_URI``
or ``./mlflow.db``. At the end it prints where the outputs and the MLflow run are.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run the whole pipeline locally (kfp.local)")
    parser.add_argument(
        "--config", default=None, help="run config (default pipelines/configs/local.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set prepare.limit=8 (repeatable)",
    )
    parser.set_defaults(func=run)


@dataclass
class LocalRunResult:
    run_dir: Path
    decisions: Path
    selected: Path
    report: Path
    model: Path
    adapter: Path
    training_report: Path
    quantized: Path
    endpoint: Path
    evaluation: Path
    evaluation_report: Path
    mlflow_run_id: str | None
    tracking_uri: str
    seconds: float


def run_locally(
    config_path: str | None = None, overrides: list[str] | None = None
) -> LocalRunResult:
    """Run ``reflection_tuning`` in-process with kfp.local and return where everything landed."""
    from kfp import local

    from rtune.components.common.tracking import TrackingConfig, resolve_tracking_uri
    from rtune.pipelines.config import load_pipeline_config
    from rtune.pipelines.reflection_tuning import reflection_tuning

    config = load_pipeline_config(config_path, overrides)
    tracking = TrackingConfig(**config.tracking)
    tracking_uri = resolve_tracking_uri(tracking)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # the stage subprocesses inherit it
    root = Path(config.local.get("pipeline_root", "rtune-runs")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in root.iterdir()}
    started = time.time()
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    reflection_tuning(**config.pipeline_arguments())
    run_dir = _newest_new_dir(root, before)
    return LocalRunResult(
        run_dir=run_dir,
        decisions=run_dir / "select-rifd" / "decisions",
        selected=run_dir / "select-rifd" / "selected",
        report=run_dir / "select-rifd" / "report",
        model=run_dir / "finetune" / "model",
        adapter=run_dir / "finetune" / "adapter",
        training_report=run_dir / "finetune" / "report",
        quantized=run_dir / "quantize" / "quantized",
        endpoint=run_dir / "serve" / "endpoint",
        evaluation=run_dir / "evaluate" / "results",
        evaluation_report=run_dir / "evaluate" / "report",
        mlflow_run_id=_parent_run_id(tracking_uri, tracking.experiment, started)
        if tracking.enabled
        else None,
        tracking_uri=tracking_uri,
        seconds=time.time() - started,
    )


def _newest_new_dir(root: Path, before: set[str]) -> Path:
    new = [p for p in root.iterdir() if p.is_dir() and p.name not in before]
    if not new:
        raise RuntimeError(f"kfp.local wrote no run folder under {root}")
    return max(new, key=lambda p: p.stat().st_mtime)


def _parent_run_id(tracking_uri: str, experiment: str, since: float) -> str | None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string="tags.`rtune.role` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs and runs[0].info.start_time >= int(since * 1000) - 1000:
        return str(runs[0].info.run_id)
    return None


def summary_lines(result: LocalRunResult) -> list[str]:
    from rtune.components.common.records import read_jsonl

    decisions = Counter(str(r.get("decision")) for r in read_jsonl(result.decisions))
    kept = sum(n for d, n in decisions.items() if d != "dropped")
    total = sum(decisions.values())
    store = result.tracking_uri
    lines = [
        f"reflection-tuning finished in {result.seconds:.0f} s",
        f"  records kept: {kept}/{total}  by decision: "
        + ", ".join(
            f"{d}={decisions[d]}" for d in ("ori", "Q", "A", "QA", "dropped") if decisions[d]
        ),
        f"  selected dataset: {result.selected}",
        f"  all decisions:    {result.decisions}",
        f"  HTML report:      {result.report}",
        *training_lines(result),
        *serving_lines(result),
        *evaluation_lines(result),
        f"  pipeline outputs: {result.run_dir}",
    ]
    if result.mlflow_run_id:
        ui = f"mlflow ui --backend-store-uri {store}" if store.startswith("sqlite") else store
        lines.append(f"  MLflow run:       {result.mlflow_run_id} (open with: {ui})")
    return lines


def training_lines(result: LocalRunResult) -> list[str]:
    """Loss, throughput and the registered model, from the pipeline's MLflow run."""
    if not result.model.exists():
        return []
    lines = [f"  fine-tuned model: {result.model} (adapter: {result.adapter})"]
    if result.mlflow_run_id:
        import mlflow

        run = mlflow.MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id)
        m, tags = run.data.metrics, run.data.tags
        lines.append(
            f"  training loss:    {m.get('first_loss', float('nan')):.3f} -> "
            f"{m.get('final_loss', float('nan')):.3f} over {m.get('global_step', 0):.0f} steps, "
            f"{m.get('tokens_per_second', 0):.0f} tokens/s"
        )
        if "rtune.model_version" in tags:
            lines.append(
                f"  registered model: version {tags['rtune.model_version']} "
                f"(alias candidate) {tags.get('rtune.model_uri', '')}"
            )
    lines.append(f"  training report:  {result.training_report}")
    return lines


def _parent_values(result: LocalRunResult) -> tuple[dict[str, float], dict[str, str]]:
    if not result.mlflow_run_id:
        return {}, {}
    import mlflow

    run = mlflow.MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id)
    return dict(run.data.metrics), dict(run.data.tags)


def serving_lines(result: LocalRunResult) -> list[str]:
    """Quantized size and quality, and the served endpoint's smoke test."""
    import json

    lines = []
    metrics, tags = _parent_values(result)
    if result.quantized.exists():
        size = metrics.get("size_mb_quantized")
        before = metrics.get("size_mb_unquantized")
        detail = ""
        if size is not None and before is not None:
            detail = (
                f" {size:.0f} MB (was {before:.0f} MB, x{metrics.get('size_ratio', 0):.2f}), "
                f"response perplexity {metrics.get('perplexity_unquantized', float('nan')):.2f} -> "
                f"{metrics.get('perplexity_quantized', float('nan')):.2f}"
            )
        method = tags.get("rtune.quantization", "")
        lines.append(f"  quantized model:  {method}{detail}")
        lines.append(f"                    {result.quantized}")
    if result.endpoint.exists():
        spec = json.loads(result.endpoint.read_text(encoding="utf-8"))
        smoke = spec.get("smoke", {})
        status = "ok" if metrics.get("smoke_ok", 0) >= 1 or smoke.get("ok") else "FAILED"
        latency = metrics.get("smoke_latency_s", smoke.get("latency_s"))
        timing = f" in {latency:.1f} s" if isinstance(latency, int | float) else ""
        where = "stopped after its stages" if spec.get("kind") == "local" else "running"
        lines.append(
            f"  served endpoint:  {spec.get('server', '')} {spec.get('kind', '')} "
            f"{spec.get('base_url', '')} ({where}) smoke test {status}{timing}"
        )
        reply = smoke.get("reply") or tags.get("rtune.smoke_reply", "")
        if reply:
            lines.append(f"                    reply: {reply[:70]!r}")
    return lines


def evaluation_lines(result: LocalRunResult) -> list[str]:
    """Fine-tuned vs base on the verifiable suite and the pairwise judge; the champion alias."""
    import json

    if not result.evaluation.exists():
        return []
    values = json.loads(result.evaluation.read_text(encoding="utf-8"))
    summary = values.get("summary", values)
    lines = []
    if "suite_accuracy_candidate" in summary:
        lines.append(
            f"  evaluation:       suite accuracy fine-tuned {summary['suite_accuracy_candidate']:.2f}"
            f" vs base {summary.get('suite_accuracy_base', float('nan')):.2f}"
        )
    if "judge_wins" in summary:
        lines.append(
            f"                    judge (both orders) wins/ties/losses "
            f"{summary['judge_wins']}/{summary.get('judge_ties', 0)}/{summary.get('judge_losses', 0)}"
            f", win rate {summary.get('judge_win_rate', float('nan')):.2f}"
        )
    verdict = "beats" if summary.get("candidate_beats_base") else "does not beat"
    promoted = summary.get("champion_version") or ""
    lines.append(
        f"                    fine-tuned {verdict} base on {summary.get('primary_metric', '?')}"
        + (f" -> alias champion on version {promoted}" if promoted else "")
    )
    lines.append(f"  evaluation report: {result.evaluation_report}")
    return lines


def run(args: argparse.Namespace) -> int:
    result = run_locally(args.config, args.overrides)
    print("\n".join(summary_lines(result)))
    return 0
