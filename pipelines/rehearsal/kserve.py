"""The rehearsal's KServe: every InferenceService becomes a predictor pod that serves its model.

What a cluster's KServe does with an InferenceService the serve stage creates decides whether the
model can be reached at all; this controller plays it on loopback:

1. **Runtime**: ``predictor.model.runtime`` must name a ServingRuntime of the namespace (from the
   rendered manifests) that supports ``modelFormat`` — else ``Ready=False``
   ``RuntimeNotRecognized``, as the controller says it.
2. **Storage initializer**: ``storageUri`` (``s3://``) is downloaded with *only* the credentials
   of the predictor's service account: the Secrets it lists (``AWS_ACCESS_KEY_ID`` /
   ``AWS_SECRET_ACCESS_KEY``) and the ``serving.kserve.io/s3-*`` annotations (on the Secret, or
   the service account) for the endpoint. No account, no Secret, no grant on the bucket: the
   model fails to load (``modelStatus`` ``FailedToLoad`` with the storage error), as on a cluster.
3. **Predictor pod**: the runtime's container under the pod rules of :mod:`.pod` — its image, env
   (``VLLM_API_KEY`` from Secret ``rtune-serve``: missing, the pod cannot start), user — running
   the runtime's command line with :mod:`.model_server` in vLLM's place (no GPU here), the model
   read-only at ``/mnt/models``, listening on the runtime's port at an address of its own.
4. **Networking**: ``<name>-predictor.<namespace>.svc.cluster.local`` resolves in every pod, port
   80 forwards to the container port (the Service); once ``/health`` answers the status gets
   ``Ready``, ``PredictorReady``, ``status.url`` and ``status.address.url``.

A changed spec (a re-run patching the service) is served again from step 1. Scale-to-zero,
canaries, GPUs and the Knative revision machinery are not rehearsed.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from rtune.pipelines.rehearsal.cluster import Cluster
from rtune.pipelines.rehearsal.images import UnknownImage, image_facts
from rtune.pipelines.rehearsal.kubeapi import PodLog
from rtune.pipelines.rehearsal.pod import Mount, PodSpec, run_pod
from rtune.pipelines.rehearsal.trainer import JobRefused, resolve_env

ISVCS = "/apis/serving.kserve.io/v1beta1"
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
STAND_IN = "rtune.pipelines.rehearsal.model_server"
S3_ANNOTATION = "serving.kserve.io/s3-"
MODEL_MOUNT = "/mnt/models"
SERVICE_PORT = 80
READY_TIMEOUT_S = 600.0


class LoadFailed(Exception):
    """The storage initializer or the model server failed (KServe's ``FailedToLoad``)."""


@dataclass(frozen=True)
class S3Settings:
    access_key_id: str
    secret_access_key: str
    endpoint: str  # host:port
    use_https: bool
    region: str


def storage_credentials(
    account: str,
    namespace: str,
    documents: Sequence[Mapping[str, Any]],
    secrets: Mapping[str, Mapping[str, str]],
) -> S3Settings:
    """What KServe's credential builder gives the storage initializer for ``account``: the S3
    keys of a Secret the account lists, the endpoint from ``serving.kserve.io/s3-*`` annotations
    (the Secret's, else the account's). Raises :class:`LoadFailed` naming what is missing."""
    found = [
        doc
        for doc in documents
        if doc.get("kind") == "ServiceAccount" and doc["metadata"]["name"] == account
    ]
    if not found:
        raise LoadFailed(f'serviceaccount "{account}" not found in namespace {namespace}')
    sa = found[0]
    annotations = dict(sa["metadata"].get("annotations") or {})
    for ref in sa.get("secrets") or []:
        data = secrets.get(ref["name"])
        if data is None or "AWS_ACCESS_KEY_ID" not in data:
            continue
        secret_doc = next(
            (
                d
                for d in documents
                if d.get("kind") == "Secret" and d["metadata"]["name"] == ref["name"]
            ),
            {"metadata": {}},
        )
        merged = {**annotations, **(secret_doc["metadata"].get("annotations") or {})}
        endpoint = merged.get(f"{S3_ANNOTATION}endpoint", "s3.amazonaws.com")
        return S3Settings(
            data["AWS_ACCESS_KEY_ID"],
            data.get("AWS_SECRET_ACCESS_KEY", ""),
            endpoint,
            merged.get(f"{S3_ANNOTATION}usehttps", "1") == "1",
            merged.get(f"{S3_ANNOTATION}region", "us-east-1"),
        )
    raise LoadFailed(
        f"serviceaccount {account!r} lists no Secret with S3 credentials "
        f"(secrets: {[s['name'] for s in sa.get('secrets') or []]})"
    )


def download_model(
    uri: str, settings: S3Settings, resolve: Callable[[str], str], into: Path
) -> int:
    """The storage initializer: every object under ``uri`` into ``into`` (keys stay inside it).
    ``resolve`` maps the endpoint's host to the address the cluster DNS gives it."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    if not uri.startswith("s3://"):
        raise LoadFailed(f"storageUri {uri!r}: only s3:// is rehearsed")
    bucket, _, prefix = uri[5:].partition("/")
    host, _, port = settings.endpoint.partition(":")
    try:
        address = resolve(host)
    except KeyError:
        raise LoadFailed(f"dial tcp: lookup {host}: no such host (s3-endpoint)") from None
    scheme = "https" if settings.use_https else "http"
    client = boto3.client(
        "s3",
        endpoint_url=f"{scheme}://{address}{':' + port if port else ''}",
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        region_name=settings.region,
        config=Config(retries={"max_attempts": 2}),
    )
    root = into.resolve()
    count = 0
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix.rstrip("/") + "/"
        )
        for page in pages:
            for item in page.get("Contents") or []:
                relative = PurePosixPath(item["Key"][len(prefix.rstrip("/")) + 1 :])
                target = (root / relative).resolve()
                if ".." in relative.parts or not target.is_relative_to(root):
                    raise LoadFailed(f"object key {item['Key']!r} leaves the model folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, item["Key"], str(target))
                count += 1
    except (ClientError, BotoCoreError) as error:
        raise LoadFailed(f"failed to download {uri}: {error}") from error
    if count == 0:
        raise LoadFailed(f"no objects under {uri}")
    return count


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj.get("spec"), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Served:
    digest: str
    stop: threading.Event
    forwarder: socket.socket | None = None
    pod: threading.Thread | None = None


@dataclass
class KServeController:
    """Watches InferenceServices in the rehearsal's API and serves each spec it has not served."""

    cluster: Cluster
    documents: Sequence[Mapping[str, Any]]  # rendered manifests: runtimes, accounts, Secrets
    out: Callable[[str], None] = print
    served: dict[tuple[str, str], Served] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> KServeController:
        threading.Thread(target=self._watch, daemon=True, name="rehearsal-kserve").start()
        return self

    def stop(self) -> None:
        """Stop watching and every predictor pod; wait until their processes are gone."""
        self._stop.set()
        for served in self.served.values():
            self._retire(served)
        for served in self.served.values():
            if served.pod is not None:
                served.pod.join(timeout=30)

    @staticmethod
    def _retire(served: Served) -> None:
        served.stop.set()
        if served.forwarder is not None:
            served.forwarder.close()

    def _watch(self) -> None:
        assert self.cluster.kube is not None
        while not self._stop.wait(1.0):
            try:
                listed = self.cluster.kube.call("GET", f"{ISVCS}/inferenceservices") or {}
            except OSError:
                continue
            items = listed.get("items") or []
            present = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in items}
            for gone in [key for key in self.served if key not in present]:
                self._retire(self.served.pop(gone))
                self._note(f"InferenceService {gone[0]}/{gone[1]} deleted: its predictor stopped")
            for obj in items:
                key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                digest = _spec_digest(obj)
                current = self.served.get(key)
                if current is not None and current.digest == digest:
                    continue
                if current is not None:  # a new spec: the old predictor goes
                    self._retire(current)
                self.served[key] = Served(digest, threading.Event())
                threading.Thread(
                    target=self.reconcile, args=(obj, self.served[key]), daemon=True
                ).start()

    # -- one service ------------------------------------------------------------------------
    def reconcile(self, obj: Mapping[str, Any], served: Served) -> bool:
        """Bring one spec of the service up; its status says how that went. True when Ready."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        predictor = (obj.get("spec") or {}).get("predictor") or {}
        model = predictor.get("model") or {}
        self._status(namespace, name, ready=False, reason="Reconciling")
        try:
            runtime = self._runtime(namespace, model)
        except JobRefused as refused:
            self._status(
                namespace, name, ready=False, reason=refused.reason, message=refused.message
            )
            self._note(f"InferenceService {namespace}/{name}: {refused}")
            return False
        folder = self.cluster.work / "kserve" / namespace / name / served.digest
        account = predictor.get("serviceAccountName") or "default"
        try:
            settings = storage_credentials(account, namespace, self.documents, self.cluster.secrets)
            count = download_model(
                str(model.get("storageUri", "")),
                settings,
                self.cluster.hosts.__getitem__,
                folder / "models",
            )
            self._note(
                f"InferenceService {namespace}/{name}: storage initializer fetched {count} files "
                f"as {account}"
            )
            spec = self._pod(namespace, name, predictor, runtime, folder)
        except (LoadFailed, JobRefused) as error:
            message = error.message if isinstance(error, JobRefused) else str(error)
            self._failed(namespace, name, message)
            return False
        address = self.cluster.address_of(f"{name}-predictor.{namespace}.svc.cluster.local")
        self.cluster.alias(f"{name}-predictor.{namespace}", address)
        self.cluster.alias(f"{name}-predictor.{namespace}.svc", address)
        spec.env["POD_IP"] = address
        port = _container_port(runtime)
        log = PodLog(folder / "pod" / "log.txt")
        assert self.cluster.kube is not None
        self.cluster.kube.pod_logs[(namespace, spec.name)] = log
        pod_result: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: pod_result.update(
                result=run_pod(spec, folder / "pod", None, kill_when=served.stop.is_set)
            ),
            daemon=True,
        )
        served.pod = thread
        thread.start()
        if not _wait_health(f"http://{address}:{port}/health", thread, served.stop):
            tail = (folder / "pod" / "log.txt").read_text(errors="replace")[-400:]
            self._failed(namespace, name, f"the model server did not become healthy: {tail}")
            served.stop.set()
            return False
        served.forwarder = _forward(address, SERVICE_PORT, port)
        host = f"{name}-predictor.{namespace}.svc.cluster.local"
        self._status(
            namespace,
            name,
            ready=True,
            url=f"http://{name}-{namespace}.example.com",
            address=f"http://{host}",
        )
        self._note(f"InferenceService {namespace}/{name} Ready at http://{host}")
        return True

    def _runtime(self, namespace: str, model: Mapping[str, Any]) -> Mapping[str, Any]:
        wanted = model.get("runtime", "")
        fmt = (model.get("modelFormat") or {}).get("name", "")
        for doc in self.documents:
            if doc.get("kind") != "ServingRuntime" or doc["metadata"]["name"] != wanted:
                continue
            formats = [f.get("name") for f in doc["spec"].get("supportedModelFormats") or []]
            if fmt not in formats:
                raise JobRefused(
                    "NoSupportingRuntime", f"runtime {wanted} does not support format {fmt!r}"
                )
            return doc
        raise JobRefused(
            "RuntimeNotRecognized", f"ServingRuntime {wanted!r} not found in namespace {namespace}"
        )

    def _pod(
        self,
        namespace: str,
        name: str,
        predictor: Mapping[str, Any],
        runtime: Mapping[str, Any],
        folder: Path,
    ) -> PodSpec:
        container = runtime["spec"]["containers"][0]
        model = predictor.get("model") or {}
        try:
            image = image_facts(str(container.get("image", "")))
        except UnknownImage as error:
            raise JobRefused("ErrImagePull", str(error)) from error
        security = {
            **(predictor.get("securityContext") or {}),
            **(container.get("securityContext") or {}),
            **(model.get("securityContext") or {}),
        }
        uid = int(security.get("runAsUser", image.uid))
        gid = int(security.get("runAsGroup", image.gid))
        if security.get("runAsNonRoot") and uid == 0:
            raise JobRefused(
                "CreateContainerConfigError",
                "container has runAsNonRoot and image will run as root",
            )
        image = replace(image, uid=uid, gid=gid)
        env = dict(image.env)
        env.update(resolve_env(list(container.get("env") or []), self.cluster.secrets))
        env.update(resolve_env(list(model.get("env") or []), self.cluster.secrets))
        command = [
            *container.get("command", []),
            *container.get("args", []),
            *model.get("args", []),
        ]
        command = [part.replace("{{.Name}}", name) for part in command]
        command = [STAND_IN if part == VLLM_MODULE else part for part in command]
        return PodSpec(
            name=f"{name}-predictor-00001-deployment",
            image=image,
            command=command,
            env=env,
            mounts=[Mount(MODEL_MOUNT, folder / "models", read_only=True)],
            hosts=dict(self.cluster.hosts),
            hosts_file=self.cluster.hosts_file,
        )

    # -- status -----------------------------------------------------------------------------
    def _note(self, text: str) -> None:
        self.events.append(text)
        self.out(f"  {text}")

    def _failed(self, namespace: str, name: str, message: str) -> None:
        self._note(f"InferenceService {namespace}/{name}: FailedToLoad: {message}")
        assert self.cluster.kube is not None
        self.cluster.kube.call(
            "PATCH",
            f"{ISVCS}/namespaces/{namespace}/inferenceservices/{name}/status",
            {
                "status": {
                    "modelStatus": {
                        "transitionStatus": "BlockedByFailedLoad",
                        "states": {"activeModelState": "FailedToLoad"},
                        "lastFailureInfo": {"reason": "ModelLoadFailed", "message": message},
                    }
                }
            },
        )

    def _status(
        self,
        namespace: str,
        name: str,
        ready: bool,
        reason: str = "",
        message: str = "",
        url: str = "",
        address: str = "",
    ) -> None:
        state = "True" if ready else "False"
        conditions = [
            {"type": kind, "status": state, "lastTransitionTime": _now()}
            for kind in ("PredictorReady", "IngressReady", "Ready")
        ]
        if reason:
            for condition in conditions:
                condition.update(reason=reason, message=message)
        status: dict[str, Any] = {"conditions": conditions, "modelStatus": None}
        if ready:
            status.update(url=url, address={"url": address})
        else:
            status.update(url=None, address=None)
        assert self.cluster.kube is not None
        self.cluster.kube.call(
            "PATCH",
            f"{ISVCS}/namespaces/{namespace}/inferenceservices/{name}/status",
            {"status": status},
        )


def _container_port(runtime: Mapping[str, Any]) -> int:
    container = runtime["spec"]["containers"][0]
    ports = container.get("ports") or [{"containerPort": 8080}]
    return int(ports[0]["containerPort"])


def _wait_health(url: str, pod: threading.Thread, stop: threading.Event) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and pod.is_alive() and not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(1.0)
    return False


def _forward(address: str, port: int, target: int) -> socket.socket:
    """The Service: ``address:port`` relays every connection to ``address:target``."""
    listener = socket.create_server((address, port), reuse_port=False)

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((address, target), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener
