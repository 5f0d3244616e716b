"""Quantize the merged fine-tuned model with llm-compressor, behind a perplexity quality guard.

Modules: ``config`` (``QuantizeConfig``), ``recipes`` (llm-compressor recipes as YAML text),
``data`` (calibration / held-out split and token ids), ``worker`` (runs in the llm-compressor
interpreter: oneshot + save), ``perplexity`` (response-token perplexity, model size), ``task``
(the stage: worker subprocess, quality guard, MLflow, outputs).
"""
