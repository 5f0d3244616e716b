"""A Kubernetes API on loopback for tests: kmock's ``KubernetesEmulator`` served over real HTTP.

kmock is asyncio (aiohttp); the code under test uses the official, synchronous ``kubernetes``
client. So the emulator runs on its own event loop in a daemon thread, and the test talks to it
through a real ``ApiClient`` pointed at ``http://127.0.0.1:<port>``. There are no controllers:
a test writes the status a controller would (``patch_status``, or ``on_fetch`` to change an object
on its N-th read, deterministically).

    from tests import kube as kube_fixtures

    kube = kube_fixtures.kube  # fixtures (an import would trip ruff's F811 on the parameters)
    kube_api = kube_fixtures.kube_api

    def test_x(kube: KubeEmulator, kube_api: client.ApiClient) -> None:
        kube.register("serving.kserve.io/v1alpha1/servingruntimes", "ServingRuntime")
        ...

Quirks of kmock 0.8 worth knowing (the helpers below work around them):
- objects are stored as sent: no uid, resourceVersion, creationTimestamp or defaulting;
- label and field selectors are ignored on list: every object of the namespace comes back;
- ``GET pods/<name>/log`` serves the pod's JSON unless a reaction is set (``serve_pod_logs``);
- PATCH is a recursive dict merge (merge-patch: lists replaced whole); ``/status`` patches the
  whole object;
- a reaction whose callable returns ``None`` fires once and is then disabled, so ``on_fetch``
  always returns the object itself;
- its pytest plugin (auto-loaded) imports ``pytest_asyncio``; these fixtures do not use it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import kmock
import pytest
from kubernetes import client

T = TypeVar("T")

# resource ("group/version/plural", core: "v1/plural") -> (kind, subresources)
RESOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "v1/pods": ("Pod", ("log", "status")),
    "trainer.kubeflow.org/v1alpha1/trainjobs": ("TrainJob", ("status",)),
    "kubeflow.org/v1/pytorchjobs": ("PyTorchJob", ("status",)),
    "serving.kserve.io/v1beta1/inferenceservices": ("InferenceService", ("status",)),
}


@dataclass
class KubeEmulator:
    """The running emulator: its URL, its recorded requests, and helpers that act on its loop."""

    handler: kmock.KubernetesEmulator
    url: str
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the emulator's thread (its state is not thread-safe) and return the result."""
        done: Future[T] = Future()

        def call() -> None:
            try:
                done.set_result(fn())
            except BaseException as error:
                done.set_exception(error)

        self.loop.call_soon_threadsafe(call)
        return done.result(timeout=10)

    def register(
        self, resource: str, kind: str, subresources: tuple[str, ...] = ("status",)
    ) -> None:
        """Make a resource known (discovery, LIST) — e.g. ``"serving.kserve.io/v1beta1/inferenceservices"``."""
        info = kmock.ResourceInfo(
            kind=kind,
            namespaced=True,
            subresources=set(subresources),
            verbs={"create", "get", "list", "watch", "patch", "delete"},
        )
        self.on_loop(lambda: self.handler.resources.__setitem__(resource, info))

    def requests(self) -> list[tuple[str, str]]:
        """``(METHOD, path)`` of every request served so far, in order."""
        return self.on_loop(
            lambda: [(str(r.method.value).upper(), r.url.path) for r in self.handler]
        )

    def count(self, method: str, path: str) -> int:
        """How many ``method`` requests went to exactly ``path``."""
        return sum(1 for m, p in self.requests() if m == method.upper() and p == path)

    def object(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object as plain JSON, or None if absent/deleted."""

        def read() -> dict[str, Any] | None:
            key = (kmock.resource(resource), namespace, name)
            if key not in self.handler.objects or self.handler.objects[key].deleted:
                return None
            return dict(self.handler.objects[key].raw)

        return self.on_loop(read)

    def on_fetch(
        self,
        resource: str,
        namespace: str,
        name: str,
        change: Callable[[int], Mapping[str, Any] | None],
    ) -> None:
        """On the N-th GET of the object, merge ``change(N)`` into it (if any) before serving it.

        This is how a test plays the controller after N polls, without threads or sleeps.
        """
        res = kmock.resource(resource)
        reads = itertools.count(1)

        def serve(request: kmock.Request) -> dict[str, Any]:
            key = (res, namespace, name)
            if key not in self.handler.objects or self.handler.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            patch = change(next(reads))
            if patch:
                self.handler.objects[key].patch(dict(patch))
            return dict(self.handler.objects[key].raw)

        criteria = (kmock.action.FETCH, res, kmock.namespace(namespace), kmock.name(name))
        self.on_loop(lambda: self.handler[criteria] << serve)

    def serve_pod_logs(self, logs: Callable[[str, dict[str, str]], str]) -> None:
        """Answer ``GET pods/<name>/log`` with ``logs(pod name, query params)`` as plain text."""

        def serve(request: kmock.Request) -> bytes:
            return logs(str(request.name), dict(request.params)).encode()

        criteria = (kmock.method.GET, kmock.resource("v1/pods"), kmock.subresource("log"))
        self.on_loop(lambda: self.handler[criteria] << serve)

    def fail_pod_logs(self, status: int = 500) -> None:
        """Make every ``GET pods/<name>/log`` fail with ``status``."""
        error = kmock.KubernetesError(status=status, reason="Boom", message="log backend down")
        criteria = (kmock.method.GET, kmock.resource("v1/pods"), kmock.subresource("log"))
        self.on_loop(lambda: self.handler[criteria] << error)

    def api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = self.url.rstrip("/")
        return client.ApiClient(configuration)


@contextmanager
def kube_emulator(
    resources: Mapping[str, tuple[str, tuple[str, ...]]] = RESOURCES,
) -> Iterator[KubeEmulator]:
    """Start kmock's emulator on 127.0.0.1 (random port) in a daemon thread; stop it after."""
    started: Future[KubeEmulator] = Future()
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler) as server:
            started.set_result(KubeEmulator(handler, str(server.url), loop, stop))
            await stop.wait()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as error:
            if not started.done():
                started.set_exception(error)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="kmock", daemon=True)
    thread.start()
    emulator = started.result(timeout=30)
    try:
        for resource, (kind, subresources) in resources.items():
            emulator.register(resource, kind, subresources)
        yield emulator
    finally:
        loop.call_soon_threadsafe(emulator.stop.set)
        thread.join(timeout=10)


def patch_status(
    api: client.ApiClient, resource: str, namespace: str, name: str, status: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``status`` through the ``/status`` subresource, as the resource's controller would."""
    group, version, plural = resource.split("/")
    custom = client.CustomObjectsApi(api)
    body = {"status": dict(status)}
    return dict(
        custom.patch_namespaced_custom_object_status(group, version, namespace, plural, name, body)
    )


def condition(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict:
    """A ``metav1.Condition``-shaped condition (the fields a controller writes)."""
    return {
        "type": kind,
        "status": status,
        "reason": reason or kind,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


@pytest.fixture()
def kube() -> Iterator[KubeEmulator]:
    """A fresh emulator per test with ``RESOURCES`` registered."""
    with kube_emulator() as emulator:
        yield emulator


@pytest.fixture()
def kube_api(kube: KubeEmulator) -> Iterator[client.ApiClient]:
    """An official ``kubernetes.client.ApiClient`` pointed at the test's emulator."""
    api = kube.api_client()
    try:
        yield api
    finally:
        api.close()
