"""Regenerate ``kfp_api_v2beta1.json``: the part of the KFP v2beta1 REST API the fake server serves,
cut from the published swagger of two backend releases.

    python -m tests.fakes.vendor_kfp_api /path/to/kubeflow/pipelines   # a clone (bare is fine)

Two releases because ``rtune submit`` supports both ends of a range: 2.5.0 is the oldest backend
the compiled pipeline runs on (``dsl.Collected`` of artifacts, the job-id placeholder), 2.17.0 the
one the kfp SDK matches. Pipelines and versions gained ``name`` (next to ``display_name``) in 2.14,
so a request valid for both must not send it. The cut keeps the operations listed in ``OPERATIONS``
and every definition they reach, without descriptions (they are most of the bytes).

One correction (``ANY_VALUE``): the 2.5.0 generator wrote a ``map<string, google.protobuf.Value>``
as a map of objects, though the server (protojson) takes any JSON value there - a string parameter
is a string. 2.17.0's generator writes ``{}`` (anything); the cut does the same for 2.5.0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

RELEASES = ("2.5.0", "2.17.0")
SWAGGER_DIR = "backend/api/v2beta1/swagger"
FILES = ("healthz", "pipeline", "pipeline.upload", "experiment", "run")
OPERATIONS = {
    ("get", "/apis/v2beta1/healthz"),
    ("get", "/apis/v2beta1/pipelines"),
    ("post", "/apis/v2beta1/pipelines"),
    ("post", "/apis/v2beta1/pipelines/upload"),
    ("post", "/apis/v2beta1/pipelines/upload_version"),
    ("get", "/apis/v2beta1/pipelines/{pipeline_id}/versions"),
    ("get", "/apis/v2beta1/experiments"),
    ("post", "/apis/v2beta1/experiments"),
    ("post", "/apis/v2beta1/runs"),
    ("get", "/apis/v2beta1/runs/{run_id}"),
}
DOC_KEYS = {"description", "title", "summary", "tags", "x-stream-definitions"}
OUTPUT = Path(__file__).with_name("kfp_api_v2beta1.json")
ANY_VALUE = [("v2beta1RuntimeConfig", "parameters")]  # map<string, google.protobuf.Value>


def undocumented(node: Any, names: bool = False) -> Any:
    """``node`` without documentation keys; ``names``: a ``properties`` map, whose keys are field
    names (a field may well be called ``description``)."""
    if isinstance(node, dict):
        return {
            k: undocumented(v, names=k == "properties" and not names)
            for k, v in node.items()
            if names or k not in DOC_KEYS
        }
    if isinstance(node, list):
        return [undocumented(v) for v in node]
    return node


def references(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(references(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(references(v) for v in node))
    return set()


def cut_release(repo: Path, release: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    definitions: dict[str, Any] = {}
    for name in FILES:
        text = subprocess.run(
            ["git", "-C", str(repo), "show", f"{release}:{SWAGGER_DIR}/{name}.swagger.json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        swagger = json.loads(text)
        definitions.update(swagger["definitions"])
        for path, operations in swagger["paths"].items():
            for method, operation in operations.items():
                if (method, path) in OPERATIONS:
                    paths.setdefault(path, {})[method] = undocumented(operation)
    reached: set[str] = set()
    todo = references(paths)
    while todo:
        name = todo.pop()
        reached.add(name)
        todo |= references(definitions[name]) - reached
    kept = {name: undocumented(definitions[name]) for name in sorted(reached)}
    for definition, field in ANY_VALUE:
        kept[definition]["properties"][field]["additionalProperties"] = {}
    return {"paths": paths, "definitions": kept}


def main(repo: Path) -> None:
    vendored = {
        "source": (
            f"https://github.com/kubeflow/pipelines {SWAGGER_DIR}/"
            f"{{{','.join(FILES)}}}.swagger.json at the tags below, cut by "
            "tests/fakes/vendor_kfp_api.py (listed operations, reachable definitions, "
            "no descriptions, protobuf Value maps as any JSON); license Apache-2.0"
        ),
        "releases": {release: cut_release(repo, release) for release in RELEASES},
    }
    OUTPUT.write_text(json.dumps(vendored, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
