"""JSON schemas for kubeconform, made from the real API server's OpenAPI document.

kubeconform normally downloads schemas from a public repository, which this
machine cannot reach. The API server we run publishes the exact OpenAPI v2
document of its version, *including every CRD installed in it*, so we convert
that instead: one standalone, strict JSON schema per kind, laid out for the
kubeconform template :data:`SCHEMA_LOCATION`.

Strict means ``additionalProperties: false`` on every object that lists its
properties, so a misspelt field fails validation as it would fail a
server-side apply with field validation on.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_LOCATION = "{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
"""kubeconform ``-schema-location`` template, relative to the schema directory.

kubeconform fills ``.Group`` with the version for core kinds (``v1``) and with
the group for others (``apps``), so ``schema_path`` mirrors that.
"""

_REF = "#/definitions/"

# Types that the OpenAPI document declares as strings but that YAML writes as
# numbers too (``port: 8080``, ``cpu: 1``); kubeconform's own converter widens
# them the same way.
_WIDENED: dict[str, dict[str, Any]] = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {
        "oneOf": [{"type": "string"}, {"type": "integer"}]
    },
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {
        "oneOf": [{"type": "string"}, {"type": "number"}]
    },
}


def schema_path(group: str, version: str, kind: str) -> str:
    """Where kubeconform looks for a kind's schema (relative to the schema dir)."""
    return f"{group or version}/{kind.lower()}_{version}.json"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF):
            yield ref[len(_REF) :]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _strict(node: Any) -> Any:
    """Copy of ``node`` with ``additionalProperties: false`` on closed objects."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("format") == "int-or-string":
        out.pop("type", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    return out


def _closure(definitions: dict[str, Any], root: str) -> dict[str, Any]:
    """Every definition reachable from ``root`` (including itself)."""
    seen: dict[str, Any] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in definitions:
            continue
        seen[name] = definitions[name]
        todo.extend(_refs(definitions[name]))
    return seen


def convert(openapi_v2: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Map ``schema_path -> JSON schema`` for every kind in an OpenAPI v2 document (pure)."""
    definitions: dict[str, Any] = dict(openapi_v2.get("definitions", {}))
    for name, widened in _WIDENED.items():
        if name in definitions:
            definitions[name] = {**widened, "description": definitions[name].get("description", "")}
    out: dict[str, dict[str, Any]] = {}
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            closure = {k: _strict(copy.deepcopy(v)) for k, v in _closure(definitions, name).items()}
            schema = {
                "$schema": "http://json-schema.org/draft-04/schema#",
                **closure.pop(name),
                "definitions": closure,
            }
            # apiVersion/kind of a schema are fixed: pin them so a manifest that
            # names the wrong version cannot pass against this file.
            props = schema.setdefault("properties", {})
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            props["apiVersion"] = {"type": "string", "enum": [api_version]}
            props["kind"] = {"type": "string", "enum": [gvk["kind"]]}
            out[schema_path(gvk["group"], gvk["version"], gvk["kind"])] = schema
    return out


def write(openapi_v2: dict[str, Any], directory: Path) -> int:
    """Write the converted schemas under ``directory``; return how many."""
    schemas = convert(openapi_v2)
    for rel, schema in schemas.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, separators=(",", ":")))
    return len(schemas)


def write_from_server(kubectl: str, kubeconfig: Path, directory: Path) -> int:
    """Fetch ``/openapi/v2`` from the API server and write its schemas; return how many."""
    import subprocess  # noqa: PLC0415 - the only impure function here

    raw = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "get", "--raw", "/openapi/v2"],
        capture_output=True,
        check=True,
    ).stdout
    return write(json.loads(raw), directory)


def kubeconform_args(directory: Path) -> list[str]:
    """The kubeconform flags that validate strictly against ``directory`` only."""
    return ["-strict", "-summary", "-schema-location", f"{directory}/{SCHEMA_LOCATION}"]
