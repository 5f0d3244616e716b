"""KFP component for `quantize` (llm-compressor oneshot, quality guarded); a plain function."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output


def quantize(
    model: Input[Model],
    selected: Input[Dataset],
    student: dict,
    quantize: dict,
    tracking: dict,
    checkpoint_root: str,
    quantized: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> None:
    """W4A16 GPTQ (or FP8 / W8A8 / 2:4 sparsity / none); fails when perplexity rises too much."""
    from pathlib import Path

    from rtune.components.common.stage import StageSettings, run_stage
    from rtune.components.quantize.task import QuantizeOutputs, QuantizeStage

    outputs = QuantizeOutputs(Path(quantized.path), Path(report.path))
    stage = QuantizeStage.from_parameters(
        student, quantize, Path(model.path), Path(selected.path), outputs
    )
    summary = run_stage(
        stage,
        StageSettings(
            tracking=tracking, checkpoint_root=checkpoint_root, metrics=metrics, to_parent=True
        ),
    )
    quantized.metadata.update(summary.artifact_metadata())
    quantized.metadata["kind"] = "quantized-model"
