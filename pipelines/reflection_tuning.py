"""The `reflection_tuning` KFP v2 pipeline: wiring only (DESIGN.md §2).

(No `from __future__ import annotations` here: KFP reads the parameter annotations as types.)

    prepare -> reflect_instruction -> [score_ifd shards] -> select_ifd
            -> reflect_response -> [score_rifd shards] -> select_rifd
            -> finetune -> quantize -> serve -> evaluate

Parameters are grouped per stage as dicts (``prepare``, ``teacher``, ``scoring``, ``selection``,
``finetune``, ``quantize``, ``serve``, ``evaluate``, ``tracking``); ``pipelines/configs/*.yaml``
hold them. Cluster-only settings (keys from Kubernetes Secrets, GPUs, retries for remote calls)
are ignored by ``kfp.local``.
"""

from typing import Any

from kfp import dsl, kubernetes

from rtune.components.evaluate.component import evaluate as evaluate_component
from rtune.components.finetune.component import finetune as finetune_component
from rtune.components.prepare.component import prepare
from rtune.components.quantize.component import quantize as quantize_component
from rtune.components.reflect_instruction.component import reflect_instruction
from rtune.components.reflect_response.component import reflect_response
from rtune.components.scoring.component import plan_shards, score_shard
from rtune.components.select_ifd.component import select_ifd
from rtune.components.select_rifd.component import select_rifd
from rtune.components.serve.component import serve as serve_component

PIPELINE_NAME = "reflection-tuning"
TEACHER_SECRET = "rtune-teacher"
TEACHER_SECRET_KEYS = {"api_key": "OPENAI_API_KEY"}
GPU_RESOURCE = "nvidia.com/gpu"
S3_SECRET = "rtune-s3"
S3_SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
}


def _with_secret(task: Any, secret: str, keys: dict[str, str]) -> Any:
    """Env vars from a Kubernetes Secret (optional: kfp.local and keyless endpoints go without)."""
    kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=True)
    return task


def _with_gpus(task: Any, gpus: int, memory: str, cpu: str) -> Any:
    if gpus:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
        task.set_memory_request(memory).set_cpu_request(cpu)
    return task


def _teacher_task(task: Any) -> Any:
    """Teacher calls are remote and flaky: retry the task; the key comes from a Secret."""
    task.set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2.0)
    task.set_caching_options(False)
    return _with_secret(task, TEACHER_SECRET, TEACHER_SECRET_KEYS)


def _scoring_task(task: Any, gpus: int) -> Any:
    """The student scores on ``gpus`` GPUs per shard in the cluster (CPU locally)."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_memory_request("16Gi").set_cpu_request("4")
    return task


def _finetune_task(task: Any, gpus: int) -> Any:
    """In-pod training (one process or torchrun) gets the GPUs; a TrainJob launcher needs none."""
    task.set_caching_options(False)
    return _with_secret(_with_gpus(task, gpus, "64Gi", "8"), S3_SECRET, S3_SECRET_KEYS)


def _quantize_task(task: Any, gpus: int) -> Any:
    """GPTQ calibration runs the model layer by layer: one GPU; the model store needs S3."""
    return _with_secret(_with_gpus(task, gpus, "64Gi", "8"), S3_SECRET, S3_SECRET_KEYS)


def _serve_task(task: Any) -> Any:
    """Creates/updates the InferenceService and waits for it: never cached (the cluster changes)."""
    task.set_caching_options(False)
    return task


def _evaluate_task(task: Any) -> Any:
    """The judge is the teacher: same Secret; endpoint calls are remote, so retry the task."""
    task.set_caching_options(False)
    task.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
    return _with_secret(task, TEACHER_SECRET, TEACHER_SECRET_KEYS)


def build_reflection_tuning(
    scoring_gpus: int = 1, finetune_gpus: int = 0, quantize_gpus: int = 0
) -> Any:
    """The pipeline with cluster resources fixed at compile time.

    Resource sizes are compile-time constants (``rtune compile`` reads ``cluster.scoring_gpus``):
    kfp.local cannot resolve a pipeline parameter inside a ``ParallelFor`` resource setting.
    """

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Selective Reflection-Tuning: teacher rewrites, student selects.",
    )
    def reflection_tuning(
        seed_uri: str = "builtin:seed",
        prepare_config: dict = {},  # noqa: B006 - KFP pipeline defaults are compiled, never mutated
        teacher: dict = {},  # noqa: B006
        scoring: dict = {},  # noqa: B006
        selection: dict = {},  # noqa: B006
        finetune: dict = {},  # noqa: B006
        quantize: dict = {},  # noqa: B006
        serve: dict = {},  # noqa: B006
        evaluate: dict = {},  # noqa: B006
        tracking: dict = {},  # noqa: B006
        checkpoint_root: str = "",
    ) -> None:
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        prepared = prepare(
            seed_uri=seed_uri, config=prepare_config, tracking=tracking, kfp_run_id=run_id
        )

        phase1 = _teacher_task(
            reflect_instruction(
                records=prepared.outputs["prepared"],
                teacher=teacher,
                tracking=tracking,
                kfp_run_id=run_id,
                checkpoint_root=checkpoint_root,
            )
        )
        shards = plan_shards(scoring=scoring)

        def score_in_shards(candidates: Any, phase: str) -> Any:
            """One scoring task per shard (``dsl.ParallelFor``); returns the tasks' collected scores."""
            with dsl.ParallelFor(shards.output, name=f"{phase}-shards") as shard:
                scores = _scoring_task(
                    score_shard(
                        records=candidates,
                        scoring=scoring,
                        tracking=tracking,
                        kfp_run_id=run_id,
                        phase=phase,
                        shard_index=shard,
                        checkpoint_root=checkpoint_root,
                    ),
                    scoring_gpus,
                )
            return dsl.Collected(scores.outputs["scores"])

        ifd_scores = score_in_shards(phase1.outputs["candidates"], "ifd")
        chosen = select_ifd(
            candidates=phase1.outputs["candidates"],
            scores=ifd_scores,
            tracking=tracking,
            kfp_run_id=run_id,
        )

        phase2 = _teacher_task(
            reflect_response(
                records=chosen.outputs["selected"],
                teacher=teacher,
                tracking=tracking,
                kfp_run_id=run_id,
                checkpoint_root=checkpoint_root,
            )
        )
        rifd_scores = score_in_shards(phase2.outputs["candidates"], "rifd")
        final = select_rifd(
            candidates=phase2.outputs["candidates"],
            scores=rifd_scores,
            selection=selection,
            tracking=tracking,
            kfp_run_id=run_id,
        )
        trained = _finetune_task(
            finetune_component(
                selected=final.outputs["selected"],
                finetune=finetune,
                tracking=tracking,
                kfp_run_id=run_id,
                checkpoint_root=checkpoint_root,
            ),
            finetune_gpus,
        )
        compressed = _quantize_task(
            quantize_component(
                model=trained.outputs["model"],
                selected=final.outputs["selected"],
                quantize=quantize,
                tracking=tracking,
                kfp_run_id=run_id,
                checkpoint_root=checkpoint_root,
            ),
            quantize_gpus,
        )
        served = _serve_task(
            serve_component(
                model=compressed.outputs["quantized"],
                serve=serve,
                tracking=tracking,
                kfp_run_id=run_id,
            )
        )
        _evaluate_task(
            evaluate_component(
                endpoint=served.outputs["endpoint"],
                evaluate=evaluate,
                tracking=tracking,
                kfp_run_id=run_id,
                checkpoint_root=checkpoint_root,
            )
        )

    return reflection_tuning


reflection_tuning = build_reflection_tuning()
