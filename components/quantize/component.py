"""KFP component for `quantize` (llm-compressor oneshot on the merged model, quality guarded)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from rtune.components.common.images import image


@dsl.component(base_image=image("quantize"))
def quantize(
    model: Input[Model],
    selected: Input[Dataset],
    quantize: dict,
    tracking: dict,
    kfp_run_id: str,
    checkpoint_root: str,
    quantized: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> None:
    """W4A16 GPTQ (or FP8 / W8A8 / 2:4 sparsity / none); fails when perplexity rises too much."""
    from pathlib import Path

    from rtune.components.quantize.task import QuantizeOutputs, run_quantize

    summary = run_quantize(
        Path(model.path),
        Path(selected.path),
        quantize,
        tracking,
        kfp_run_id,
        QuantizeOutputs(Path(quantized.path), Path(report.path)),
        checkpoint_root,
        metrics,
    )
    quantized.metadata.update(
        {k: v for k, v in summary.items() if isinstance(v, str | int | float)}
    )
    quantized.metadata["kind"] = "quantized-model"
