"""The Kubernetes API a pod reaches at ``kubernetes.default.svc``: kmock behind RBAC and TLS.

kmock (an in-memory Kubernetes API) stores and serves objects; in front of it sits what a real API
server adds for a pod: HTTPS with a cluster CA (the pod trusts ``ca.crt`` from its service-account
mount), a bearer token that names the service account, and RBAC from the rendered manifests — a
request the account's Roles do not grant is answered ``403 Forbidden`` with the API server's
message, and recorded. Which custom resources exist is the rehearsal's choice (a cluster without
KServe has no ``inferenceservices``: 404).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from rtune.pipelines.rehearsal.rbac import Grant, allowed, request_attributes

# resource ("group/version/plural") -> kind, for the custom resources a cluster may have
CUSTOM_RESOURCES: dict[str, str] = {
    "trainer.kubeflow.org/v1alpha1/trainjobs": "TrainJob",
    "kubeflow.org/v1/pytorchjobs": "PyTorchJob",
    "serving.kserve.io/v1beta1/inferenceservices": "InferenceService",
    "serving.kserve.io/v1alpha1/servingruntimes": "ServingRuntime",
}
CORE_RESOURCES = {"v1/pods": "Pod", "v1/secrets": "Secret", "v1/configmaps": "ConfigMap"}


@dataclass
class Denied:
    account: str
    method: str
    path: str
    message: str


_POD_LOG = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/pods/(?P<name>[^/]+)/log$")


@dataclass
class PodLog:
    """The log of a pod the rehearsal's controllers run: lines of its file, each stamped with the
    time it was first read (a kubelet stamps each line when the container writes it)."""

    path: Path
    lines: list[tuple[datetime.datetime, str]] = field(default_factory=list)
    _offset: int = 0
    _partial: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, query: Mapping[str, str]) -> str:
        """``GET .../log`` with ``timestamps``, ``sinceSeconds`` and ``tailLines`` as the API has them."""
        with self._lock:
            self._pump()
            lines = list(self.lines)
        if "sinceSeconds" in query:
            since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
                seconds=int(query["sinceSeconds"])
            )
            lines = [line for line in lines if line[0] >= since]
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"]) :] if int(query["tailLines"]) else []
        stamped = query.get("timestamps") == "true"
        return "".join(
            (f"{stamp.strftime('%Y-%m-%dT%H:%M:%S.%fZ')} {text}\n" if stamped else f"{text}\n")
            for stamp, text in lines
        )

    def _pump(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        self._offset += len(data)
        text = self._partial + data.decode("utf-8", errors="replace")
        *complete, self._partial = text.split("\n")
        now = datetime.datetime.now(datetime.UTC)
        self.lines += [(now, line) for line in complete]


@dataclass
class KubeApi:
    address: str
    port: int
    ca_file: Path
    accounts: dict[str, tuple[str, list[Grant]]] = field(
        default_factory=dict
    )  # token -> (sa, grants)
    denied: list[Denied] = field(default_factory=list)
    upstream: str = ""
    pod_logs: dict[tuple[str, str], PodLog] = field(default_factory=dict)  # (ns, pod) -> log
    _stop: Any = None

    def add_account(self, token: str, subject: str, grants: list[Grant]) -> None:
        self.accounts[token] = (subject, grants)

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """A controller's own request (its service account may do anything): straight to the
        store, JSON in and out; ``None`` for 404. Patches are JSON merge patches."""
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        request = urllib.request.Request(
            self.upstream + path,
            json.dumps(body).encode() if body is not None else None,
            {"Content-Type": content_type},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise


def _certificate(work: Path, address: str) -> tuple[Path, Path]:
    """A self-signed serving certificate for ``kubernetes.default.svc`` and ``address``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("kubernetes.default.svc"), x509.DNSName("kubernetes.default")]
    names.append(x509.IPAddress(ipaddress.ip_address(address)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = work / "apiserver.crt", work / "apiserver.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _start_kmock(resources: Mapping[str, str]) -> tuple[str, Any]:
    import logging

    import kmock

    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    started: Future[tuple[str, Any]] = Future()
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler) as server:
            for resource, kind in resources.items():
                handler.resources[resource] = kmock.ResourceInfo(
                    kind=kind,
                    namespaced=True,
                    subresources={"status", "log"} if kind == "Pod" else {"status"},
                    verbs={"create", "get", "list", "watch", "patch", "update", "delete"},
                )
            started.set_result(
                (str(server.url).rstrip("/"), lambda: loop.call_soon_threadsafe(stop.set))
            )
            await stop.wait()

    threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True).start()
    return started.result(timeout=30)


def start_kube_api(work: Path, address: str, port: int, crds: list[str]) -> KubeApi:
    """kmock with ``crds`` (keys of CUSTOM_RESOURCES) registered, behind RBAC on TLS."""
    upstream, stop_kmock = _start_kmock(
        {**CORE_RESOURCES, **{r: CUSTOM_RESOURCES[r] for r in crds}}
    )
    cert_file, key_file = _certificate(work, address)
    api = KubeApi(address, port, cert_file, upstream=upstream)
    server = ThreadingHTTPServer((address, port), _handler(api))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        stop_kmock()

    api._stop = stop
    return api


def _status(code: int, reason: str, message: str) -> bytes:
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    return json.dumps({**status, "message": message, "reason": reason}).encode()


def _handler(api: KubeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            token = token.strip() if scheme.lower() == "bearer" else ""
            if token not in api.accounts:
                self._send(401, _status(401, "Unauthorized", "Unauthorized"))
                return
            subject, grants = api.accounts[token]
            parts = urlsplit(self.path)
            attributes = request_attributes(self.command, parts.path, dict(parse_qsl(parts.query)))
            if attributes is not None and not allowed(grants, attributes):
                message = f"forbidden: {attributes.describe(subject)}"
                api.denied.append(Denied(subject, self.command, self.path, message))
                self._send(403, _status(403, "Forbidden", message))
                return
            log = _POD_LOG.match(parts.path)
            if log is not None and self.command == "GET":
                self._pod_log(log["namespace"], log["name"], dict(parse_qsl(parts.query)))
                return
            self._forward(body)

        def _pod_log(self, namespace: str, name: str, query: Mapping[str, str]) -> None:
            found = api.pod_logs.get((namespace, name))
            if found is None:
                message = f'pods "{name}" not found'
                self._send(404, _status(404, "NotFound", message))
                return
            self._send(200, found.read(query).encode(), "text/plain")

        def _forward(self, body: bytes | None) -> None:
            headers = {
                k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")
            }
            request = urllib.request.Request(
                api.upstream + self.path, body, headers, method=self.command
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as reply:
                    self._send(
                        reply.status,
                        reply.read(),
                        reply.headers.get("Content-Type", "application/json"),
                    )
            except urllib.error.HTTPError as error:
                self._send(
                    error.code, error.read(), error.headers.get("Content-Type", "application/json")
                )

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler
