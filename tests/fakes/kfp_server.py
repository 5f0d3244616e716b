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

and behaves like the real API server (backend/src/apiserver at the release it pretends to be) where
a client can get it wrong:

- every request and reply is checked against the published schema of that release (``kfp_api``):
  an unknown body field is a 400, as ``DiscardUnknown: false`` makes it on the server; ``version``
  below 2.14 speaks the 2.5.0 schema (no ``name`` on pipelines and versions);
- a list ``filter`` is URL-decoded twice - once by the HTTP layer, once more by the server
  (``parseAPIFilter``: ``url.QueryUnescape``) - so a client must encode the JSON itself;
- namespaces: ignored in single-user mode (``ReplaceNamespace``); in multi-user mode an experiment
  needs one (400 otherwise) while a pipeline without one is a shared pipeline;
- a duplicate pipeline, version or experiment name is a 409; unknown ids 404; an unparsable
  upload 400; errors are ``{"code", "message"}`` JSON with the HTTP status; 401 without the
  expected bearer token when one is set;
- ``GET /healthz`` answers ``commit_sha``, ``tag_name`` (``version``), ``multi_user`` and
  ``pipeline_store`` (the handler in backend/src/apiserver/main.go, not the gateway's schema).

A run walks through the states scripted with ``script_run``, one step per ``GET`` of the run, so a
test controls its course without timing. ``fail_next`` answers the next matching requests the way
a gateway does when the API server is away (502/503/504, or a dropped connection); ``before`` runs
an action just before a matching request, e.g. another submitter creating the same object, or the
kubelet rotating a projected token.

``auth_proxy`` puts an authenticating proxy in front (Dex/oauth2-proxy, as a Kubeflow ingress
does for a client without a session): ``"login-page"`` answers API requests with an HTML login
page (200), ``"redirect"`` with a 302 to ``LOGIN_PATH``, which serves that page; ``proxy_paths``
limits it to requests whose path starts with one of them (a session that lapses mid-submit).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import yaml

from tests.fakes.kfp_api import ApiSchemaError, KfpApi, Operation, release_for
from tests.fakes.loopback import LoopbackHTTPServer

Body = dict[str, Any]
API = "/apis/v2beta1"
EQUALS = ("EQUALS", 1)
LOGIN_PATH = "/dex/auth"
LOGIN_PAGE = (
    b"<!DOCTYPE html><html><head><title>Log in to Kubeflow</title></head><body></body></html>"
)
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 409: 6}  # what grpc-gateway puts in "code"
GATEWAY_FAULTS = {  # what Istio/Envoy or nginx answer while the API server is away
    502: (b"<html><head><title>502 Bad Gateway</title></head></html>", "text/html"),
    503: (b"upstream connect error or disconnect/reset before headers", "text/plain"),
    504: (b"upstream request timeout", "text/plain"),
}
FILTER_KEYS = {"pipelines": {"name", "display_name", "pipeline_id", "namespace"}}
FILTER_KEYS["versions"] = {"name", "display_name", "pipeline_version_id"}
FILTER_KEYS["experiments"] = {"name", "display_name", "experiment_id", "namespace"}


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
    accept: str | None = None
    query: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Trigger:
    """``action`` runs just before the ``nth`` request that matches ``method`` and ``path``."""

    method: str
    path: str
    action: Callable[[LoggedRequest], None]
    nth: int = 1

    def matches(self, request: LoggedRequest) -> bool:
        return request.method == self.method and request.path.startswith(API + self.path)


def parse_version(tag: str) -> tuple[int, ...] | None:
    found = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", tag)
    return tuple(int(part or 0) for part in found.groups()) if found else None


def parse_multipart(content_type: str, body: bytes, name: str = "uploadfile") -> tuple[bytes, str]:
    """The bytes and file name of form field ``name`` in a ``multipart/form-data`` body."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            return bytes(part.get_payload(decode=True) or b""), part.get_filename() or ""
    raise ApiError(400, f"multipart form has no field {name!r}")


def parse_filter(raw: str | None, table: str) -> list[tuple[str, str]]:
    """The (key, value) EQUALS predicates of a list ``filter`` as the server reads it: the query
    value is URL-decoded once more (``url.QueryUnescape``, ``+`` becomes a space)."""
    if not raw:
        return []
    try:
        predicates = json.loads(unquote_plus(raw)).get("predicates", [])
    except ValueError as err:
        raise ApiError(400, f"failed to parse valid filter from {raw!r}: {err}") from None
    found = []
    for predicate in predicates:
        if predicate.get("operation") not in EQUALS:
            raise ApiError(400, f"fake KFP supports only EQUALS filters, got {predicate}")
        if predicate.get("key") not in FILTER_KEYS[table]:
            raise ApiError(400, f"invalid filter key {predicate.get('key')!r} for {table}")
        found.append(
            (predicate["key"], predicate.get("string_value", predicate.get("stringValue")))
        )
    return found


def matches(item: Body, predicates: list[tuple[str, str]]) -> bool:
    return all(item.get(key) == value for key, value in predicates)


class FakeKfpServer(LoopbackHTTPServer):
    """Context manager running the API in a thread; ``url`` is the ``--host`` to pass."""

    def __init__(
        self,
        token: str | None = None,
        multi_user: bool = False,
        auth_proxy: str = "",
        version: str = "2.17.0",
        pipeline_store: str = "database",
        proxy_paths: tuple[str, ...] = (),
    ) -> None:
        if auth_proxy not in ("", "login-page", "redirect"):
            raise ValueError(
                f"auth_proxy must be '', 'login-page' or 'redirect', got {auth_proxy!r}"
            )
        self.token = token
        self.multi_user = multi_user
        self.auth_proxy = auth_proxy
        self.proxy_paths = proxy_paths
        self.version = version
        self.pipeline_store = pipeline_store
        self.api = KfpApi(release_for(parse_version(version)))
        self.log: list[LoggedRequest] = []
        self.pipelines: dict[str, Body] = {}
        self.versions: dict[str, Body] = {}
        self.experiments: dict[str, Body] = {}
        self.runs: dict[str, Body] = {}
        self._scripts: dict[str, RunScript] = {}
        self._next_script = RunScript()
        self._triggers: list[Trigger] = []
        self._faults: list[tuple[str, str, int | str]] = []
        self._lock = threading.RLock()
        super().__init__(self._handler_class())

    @property
    def url(self) -> str:
        return self.base_url

    # -- what tests set and read --

    def script_run(self, states: list[str], error: str | None = None) -> None:
        """Runs created from now on go through ``states`` (the last one sticks)."""
        self._next_script = RunScript(list(states), error)

    def fail_next(self, method: str, path: str, *faults: int | str) -> None:
        """The next requests matching ``method`` and ``API + path...`` get ``faults`` in turn:
        502, 503, 504 (a gateway's reply) or ``"drop"`` (the connection closes unanswered)."""
        with self._lock:
            self._faults.extend((method, path, fault) for fault in faults)

    def before(
        self, method: str, path: str, action: Callable[[LoggedRequest], None], nth: int = 1
    ) -> None:
        """Run ``action(request)`` once, before the ``nth`` matching request is answered."""
        with self._lock:
            self._triggers.append(Trigger(method, path, action, nth))

    @property
    def authorizations(self) -> list[str | None]:
        with self._lock:
            return [r.authorization for r in self.log]

    def versions_of(self, pipeline_name: str) -> list[Body]:
        ids = {p["pipeline_id"] for p in self.pipelines.values() if p["name"] == pipeline_name}
        return [v for v in self.versions.values() if v["pipeline_id"] in ids]

    def add_pipeline(self, name: str, namespace: str = "") -> Body:
        """A pipeline created by someone else (e.g. a concurrent ``rtune submit``)."""
        with self._lock:
            return self._create_pipeline(name, name, "", namespace)

    def add_version(self, pipeline_id: str, name: str) -> Body:
        with self._lock:
            return self._create_version(pipeline_id, name, [{"pipelineInfo": {"name": name}}])

    def add_experiment(self, name: str, namespace: str = "") -> Body:
        with self._lock:
            return self._create_experiment(name, namespace)

    # -- the API --

    def handle(
        self, method: str, path: str, query: dict[str, str], body: bytes, ctype: str
    ) -> Body:
        operation = self.api.operation(method, path)
        if operation is None:
            raise ApiError(404, f"Not Found: {method} {path}")
        data = self._checked_request(operation, query, body, ctype)
        reply = self._dispatch(method, path.removeprefix(API).strip("/").split("/"), query, data)
        if not path.endswith("/healthz"):  # a hand-written handler, not the gateway's schema
            self.api.check_reply(operation, reply)
        return reply

    def _checked_request(
        self, operation: Operation, query: dict[str, str], body: bytes, ctype: str
    ) -> Any:
        if ctype.startswith("multipart/form-data"):
            data: Any = parse_multipart(ctype, body)
        elif body:
            try:
                data = json.loads(body)
            except ValueError as err:
                raise ApiError(400, f"invalid JSON body: {err}") from None
        else:
            data = None
        try:
            self.api.check_request(operation, query, None if isinstance(data, tuple) else data)
        except ApiSchemaError as err:
            raise ApiError(400, f"proto: {err}") from None
        return data

    def _dispatch(self, method: str, parts: list[str], query: dict[str, str], data: Any) -> Body:
        if parts == ["healthz"]:
            return {
                "commit_sha": "0123456789abcdef",
                "tag_name": self.version,
                "multi_user": self.multi_user,
                "pipeline_store": self.pipeline_store,
            }
        if parts[0] == "pipelines":
            return self._pipelines(method, parts[1:], query, data)
        if parts == ["experiments"]:
            return self._experiments(method, query, data)
        return self._runs(method, parts[1:], data)

    def _namespace(self, value: str | None) -> str:
        """``ReplaceNamespace``: single-user mode has no namespaces."""
        return (value or "") if self.multi_user else ""

    def _pipelines(self, method: str, rest: list[str], query: dict[str, str], data: Any) -> Body:
        if method == "GET" and not rest:
            found = self._listed(self.pipelines, query, "pipelines")
            items = [self._public(p) for p in found]
            return {"pipelines": items, "total_size": len(items)} if items else {}
        if method == "POST" and not rest:
            display = data.get("display_name", "")
            name = data.get("name") or display
            return self._public(
                self._create_pipeline(
                    name, display or name, data.get("description", ""), data.get("namespace")
                )
            )
        if method == "POST" and rest == ["upload"]:
            raw, filename = data
            docs = self._parse_spec(raw)
            name = query.get("name") or query.get("display_name") or filename
            pipeline = self._create_pipeline(
                name, query.get("display_name") or name, "", query.get("namespace")
            )
            self._create_version(pipeline["pipeline_id"], name, docs)
            return self._public(pipeline)
        if method == "POST" and rest == ["upload_version"]:
            raw, filename = data
            docs = self._parse_spec(raw)
            name = query.get("name") or query.get("display_name") or filename
            version = self._create_version(query.get("pipelineid", ""), name, docs)
            return self._public(version)
        if rest[0] not in self.pipelines:
            raise ApiError(404, f"Pipeline {rest[0]} not found")
        predicates = parse_filter(query.get("filter"), "versions")
        versions = [v for v in self.versions.values() if v["pipeline_id"] == rest[0]]
        found = [self._public(v) for v in versions if matches(v, predicates)]
        return {"pipeline_versions": found, "total_size": len(found)} if found else {}

    def _listed(self, table: dict[str, Body], query: dict[str, str], kind: str) -> list[Body]:
        namespace = self._namespace(query.get("namespace"))
        if kind == "experiments" and self.multi_user and not namespace:
            raise ApiError(400, "An experiment cannot have an empty namespace in multi-user mode")
        predicates = parse_filter(query.get("filter"), kind)
        return [
            item
            for item in table.values()
            if item["namespace"] == namespace and matches(item, predicates)
        ]

    def _create_pipeline(
        self, name: str, display_name: str, description: str, namespace: str | None
    ) -> Body:
        namespace = self._namespace(namespace)
        if any(p["name"] == name and p["namespace"] == namespace for p in self.pipelines.values()):
            raise ApiError(409, f"Failed to create a pipeline: {name!r} already exists")
        pipeline = {
            "pipeline_id": str(uuid.uuid4()),
            "name": name,
            "display_name": display_name,
            "description": description,
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
        return version

    def _public(self, item: Body) -> Body:
        """What the API returns: no test bookkeeping; before 2.14 no ``name`` (only the
        ``display_name`` column existed)."""
        hidden = {"docs"} if self.api.release != "2.5.0" else {"docs", "name"}
        return {k: v for k, v in item.items() if k not in hidden}

    def _experiments(self, method: str, query: dict[str, str], data: Any) -> Body:
        if method == "GET":
            found = self._listed(self.experiments, query, "experiments")
            return {"experiments": found, "total_size": len(found)} if found else {}
        namespace = self._namespace(data.get("namespace"))
        if self.multi_user and not namespace:
            raise ApiError(400, "An experiment cannot have an empty namespace in multi-user mode")
        return self._create_experiment(data.get("display_name", ""), namespace)

    def _create_experiment(self, name: str, namespace: str) -> Body:
        namespace = self._namespace(namespace)
        if any(
            e["display_name"] == name and e["namespace"] == namespace
            for e in self.experiments.values()
        ):
            raise ApiError(409, f"Failed to create a new experiment: {name!r} already exists")
        experiment = {"experiment_id": str(uuid.uuid4()), "display_name": name}
        experiment["namespace"] = namespace
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _runs(self, method: str, rest: list[str], data: Any) -> Body:
        if method == "POST":
            return self._create_run(data or {})
        if rest[0] not in self.runs:
            raise ApiError(404, f"Run {rest[0]} not found")
        return self._advance(self.runs[rest[0]])

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

    # -- test hooks, in the order a request meets them --

    def _fire_triggers(self, request: LoggedRequest) -> None:
        for trigger in list(self._triggers):
            if trigger.matches(request):
                trigger.nth -= 1
                if trigger.nth == 0:
                    self._triggers.remove(trigger)
                    trigger.action(request)

    def _take_fault(self, request: LoggedRequest) -> int | str | None:
        for index, (method, path, fault) in enumerate(self._faults):
            if request.method == method and request.path.startswith(API + path):
                del self._faults[index]
                return fault
        return None

    def _proxied(self, path: str) -> bool:
        if not self.auth_proxy:
            return False
        return not self.proxy_paths or any(path.startswith(p) for p in self.proxy_paths)

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
                query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = LoggedRequest(
                    method,
                    url.path,
                    self.headers.get("Authorization"),
                    self.headers.get("Accept"),
                    query,
                    body,
                )
                with server._lock:
                    server.log.append(request)
                    server._fire_triggers(request)
                    fault = server._take_fault(request)
                if fault == "drop":
                    self.close_connection = True
                    return None
                if isinstance(fault, int):
                    return self._send(fault, *GATEWAY_FAULTS[fault])
                if url.path == LOGIN_PATH or (
                    server.auth_proxy == "login-page" and server._proxied(url.path)
                ):
                    return self._send(200, LOGIN_PAGE, "text/html; charset=utf-8")
                if server.auth_proxy == "redirect" and server._proxied(url.path):
                    login = f"{LOGIN_PATH}?client_id=kubeflow-oidc&state=opaque-session-state"
                    return self._send(302, b"", "text/html", location=login)
                with server._lock:
                    status, reply = server._answer(request, self.headers.get("Content-Type", ""))
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

    def _answer(self, request: LoggedRequest, ctype: str) -> tuple[int, Body]:
        try:
            if self.token and request.authorization != f"Bearer {self.token}":
                raise ApiError(401, "Unauthenticated: missing or invalid bearer token")
            return 200, self.handle(
                request.method, request.path, request.query, request.body, ctype
            )
        except ApiError as err:
            return err.status, {"code": GRPC_CODES.get(err.status, 2), "message": err.message}
        except ApiSchemaError as err:  # the fake's own reply broke the schema: a bug in the fake
            return 500, {"code": 13, "message": f"fake KFP reply: {err}"}
