"""A small typed client for the Kubeflow Pipelines v2beta1 REST API (what ``rtune submit`` needs).

    client = KfpClient("https://kubeflow.example.org/pipeline", token=resolve_token())
    client.health()                # tag_name (release), multi_user, pipeline_store
    pipeline = client.find_pipeline("reflection-tuning") or client.create_pipeline(...)
    version = client.upload_pipeline_version(pipeline.id, "v1", Path("pipeline.yaml"))
    run = client.create_run("my run", experiment.id, version, parameters={...})
    client.get_run(run.id).state   # PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED, ...

Why not ``kfp.Client`` (kfp 2.17)? It was tried against the loopback fake (tests/fakes/
kfp_server.py) and works for the happy path, but: its constructor calls ``/healthz`` and on a 401
retries five times with 5 s sleeps before raising ``TimeoutError`` (25 s to learn the token is
wrong, and the message does not say so); ``wait_for_run_completion`` does not treat ``CANCELED`` as
final and waits out its timeout; errors arrive as ``ApiException`` dumps with response headers; and
it prints its own links to stdout. Over ``requests`` the endpoints are a few lines each, every
failure becomes one ``KfpError`` a person can act on, and the token is only ever a header.

Auth: a bearer token from ``KF_PIPELINES_TOKEN``, else the projected service-account token file
(``KF_PIPELINES_SA_TOKEN_PATH``, default ``/var/run/secrets/kubeflow/pipelines/token``, the same
variable and path kfp uses), else none (e.g. a port-forward to a single-user install). The file is
read again for every request: the kubelet rotates a projected token before it expires (3600 s for
KFP's own), so a value read once ends a long ``--wait`` in a 401 while the run goes on.

What a real gateway does that a plain client trips over, and what this one does instead:

- an auth proxy redirects to its login page or answers one with 200: redirects are never followed
  (a POST would come back a GET, and the token would go to the login host), ``Accept:
  application/json`` is sent, and a 3xx or non-JSON reply is one message naming the login location
  and the fix;
- the server URL-decodes a list ``filter`` once more after the HTTP layer did (``parseAPIFilter``),
  so the filter is encoded here first - else ``+`` in a name reads as a space and never matches;
- 502/503/504 and dropped connections are ``KfpUnavailable`` (the caller may retry; ``wait_for_run``
  does), a 409 is ``KfpConflict`` (the caller looks the object up again).

Requests are valid for every backend from 2.5 on: pipelines and versions gained a ``name`` beside
``display_name`` in 2.14, so neither is sent - the server takes ``display_name`` (or the upload's
``name`` query) as both.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from rtune.components.common.records import InputError

API = "/apis/v2beta1"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
DEFAULT_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"})
AUTH_FIX = (
    f"set {TOKEN_ENV} to a token the Kubeflow Pipelines API accepts (in a pod: mount the "
    f"projected token at {DEFAULT_TOKEN_PATH}); check --namespace for multi-user installs"
)
PROXY_FIX = (
    f"the host sits behind a login (an auth proxy such as Dex or oauth2-proxy): set {TOKEN_ENV} "
    "to a token the proxy accepts (e.g. `kubectl create token <service-account> -n <namespace> "
    "--audience pipelines.kubeflow.org`), or use the in-cluster service from a pod "
    "(--host http://ml-pipeline.kubeflow:8888), or a port-forward that bypasses the proxy "
    "(`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`, --host http://localhost:8080)"
)
HOST_FIX = (
    "check --host (the Kubeflow Pipelines UI/API address, e.g. "
    "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` and --host http://localhost:8080)"
)
HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
GATEWAY_STATUSES = frozenset({502, 503, 504})  # the API server is away, the gateway is not
Json = dict[str, Any]


class KfpError(InputError):
    """The KFP API refused or could not be reached; the message says what to do."""


class KfpUnavailable(KfpError):
    """No answer from the API server (connection error, 502/503/504): worth trying again."""


class KfpConflict(KfpError):
    """409: an object of that name exists (e.g. a concurrent submit created it a moment ago)."""


@dataclass(frozen=True)
class Token:
    """A bearer token and where it came from (``source`` is safe to print, the value is not).
    A token file is read again on every ``current()``: the kubelet rotates projected tokens."""

    source: str
    path: Path | None = None
    fixed: str = field(default="", repr=False)

    def current(self) -> str:
        if self.path is None:
            return self.fixed
        try:
            return self.path.read_text(encoding="utf-8").strip()
        except OSError:  # gone (the pod lost its projection): no header, and the 401 says so
            return ""


def resolve_token(env: dict[str, str] | None = None) -> Token | None:
    """``KF_PIPELINES_TOKEN``, else the token file if it exists, else ``None``."""
    env = dict(os.environ) if env is None else env
    if env.get(TOKEN_ENV, "").strip():
        return Token(f"${TOKEN_ENV}", fixed=env[TOKEN_ENV].strip())
    path = Path(env.get(TOKEN_PATH_ENV) or DEFAULT_TOKEN_PATH)
    token = Token(str(path), path=path)
    return token if path.is_file() and token.current() else None


@dataclass(frozen=True)
class Health:
    """``GET /healthz``: the backend's release (``tag_name``, e.g. ``2.17.0``; ``unknown`` on a
    build without one), whether it runs multi-user, and its pipeline store (2.14+)."""

    tag_name: str
    multi_user: bool
    pipeline_store: str = ""


@dataclass(frozen=True)
class Pipeline:
    id: str
    name: str


@dataclass(frozen=True)
class PipelineVersion:
    id: str
    pipeline_id: str
    name: str


@dataclass(frozen=True)
class Experiment:
    id: str
    name: str


@dataclass(frozen=True)
class Run:
    id: str
    state: str
    error: str = ""
    failed_tasks: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, data: Json) -> Run:
        tasks = (data.get("run_details") or {}).get("task_details") or []
        return cls(
            id=data["run_id"],
            state=data.get("state") or "RUNTIME_STATE_UNSPECIFIED",
            error=(data.get("error") or {}).get("message", ""),
            failed_tasks=tuple(
                t.get("display_name", "?") for t in tasks if t.get("state") == "FAILED"
            ),
        )


def equals_filter(key: str, value: str) -> str:
    """A JSON ``Filter`` proto, ``key == value``, URL-encoded for the server's second decoding
    (the HTTP layer encodes it once more). Pipelines and versions are looked up by ``name`` (the
    unique key an upload collides on; 2.5 maps it to the same column), experiments by
    ``display_name`` as kfp.Client does."""
    predicate = {"key": key, "operation": "EQUALS", "string_value": value}
    return quote(json.dumps({"predicates": [predicate]}), safe="")


class KfpClient:
    """The v2beta1 endpoints ``rtune submit`` uses; each raises ``KfpError`` on failure."""

    def __init__(self, host: str, token: Token | None = None, timeout_s: float = 60.0) -> None:
        self.host = host.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.headers["Accept"] = "application/json"
        self._token = token
        self._sent = ""  # the token value of the last request, to keep it out of messages

    def __repr__(self) -> str:
        return f"KfpClient({self.host!r}, token={self._token.source if self._token else None})"

    def health(self) -> Health:
        data = self._call("GET", "/healthz")
        return Health(
            str(data.get("tag_name") or "unknown"),
            bool(data.get("multi_user")),
            str(data.get("pipeline_store") or ""),
        )

    def find_pipeline(self, name: str, namespace: str = "") -> Pipeline | None:
        params = {"filter": equals_filter("name", name), "namespace": namespace}
        found = self._call("GET", "/pipelines", params=params).get("pipelines") or []
        return Pipeline(found[0]["pipeline_id"], name) if found else None

    def create_pipeline(self, name: str, description: str = "", namespace: str = "") -> Pipeline:
        body = {"display_name": name, "description": description}  # name = display_name
        if namespace:
            body["namespace"] = namespace
        created = self._call("POST", "/pipelines", json=body)
        return Pipeline(created["pipeline_id"], name)

    def find_pipeline_version(self, pipeline_id: str, name: str) -> PipelineVersion | None:
        params = {"filter": equals_filter("name", name)}
        reply = self._call("GET", f"/pipelines/{pipeline_id}/versions", params=params)
        found = reply.get("pipeline_versions") or []
        return (
            PipelineVersion(found[0]["pipeline_version_id"], pipeline_id, name) if found else None
        )

    def upload_pipeline_version(
        self, pipeline_id: str, name: str, package: Path, description: str = ""
    ) -> PipelineVersion:
        params = {"name": name, "pipelineid": pipeline_id}  # display_name defaults to name
        if description:
            params["description"] = description
        with package.open("rb") as handle:
            files = {"uploadfile": (package.name, handle, "application/x-yaml")}
            created = self._call("POST", "/pipelines/upload_version", params=params, files=files)
        return PipelineVersion(created["pipeline_version_id"], pipeline_id, name)

    def find_experiment(self, name: str, namespace: str = "") -> Experiment | None:
        params = {"filter": equals_filter("display_name", name), "namespace": namespace}
        found = self._call("GET", "/experiments", params=params).get("experiments") or []
        return Experiment(found[0]["experiment_id"], name) if found else None

    def create_experiment(self, name: str, namespace: str = "") -> Experiment:
        body = {"display_name": name}
        if namespace:
            body["namespace"] = namespace
        return Experiment(self._call("POST", "/experiments", json=body)["experiment_id"], name)

    def create_run(
        self,
        display_name: str,
        experiment_id: str,
        version: PipelineVersion,
        parameters: dict[str, Any],
        service_account: str = "",
    ) -> Run:
        body: Json = {
            "display_name": display_name,
            "experiment_id": experiment_id,
            "pipeline_version_reference": {
                "pipeline_id": version.pipeline_id,
                "pipeline_version_id": version.id,
            },
            "runtime_config": {"parameters": parameters},
        }
        if service_account:
            body["service_account"] = service_account
        return Run.from_json(self._call("POST", "/runs", json=body))

    def get_run(self, run_id: str) -> Run:
        return Run.from_json(self._call("GET", f"/runs/{run_id}"))

    def _call(self, method: str, path: str, **kwargs: Any) -> Json:
        url = f"{self.host}{API}{path}"
        self._sent = self._token.current() if self._token else ""
        headers = {"Authorization": f"Bearer {self._sent}"} if self._sent else {}
        try:
            reply = self._session.request(
                method,
                url,
                headers=headers,
                timeout=self.timeout_s,
                allow_redirects=False,
                **kwargs,
            )
        except requests.RequestException as err:
            problem = f"cannot reach the Kubeflow Pipelines API ({type(err).__name__})"
            raise KfpUnavailable(self.host, problem, HOST_FIX) from None
        if reply.is_redirect:
            raise self._redirected(method, path, reply)
        if not reply.ok:
            raise self._error(method, path, reply)
        if not reply.content:
            return {}
        try:
            data = reply.json()
        except ValueError:
            raise self._not_the_api(method, path, reply) from None
        if not isinstance(data, dict):
            raise self._not_the_api(method, path, reply)
        return data

    def _redirected(self, method: str, path: str, reply: requests.Response) -> KfpError:
        """An API never redirects; a proxy sends a client without a session to its login page.
        The redirect is not followed (the token stays with this host)."""
        target = requests.compat.urljoin(reply.url, reply.headers.get("Location", ""))
        shown = target.split("?", 1)[0]  # the query carries the proxy's session state
        problem = f"{method} {API}{path} -> {reply.status_code} redirect to {shown}"
        if shown.endswith(f"{API}{path}"):  # the same API elsewhere, e.g. http -> https
            return KfpError(self.host, problem, f"use --host {shown.removesuffix(API + path)}")
        return KfpError(
            self.host, f"{problem}: a login page, not the Kubeflow Pipelines API", PROXY_FIX
        )

    def _not_the_api(self, method: str, path: str, reply: requests.Response) -> KfpError:
        """A 200 that is not JSON: an auth proxy's login page, or not a KFP server at all."""
        kind = reply.headers.get("Content-Type", "no content type").split(";")[0]
        problem = f"{method} {API}{path} answered {reply.status_code} with {kind}, not JSON"
        if "html" in kind:
            title = HTML_TITLE.search(reply.text)
            named = f" ({' '.join(title.group(1).split())[:80]})" if title else ""
            return KfpError(self.host, f"{problem}: an HTML login page{named}", PROXY_FIX)
        fix = "point --host at the Kubeflow Pipelines UI/API (it serves /apis/v2beta1)"
        return KfpError(self.host, problem, fix)

    def _error(self, method: str, path: str, reply: requests.Response) -> KfpError:
        message = self._server_message(reply)
        problem = f"{method} {API}{path} -> {reply.status_code} {reply.reason}: {message}"
        if reply.status_code in (401, 403):
            return KfpError(self.host, problem, AUTH_FIX)
        if reply.status_code == 409:
            return KfpConflict(self.host, problem, "another submit created it; look it up again")
        if reply.status_code in GATEWAY_STATUSES:
            fix = "the API server is restarting or overloaded; retry in a minute"
            return KfpUnavailable(self.host, problem, fix)
        if reply.status_code == 404 and path in ("/healthz", "/pipelines", "/experiments"):
            fix = "point --host at the Kubeflow Pipelines 2.x UI/API (it serves /apis/v2beta1)"
            return KfpError(self.host, problem, fix)
        return KfpError(self.host, problem, "see the server's message; retry when it is fixed")

    def _server_message(self, reply: requests.Response) -> str:
        try:
            data = reply.json()
            text = str(data.get("message") or data.get("error") or data)
        except (ValueError, AttributeError):
            title = HTML_TITLE.search(reply.text)  # a gateway's or proxy's error page
            text = f"an HTML page ({title.group(1)})" if title else reply.text
        text = " ".join(text.split())[:300] or "(empty body)"
        return text.replace(self._sent, "***") if self._sent else text
