"""KFP component for `finetune` (SFT of the student on the selected records); a plain function."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output


def finetune(
    selected: Input[Dataset],
    student: dict,
    finetune: dict,
    tracking: dict,
    checkpoint_root: str,
    train_image: str,
    work_volume: str,
    work_mount: str,
    adapter: Output[Model],
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> None:
    """LoRA / QLoRA / full fine-tuning (ZeRO-3 when configured); registers the model as `candidate`.

    ``train_image`` is the image of this task, for the TrainJob/PyTorchJob it may start;
    ``work_volume``/``work_mount`` the PVC that job's nodes mount where this task has it.
    """
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.finetune.task import FinetuneOutputs, FinetuneStage

    outputs = FinetuneOutputs(Path(adapter.path), Path(model.path), Path(report.path))
    stage = FinetuneStage.from_parameters(
        student, finetune, Path(selected.path), outputs, train_image, work_volume, work_mount
    )
    summary = run_stage(
        stage,
        StageSettings(
            tracking=tracking, checkpoint_root=checkpoint_root, metrics=metrics, to_parent=True
        ),
    )
    for artifact, kind in ((adapter, "lora-adapter"), (model, "merged-model")):
        artifact.metadata.update(summary.artifact_metadata())
        artifact.metadata["kind"] = kind
