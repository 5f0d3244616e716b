"""The workload lifecycle both cluster stages share (finetune's TrainJob/PyTorchJob, serve's
InferenceService), checked through each stage's own entry point against kmock on loopback: a
create that loses a race to an earlier attempt adopts that attempt's object, and waiting runs on
the injected clock and survives a few unreadable polls before giving up."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from rtune.components.finetune.distributed_job import run_distributed_job
from rtune.components.finetune.training_jobs import build_job
from rtune.components.serve.kserve import (
    InferenceServiceTimeout,
    build_inference_service,
    create_or_update,
    wait_ready,
)
from tests import kube as kube_fixtures
from tests.kube import KubeEmulator, condition
from tests.servers import free_port
from tests.unit.finetune.test_distributed_job import FakeClock, make_spec

kube = kube_fixtures.kube
kube_api = kube_fixtures.kube_api

NS = "team-a"
ISVCS = "serving.kserve.io/v1beta1/inferenceservices"
TRAINJOBS = "trainer.kubeflow.org/v1alpha1/trainjobs"


def quiet(_: str) -> None:
    return


def hidden_on_first_read(resource: str, name: str, kube: KubeEmulator, then: Any = None) -> None:
    """The object exists, but the first GET says 404: another attempt created it between our
    existence check and our create (which the API then answers with 409 Conflict)."""
    import kmock

    def serve(reads: int) -> Any:
        if reads == 1:
            raise kmock.KubernetesObjectNotFoundError()
        return then(reads) if then else None

    kube.on_fetch(resource, NS, name, serve)


def create(api: client.ApiClient, resource: str, obj: dict[str, Any]) -> None:
    group, version, plural = resource.split("/")
    client.CustomObjectsApi(api).create_namespaced_custom_object(group, version, NS, plural, obj)


def test_a_trainjob_create_that_loses_the_race_adopts_the_winner(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    spec = make_spec()
    create(kube_api, TRAINJOBS, build_job(spec))  # the earlier attempt's job
    done = {"status": {"conditions": [condition("Complete")]}}
    hidden_on_first_read(TRAINJOBS, spec.name, kube, then=lambda reads: done)
    clock = FakeClock()
    result = run_distributed_job(spec, kube_api, log=quiet, sleep=clock.sleep, clock=clock)
    assert result.adopted is True and result.reason == "Complete"
    collection = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
    assert kube.count("POST", collection) == 2  # the winner's, and our refused one


def test_an_inference_service_create_that_loses_the_race_adopts_the_winner(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    obj = build_inference_service("rtune-student", NS, "s3://models/run-1/model", gpus=1)
    create(kube_api, ISVCS, obj)  # the earlier attempt's service, same spec
    hidden_on_first_read(ISVCS, "rtune-student", kube)
    custom = client.CustomObjectsApi(kube_api)
    stored, created = create_or_update(custom, obj, quiet)
    assert created is False and stored["spec"] == obj["spec"]
    collection = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"
    assert kube.count("POST", collection) == 2
    assert kube.count("PATCH", f"{collection}/rtune-student") == 0  # already the wanted spec


def test_waiting_for_ready_runs_on_the_given_clock(
    kube: KubeEmulator, kube_api: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    create_or_update(custom, build_inference_service("svc", NS, "s3://m/x", gpus=0), quiet)
    loading = {"status": {"conditions": [condition("Ready", "Unknown", "ModelLoading")]}}
    kube.on_fetch(ISVCS, NS, "svc", lambda reads: loading)
    clock = FakeClock()
    with pytest.raises(InferenceServiceTimeout, match=r"within 60 s.*ModelLoading"):
        wait_ready(custom, NS, "svc", 60, 20, log=quiet, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == [20, 20, 20] and clock.now == 60  # waited out, not spent
    path = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/svc"
    assert (
        kube.count("GET", path) == 1 + 4
    )  # create_or_update's, then one at the start and one after each wait


def test_waiting_for_ready_survives_a_few_unreadable_polls_then_says_so() -> None:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    configuration.retries = False
    custom = client.CustomObjectsApi(client.ApiClient(configuration))
    clock = FakeClock()
    with pytest.raises(RuntimeError, match=f"cannot read InferenceService {NS}/svc"):
        wait_ready(custom, NS, "svc", 3600, 10, log=quiet, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == [10] * 4  # five reads failed in a row, not the first one alone
