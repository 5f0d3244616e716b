"""The rehearsal's parts against what the KFP backend and Kubernetes do (no pods started here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rtune.pipelines.rehearsal import images, launcher, rbac, values
from rtune.pipelines.rehearsal.ir import load_compiled
from rtune.pipelines.rehearsal.session import platform_documents, render_overlay, run_identity
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
COMPILED = ROOT / "pipelines/compiled/reflection_tuning.yaml"


def test_numbers_arrive_as_protojson_prints_them() -> None:
    sent = {"max_length": 2048.0, "epochs": 3.0, "lr": 2e-05, "nested": [{"k": 16.0}], "flag": True}
    assert values.protojson_value(sent) == {
        "max_length": 2048,
        "epochs": 3,
        "lr": 2e-05,
        "nested": [{"k": 16}],
        "flag": True,
    }
    assert isinstance(values.protojson_value(3.0), int)
    assert isinstance(values.protojson_value(0.5), float)


def test_artifact_metadata_comes_back_as_ml_metadata_stores_it() -> None:
    stored = values.mlmd_metadata({"ok": True, "n": 2.0, "tags": ["a"], "kv": {"x": 1}}, "model")
    assert stored == {"ok": 1, "n": 2, "tags": {"list": ["a"]}, "kv": {"struct": {"x": 1}}}
    with pytest.raises(values.MetadataRejected, match=r"model.metadata\['gone'\]"):
        values.mlmd_metadata({"gone": None}, "model")


def test_the_committed_pipeline_loads_with_its_platform_spec() -> None:
    pipeline = load_compiled(COMPILED)
    assert pipeline.name == "reflection-tuning"
    tasks = stage_tasks(pipeline)
    assert {"prepare", "select-rifd", "finetune", "quantize"} <= set(tasks)
    loops = [t for t in tasks.values() if t.iterator]
    assert len(loops) == 2 and all(pipeline.component(t.component).is_dag for t in loops)
    finetune = pipeline.component(tasks["finetune"].component)
    assert pipeline.container_of(finetune).image.endswith(":" + images_tag())
    assert pipeline.defaults()["checkpoint_root"] == "/mnt/rtune/checkpoints"  # the work volume


def stage_tasks(pipeline):  # type: ignore[no-untyped-def]
    """The stages: the tasks inside the exit handler's DAG."""
    (handler,) = [t for t in pipeline.root.tasks.values() if "exit-handler" in t.component]
    return pipeline.component(handler.component).tasks


def images_tag() -> str:
    from rtune.components.common.images import package_version

    return package_version()


@pytest.mark.parametrize("name", ["base", "train", "quantize", "serve"])
def test_image_facts_come_from_the_dockerfiles(name: str) -> None:
    facts = images.image_facts(f"ghcr.io/rtune/rtune-{name}:0.1.0")
    dockerfile = (ROOT / "images" / name / "Dockerfile").read_text()
    assert (facts.uid, facts.gid) == (10001, 10001)  # USER 10001:10001 in every image
    assert facts.env["HOME"] == "/home/rtune" and facts.workdir == "/home/rtune"
    for image_path in facts.python_environments:
        # /opt/conda and /opt/venv of the PyTorch and vLLM images come with their base image
        assert image_path in dockerfile or image_path in ("/opt/conda", "/opt/venv")
    assert facts.env["PATH"].split(":")[0] in ("/opt/venv/bin", "/opt/conda/bin")


def test_an_image_not_built_here_is_refused() -> None:
    with pytest.raises(images.UnknownImage, match="not one of this repository"):
        images.image_facts("python:3.11")


def test_dockerfile_env_expands_like_docker(tmp_path: Path) -> None:
    (tmp_path / "images" / "x").mkdir(parents=True)
    (tmp_path / "images" / "x" / "Dockerfile").write_text(
        "FROM python:3.11.9-slim-bookworm AS build\nENV A=1\n"
        "FROM python:3.11.9-slim-bookworm@sha256:abc\n"
        "ENV PATH=/opt/venv/bin:$PATH \\\n    HOME=/home/u\nUSER 10001:10002\nWORKDIR /w\n"
    )
    stage = images.final_stage(tmp_path / "images" / "x" / "Dockerfile")
    assert stage.user == "10001:10002" and stage.workdir == "/w"
    assert ("A", "1") not in stage.env  # the build stage's ENV does not reach the final image
    env = images.expand("/opt/venv/bin:$PATH", {"PATH": "/usr/bin"})
    assert env == "/opt/venv/bin:/usr/bin"


def test_executor_input_has_the_backends_shape() -> None:
    pipeline = load_compiled(COMPILED)
    select = pipeline.component(stage_tasks(pipeline)["select-rifd"].component)
    outputs = launcher.provision_outputs(
        select, "minio://mlpipeline/v2/artifacts", "reflection-tuning", "run-1", "select-rifd", 0
    )
    upstream = launcher.RuntimeArtifact(
        "7", "candidates", "system.Dataset", "minio://b/x/candidates"
    )
    executor = launcher.executor_input(
        select,
        {"selection": {"policy": "reference"}, "tracking": {}, "kfp_run_id": "run-1"},
        {"candidates": [upstream], "scores": [upstream, upstream]},
        outputs,
    )
    artifact = executor["inputs"]["artifacts"]["candidates"]["artifacts"][0]
    assert artifact["name"] == "7" and artifact["type"] == {"instanceSchema": ""}
    assert artifact["metadata"]["display_name"] == "candidates"
    assert len(executor["inputs"]["artifacts"]["scores"]["artifacts"]) == 2
    selected = executor["outputs"]["artifacts"]["selected"]["artifacts"][0]["uri"]
    assert selected.startswith(
        "minio://mlpipeline/v2/artifacts/reflection-tuning/run-1/select-rifd/"
    )
    assert executor["outputs"]["outputFile"].startswith("/minio/mlpipeline/v2/artifacts/")
    assert "executor-logs" in executor["outputs"]["artifacts"]
    assert launcher.local_path("s3://b/k/x") == "/s3/b/k/x"


def test_rbac_grants_what_the_roles_say_and_nothing_else() -> None:
    rendered = render_overlay(ROOT / "manifests/overlays/prod")
    ours = rbac.grants_for(rendered, "rtune", "default-editor")
    create_job = rbac.request_attributes(
        "POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/rtune/trainjobs", {}
    )
    read_secret = rbac.request_attributes("GET", "/api/v1/namespaces/rtune/secrets/rtune-s3", {})
    other_namespace = rbac.request_attributes(
        "POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/kubeflow/trainjobs", {}
    )
    assert create_job and read_secret and other_namespace
    assert rbac.allowed(ours, create_job)
    assert not rbac.allowed(ours, read_secret)
    assert not rbac.allowed(ours, other_namespace)
    assert not rbac.grants_for(rendered, "rtune", "pipeline-runner")  # not this install's account
    kfp = rbac.grants_for(platform_documents(), "rtune", "pipeline-runner")
    assert rbac.allowed(kfp, read_secret)  # KFP's own runner Role: the launcher reads Secrets
    assert rbac.request_attributes("GET", "/apis/serving.kserve.io/v1beta1", {}) is None
    watch = rbac.request_attributes("GET", "/api/v1/namespaces/rtune/pods", {"watch": "true"})
    assert watch is not None and watch.verb == "watch"


@pytest.mark.parametrize(
    ("overlay", "namespace", "account"),
    [
        ("manifests/overlays/standalone", "kubeflow", "pipeline-runner"),
        ("manifests/overlays/prod", "rtune", "default-editor"),
    ],
)
def test_the_rehearsal_runs_as_the_account_the_overlay_binds(
    overlay: str, namespace: str, account: str
) -> None:
    """Each overlay's identity gets our Role plus what its KFP install grants (platform/):
    together enough for the launcher's Secret and the pipeline's TrainJobs, in its namespace."""
    rendered = render_overlay(ROOT / overlay)
    assert run_identity(rendered) == account
    multi_user = any(d["kind"] == "Profile" for d in rendered)
    grants = rbac.grants_for([*rendered, *platform_documents(multi_user)], namespace, account)
    launcher = rbac.request_attributes(
        "GET", f"/api/v1/namespaces/{namespace}/secrets/mlpipeline-minio-artifact", {}
    )
    follow_log = rbac.request_attributes(
        "GET", f"/api/v1/namespaces/{namespace}/pods/node-0/log", {}
    )
    create_isvc = rbac.request_attributes(
        "POST", f"/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices", {}
    )
    assert launcher and follow_log and create_isvc
    assert all(rbac.allowed(grants, need) for need in (launcher, follow_log, create_isvc))
    ours_only = rbac.grants_for(rendered, namespace, account)
    assert not rbac.allowed(ours_only, launcher)  # rtune's Role never reads Secrets
    assert rbac.allowed(ours_only, create_isvc)  # ...and needs nothing else for its jobs
    stripped = [d for d in rendered if d["kind"] != "RoleBinding"]
    with pytest.raises(ValueError, match="no service account"):
        run_identity(stripped)


def test_platform_role_is_kfps_own() -> None:
    docs = platform_documents()
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["metadata"]["name"] == "pipeline-runner"
    assert {"get"} <= set(next(r for r in role["rules"] if "secrets" in r["resources"])["verbs"])
    assert yaml.safe_dump(docs)  # plain data


def test_the_container_user_comes_from_the_security_context() -> None:
    from dataclasses import replace

    from rtune.pipelines.rehearsal.cluster import ClusterProblem
    from rtune.pipelines.rehearsal.taskpod import _run_as

    image = images.image_facts("ghcr.io/rtune/rtune-base:0.1.0")
    assert _run_as(image, {}) == image  # no securityContext: the image's USER
    context = {"securityContext": {"runAsUser": "20002", "runAsGroup": "30003"}}
    assert (_run_as(image, context).uid, _run_as(image, context).gid) == (20002, 30003)
    root_image = replace(image, uid=0, gid=0)  # an image without USER runs as root ...
    with pytest.raises(ClusterProblem, match="runAsNonRoot and image will run as root"):
        _run_as(
            root_image, {"securityContext": {"runAsNonRoot": True}}
        )  # ... which restricted refuses


def test_every_task_runs_as_the_images_non_root_user() -> None:
    pipeline = load_compiled(COMPILED)
    assert pipeline.platform, "the compiled pipeline has no platform spec"
    for executor, config in pipeline.platform.items():
        context = config.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, executor
        assert int(context["runAsUser"]) == 10001 and int(context["runAsGroup"]) == 10001, executor
    every = {c.executor for c in pipeline.components.values() if not c.is_dag}
    assert every <= set(pipeline.platform)
