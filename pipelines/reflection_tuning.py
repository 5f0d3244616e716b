"""The `reflection_tuning` KFP v2 pipeline: wiring and the DAG's own facts (DESIGN.md §2).

(No ``from __future__ import annotations`` here: KFP reads the parameter annotations as types.)

    prepare -> reflect_instruction -> [score_ifd shards] -> select_ifd
            -> reflect_response -> [score_rifd shards] -> select_rifd
            -> finetune -> quantize -> serve -> evaluate          (finalize: the exit handler)

What belongs to the DAG lives here, not in the stages: which image runs each stage (one table,
applied when the pipeline is built), the pod sizes (the run config's ``cluster:`` section, fixed
at compile time), retries and caching, where the run id comes from (``$KFP_RUN_ID``, the pod's
``pipeline/runid`` label: not a task input, so identical work is cached across runs), and who
closes the MLflow parent run (``finalize``, an exit handler that runs whatever happened).
"""

from types import SimpleNamespace
from typing import Any

from kfp import dsl, kubernetes

from rtune.components.common.images import Images
from rtune.components.evaluate.component import evaluate
from rtune.components.finalize.component import finalize
from rtune.components.finetune.component import finetune
from rtune.components.prepare.component import prepare
from rtune.components.quantize.component import quantize
from rtune.components.reflect_instruction.component import reflect_instruction
from rtune.components.reflect_response.component import reflect_response
from rtune.components.scoring.component import plan_shards, score_shard
from rtune.components.select_ifd.component import select_ifd
from rtune.components.select_rifd.component import select_rifd
from rtune.components.serve.component import serve

PIPELINE_NAME = "reflection-tuning"
# stage function -> the image (images/<name>/Dockerfile) that runs it
STAGE_IMAGES = {
    prepare: "base",
    reflect_instruction: "base",
    reflect_response: "base",
    plan_shards: "base",
    score_shard: "train",
    select_ifd: "base",
    select_rifd: "base",
    finetune: "train",
    quantize: "quantize",
    serve: "base",
    evaluate: "base",
    finalize: "base",
}
RUN_ID_ENV, RUN_ID_FIELD = "KFP_RUN_ID", "metadata.labels['pipeline/runid']"
GPU_RESOURCE = "nvidia.com/gpu"
TEACHER_SECRET = "rtune-teacher"
TEACHER_SECRET_KEYS = {"api_key": "OPENAI_API_KEY"}
S3_SECRET = "rtune-s3"
S3_SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
}


def stage_components(images: Images) -> SimpleNamespace:
    """Every stage function as a KFP component with its image; kfp is in the image already."""
    return SimpleNamespace(
        **{
            function.__name__: dsl.component(
                function, base_image=images.reference(image), install_kfp_package=False
            )
            for function, image in STAGE_IMAGES.items()
        }
    )


def _task(task: Any, size: Any = None) -> Any:
    """Every task: the run id from the pod's label; a pod size when the cluster section gives one."""
    kubernetes.use_field_path_as_env(task, env_name=RUN_ID_ENV, field_path=RUN_ID_FIELD)
    if size is not None:
        task.set_cpu_request(size.cpu).set_memory_request(size.memory)
        if size.gpus:
            task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(size.gpus)
    return task


def _with_secret(task: Any, secret: str, keys: dict[str, str]) -> Any:
    """Env vars from a Kubernetes Secret (optional: kfp.local and keyless endpoints go without)."""
    kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=True)
    return task


def _teacher_task(task: Any) -> Any:
    """Teacher calls are remote and flaky: retry the task; the key comes from a Secret."""
    task.set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2.0)
    task.set_caching_options(False)
    return _with_secret(task, TEACHER_SECRET, TEACHER_SECRET_KEYS)


def build_reflection_tuning(cluster: Any, images: Images | None = None) -> Any:
    """The pipeline for a run config's ``cluster`` section (pod sizes and images are compile-time:
    kfp.local cannot resolve a pipeline parameter inside a ``ParallelFor`` resource setting)."""
    images = images or Images()
    c = stage_components(images)
    gpus = SimpleNamespace(finetune=cluster.finetune, quantize=cluster.quantize)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Selective Reflection-Tuning: teacher rewrites, student selects.",
    )
    def reflection_tuning(
        seed_uri: str = "builtin:seed",
        student: dict = {},  # noqa: B006 - KFP pipeline defaults are compiled, never mutated
        prepare_config: dict = {},  # noqa: B006
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
        closing = _task(c.finalize(tracking=tracking))
        with dsl.ExitHandler(closing, name="stages"):
            prepared = _task(
                c.prepare(
                    seed_uri=seed_uri,
                    student=student,
                    prepare_config=prepare_config,
                    tracking=tracking,
                ),
                cluster.default,
            )
            phase1 = _teacher_task(
                _task(
                    c.reflect_instruction(
                        records=prepared.outputs["prepared"],
                        teacher=teacher,
                        tracking=tracking,
                        checkpoint_root=checkpoint_root,
                    ),
                    cluster.default,
                )
            )
            shards = _task(c.plan_shards(scoring=scoring))

            def score_in_shards(candidates: Any, phase: str) -> Any:
                """One scoring task per shard (``dsl.ParallelFor``); their scores, collected."""
                with dsl.ParallelFor(shards.output, name=f"{phase}-shards") as shard:
                    scores = _task(
                        c.score_shard(
                            records=candidates,
                            student=student,
                            scoring=scoring,
                            tracking=tracking,
                            phase=phase,
                            shard_index=shard,
                            checkpoint_root=checkpoint_root,
                        ),
                        cluster.scoring,
                    )
                return dsl.Collected(scores.outputs["scores"])

            chosen = _task(
                c.select_ifd(
                    candidates=phase1.outputs["candidates"],
                    scores=score_in_shards(phase1.outputs["candidates"], "ifd"),
                    tracking=tracking,
                ),
                cluster.default,
            )
            phase2 = _teacher_task(
                _task(
                    c.reflect_response(
                        records=chosen.outputs["selected"],
                        teacher=teacher,
                        tracking=tracking,
                        checkpoint_root=checkpoint_root,
                    ),
                    cluster.default,
                )
            )
            final = _task(
                c.select_rifd(
                    candidates=phase2.outputs["candidates"],
                    scores=score_in_shards(phase2.outputs["candidates"], "rifd"),
                    selection=selection,
                    tracking=tracking,
                ),
                cluster.default,
            )
            trained = _task(
                c.finetune(
                    selected=final.outputs["selected"],
                    student=student,
                    finetune=finetune,
                    tracking=tracking,
                    checkpoint_root=checkpoint_root,
                    train_image=images.reference("train"),
                ),
                gpus.finetune,
            )
            trained.set_caching_options(False)
            _with_secret(trained, S3_SECRET, S3_SECRET_KEYS)
            compressed = _task(
                c.quantize(
                    model=trained.outputs["model"],
                    selected=final.outputs["selected"],
                    student=student,
                    quantize=quantize,
                    tracking=tracking,
                    checkpoint_root=checkpoint_root,
                ),
                gpus.quantize,
            )
            _with_secret(compressed, S3_SECRET, S3_SECRET_KEYS)
            served = _task(
                c.serve(model=compressed.outputs["quantized"], serve=serve, tracking=tracking),
                cluster.default,
            )
            served.set_caching_options(False)  # creates/updates a live InferenceService
            judged = _task(
                c.evaluate(
                    endpoint=served.outputs["endpoint"],
                    student=student,
                    evaluate=evaluate,
                    tracking=tracking,
                    checkpoint_root=checkpoint_root,
                ),
                cluster.default,
            )
            judged.set_caching_options(False)
            judged.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
            _with_secret(judged, TEACHER_SECRET, TEACHER_SECRET_KEYS)

    return reflection_tuning


def default_pipeline() -> Any:
    """The pipeline for the default run config (what ``rtune run`` executes)."""
    from rtune.pipelines.config import ClusterConfig

    return build_reflection_tuning(ClusterConfig())
