"""The `reflection_tuning` KFP v2 pipeline: wiring and the DAG's own facts (DESIGN.md §2).

(No ``from __future__ import annotations`` here: KFP reads the parameter annotations as types.)

    prepare -> reflect_instruction -> [score_ifd shards] -> select_ifd
            -> reflect_response -> [score_rifd shards] -> select_rifd
            -> finetune -> quantize -> serve -> evaluate          (finalize: the exit handler)

With ``teacher.backend: imported`` (reflections made elsewhere, README "Bring your own
reflections") the pipeline is built without teacher tasks: ``import_reflections`` stands where
``reflect_instruction`` stands and ``attach_imported_responses`` where ``reflect_response`` does
(a compile-time choice, like the pod sizes).

What belongs to the DAG lives here, not in the stages: which image runs each stage (one table,
applied when the pipeline is built), the pod sizes (the run config's ``cluster:`` section, fixed
at compile time), retries and caching, where the run id comes from (``$KFP_RUN_ID``, the pod's
``pipeline/runid`` label: not a task input, so identical work is cached across runs), and who
closes the MLflow parent run (``finalize``, an exit handler that runs whatever happened).
"""

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from kfp import dsl, kubernetes

from rtune.components.common.gpus import EXPECTED_GPUS_ENV
from rtune.components.common.images import Images
from rtune.components.common.tracking import MLFLOW_AUTH_KEYS, MLFLOW_AUTH_SECRET
from rtune.components.evaluate.component import evaluate
from rtune.components.finalize.component import finalize
from rtune.components.finetune.component import finetune
from rtune.components.importer.component import attach_imported_responses, import_reflections
from rtune.components.preflight.component import preflight
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
    preflight: "base",
    import_reflections: "base",
    attach_imported_responses: "base",
}
RUN_ID_ENV, RUN_ID_FIELD = "KFP_RUN_ID", "metadata.labels['pipeline/runid']"
GPU_RESOURCE = "nvidia.com/gpu"
TEACHER_SECRET = "rtune-teacher"
TEACHER_SECRET_KEYS = {"api_key": "OPENAI_API_KEY"}
S3_SECRET = "rtune-s3"
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
}
S3_ENDPOINT_KEY = {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}  # MinIO; absent on AWS
# MLflow behind its basic-auth app: the tasks log in (MLFLOW_AUTH_SECRET, MLFLOW_AUTH_KEYS)
# the served student's API key (vLLM's VLLM_API_KEY on the rtune-vllm runtime); serve.api_key_env
SERVE_SECRET = "rtune-serve"
SERVE_KEYS = {"api_key": "RTUNE_SERVE_API_KEY"}
# the images' USER (images/*/Dockerfile): KFP runs the main container as the image's user unless
# told; saying it here makes Pod Security `restricted` (runAsNonRoot) hold for every task
POD_USER = 10001


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


@dataclass(frozen=True)
class Wiring:
    """How the DAG dresses a task for the cluster (all of it ignored by kfp.local)."""

    cluster: Any
    s3: bool  # some setting is an s3:// URI: tasks that read or write models get the Secret
    teacher_served: bool  # the teacher (or judge) is an endpoint: its key comes from a Secret
    mlflow_server: bool = False  # tracking goes to an http(s) MLflow: tasks get its login
    served_key: bool = False  # the student is served with an API key: clients get it
    local: bool = False  # for kfp.local (`rtune run`): no pod, so no GPUs to expect

    def task(self, task: Any, size: Any = None, *, work: bool = True, s3: bool = False) -> Any:
        """Non-root user, run id from the pod's label, the pods' env ConfigMap, MLflow's login,
        a size, the work volume, S3."""
        kubernetes.set_security_context(
            task, run_as_user=POD_USER, run_as_group=POD_USER, run_as_non_root=True
        )
        kubernetes.use_field_path_as_env(task, env_name=RUN_ID_ENV, field_path=RUN_ID_FIELD)
        if self.mlflow_server:
            kubernetes.use_secret_as_env(task, MLFLOW_AUTH_SECRET, MLFLOW_AUTH_KEYS, optional=False)
        cluster = self.cluster
        if cluster.pod_env:
            kubernetes.use_config_map_as_env(
                task, cluster.pod_env, {k: k for k in POD_ENV_KEYS}, optional=True
            )
        if work and cluster.work_volume:
            kubernetes.mount_pvc(task, pvc_name=cluster.work_volume, mount_path=cluster.work_mount)
        if size is not None:
            task.set_cpu_request(size.cpu).set_memory_request(size.memory)
            if size.gpus:
                self._gpu(task, size.gpus)
        if s3 and self.s3:
            kubernetes.use_secret_as_env(task, S3_SECRET, S3_KEYS, optional=False)
            kubernetes.use_secret_as_env(task, S3_SECRET, S3_ENDPOINT_KEY, optional=True)
        return task

    def _gpu(self, task: Any, gpus: int) -> None:
        cluster = self.cluster
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
        if not self.local:  # the stage checks the pod's GPUs are there
            task.set_env_variable(EXPECTED_GPUS_ENV, str(gpus))
        for toleration in cluster.gpu_tolerations:
            kubernetes.add_toleration_json(task, toleration)
        if cluster.gpu_node_selector:
            kubernetes.add_node_selector_json(task, cluster.gpu_node_selector)
        if cluster.shm_size:
            kubernetes.empty_dir_mount(
                task, "shm", "/dev/shm", medium="Memory", size_limit=cluster.shm_size
            )

    def teacher(self, task: Any) -> Any:
        """Teacher calls are remote and flaky: retry the task; a served teacher's key is required."""
        task.set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2.0)
        task.set_caching_options(False)
        if self.teacher_served:
            kubernetes.use_secret_as_env(task, TEACHER_SECRET, TEACHER_SECRET_KEYS, optional=False)
        return task

    def served(self, task: Any) -> Any:
        """A client of the served student (evaluate) gets its API key when it has one."""
        if self.served_key:
            kubernetes.use_secret_as_env(task, SERVE_SECRET, SERVE_KEYS, optional=False)
        return task


# what the pods' env ConfigMap may set (manifests/base/pod-env.yaml): caches on the work volume
POD_ENV_KEYS = (
    "RTUNE_CACHE",
    "HF_HOME",
    "XDG_CACHE_HOME",
    "TRITON_CACHE_DIR",
    "TORCH_EXTENSIONS_DIR",
)


def wiring_for(config: Any, local: bool = False) -> Wiring:
    from rtune.pipelines.config import uses_s3

    served = {config.section("teacher").backend}
    judge = config.section("evaluate").judge_config()
    tracking_uri = config.section("tracking").tracking_uri
    serve = config.section("serve")
    return Wiring(
        config.cluster,
        uses_s3(config),
        "openai" in {*served, judge.backend},
        mlflow_server=tracking_uri.startswith(("http://", "https://")),
        served_key=serve.api_key_env == SERVE_KEYS["api_key"],
        local=local,
    )


def build_reflection_tuning(config: Any, images: Images | None = None, local: bool = False) -> Any:
    """The pipeline for a run config (pod sizes, images and cluster wiring are compile-time:
    kfp.local cannot resolve a pipeline parameter inside a ``ParallelFor`` resource setting)."""
    images = images or Images(config.cluster.images.registry, config.cluster.images.tag)
    c = stage_components(images)
    w = wiring_for(config, local)
    sizes = config.cluster
    imported = config.section("teacher").backend == "imported"  # no teacher tasks at all

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
        closing = w.task(c.finalize(tracking=tracking), sizes.default, work=False)
        with dsl.ExitHandler(closing, name="stages"):
            checked = w.teacher(
                w.task(
                    c.preflight(
                        seed_uri=seed_uri,
                        student=student,
                        teacher=teacher,
                        finetune=finetune,
                        quantize=quantize,
                        serve=serve,
                        evaluate=evaluate,
                        tracking=tracking,
                        checkpoint_root=checkpoint_root,
                    ),
                    sizes.default,
                    s3=True,
                )
            )
            checked.set_retry(num_retries=0).set_caching_options(False)
            prepared = w.task(
                c.prepare(
                    seed_uri=seed_uri,
                    student=student,
                    prepare_config=prepare_config,
                    tracking=tracking,
                ),
                sizes.default,
                s3=True,
            ).after(checked)
            if imported:
                phase1 = w.task(
                    c.import_reflections(
                        records=prepared.outputs["prepared"], teacher=teacher, tracking=tracking
                    ),
                    sizes.default,
                    work=False,
                    s3=True,
                )
            else:
                phase1 = w.teacher(
                    w.task(
                        c.reflect_instruction(
                            records=prepared.outputs["prepared"],
                            teacher=teacher,
                            tracking=tracking,
                            checkpoint_root=checkpoint_root,
                        ),
                        sizes.default,
                        s3=True,
                    )
                )
            shards = w.task(c.plan_shards(scoring=scoring), work=False).after(checked)

            def score_in_shards(candidates: Any, phase: str) -> Any:
                """One scoring task per shard (``dsl.ParallelFor``); their scores, collected."""
                with dsl.ParallelFor(shards.output, name=f"{phase}-shards") as shard:
                    scores = w.task(
                        c.score_shard(
                            records=candidates,
                            student=student,
                            scoring=scoring,
                            tracking=tracking,
                            phase=phase,
                            shard_index=shard,
                            checkpoint_root=checkpoint_root,
                        ),
                        sizes.scoring,
                        s3=True,
                    )
                    scores.set_retry(
                        num_retries=2, backoff_duration="30s"
                    )  # resumes its checkpoint
                return dsl.Collected(scores.outputs["scores"])

            chosen = w.task(
                c.select_ifd(
                    candidates=phase1.outputs["candidates"],
                    scores=score_in_shards(phase1.outputs["candidates"], "ifd"),
                    tracking=tracking,
                ),
                sizes.default,
                work=False,
            )
            if imported:
                phase2 = w.task(
                    c.attach_imported_responses(
                        records=chosen.outputs["selected"],
                        responses=phase1.outputs["responses"],
                        teacher=teacher,
                        tracking=tracking,
                    ),
                    sizes.default,
                    work=False,
                )
            else:
                phase2 = w.teacher(
                    w.task(
                        c.reflect_response(
                            records=chosen.outputs["selected"],
                            teacher=teacher,
                            tracking=tracking,
                            checkpoint_root=checkpoint_root,
                        ),
                        sizes.default,
                        s3=True,
                    )
                )
            final = w.task(
                c.select_rifd(
                    candidates=phase2.outputs["candidates"],
                    scores=score_in_shards(phase2.outputs["candidates"], "rifd"),
                    selection=selection,
                    tracking=tracking,
                ),
                sizes.default,
                work=False,
            )
            trained = w.task(
                c.finetune(
                    selected=final.outputs["selected"],
                    student=student,
                    finetune=finetune,
                    tracking=tracking,
                    checkpoint_root=checkpoint_root,
                    train_image=images.reference("train"),
                    work_volume=sizes.work_volume,
                    work_mount=sizes.work_mount,
                ),
                sizes.finetune,
                s3=True,
            )
            # a retried finetune resumes from its last complete checkpoint on the work volume
            trained.set_caching_options(False).set_retry(num_retries=2, backoff_duration="60s")
            compressed = w.task(
                c.quantize(
                    model=trained.outputs["model"],
                    selected=final.outputs["selected"],
                    student=student,
                    quantize=quantize,
                    tracking=tracking,
                    checkpoint_root=checkpoint_root,
                ),
                sizes.quantize,
                s3=True,
            )
            compressed.set_retry(num_retries=1, backoff_duration="60s")
            served = w.served(
                w.task(
                    c.serve(model=compressed.outputs["quantized"], serve=serve, tracking=tracking),
                    sizes.default,
                    s3=True,
                )
            )
            served.set_caching_options(False)  # creates/updates a live InferenceService
            judged = w.served(
                w.teacher(
                    w.task(
                        c.evaluate(
                            endpoint=served.outputs["endpoint"],
                            finetuned=trained.outputs["model"],
                            student=student,
                            evaluate=evaluate,
                            tracking=tracking,
                            checkpoint_root=checkpoint_root,
                        ),
                        sizes.default,
                        s3=True,
                    )
                )
            )
            judged.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)

    return reflection_tuning


def default_pipeline() -> Any:
    """The pipeline for the default run config (what ``rtune run`` executes)."""
    from rtune.pipelines.config import load_run_config

    return build_reflection_tuning(load_run_config(), local=True)
