"""``rtune run [--config F] [--set k=v ...] [-v]``: the whole pipeline locally through ``kfp.local``.

Each stage runs as a subprocess of this Python (``SubprocessRunner(use_venv=False)``); outputs go
under ``local.pipeline_root`` (default ``./rtune-runs``), MLflow runs to ``$MLFLOW_TRACKING_URI``
or ``./mlflow.db``. The console shows one line per stage (its own summary line); every task's full
log is in ``<run folder>/logs/`` (``-v`` shows everything as it happens).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from rtune.components.common.stage import RUN_ID_ENV


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
    run_id: str
    run_dir: Path
    logs: Path
    succeeded: bool
    seconds: float
    tracking_uri: str
    mlflow_run_id: str | None
    failed: list[tuple[str, Path]] = field(default_factory=list)

    def output(self, task: str, name: str) -> Path:
        """Where kfp.local put a task's output artifact."""
        return self.run_dir / task / name

    @property
    def decisions(self) -> Path:
        return self.output("select-rifd", "decisions")

    @property
    def selected(self) -> Path:
        return self.output("select-rifd", "selected")

    @property
    def report(self) -> Path:
        return self.output("select-rifd", "report")

    @property
    def model(self) -> Path:
        return self.output("finetune", "model")

    @property
    def adapter(self) -> Path:
        return self.output("finetune", "adapter")

    @property
    def training_report(self) -> Path:
        return self.output("finetune", "report")

    @property
    def evaluation_report(self) -> Path:
        return self.output("evaluate", "report")

    @property
    def quantized(self) -> Path:
        return self.output("quantize", "quantized")

    @property
    def endpoint(self) -> Path:
        return self.output("serve", "endpoint")

    @property
    def evaluation(self) -> Path:
        return self.output("evaluate", "results")

    @property
    def summary(self) -> Path:
        return self.output("finalize", "summary")


def run_locally(
    config_path: str | None = None, overrides: list[str] | None = None, verbose: bool = False
) -> LocalRunResult:
    """Run ``reflection_tuning`` in-process with kfp.local and return where everything landed."""
    from kfp import local

    from rtune.components.common.tracking import TrackingConfig, resolve_tracking_uri
    from rtune.pipelines.config import load_run_config
    from rtune.pipelines.console import RunConsole
    from rtune.pipelines.reflection_tuning import build_reflection_tuning

    config = load_run_config(config_path, overrides)
    tracking: TrackingConfig = config.section("tracking")
    tracking_uri = resolve_tracking_uri(tracking)
    run_id = f"local-{uuid.uuid4().hex[:12]}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # the stage subprocesses inherit both
    os.environ[RUN_ID_ENV] = run_id  # on a cluster: the pod's pipeline/runid label
    root = Path(config.local.pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in root.iterdir()}
    started = time.time()
    logs = root / f"logs-{run_id}"
    console = RunConsole(sys.stdout, logs, verbose)
    print(f"reflection-tuning {run_id}: full task logs in {logs}", flush=True)
    pipeline = build_reflection_tuning(config, local=True)
    saved = sys.stdout
    sys.stdout = console
    try:
        with warnings.catch_warnings():
            # kfp.local warns that cluster-only settings and our images are not used here: known
            warnings.filterwarnings("ignore", module=r"kfp\.local\..*")
            local.init(
                runner=local.SubprocessRunner(use_venv=False),
                pipeline_root=str(root),
                raise_on_error=False,
            )
            pipeline(**config.pipeline_arguments())
    finally:
        sys.stdout = saved
        console.close()
    run_dir = _newest_new_dir(root, before)
    return LocalRunResult(
        run_id=run_id,
        run_dir=run_dir,
        logs=logs,
        succeeded=not console.failed,
        seconds=time.time() - started,
        tracking_uri=tracking_uri,
        mlflow_run_id=_parent_run_id(tracking_uri, tracking.experiment, run_id)
        if tracking.enabled
        else None,
        failed=console.failed,
    )


def _newest_new_dir(root: Path, before: set[str]) -> Path:
    new = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name not in before and not p.name.startswith("logs-")
    ]
    if not new:
        raise RuntimeError(f"kfp.local wrote no run folder under {root}")
    return max(new, key=lambda p: p.stat().st_mtime)


def _parent_run_id(tracking_uri: str, experiment: str, run_id: str) -> str | None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`rtune.role` = 'pipeline' and tags.`kfp.run_id` = '{run_id}'",
        max_results=1,
    )
    return str(runs[0].info.run_id) if runs else None


def closing_lines(result: LocalRunResult) -> list[str]:
    """Where to look next: the outputs, the report, MLflow; or which task failed."""
    verdict = "finished" if result.succeeded else "FAILED"
    lines = [f"reflection-tuning {verdict} in {result.seconds:.0f} s"]
    for task, log in result.failed:
        lines.append(f"  failed: {task} (log: {log})")
    for label, path in (
        ("selected dataset", result.selected),
        ("selection report", result.report),
        ("fine-tuned model", result.model),
        ("quantized model", result.quantized),
        ("evaluation", result.evaluation),
        ("run summary", result.summary),
    ):
        if path.exists():
            lines.append(f"  {label + ':':<18}{path}")
    if result.mlflow_run_id:
        store = result.tracking_uri
        ui = f"mlflow ui --backend-store-uri {store}" if store.startswith("sqlite") else store
        lines.append(f"  {'MLflow run:':<18}{result.mlflow_run_id} (open with: {ui})")
    return lines


def run(args: argparse.Namespace) -> int:
    result = run_locally(args.config, args.overrides, verbose=bool(getattr(args, "verbose", False)))
    print("\n".join(closing_lines(result)))
    return 0 if result.succeeded else 1
