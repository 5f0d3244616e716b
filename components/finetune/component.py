"""KFP component for `finetune` (SFT of the student on the selected records)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from rtune.components.common.images import image


@dsl.component(base_image=image("train"))
def finetune(
    selected: Input[Dataset],
    finetune: dict,
    tracking: dict,
    kfp_run_id: str,
    checkpoint_root: str,
    adapter: Output[Model],
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> None:
    """LoRA / QLoRA / full fine-tuning (ZeRO-3 when configured); registers the model as `candidate`.

    Not the last stage: quantize, serve and evaluate follow (evaluate closes the MLflow parent run).
    """
    from pathlib import Path

    from rtune.components.finetune.task import FinetuneOutputs, run_finetune

    summary = run_finetune(
        Path(selected.path),
        finetune,
        tracking,
        kfp_run_id,
        FinetuneOutputs(Path(adapter.path), Path(model.path), Path(report.path)),
        checkpoint_root,
        metrics,
        last_stage=False,
    )
    for artifact in (adapter, model):
        artifact.metadata.update(
            {k: v for k, v in summary.items() if isinstance(v, str | int | float)}
        )
    adapter.metadata["kind"] = "lora-adapter"
    model.metadata["kind"] = "merged-model"
