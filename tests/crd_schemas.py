"""Validate custom resources (KServe, Kubeflow Trainer/Training Operator, Argo CD) against CRDs.

`validate_custom_resource(obj)` picks the CRD in `tests/crds/` by the object's apiVersion and
kind, turns the version's `openAPIV3Schema` into a JSON Schema and validates strictly: a field
the CRD does not define fails (as with `kubectl apply --validate=strict`), except below
`x-kubernetes-preserve-unknown-fields: true`. Embedded Kubernetes core types are named in the
CRD files (`x-rtune-k8s-type`, `x-rtune-k8s-inline`, see tests/crds/README.md) and resolved
against kubernetes-validate's strict schema for Kubernetes `K8S_VERSION`; `metadata` is checked
as an ObjectMeta.

    from tests.crd_schemas import validate_custom_resource
    validate_custom_resource(isvc_dict)  # raises CustomResourceInvalid naming every bad field
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

CRD_DIR = Path(__file__).parent / "crds"
K8S_VERSION = "1.31.0"
_K8S_DEFS_URI = "https://kubernetes.io/api/_definitions.json"


class UnknownCustomResource(LookupError):
    """No CRD in tests/crds/ defines this apiVersion/kind."""


class CustomResourceInvalid(ValueError):
    """The object violates its CRD schema; the message lists every violation by field path."""


@dataclass(frozen=True)
class _CrdVersion:
    path: Path
    schema: dict[str, Any]


def _k8s_ref(definition: str) -> dict[str, Any]:
    return {"$ref": f"{_K8S_DEFS_URI}#/$defs/{definition}"}


@cache
def _k8s_definitions() -> dict[str, Any]:
    """kubernetes-validate's strict `_definitions.json` for K8S_VERSION (all core types)."""
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = root / f"v{K8S_VERSION}-local-strict" / "_definitions.json"
    return json.loads(path.read_text())


def _absolute_refs(node: Any) -> Any:
    """A copy of a core-type schema whose local `#/$defs/...` refs point into the definitions."""
    if isinstance(node, dict):
        return {
            k: f"{_K8S_DEFS_URI}{v}" if k == "$ref" and v.startswith("#") else _absolute_refs(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_absolute_refs(v) for v in node]
    return node


def _inline_properties(definitions: list[str]) -> dict[str, Any]:
    """The properties of core types embedded with Go's `,inline` (none of them required)."""
    defs = _k8s_definitions()["$defs"]
    merged: dict[str, Any] = {}
    for name in definitions:
        if name not in defs:
            raise KeyError(f"unknown Kubernetes definition {name!r} in x-rtune-k8s-inline")
        merged.update(_absolute_refs(defs[name]["properties"]))
    return merged


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """One CRD structural-schema node as strict JSON Schema (2020-12).

    Objects that list properties get `additionalProperties: false` unless they preserve unknown
    fields; `nullable` admits null; `x-kubernetes-int-or-string` becomes integer-or-string.
    """
    if "x-rtune-k8s-type" in node:
        return _k8s_ref(node["x-rtune-k8s-type"])
    out: dict[str, Any] = {}
    for key in ("required", "enum", "pattern", "minimum", "maximum", "minLength", "maxLength"):
        if key in node:
            out[key] = node[key]
    for key in ("minItems", "maxItems", "minProperties", "maxProperties", "format"):
        if key in node:
            out[key] = node[key]
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "type" in node:
        out["type"] = [node["type"], "null"] if node.get("nullable") else node["type"]
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node and "anyOf" not in out:
            out[key] = [to_json_schema(child) for child in node[key]]
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    properties = {k: to_json_schema(v) for k, v in node.get("properties", {}).items()}
    if "x-rtune-k8s-inline" in node:
        properties = {**_inline_properties(node["x-rtune-k8s-inline"]), **properties}
    if properties:
        out["properties"] = properties
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        out["additionalProperties"] = to_json_schema(additional)
    elif additional is not None:
        out["additionalProperties"] = additional
    elif properties and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _root_schema(group: str, version: str, kind: str, crd_schema: dict[str, Any]) -> dict:
    """The whole-object schema: fixed apiVersion/kind, metadata as ObjectMeta, the CRD's rest."""
    schema = to_json_schema(crd_schema)
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"const": f"{group}/{version}"}
    props["kind"] = {"const": kind}
    own_meta = crd_schema.get("properties", {}).get("metadata", {})
    meta_rules = {k: v for k, v in to_json_schema(own_meta).items() if k != "type"}
    meta_rules.pop("additionalProperties", None)  # ObjectMeta decides which fields exist
    object_meta = _k8s_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
    props["metadata"] = {"allOf": [object_meta, meta_rules]} if meta_rules else object_meta
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
    schema["$id"] = f"https://kubernetes.io/api/rtune-crds/{group}_{version}_{kind}.json"
    return schema


@cache
def _crd_index() -> dict[tuple[str, str], _CrdVersion]:
    """(apiVersion, kind) -> JSON Schema, over every CRD file in CRD_DIR."""
    index: dict[tuple[str, str], _CrdVersion] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            crd_schema = version["schema"]["openAPIV3Schema"]
            schema = _root_schema(group, version["name"], kind, crd_schema)
            index[(f"{group}/{version['name']}", kind)] = _CrdVersion(path, schema)
    return index


def known_custom_resources() -> list[tuple[str, str]]:
    """The (apiVersion, kind) pairs that validate_custom_resource can check."""
    return sorted(_crd_index())


@cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    crd = _crd_index()[(api_version, kind)]
    definitions = Resource.from_contents(_k8s_definitions())
    registry: Registry = Registry().with_resource(_K8S_DEFS_URI, definitions)
    return jsonschema.Draft202012Validator(crd.schema, registry=registry)


def _field_path(error: jsonschema.ValidationError) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path]
    return "".join(parts).lstrip(".") or "<root>"


def validate_custom_resource(obj: dict[str, Any]) -> None:
    """Raise CustomResourceInvalid unless `obj` is valid for its CRD in tests/crds/.

    Raises UnknownCustomResource when no CRD there defines obj's apiVersion and kind.
    """
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    if key not in _crd_index():
        known = ", ".join(f"{v} {k}" for v, k in known_custom_resources())
        raise UnknownCustomResource(f"no CRD schema for {key[0]} {key[1]} (known: {known})")
    errors = sorted(_validator(*key).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        name = (obj.get("metadata") or {}).get("name", "<unnamed>")
        lines = [f"- {_field_path(e)}: {e.message}" for e in errors]
        source = _crd_index()[key].path.relative_to(CRD_DIR.parent.parent)
        raise CustomResourceInvalid(
            f"{key[1]} {name!r} does not match its CRD ({source}):\n" + "\n".join(lines)
        )
