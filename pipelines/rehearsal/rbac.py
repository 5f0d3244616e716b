"""Kubernetes RBAC, evaluated as the API server does, from the Roles and bindings we ship.

A request is turned into attributes (verb, API group, resource[/subresource], namespace, name) from
its method and path; it is allowed when any rule of a Role or ClusterRole bound to the service
account matches all of them. Discovery paths are allowed to every authenticated identity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<namespace>[^/]+))?(?:/(?P<resource>[^/]+))?(?:/(?P<name>[^/]+))?"
    r"(?:/(?P<sub>[^/]+))?/?$"
)
DISCOVERY = re.compile(r"^/(api|apis|version|openapi/.*|apis/[^/]+|apis/[^/]+/[^/]+|api/v1)/?$")


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str  # "pods" or "pods/log"
    namespace: str
    name: str

    def describe(self, subject: str) -> str:
        what = f"{self.resource!r} in API group {self.group!r}"
        where = (
            f" in the namespace {self.namespace!r}" if self.namespace else " at the cluster scope"
        )
        return f"{subject} cannot {self.verb} resource {what}{where}"


def request_attributes(method: str, path: str, query: Mapping[str, str]) -> Attributes | None:
    """RBAC attributes of a resource request; None for discovery (non-resource) paths."""
    if DISCOVERY.match(path):
        return None
    match = _PATH.match(path)
    if match is None:
        return None
    group = "" if match["core"] else match["group"]
    namespace, resource, name = match["namespace"] or "", match["resource"], match["name"] or ""
    if resource is None:  # GET /api/v1/namespaces/<ns>: the namespace object itself
        if not namespace:
            return None
        namespace, resource, name = "", "namespaces", namespace
    if match["sub"]:
        resource = f"{resource}/{match['sub']}"
    return Attributes(_verb(method.upper(), bool(name), query), group, resource, namespace, name)


def _verb(method: str, named: bool, query: Mapping[str, str]) -> str:
    if method == "GET":
        if query.get("watch") in ("true", "1"):
            return "watch"
        return "get" if named else "list"
    return {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if named else "deletecollection",
    }.get(method, method.lower())


@dataclass(frozen=True)
class Grant:
    """The rules one service account holds in one namespace ('' = cluster-wide)."""

    namespace: str
    rules: tuple[Mapping[str, Any], ...]


def grants_for(documents: Iterable[Mapping[str, Any]], namespace: str, account: str) -> list[Grant]:
    """Rules bound to ``system:serviceaccount:<namespace>:<account>`` by the rendered manifests."""
    documents = list(documents)
    roles = {
        (d.get("kind"), d["metadata"].get("namespace", namespace), d["metadata"]["name"]): d
        for d in documents
        if d.get("kind") in ("Role", "ClusterRole")
    }
    grants = []
    for binding in documents:
        kind = binding.get("kind")
        if kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        where = binding["metadata"].get("namespace", namespace) if kind == "RoleBinding" else ""
        if not any(_is_account(s, namespace, account, where) for s in binding.get("subjects", [])):
            continue
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], where if ref["kind"] == "Role" else namespace, ref["name"]))
        if role is None:
            role = roles.get((ref["kind"], namespace, ref["name"]))
        if role is not None:
            grants.append(Grant(where, tuple(role.get("rules", []))))
    return grants


def _is_account(subject: Mapping[str, Any], namespace: str, account: str, where: str) -> bool:
    return (
        subject.get("kind") == "ServiceAccount"
        and subject.get("name") == account
        and subject.get("namespace", where or namespace) == namespace
    )


def allowed(grants: Iterable[Grant], attributes: Attributes) -> bool:
    return any(
        (not grant.namespace or grant.namespace == attributes.namespace)
        and any(_matches(rule, attributes) for rule in grant.rules)
        for grant in grants
    )


def _matches(rule: Mapping[str, Any], attributes: Attributes) -> bool:
    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return "*" in values or value in values

    names = rule.get("resourceNames") or []
    return (
        has("apiGroups", attributes.group)
        and has("resources", attributes.resource)
        and has("verbs", attributes.verb)
        and (not names or attributes.name in names)
    )
