"""Quantize the merged fine-tuned model with llm-compressor, behind a perplexity quality guard.

Modules: ``config`` (``QuantizeConfig``), ``recipes`` (llm-compressor recipes as YAML text),
``data`` (calibration / held-out split and token ids), ``plan`` (one run's split, token passes and
work folder), ``worker`` (runs in the llm-compressor interpreter: oneshot + save),
``worker_control`` (runs that worker from here), ``perplexity`` (response-token perplexity, model
size), ``guard`` (both models' perplexity, the quality bound), ``report`` (numbers, figure, MLflow,
HTML), ``outputs`` (Model artifact, model store), ``task`` (the stage's glue).
"""
