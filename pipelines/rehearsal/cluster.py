"""The cluster a rehearsal stands up on loopback: names, Secrets, S3, MLflow, teacher.

Addresses are the ones the run config names (``mlflow.rtune.svc.cluster.local:5000``, the teacher
URL, the S3 endpoint in the ``rtune-s3`` Secret): each host name gets its own loopback address in
the rehearsal's network namespace and ``/etc/hosts``, and the service listens on the config's port
— so the config and the compiled pipeline run unchanged. Secrets are the ones ``manifests/``
templates name, with the keys they list; their values are minted here (the S3 keys are real moto
IAM keys, the teacher key is what the teacher checks).
"""

from __future__ import annotations

import configparser
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from rtune.pipelines.rehearsal.images import ROOT
from rtune.pipelines.rehearsal.kubeapi import CUSTOM_RESOURCES, KubeApi, start_kube_api
from rtune.pipelines.rehearsal.objectstore import ObjectStore, start_object_store
from rtune.pipelines.rehearsal.teacher import TeacherStandIn, start_teacher

S3_HOST = "minio.minio.svc.cluster.local"  # where the rehearsal's rtune-s3 Secret points
S3_PORT = 9000
KFP_ARTIFACT_HOST = "seaweedfs.kubeflow"  # KFP's default artifact store (minio:// root)
PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"
KFP_ARTIFACT_SECRET = "mlpipeline-minio-artifact"  # KFP's own, keys accesskey/secretkey
MLFLOW_BUCKET = "rtune-mlflow"
MLFLOW_AUTH_SECRET = "rtune-mlflow-auth"
MLFLOW_AUTH_INI = "manifests/base/mlflow-auth/basic_auth.ini"
SERVE_SECRET = "rtune-serve"
SERVING_S3_SECRET = "rtune-s3-serving"
SERVING_ACTIONS = ("s3:GetObject", "s3:ListBucket")
KUBERNETES_HOST, KUBERNETES_PORT = "kubernetes.default.svc", 443


class ClusterProblem(RuntimeError):
    """What a pod would see as a failed container start (a missing Secret, PVC or key)."""


@dataclass
class Cluster:
    namespace: str
    work: Path
    hosts: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    store: ObjectStore | None = None
    teacher: TeacherStandIn | None = None
    kube: KubeApi | None = None
    mlflow_url: str = ""

    def address_of(self, host: str) -> str:
        """A loopback address of its own for each service host name."""
        if host not in self.hosts:
            self.hosts[host] = f"127.0.0.{len(set(self.hosts.values())) + 2}"
            self.write_hosts()
        return self.hosts[host]

    def alias(self, host: str, address: str) -> None:
        """Another name for a service that has an address already."""
        self.hosts[host] = address
        self.write_hosts()

    @property
    def hosts_file(self) -> Path:
        """The cluster's DNS as every pod sees it: one ``/etc/hosts`` bind-mounted into each pod
        and rewritten in place, so a service created while a pod runs resolves in that pod."""
        return self.work / "cluster-hosts"

    def write_hosts(self) -> None:
        text = "127.0.0.1 localhost\n" + "".join(
            f"{address} {name}\n" for name, address in sorted(self.hosts.items())
        )
        self.work.mkdir(parents=True, exist_ok=True)
        with self.hosts_file.open("w", encoding="utf-8") as out:  # same inode: mounts see it
            out.write(text)

    def secret_values(self) -> list[str]:
        """Every secret value (the report checks none of them leaked into a log or artifact)."""
        return [v for data in self.secrets.values() for v in data.values() if len(v) >= 8]


def template_secrets(root: Path = ROOT) -> dict[str, list[str]]:
    """Secret name -> keys, from the ``*.template.yaml`` Secrets in ``manifests/``."""
    found: dict[str, list[str]] = {}
    for path in sorted((root / "manifests").rglob("*.template.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "Secret":
                keys = [*doc.get("stringData", {}), *doc.get("data", {})]
                found[doc["metadata"]["name"]] = keys
    return found


@contextmanager
def stand_up(
    work: Path,
    namespace: str,
    run_config: Mapping[str, Any],
    s3_buckets: list[str],
    crds: list[str] | None = None,
) -> Iterator[Cluster]:
    """Start S3, MLflow, the teacher and the Kubernetes API where the run expects them."""
    cluster = Cluster(namespace, work)
    with ExitStack() as stack:
        address = cluster.address_of(KUBERNETES_HOST)
        custom = list(CUSTOM_RESOURCES) if crds is None else crds
        cluster.kube = start_kube_api(work, address, KUBERNETES_PORT, custom)
        stack.callback(cluster.kube._stop)
        cluster.store = _object_store(cluster, s3_buckets)
        stack.callback(cluster.store.stop)
        tracking = run_config.get("tracking", {}).get("tracking_uri", "")
        if tracking.startswith("http"):
            process = _mlflow_server(cluster, tracking)
            stack.callback(_stop, process)
        _serve_secret(cluster)
        teacher = run_config.get("teacher", {})
        if teacher.get("backend") == "openai" and teacher.get("url"):
            cluster.teacher = _teacher(cluster, teacher)
            stack.callback(cluster.teacher.stop)
        yield cluster


def _object_store(cluster: Cluster, buckets: list[str]) -> ObjectStore:
    address = cluster.address_of(S3_HOST)
    cluster.alias(KFP_ARTIFACT_HOST, address)
    store = start_object_store(address, S3_PORT)
    rtune = store.add_identity("rtune", buckets)
    kfp = store.add_identity("kfp-artifacts", ["mlpipeline"])
    store.add_identity("mlflow", [MLFLOW_BUCKET])
    # KServe's storage initializer: read-only, on the buckets models are in (ServiceAccount
    # rtune-serving's Secret rtune-s3-serving)
    serving = store.add_identity("serving", buckets, SERVING_ACTIONS)
    store.require_signatures()
    templates = template_secrets()
    values = {
        "AWS_ACCESS_KEY_ID": rtune.access_key_id,
        "AWS_SECRET_ACCESS_KEY": rtune.secret_access_key,
        "AWS_ENDPOINT_URL": f"http://{S3_HOST}:{S3_PORT}",
    }
    keys = templates.get("rtune-s3", [])
    cluster.secrets["rtune-s3"] = {k: values[k] for k in keys if k in values}
    values = {
        "AWS_ACCESS_KEY_ID": serving.access_key_id,
        "AWS_SECRET_ACCESS_KEY": serving.secret_access_key,
    }
    keys = templates.get(SERVING_S3_SECRET, list(values))
    cluster.secrets[SERVING_S3_SECRET] = {k: values[k] for k in keys if k in values}
    cluster.secrets[KFP_ARTIFACT_SECRET] = {
        "accesskey": kfp.access_key_id,
        "secretkey": kfp.secret_access_key,
    }
    return store


def _mlflow_server(cluster: Cluster, tracking_uri: str) -> subprocess.Popen[bytes]:
    parts = urlsplit(tracking_uri)
    host, port = parts.hostname or "", parts.port or 80
    address = cluster.address_of(host)
    assert cluster.store is not None
    identity = cluster.store.identities["mlflow"]
    login = _mlflow_login(cluster)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))},
        # the basic-auth app as manifests/base/mlflow-deployment.yaml runs it: its ini, the admin
        # from Secret rtune-mlflow-auth; the user database in the rehearsal's folder
        "MLFLOW_AUTH_CONFIG_PATH": str(_auth_ini(cluster)),
        "MLFLOW_AUTH_ADMIN_USERNAME": login["username"],
        "MLFLOW_AUTH_ADMIN_PASSWORD": login["password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": login["flask_secret_key"],
        # as manifests/base/mlflow-deployment.yaml: no GenAI job runner (five idle consumers)
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "AWS_ACCESS_KEY_ID": identity.access_key_id,
        "AWS_SECRET_ACCESS_KEY": identity.secret_access_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": cluster.store.url,
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"{host},{host}:{port},localhost,{address}:{port}",
    }
    log = (cluster.work / "mlflow-server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--host", address, "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{cluster.work / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts", "--serve-artifacts",
            "--app-name", "basic-auth",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    _wait_http(f"http://{address}:{port}/health", process, "mlflow server")
    cluster.mlflow_url = f"http://{address}:{port}"
    return process


def _mlflow_login(cluster: Cluster) -> dict[str, str]:
    """Secret rtune-mlflow-auth with its template's keys: MLflow's admin, the tasks' login."""
    values = {
        "username": "rtune-pipeline",
        "password": secrets.token_urlsafe(18),
        "flask_secret_key": secrets.token_hex(32),
    }
    keys = template_secrets().get(MLFLOW_AUTH_SECRET, list(values))
    cluster.secrets[MLFLOW_AUTH_SECRET] = {k: values[k] for k in keys if k in values}
    return values


def _auth_ini(cluster: Cluster) -> Path:
    """manifests' basic_auth.ini with the user database moved into the rehearsal's folder."""
    config = configparser.ConfigParser()
    config.read(ROOT / MLFLOW_AUTH_INI, encoding="utf-8")
    config["mlflow"]["database_uri"] = f"sqlite:///{cluster.work / 'mlflow-auth.db'}"
    path = cluster.work / "basic_auth.ini"
    with path.open("w", encoding="utf-8") as out:
        config.write(out)
    return path


def _serve_secret(cluster: Cluster) -> None:
    """Secret rtune-serve (the served student's API key), as the platform manifests expect it."""
    key = f"rehearsal-serve-{secrets.token_hex(16)}"
    keys = template_secrets().get(SERVE_SECRET, ["api_key"])
    cluster.secrets[SERVE_SECRET] = {k: key for k in keys}


def _teacher(cluster: Cluster, teacher: Mapping[str, Any]) -> TeacherStandIn:
    parts = urlsplit(str(teacher["url"]))
    address = cluster.address_of(parts.hostname or "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    key = f"sk-rehearsal-{secrets.token_hex(16)}"
    keys = template_secrets().get("rtune-teacher", ["api_key"])
    cluster.secrets["rtune-teacher"] = {k: key for k in keys}
    return start_teacher(address, port, str(teacher.get("model", "teacher")), key)


def _wait_http(url: str, process: subprocess.Popen[bytes], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterProblem(f"{what} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise ClusterProblem(f"{what} did not answer {url} within {timeout:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
