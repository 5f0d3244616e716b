"""The fine-tuned model in a cluster run: its Model artifact holds only MODEL_URI.txt (the
weights stay in the store), so evaluate serves it like the candidate - a sibling
InferenceService ``<candidate>-ft`` with the same spec and the fine-tuned storageUri - for the
evaluation only, and deletes it afterwards (also when answering fails). On the Kubernetes API
emulator (no controller: the test writes the Ready status KServe would)."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from rtune.components.common.k8s_workload import COMPONENT_LABEL, RUN_ID_LABEL
from rtune.components.evaluate.config import EvaluateConfig
from rtune.components.evaluate.task import (
    EvaluateStage,
    finetuned_endpoint,
    finetuned_identity,
)
from rtune.components.serve.endpoint import EndpointSpec
from rtune.components.serve.kserve import build_inference_service, create_or_update, sibling_service
from tests import kube as kube_fixtures
from tests.fakes.openai_server import FakeOpenAIServer
from tests.kube import KubeEmulator, condition
from tests.unit.serve.test_serve_kserve import kubeconfig_for

kube = kube_fixtures.kube
kube_api = kube_fixtures.kube_api

NS = "kubeflow"
CANDIDATE = "rtune-student-c81ba3e6"
SIBLING = f"{CANDIDATE}-ft"
ISVCS = "serving.kserve.io/v1beta1/inferenceservices"
QUANTIZED = "s3://rtune-models/quantized/run-1/quantized"
FINETUNED = "s3://rtune-models/finetuned/run-1/output/model"
RUN_ID = "6f1c2d3e-0000-4a5b-9c8d-123456789abc"


def candidate_object() -> dict[str, Any]:
    return build_inference_service(
        CANDIDATE, NS, QUANTIZED, gpus=4, served_model_name="rtune-student",
        service_account="rtune-serving", kfp_run_id=RUN_ID, extra_args=["--max-model-len", "2048"],
    )  # fmt: skip


def test_the_sibling_is_served_exactly_like_the_candidate_but_for_the_model() -> None:
    served = {**candidate_object(), "status": {"url": "http://x"}}
    before = copy.deepcopy(served)
    sibling = sibling_service(served, SIBLING, FINETUNED, "evaluate")
    assert served == before  # the candidate's object is not touched
    assert sibling["metadata"]["name"] == SIBLING and sibling["metadata"]["namespace"] == NS
    assert sibling["metadata"]["labels"][COMPONENT_LABEL] == "evaluate"
    assert sibling["metadata"]["labels"][RUN_ID_LABEL] == RUN_ID
    assert "status" not in sibling
    expected = copy.deepcopy(served["spec"])
    expected["predictor"]["model"]["storageUri"] = FINETUNED
    assert sibling["spec"] == expected  # runtime, args, GPUs, service account, security


def _artifact(tmp_path: Path) -> Path:
    folder = tmp_path / "finetune-model"
    folder.mkdir()
    (folder / "MODEL_URI.txt").write_text(FINETUNED + "\n")
    return folder


def test_a_model_artifact_in_the_store_is_compared_not_skipped(tmp_path: Path) -> None:
    folder = _artifact(tmp_path)
    stage = EvaluateStage(EvaluateConfig(), tmp_path / "endpoint", None, None, finetuned=folder)
    assert stage.finetuned_skip() == ""
    assert finetuned_identity(EvaluateConfig(), folder) == f"store:{FINETUNED}"
    (folder / "MODEL_URI.txt").unlink()
    assert "config.json missing" in stage.finetuned_skip()


@pytest.mark.integration
@pytest.mark.parametrize("fails", [False, True], ids=["answers", "answering-fails"])
def test_the_sibling_answers_and_is_deleted_afterwards(
    kube: KubeEmulator,
    kube_api: client.ApiClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fails: bool,
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig_for(kube, tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    create_or_update(client.CustomObjectsApi(kube_api), candidate_object(), lambda _: None)
    spec = EndpointSpec(
        kind="kserve", base_url="http://unused/v1", model="rtune-student", name=CANDIDATE,
        namespace=NS,
    )  # fmt: skip
    with FakeOpenAIServer(reply=lambda body: "fine-tuned says hi", model="rtune-student") as ft:
        status = {"url": ft.base_url, "conditions": [condition("Ready")]}
        kube.on_fetch(ISVCS, NS, SIBLING, lambda reads: {"status": status} if reads >= 2 else None)
        expect = pytest.raises(RuntimeError) if fails else nullcontext()
        folder = _artifact(tmp_path)
        with expect, finetuned_endpoint(EvaluateConfig(), folder, "none", spec) as model:
            stored = kube.object(ISVCS, NS, SIBLING)
            assert stored is not None
            assert stored["spec"]["predictor"]["model"]["storageUri"] == FINETUNED
            assert stored["spec"]["predictor"]["serviceAccountName"] == "rtune-serving"
            reply = model.chat([{"role": "user", "content": "hi"}], max_tokens=8)
            assert reply.content == "fine-tuned says hi"
            if fails:
                raise RuntimeError("answering failed")
    assert kube.object(ISVCS, NS, SIBLING) is None  # deleted, even after a failure
    assert kube.object(ISVCS, NS, CANDIDATE) is not None  # the shipped service stays
