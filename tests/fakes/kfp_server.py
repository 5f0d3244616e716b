"""A Kubeflow Pipelines v2beta1 REST API on 127.0.0.1 for tests: real sockets, state in memory.

    with FakeKfpServer(token="secret") as kfp:
        kfp.script_run(["PENDING", "RUNNING", "FAILED"], error="task select-rifd failed")
        ... rtune submit --host kfp.url ...
        kfp.versions_of("reflection-tuning")   # uploaded versions, each with the parsed spec
        kfp.authorizations                     # the Authorization header of every request

It speaks the subset ``rtune submit`` uses (and what ``kfp.Client`` needs for the same flow):

    GET  /apis/v2beta1/healthz
    GET  /apis/v2beta1/pipelines?filter=&namespace=          POST /apis/v2beta1/pipelines
    POST /apis/v2beta1/pipelines/upload?name=&namespace=     (multipart field ``uploadfile``)
    POST /apis/v2beta1/pipelines/upload_version?name=&pipelineid=   (multipart ``uploadfile``)
    GET  /apis/v2beta1/pipelines/{id}/versions?filter=
    GET  /apis/v2beta1/experiments?filter=&namespace=        POST /apis/v2beta1/experiments
    POST /apis/v2beta1/runs                                  GET  /apis/v2beta1/runs/{id}

Like the real API server it answers errors as ``{"code", "message"}`` JSON with the HTTP status
(401 without the expected bearer token when one is set, 404 for unknown ids, 409 for a duplicate
pipeline or version name, 400 for an unparsable upload), and list filters are the JSON ``Filter``
proto (``EQUALS`` on ``name``/``display_name``). A run walks through the states scripted with
``script_run``, one step per ``GET`` of the run, so a test controls its course without timing.

``auth_proxy`` puts an authenticating proxy in front (Dex/oauth2-proxy, as a Kubeflow ingress
does for a client without a session): ``"login-page"`` answers every API request with an HTML
login page (200), ``"redirect"`` with a 302 to ``LOGIN_PATH``, which serves that page.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.fakes.loopback import LoopbackHTTPServer

Body = dict[str, Any]
API = "/apis/v2beta1"
EQUALS = ("EQUALS", 1)
LOGIN_PATH = "/dex/auth"
LOGIN_PAGE = (
    b"<!DOCTYPE html><html><head><title>Log in to Kubeflow</title></head><body></body></html>"
)
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 409: 6}  # what grpc-gateway puts in "code"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RunScript:
    """The states a new run goes through (one per GET) and the error it ends with, if any."""

    states: list[str] = field(default_factory=lambda: ["PENDING", "RUNNING", "SUCCEEDED"])
    error: str | None = None


@dataclass
class LoggedRequest:
    method: str
    path: str
    authorization: str | None


def parse_multipart_file(content_type: str, body: bytes, name: str = "uploadfile") -> bytes:
    """The bytes of form field ``name`` in a ``multipart/form-data`` body."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            return bytes(part.get_payload(decode=True) or b"")
    raise ApiError(400, f"multipart form has no field {name!r}")


def matches(item: Body, filter_json: str | None) -> bool:
    """Does ``item`` pass the JSON-serialized ``Filter`` (EQUALS predicates only)?"""
    if not filter_json:
        return True
    for predicate in json.loads(filter_json).get("predicates", []):
        if predicate.get("operation") not in EQUALS:
            raise ApiError(400, f"fake KFP supports only EQUALS filters, got {predicate}")
        value = predicate.get("string_value", predicate.get("stringValue"))
        if item.get(predicate["key"]) != value:
            return False
    return True


class FakeKfpServer(LoopbackHTTPServer):
    """Context manager running the API in a thread; ``url`` is the ``--host`` to pass."""

    def __init__(
        self, token: str | None = None, multi_user: bool = False, auth_proxy: str = ""
    ) -> None:
        if auth_proxy not in ("", "login-page", "redirect"):
            raise ValueError(
                f"auth_proxy must be '', 'login-page' or 'redirect', got {auth_proxy!r}"
            )
        self.token = token
        self.multi_user = multi_user
        self.auth_proxy = auth_proxy
        self.log: list[LoggedRequest] = []
        self.pipelines: dict[str, Body] = {}
        self.versions: dict[str, Body] = {}
        self.experiments: dict[str, Body] = {}
        self.runs: dict[str, Body] = {}
        self._scripts: dict[str, RunScript] = {}
        self._next_script = RunScript()
        self._lock = threading.Lock()
        super().__init__(self._handler_class())

    @property
    def url(self) -> str:
        return self.base_url

    # -- what tests set and read --

    def script_run(self, states: list[str], error: str | None = None) -> None:
        """Runs created from now on go through ``states`` (the last one sticks)."""
        self._next_script = RunScript(list(states), error)

    @property
    def authorizations(self) -> list[str | None]:
        with self._lock:
            return [r.authorization for r in self.log]

    def versions_of(self, pipeline_name: str) -> list[Body]:
        ids = {p["pipeline_id"] for p in self.pipelines.values() if p["name"] == pipeline_name}
        return [v for v in self.versions.values() if v["pipeline_id"] in ids]

    # -- the API --

    def handle(
        self, method: str, path: str, query: dict[str, str], body: bytes, ctype: str
    ) -> Body:
        parts = path.removeprefix(API).strip("/").split("/")
        if method == "GET" and parts == ["healthz"]:
            return {"multi_user": self.multi_user}
        if parts[0] == "pipelines":
            return self._pipelines(method, parts[1:], query, body, ctype)
        if parts == ["experiments"]:
            return self._experiments(method, query, body)
        if parts[0] == "runs":
            return self._runs(method, parts[1:], body)
        raise ApiError(404, f"Not Found: {method} {path}")

    def _pipelines(
        self, method: str, rest: list[str], query: dict[str, str], body: bytes, ctype: str
    ) -> Body:
        if method == "GET" and not rest:
            found = self._listed(self.pipelines, query)
            return {"pipelines": found, "total_size": len(found)} if found else {}
        if method == "POST" and not rest:
            data = json.loads(body or b"{}")
            return self._create_pipeline(data.get("name") or data["display_name"], data)
        if method == "POST" and rest == ["upload"]:
            spec = self._parse_spec(parse_multipart_file(ctype, body))
            pipeline = self._create_pipeline(query["name"], query)
            self._create_version(pipeline["pipeline_id"], query["name"], spec)
            return pipeline
        if method == "POST" and rest == ["upload_version"]:
            spec = self._parse_spec(parse_multipart_file(ctype, body))
            return self._create_version(query.get("pipelineid", ""), query["name"], spec)
        if method == "GET" and len(rest) == 2 and rest[1] == "versions":
            if rest[0] not in self.pipelines:
                raise ApiError(404, f"Pipeline {rest[0]} not found")
            versions = [v for v in self.versions.values() if v["pipeline_id"] == rest[0]]
            found = [self._public(v) for v in versions if matches(v, query.get("filter"))]
            return {"pipeline_versions": found, "total_size": len(found)} if found else {}
        raise ApiError(404, f"Not Found: {method} pipelines/{'/'.join(rest)}")

    def _listed(self, table: dict[str, Body], query: dict[str, str]) -> list[Body]:
        namespace = query.get("namespace", "")
        return [
            item
            for item in table.values()
            if item.get("namespace", "") == namespace and matches(item, query.get("filter"))
        ]

    def _create_pipeline(self, name: str, data: dict[str, Any]) -> Body:
        namespace = data.get("namespace", "")
        if any(p["name"] == name and p["namespace"] == namespace for p in self.pipelines.values()):
            raise ApiError(409, f"Failed to create a pipeline: {name!r} already exists")
        pipeline = {
            "pipeline_id": str(uuid.uuid4()),
            "name": name,
            "display_name": data.get("display_name") or name,
            "description": data.get("description", ""),
            "namespace": namespace,
        }
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        return pipeline

    def _parse_spec(self, raw: bytes) -> list[Any]:
        try:
            docs = [d for d in yaml.safe_load_all(raw.decode()) if d is not None]
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ApiError(400, f"Failed to parse the pipeline spec: {err}") from None
        if not docs or "pipelineInfo" not in docs[0]:
            raise ApiError(400, "Failed to parse the pipeline spec: no pipelineInfo")
        return docs

    def _create_version(self, pipeline_id: str, name: str, docs: list[Any]) -> Body:
        if pipeline_id not in self.pipelines:
            raise ApiError(404, f"Pipeline {pipeline_id!r} not found")
        if any(
            v["pipeline_id"] == pipeline_id and v["name"] == name for v in self.versions.values()
        ):
            raise ApiError(409, f"Failed to create a pipeline version: {name!r} already exists")
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": str(uuid.uuid4()),
            "name": name,
            "display_name": name,
            "pipeline_spec": docs[0],
            "docs": docs,
        }
        self.versions[version["pipeline_version_id"]] = version
        return self._public(version)

    @staticmethod
    def _public(version: Body) -> Body:
        return {k: v for k, v in version.items() if k != "docs"}

    def _experiments(self, method: str, query: dict[str, str], body: bytes) -> Body:
        if method == "GET":
            found = self._listed(self.experiments, query)
            return {"experiments": found, "total_size": len(found)} if found else {}
        if method == "POST":
            data = json.loads(body)
            experiment = {
                "experiment_id": str(uuid.uuid4()),
                "display_name": data["display_name"],
                "namespace": data.get("namespace", ""),
            }
            self.experiments[experiment["experiment_id"]] = experiment
            return experiment
        raise ApiError(405, f"{method} experiments")

    def _runs(self, method: str, rest: list[str], body: bytes) -> Body:
        if method == "POST" and not rest:
            return self._create_run(json.loads(body))
        if method == "GET" and len(rest) == 1:
            if rest[0] not in self.runs:
                raise ApiError(404, f"Run {rest[0]} not found")
            return self._advance(self.runs[rest[0]])
        raise ApiError(404, f"Not Found: {method} runs/{'/'.join(rest)}")

    def _create_run(self, data: Body) -> Body:
        reference = data.get("pipeline_version_reference") or {}
        version = self.versions.get(reference.get("pipeline_version_id", ""))
        if version is None or version["pipeline_id"] != reference.get("pipeline_id"):
            raise ApiError(404, f"Pipeline version {reference} not found")
        if data.get("experiment_id") not in self.experiments:
            raise ApiError(404, f"Experiment {data.get('experiment_id')!r} not found")
        run = {
            "run_id": str(uuid.uuid4()),
            "display_name": data.get("display_name", ""),
            "experiment_id": data["experiment_id"],
            "pipeline_version_reference": reference,
            "runtime_config": data.get("runtime_config", {}),
            "service_account": data.get("service_account", ""),
            "state": self._next_script.states[0],
        }
        self._scripts[run["run_id"]] = RunScript(
            list(self._next_script.states), self._next_script.error
        )
        self.runs[run["run_id"]] = run
        return run

    def _advance(self, run: Body) -> Body:
        script = self._scripts[run["run_id"]]
        if len(script.states) > 1:
            script.states.pop(0)
        run["state"] = script.states[0]
        if run["state"] in ("FAILED", "CANCELED") and script.error:
            run["error"] = {"code": 2, "message": script.error}
        return dict(run)

    # -- HTTP plumbing --

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def _serve(self, method: str) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                authorization = self.headers.get("Authorization")
                with server._lock:
                    server.log.append(LoggedRequest(method, url.path, authorization))
                if server.auth_proxy == "login-page" or url.path == LOGIN_PATH:
                    return self._send(200, LOGIN_PAGE, "text/html; charset=utf-8")
                if server.auth_proxy == "redirect":
                    login = f"{LOGIN_PATH}?client_id=kubeflow-oidc&state=opaque-session-state"
                    return self._send(302, b"", "text/html", location=login)
                with server._lock:
                    try:
                        if server.token and authorization != f"Bearer {server.token}":
                            raise ApiError(401, "Unauthenticated: missing or invalid bearer token")
                        status, reply = (
                            200,
                            server.handle(
                                method, url.path, query, body, self.headers.get("Content-Type", "")
                            ),
                        )
                    except ApiError as err:
                        code = GRPC_CODES.get(err.status, 2)
                        status, reply = err.status, {"code": code, "message": err.message}
                self._send(status, json.dumps(reply).encode(), "application/json")

            def _send(self, status: int, data: bytes, ctype: str, location: str = "") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                if location:
                    self.send_header("Location", location)
                self.end_headers()
                self.wfile.write(data)

        return Handler
