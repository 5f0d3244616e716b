"""The KFP v2beta1 REST API's published schema (vendored in ``kfp_api_v2beta1.json``), applied the
way the real API server applies it, so the fake server refuses what the real one refuses.

    api = KfpApi("2.17.0")
    operation = api.operation("POST", "/apis/v2beta1/pipelines")
    api.check_request(operation, query={}, body={"display_name": "x", "bogus": 1})  # ApiSchemaError

Why strict: the server's gateway unmarshals JSON bodies with ``DiscardUnknown: false``
(backend/src/apiserver/common/utils.go ``CustomMarshaler``), so an unknown field is a 400 - but
swagger schemas do not say ``additionalProperties: false``. Every object schema that lists its
properties is closed here (maps such as ``runtime_config.parameters`` declare
``additionalProperties`` and stay open). Query parameters are stricter than the server, which
ignores unknown ones silently: a parameter the API does not declare is a client bug either way.
Replies are checked too, so the fake cannot drift from what a real server sends.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator
from jsonschema.exceptions import best_match

VENDORED = Path(__file__).with_name("kfp_api_v2beta1.json")
NAME_FIELD_SINCE = (2, 14)  # pipelines and versions gained `name` beside `display_name`


class ApiSchemaError(ValueError):
    """A request or reply the published API does not allow."""


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    spec: dict[str, Any]

    @property
    def query_names(self) -> set[str]:
        return {p["name"] for p in self.spec.get("parameters", []) if p["in"] == "query"}

    @property
    def body_schema(self) -> dict[str, Any] | None:
        return next(
            (p["schema"] for p in self.spec.get("parameters", []) if p["in"] == "body"), None
        )

    @property
    def reply_schema(self) -> dict[str, Any] | None:
        return self.spec.get("responses", {}).get("200", {}).get("schema")


def release_for(version: tuple[int, ...] | None) -> str:
    """The vendored release whose schema a backend of ``version`` speaks (unknown: the newest)."""
    return "2.5.0" if version is not None and version < NAME_FIELD_SINCE else "2.17.0"


@cache
def _vendored() -> dict[str, Any]:
    return json.loads(VENDORED.read_text(encoding="utf-8"))


def closed(schema: Any) -> Any:
    """``schema`` with every object that lists ``properties`` closed to unknown keys."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if "properties" in result and "additionalProperties" not in result:
        result["additionalProperties"] = False
    return result


class KfpApi:
    def __init__(self, release: str) -> None:
        spec = _vendored()["releases"][release]
        self.release = release
        self._definitions = closed(spec["definitions"])
        self._operations = [
            Operation(method.upper(), template, operation)
            for template, operations in spec["paths"].items()
            for method, operation in operations.items()
        ]

    def operation(self, method: str, path: str) -> Operation | None:
        """The operation serving ``method path``; a literal segment beats a ``{parameter}``, as
        the server's router registers the upload endpoints before the gateway's templates."""
        candidates = [
            op
            for op in self._operations
            if op.method == method and re.fullmatch(_pattern(op.template), path)
        ]
        return min(candidates, key=lambda op: op.template.count("{"), default=None)

    def check_request(
        self, operation: Operation, query: dict[str, str], body: Any | None = None
    ) -> None:
        unknown = sorted(set(query) - operation.query_names)
        if unknown:
            raise ApiSchemaError(
                f"{operation.method} {operation.template} has no query parameter "
                f"{', '.join(unknown)} (KFP {self.release} declares {sorted(operation.query_names)})"
            )
        schema = operation.body_schema
        if schema is not None:
            self._validate(body if body is not None else {}, schema, "request body")

    def check_reply(self, operation: Operation, reply: Any) -> None:
        schema = operation.reply_schema
        if schema is not None:
            self._validate(reply, schema, "reply")

    def _validate(self, value: Any, schema: dict[str, Any], what: str) -> None:
        document = {**closed(schema), "definitions": self._definitions}
        error = best_match(Draft4Validator(document).iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(top)"
            raise ApiSchemaError(f"{what} at {where}: {error.message} (KFP {self.release})")


def _pattern(template: str) -> str:
    return re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
