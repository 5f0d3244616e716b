"""The teacher LLM that rewrites instruction data: one ``Teacher`` protocol, three backends.

``openai`` talks to any OpenAI-compatible endpoint (vLLM, KServe, OpenAI) with bounded concurrency
and retries; ``transformers`` runs a local model (the embedded default on CPU) in batches;
``vllm`` runs offline batches on a GPU. ``runner.reflect_stage`` turns a teacher into a resumable
stage; ``prompts`` and ``parsing`` hold the method's wording and the robust reply parser.
"""
