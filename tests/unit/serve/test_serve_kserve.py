"""Serving on KServe against a real Kubernetes API on loopback (kmock + the official client).

No controller runs: each test writes the status KServe would write (``kube.on_fetch`` on the
N-th read). A Ready status points ``url`` at a FakeOpenAIServer on loopback, so the smoke test
after it is a real chat completion over HTTP.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from kubernetes import client

from rtune.components.common.k8s_workload import GPU_RESOURCE, RUN_ID_LABEL, merge_patch
from rtune.components.common.records import InputError
from rtune.components.common.stage import MetricsSink, StageSettings, run_stage
from rtune.components.serve.endpoint import EndpointSpec
from rtune.components.serve.kserve import (
    InferenceServiceFailed,
    InferenceServiceTimeout,
    build_inference_service,
    create_or_update,
    failure,
    ready_urls,
    wait_ready,
)
from rtune.components.serve.task import ServeStage, SmokeTestFailed
from tests import kube as kube_fixtures
from tests.conftest import RecordingMetrics
from tests.crd_schemas import CustomResourceInvalid, validate_custom_resource
from tests.fakes.openai_server import FakeOpenAIServer
from tests.kube import KubeEmulator, condition
from tests.paths import REPO_ROOT

kube = kube_fixtures.kube  # the fixtures, shared with the other Kubernetes API tests
kube_api = kube_fixtures.kube_api

NS = "team-a"
NAME = "rtune-student"
ISVCS = "serving.kserve.io/v1beta1/inferenceservices"
PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/{NAME}"
STORE = "s3://models/run-1/model"
RUN_ID = "6f1c2d3e-0000-4a5b-9c8d-123456789abc"
# serve.per_run (the default): the run's own InferenceService, <name>-<8 hex of sha256(run id)>
INSTANCE = f"{NAME}-{hashlib.sha256(RUN_ID.encode()).hexdigest()[:8]}"


def isvc(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"gpus": 1, "kfp_run_id": RUN_ID}
    return build_inference_service(NAME, NS, STORE, **{**values, **overrides})


def ready_after(n: int, url: str, address: str = "") -> Callable[[int], Any]:
    status: dict[str, Any] = {"url": url, "conditions": [condition("Ready")]}
    if address:
        status["address"] = {"url": address}
    return lambda reads: {"status": status} if reads >= n else None


def quiet(_: str) -> None:
    return


# ----------------------------------------------------------------------------- the object


def test_inference_service_matches_the_kserve_crd_with_every_option() -> None:
    obj = isvc(
        gpus=2,
        reasoning_format="reflection",
        served_model_name="student-v2",
        extra_args=["--max-model-len=8192"],
        service_account="rtune-models",
        cpu="8",
        memory="64Gi",
        min_replicas=0,
        max_replicas=3,
    )
    validate_custom_resource(obj)
    predictor = obj["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "vllm"} and model["runtime"] == "rtune-vllm"
    assert model["storageUri"] == STORE and predictor["serviceAccountName"] == "rtune-models"
    assert model["args"] == [
        "--tensor-parallel-size=2",
        "--served-model-name=student-v2",
        "--reasoning-parser-plugin=/opt/rtune/vllm_reasoning.py",
        "--reasoning-parser=rtune-reflection",
        "--max-model-len=8192",
    ]
    wanted = {"cpu": "8", "memory": "64Gi", GPU_RESOURCE: "2"}
    assert model["resources"] == {"requests": wanted, "limits": wanted}
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (0, 3)
    assert obj["metadata"]["labels"] == {
        "app.kubernetes.io/part-of": "rtune",
        "app.kubernetes.io/component": "serve",
        "rtune/kfp-run-id": RUN_ID,
    }


def test_minimal_inference_service_is_valid_and_the_schema_check_can_fail() -> None:
    obj = isvc(kfp_run_id="", gpus=0)
    validate_custom_resource(obj)
    assert "resources" not in obj["spec"]["predictor"]["model"]
    assert obj["spec"]["predictor"]["model"]["args"] == []
    obj["spec"]["predictor"]["model"]["storageURI"] = STORE  # a typo KServe would reject
    with pytest.raises(CustomResourceInvalid, match="storageURI"):
        validate_custom_resource(obj)
    with pytest.raises(ValueError, match="storage_uri"):
        build_inference_service(NAME, NS, "")


def test_the_reflection_plugin_path_is_the_one_the_runtime_image_provides() -> None:
    """The ServingRuntime runs the rtune-serve image; the reflection args name a fixed path there."""
    runtime = yaml.safe_load((REPO_ROOT / "manifests/base/vllm-servingruntime.yaml").read_text())
    assert "rtune-serve" in runtime["spec"]["containers"][0]["image"]
    args = isvc(reasoning_format="reflection")["spec"]["predictor"]["model"]["args"]
    assert "--reasoning-parser-plugin=/opt/rtune/vllm_reasoning.py" in args


def test_merge_patch_sets_changes_and_removes_what_is_gone() -> None:
    current = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2], "same": {"x": 1}}
    desired = {"a": 1, "b": {"c": 5}, "l": [1], "new": "v", "same": {"x": 1}}
    assert merge_patch(current, desired) == {"b": {"c": 5, "d": None}, "l": [1], "new": "v"}
    assert merge_patch(desired, desired) == {}


# ----------------------------------------------------------------------------- create or update


def test_create_then_update_in_place_never_duplicates(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    first = isvc(reasoning_format="reflection", gpus=2)
    _, created = create_or_update(custom, first, quiet)
    assert created and kube.count("POST", PATH.rsplit("/", 1)[0]) == 1
    _, created = create_or_update(custom, first, quiet)  # a re-run with the same spec
    assert not created and kube.count("PATCH", PATH) == 0
    second = isvc(reasoning_format="none", gpus=1, kfp_run_id="run-2")
    second["spec"]["predictor"]["model"]["storageUri"] = "s3://models/run-2/model"
    _, created = create_or_update(custom, second, quiet)
    assert not created and kube.count("PATCH", PATH) == 1
    assert kube.count("POST", PATH.rsplit("/", 1)[0]) == 1
    stored = kube.object(ISVCS, NS, NAME)
    assert stored is not None
    model = stored["spec"]["predictor"]["model"]
    assert model["storageUri"] == "s3://models/run-2/model" and model["args"] == []
    assert model["resources"]["limits"] == {GPU_RESOURCE: "1"}
    assert stored["metadata"]["labels"]["rtune/kfp-run-id"] == "run-2"


def test_a_same_named_service_rtune_did_not_create_is_refused(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    foreign = isvc()
    foreign["metadata"]["labels"] = {"team": "other"}
    custom.create_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", NS, "inferenceservices", foreign
    )
    with pytest.raises(RuntimeError, match=r"not created by rtune.*serve\.name"):
        create_or_update(custom, isvc(), quiet)
    assert kube.count("PATCH", PATH) == 0


# ----------------------------------------------------------------------------- waiting


def test_wait_returns_the_urls_once_ready(kube: KubeEmulator, kube_api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(kube_api)
    create_or_update(custom, isvc(), quiet)
    address = f"http://{NAME}-predictor.{NS}.svc.cluster.local"
    kube.on_fetch(ISVCS, NS, NAME, ready_after(3, f"http://{NAME}.{NS}.example.com", address))
    lines: list[str] = []
    ready = wait_ready(custom, NS, NAME, timeout_s=10, poll_interval_s=0.01, log=lines.append)
    assert ready.url == f"http://{NAME}.{NS}.example.com" and ready.address_url == address
    assert ready.base_url == f"{address}/v1"  # pipeline pods reach the cluster address
    assert kube.count("GET", PATH) == 1 + 3 and "Ready" in lines[-1]  # create_or_update + polls


def test_a_stale_ready_status_of_an_older_generation_is_not_trusted() -> None:
    obj = {
        "metadata": {"generation": 2},
        "status": {"observedGeneration": 1, "url": "http://x", "conditions": [condition("Ready")]},
    }
    assert ready_urls(obj) is None
    obj["status"]["observedGeneration"] = 2
    assert ready_urls(obj) == ("http://x", "")
    obj["status"]["conditions"] = [condition("Ready", "False", "RevisionMissing", "gone")]
    assert failure(obj) == ("RevisionMissing", "gone")
    obj["status"]["conditions"] = [condition("Ready", "Unknown", "RevisionMissing", "creating")]
    assert failure(obj) is None  # Knative says Unknown while the first revision comes up


@pytest.mark.parametrize(
    ("status", "reason", "message"),
    [
        (
            {
                "modelStatus": {
                    "transitionStatus": "BlockedByFailedLoad",
                    "states": {"activeModelState": "FailedToLoad"},
                    "lastFailureInfo": {
                        "reason": "ModelLoadFailed",
                        "message": "No such file: /mnt/models/config.json",
                    },
                }
            },
            "ModelLoadFailed",
            "No such file: /mnt/models/config.json",
        ),
        (
            {
                "conditions": [
                    condition("PredictorReady", "False", "RevisionFailed", "CUDA out of memory"),
                    condition("Ready", "False", "RevisionFailed", "CUDA out of memory"),
                ]
            },
            "RevisionFailed",
            "CUDA out of memory",
        ),
    ],
    ids=["model-failed-to-load", "revision-failed"],
)
def test_wait_fails_with_the_controllers_reason(
    kube: KubeEmulator, kube_api: client.ApiClient, status: dict, reason: str, message: str
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    create_or_update(custom, isvc(), quiet)
    kube.on_fetch(ISVCS, NS, NAME, lambda reads: {"status": status} if reads >= 2 else None)
    with pytest.raises(InferenceServiceFailed) as failed:
        wait_ready(custom, NS, NAME, timeout_s=10, poll_interval_s=0.01, log=quiet)
    assert (failed.value.reason, failed.value.message) == (reason, message)
    text = str(failed.value)
    assert f"{NS}/{NAME} failed: {reason}: {message}" in text
    assert f"kubectl describe inferenceservice {NAME} -n {NS}" in text


def test_wait_times_out_with_the_last_state_and_leaves_the_service(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    create_or_update(custom, isvc(), quiet)
    loading = {"status": {"conditions": [condition("Ready", "Unknown", "ModelLoading")]}}
    kube.on_fetch(ISVCS, NS, NAME, lambda reads: loading)
    with pytest.raises(
        InferenceServiceTimeout, match=r"within 0.3 s.*Ready=Unknown \(ModelLoading\)"
    ):
        wait_ready(custom, NS, NAME, timeout_s=0.3, poll_interval_s=0.05, log=quiet)
    assert kube.object(ISVCS, NS, NAME) is not None and kube.count("DELETE", PATH) == 0


# ----------------------------------------------------------------------------- the stage


def run_serve(
    model: Path,
    serve: dict[str, Any],
    tracking: dict[str, Any],
    run_id: str,
    endpoint: Path,
    metrics: MetricsSink | None = None,
) -> dict[str, Any]:
    """The serve stage as its component runs it (plain data -> stage -> runner); its summary."""
    stage = ServeStage.from_parameters(serve, model, endpoint)
    return run_stage(stage, StageSettings(tracking=tracking, run_id=run_id, metrics=metrics)).values


def kubeconfig_for(kube: KubeEmulator, path: Path) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": kube.url.rstrip("/")}}],
        "users": [{"name": "test", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
        "current-context": "kmock",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.integration
def test_run_serve_on_kserve_end_to_end(
    kube: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig_for(kube, tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "MODEL_URI.txt").write_text(f"{STORE}\n")
    tracking = {"experiment": "serve-test", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    serve = {
        "backend": "kserve",
        "namespace": NS,
        "reasoning_format": "reflection",
        "poll_interval_s": 0.02,
        "timeout_s": 20,
    }
    reply = "<thinking>Paris it is.</thinking><output>Paris.</output>"
    with FakeOpenAIServer(reply=lambda body: reply) as server:
        kube.on_fetch(ISVCS, NS, INSTANCE, ready_after(2, server.base_url))
        metrics = RecordingMetrics()
        summary = run_serve(model_dir, serve, tracking, RUN_ID, tmp_path / "endpoint.json", metrics)
        [smoke] = server.completions
    assert summary["kind"] == "kserve" and summary["smoke_ok"] is True
    assert summary["base_url"] == f"{server.base_url}/v1" and summary["model"] == NAME
    assert (summary["smoke_reply"], summary["smoke_reasoning"]) == ("Paris.", "Paris it is.")
    assert smoke.body["model"] == NAME and smoke.body["max_tokens"] == 16
    stored = kube.object(ISVCS, NS, INSTANCE)
    assert stored is not None and stored["spec"]["predictor"]["model"]["storageUri"] == STORE
    assert stored["metadata"]["labels"][RUN_ID_LABEL] == RUN_ID  # the runner's run id
    validate_custom_resource({k: v for k, v in stored.items() if k != "status"})
    spec = json.loads((tmp_path / "endpoint.json").read_text())
    assert spec["kind"] == "kserve" and spec["namespace"] == NS and spec["name"] == INSTANCE
    mlflow.set_tracking_uri(tracking["tracking_uri"])
    [parent] = mlflow.search_runs(
        experiment_names=["serve-test"],
        filter_string="tags.`rtune.role` = 'pipeline'",
        output_format="list",
    )
    assert parent.data.tags["rtune.endpoint"] == f"{server.base_url}/v1"
    assert parent.data.metrics["smoke_ok"] == 1.0 and parent.data.metrics["smoke_latency_s"] > 0
    assert metrics.values["smoke_ok"] == 1.0 and metrics.values["ready_s"] >= 0  # the KFP UI's


@pytest.mark.integration
def test_kserve_serves_under_the_served_name_and_clients_send_the_key(
    kube: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig_for(kube, tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("RTUNE_TEST_SERVE_KEY", "k-cluster-123")
    (tmp_path / "model").mkdir()
    tracking = {"experiment": "serve-key", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    serve = {
        "backend": "kserve",
        "namespace": NS,
        "storage_uri": STORE,
        "poll_interval_s": 0.02,
        "served_model_name": "student-v2",
        "api_key_env": "RTUNE_TEST_SERVE_KEY",
    }
    with FakeOpenAIServer(reply=lambda body: "Paris.") as server:
        kube.on_fetch(ISVCS, NS, INSTANCE, ready_after(1, server.base_url))
        summary = run_serve(tmp_path / "model", serve, tracking, RUN_ID, tmp_path / "endpoint")
        [smoke] = server.completions
    assert summary["smoke_ok"] is True and summary["model"] == "student-v2"
    assert smoke.body["model"] == "student-v2" and smoke.authorization == "Bearer k-cluster-123"
    stored = kube.object(ISVCS, NS, INSTANCE)
    assert stored is not None
    assert "--served-model-name=student-v2" in stored["spec"]["predictor"]["model"]["args"]
    spec = EndpointSpec.load(tmp_path / "endpoint")
    assert (spec.model, spec.api_key_env) == ("student-v2", "RTUNE_TEST_SERVE_KEY")
    mlflow.set_tracking_uri(tracking["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=["serve-key"], output_format="list")
    recorded = json.dumps([(r.data.params, r.data.tags) for r in runs])
    written = (tmp_path / "endpoint").read_text() + json.dumps(stored)
    assert "RTUNE_TEST_SERVE_KEY" in recorded and "k-cluster-123" not in recorded + written


def test_an_unset_key_variable_stops_the_stage_before_it_deploys(
    kube: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig_for(kube, tmp_path / "kubeconfig")))
    monkeypatch.delenv("RTUNE_TEST_SERVE_KEY", raising=False)
    serve = {"backend": "kserve", "namespace": NS, "storage_uri": STORE}
    with pytest.raises(InputError, match=r"serve\.api_key_env") as raised:
        run_serve(
            tmp_path / "model",
            {**serve, "api_key_env": "RTUNE_TEST_SERVE_KEY"},
            {"enabled": False},
            RUN_ID,
            tmp_path / "endpoint",
        )
    assert "RTUNE_TEST_SERVE_KEY" in str(raised.value)
    assert kube.object(ISVCS, NS, INSTANCE) is None and not (tmp_path / "endpoint").exists()


def test_kserve_without_a_stored_model_says_which_setting_to_use(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    with pytest.raises(InputError) as raised:
        run_serve(
            tmp_path / "model",
            {"backend": "kserve", "namespace": NS},
            {"enabled": False},
            RUN_ID,
            tmp_path / "endpoint.json",
        )
    message = str(raised.value)
    assert "serve.storage_uri" in message and "quantize.model_store" in message
    assert not (tmp_path / "endpoint.json").exists()


@pytest.mark.integration
def test_a_smoke_test_without_an_answer_fails_the_stage(
    kube: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig_for(kube, tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    (tmp_path / "model").mkdir()
    serve = {"backend": "kserve", "namespace": NS, "storage_uri": STORE, "poll_interval_s": 0.02}
    with FakeOpenAIServer(reply=lambda body: "\n\n  ") as server:
        kube.on_fetch(ISVCS, NS, INSTANCE, ready_after(1, server.base_url))
        with pytest.raises(SmokeTestFailed, match=r"did not answer the smoke test: .*empty text"):
            run_serve(tmp_path / "model", serve, {"enabled": False}, RUN_ID, tmp_path / "endpoint")
    assert EndpointSpec.load(tmp_path / "endpoint").base_url == f"{server.base_url}/v1"


@pytest.mark.integration
def test_each_run_gets_its_own_service_unless_per_run_is_off(
    kube: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig_for(kube, tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    (tmp_path / "model").mkdir()
    tracking = {"enabled": False}
    serve = {"backend": "kserve", "namespace": NS, "storage_uri": STORE, "poll_interval_s": 0.02}
    names = {}
    with FakeOpenAIServer(reply=lambda body: "Paris.") as server:
        for run in ("run-a", "run-b"):
            names[run] = f"{NAME}-{hashlib.sha256(run.encode()).hexdigest()[:8]}"
            kube.on_fetch(ISVCS, NS, names[run], ready_after(1, server.base_url))
            summary = run_serve(tmp_path / "model", serve, tracking, run, tmp_path / run)
            assert summary["model"] == NAME  # clients keep one model name
        kube.on_fetch(ISVCS, NS, NAME, ready_after(1, server.base_url))
        for run in ("run-c", "run-d"):
            in_place = {**serve, "per_run": False}
            run_serve(tmp_path / "model", in_place, tracking, run, tmp_path / run)
    for run, name in names.items():
        stored = kube.object(ISVCS, NS, name)
        assert stored is not None and stored["metadata"]["labels"][RUN_ID_LABEL] == run
    stored = kube.object(ISVCS, NS, NAME)  # per_run off: the last run updated the one service
    assert stored is not None and stored["metadata"]["labels"][RUN_ID_LABEL] == "run-d"
