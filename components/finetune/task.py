"""The fine-tune stage as a pipeline task: selected records in, adapter + merged model out.

    selected.jsonl -> examples (template, response-only labels, truncation count)
                   -> packed rows -> launch (local | torchrun | TrainJob) -> adapter/, model/
                   -> MLflow: curves (Trainer callback), params, training dataset, loss figure,
                      registered model version with alias ``candidate``; HTML report; KFP metrics

The work folder ``<checkpoint_root>/finetune/<fingerprint>`` is keyed by config, data and base
model: a retried or re-run task resumes from its last checkpoint, and a finished one is not
trained again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtune.components.common import reports
from rtune.components.common.checkpoint import fingerprint
from rtune.components.common.config import to_dict
from rtune.components.common.records import InputError, read_jsonl
from rtune.components.common.stage import StageContext
from rtune.components.common.student import stage_config
from rtune.components.finetune.cluster import DEFAULT_WORK_VOLUME, WorkVolume
from rtune.components.finetune.config import FinetuneConfig
from rtune.components.finetune.data import ExampleStats, build_examples, pack_examples, rows_digest


@dataclass
class FinetuneOutputs:
    adapter_dir: Path
    model_dir: Path
    report_path: Path | None = None


def work_key(config: FinetuneConfig, digest: str, model_path: Path) -> str:
    """Same config + same rows + same base model -> same folder (resume, never mix runs).

    A cluster job's student is named by its URI: the folder the task pod holds it in (its
    tokenizer alone, or the whole model when cached) must not change the key."""
    identity = {k: v for k, v in to_dict(config).items() if k not in _NOT_IDENTITY}
    where = config.model if on_cluster(config) else str(model_path)
    return fingerprint("finetune", identity, digest, where, _model_signature(model_path))


_NOT_IDENTITY = {"registered_model", "model_store", "namespace", "job_timeout_s", "launcher"}


CLUSTER_LAUNCHERS = ("trainjob", "pytorchjob")


def on_cluster(config: FinetuneConfig) -> bool:
    """Training runs in a TrainJob / PyTorchJob, on nodes other than this task's pod."""
    return config.launcher in CLUSTER_LAUNCHERS


def task_model(config: FinetuneConfig) -> Path:
    """What this pod needs of the student: the whole model when it trains here (local,
    torchrun); only the tokenizer (to pack the rows) when the nodes of a cluster job train, since
    each node fetches the model itself from the URI the job names (a 70B student's weights never
    pass through the task pod)."""
    from rtune.components.common.models import resolve_model, resolve_tokenizer

    return resolve_tokenizer(config.model) if on_cluster(config) else resolve_model(config.model)


def _model_signature(model_path: Path) -> str:
    config = model_path / "config.json"
    return config.read_text(encoding="utf-8") if config.exists() else ""


def prepare_rows(
    records: list[Any], selected_path: Path, config: FinetuneConfig, model_path: Path
) -> tuple[list[Any], ExampleStats]:
    from rtune.components.common.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    examples, stats = build_examples(
        records,
        tokenizer,
        config.template,
        config.max_length,
        source=str(selected_path),
        response_format=config.response_format,
    )
    if not examples:
        raise InputError(
            str(selected_path),
            f"no trainable record: {stats.records} selected, {stats.dropped_truncated} cut to an "
            "empty response by max_length",
            "select more records or raise finetune.max_length",
        )
    return pack_examples(examples, config.row_tokens), stats


@dataclass
class FinetuneSummary:
    values: dict[str, Any]
    registered: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {**self.values, **self.registered}

    def line(self) -> str:
        v = self.values
        text = (
            f"loss {v['first_loss']:.3f} -> {v['final_loss']:.3f} over {v['global_step']:.0f} "
            f"steps, {v['tokens_per_second']:.0f} tokens/s, {v['training_records']} records"
        )
        if v.get("resumed_from_step"):
            text += f", resumed from step {v['resumed_from_step']:.0f}"
        if "model_version" in self.registered:
            text += f"; registered version {self.registered['model_version']} (alias candidate)"
        return text

    def artifact_metadata(self) -> dict[str, Any]:
        return {k: v for k, v in self.as_dict().items() if isinstance(v, str | int | float)}


@dataclass
class FinetuneStage:
    """Selected records in; the LoRA adapter and the merged model (KFP Model artifacts) out."""

    config: FinetuneConfig
    selected: Path
    outputs: FinetuneOutputs
    train_image: str = ""  # the image a TrainJob / PyTorchJob runs ('' = the default)
    name: str = "finetune"
    volume: WorkVolume = DEFAULT_WORK_VOLUME  # what a TrainJob's / PyTorchJob's nodes mount

    @classmethod
    def from_parameters(
        cls,
        student: Mapping[str, Any] | None,
        finetune: Mapping[str, Any] | None,
        selected: Path,
        outputs: FinetuneOutputs,
        train_image: str = "",
        work_volume: str = WorkVolume.claim,
        work_mount: str = WorkVolume.mount,
    ) -> FinetuneStage:
        config = stage_config(FinetuneConfig, "finetune", finetune, student)
        volume = WorkVolume(work_volume, work_mount)
        return cls(config, selected, outputs, train_image, volume=volume)

    def run(self, context: StageContext) -> FinetuneSummary:
        from rtune.components.finetune.data import save_rows
        from rtune.components.finetune.launch import launch
        from rtune.components.finetune.worker import TrainingJob

        config, run, outputs = self.config, context.run, self.outputs
        model_path = task_model(config)
        selected = read_jsonl(Path(self.selected))
        rows, stats = prepare_rows(selected, Path(self.selected), config, model_path)
        work = context.checkpoint_dir / work_key(config, rows_digest(rows), model_path)
        run.log_dataset(selected, source=str(self.selected), name="training", context="training")
        save_rows(rows, work / "rows.jsonl")
        job = TrainingJob(
            config=to_dict(config),
            rows=str(work / "rows.jsonl"),
            model=config.model if on_cluster(config) else str(model_path),
            checkpoint_dir=str(work / "checkpoints"),
            output_dir=str(work / "output"),
            report_to=["mlflow"] if run.active else ["none"],
        )
        summary = finished_summary(work / "output") or launch(
            config, job, work, _child_env(run), context.run_id, self.train_image, self.volume
        )
        remote = summary.get("output_uri", "")
        if remote:
            point_outputs_at(remote, outputs)
        else:
            copy_outputs(work / "output", outputs, config)
        values = stage_metrics(summary, stats)
        run.log_json(summary, "finetune/train_summary.json")
        figure = reports.figure_training_loss(summary["loss_history"])
        run.log_figure(figure, "figures/training_loss.png")
        registered = _register(
            run, config, outputs, self.selected, selected, values, remote, context.run_id
        )
        if outputs.report_path is not None:
            page = reports.html_report(
                "Fine-tune: the student on the selected records",
                {**values, **registered},
                {"training loss": figure},
                summary["loss_history"],
                "Loss per logged step",
            )
            Path(outputs.report_path).write_text(page, encoding="utf-8")
            run.log_text(page, "reports/finetune.html")
        return FinetuneSummary(values, registered)


def finished_summary(output_dir: Path) -> dict[str, Any] | None:
    """The summary of a training that already finished in this work folder (nothing to redo)."""
    path = output_dir / "train_summary.json"
    if path.exists() and (output_dir / "model").is_dir():
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return summary
    return None


def _child_env(run: Any) -> dict[str, str]:
    """MLflow run for rank 0 of other processes (the Trainer callback resumes it by id)."""
    if not run.active:
        return {}
    import mlflow

    return {"MLFLOW_RUN_ID": run.run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}


def copy_outputs(output_dir: Path, outputs: FinetuneOutputs, config: FinetuneConfig) -> None:
    """Worker outputs -> the task's Model artifacts (the adapter is empty for method ``full``)."""
    for name, dest in (("adapter", outputs.adapter_dir), ("model", outputs.model_dir)):
        source = output_dir / name
        if dest.exists():
            shutil.rmtree(dest)
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            dest.mkdir(parents=True)
            (dest / "README.txt").write_text(
                f"method {config.method}: no {name} (see the other model output)\n",
                encoding="utf-8",
            )


def point_outputs_at(output_uri: str, outputs: FinetuneOutputs) -> None:
    """Cluster jobs leave the model in the store; the Model artifacts say where."""
    for name, dest in (("adapter", outputs.adapter_dir), ("model", outputs.model_dir)):
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "MODEL_URI.txt").write_text(f"{output_uri}/{name}\n", encoding="utf-8")


def stage_metrics(summary: Mapping[str, Any], stats: ExampleStats) -> dict[str, Any]:
    return {
        "train_loss": summary["train_loss"],
        "first_loss": summary["first_loss"],
        "final_loss": summary["final_loss"],
        "global_step": summary["global_step"],
        "tokens_per_second": summary["tokens_per_second"],
        "peak_rss_mib": summary["peak_rss_mib"],
        "resumed_from_step": summary["resumed_from_step"],
        "training_records": stats.examples,
        "dropped_truncated": stats.dropped_truncated,
        "truncated_responses": stats.truncated,
        "training_tokens": stats.tokens,
        "training_target_tokens": stats.target_tokens,
    }


def _register(
    run: Any,
    config: FinetuneConfig,
    outputs: FinetuneOutputs,
    selected_path: Path,
    selected: list[Any],
    values: Mapping[str, Any],
    remote_output: str = "",
    run_id: str = "",
) -> dict[str, str]:
    """Register the model (+ optional upload to the model store) when tracking is on."""
    store_uri = f"{remote_output}/model" if remote_output else ""
    if config.model_store and not store_uri:
        from rtune.components.common.model_store import run_prefix, upload_model

        target = f"{run_prefix(config.model_store, run_id or 'local')}/model"
        store_uri = upload_model(outputs.model_dir, target).uri
    if not run.active:
        return {"model_store_uri": store_uri} if store_uri else {}
    from rtune.components.finetune.registry import register_student

    dataset = {
        "name": "training",
        "source": str(selected_path),
        "digest": fingerprint([r.get("id") for r in selected]),
    }
    numbers = {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
    registered = register_student(
        None if store_uri else outputs.model_dir,
        store_uri,
        config.registered_model,
        dataset,
        numbers,
    )
    run.set_tags(
        {
            "rtune.registered_model": registered.name,
            "rtune.model_version": registered.version,
            "rtune.model_uri": registered.model_uri,
        },
        to_parent=True,
    )
    return {
        "registered_model": registered.name,
        "model_version": registered.version,
        "model_uri": registered.model_uri,
        **({"model_store_uri": store_uri} if store_uri else {}),
    }
