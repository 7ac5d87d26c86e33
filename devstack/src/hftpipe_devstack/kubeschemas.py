"""JSON schemas for kubeconform, made from the real API server's OpenAPI document.

kubeconform normally downloads schemas from a public repository, which this
machine cannot reach. The API server we run publishes the exact OpenAPI v2
document of its version, *including every CRD installed in it*, so we convert
that instead: one standalone, strict JSON schema per kind, laid out for the
kubeconform template :data:`SCHEMA_LOCATION`.

Strict means ``additionalProperties: false`` on every object that lists its
properties, so a misspelt field fails validation as it would fail a
server-side apply with field validation on.

CRD kinds come out like built-in ones: the API server publishes each served
version of a CRD with a structural schema in ``/openapi/v2`` under its
``x-kubernetes-group-version-kind``, and kubeconform's template resolves
``kafka.strimzi.io/v1`` ``Kafka`` to ``kafka.strimzi.io/kafka_v1.json`` (the
layout of the community CRD catalogues), which is where :func:`schema_path`
puts it. kubeconform then checks types, enums, patterns, required and (with our
strictness) unknown fields; not CEL rules (``x-kubernetes-validations``), nor
what the v2 publication drops (``oneOf``/``anyOf``/``not``, and the type of
``nullable`` fields): those are left to a server-side dry-run. The server
publishes a new CRD a moment after it is Established: :func:`write_from_server`
waits for the kinds it is told to ``expect``.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
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


def crd_schema_paths(crds: Iterable[Mapping[str, Any]]) -> set[str]:
    """The schema paths of every served version of ``crds`` (pure)."""
    return {
        schema_path(crd["spec"]["group"], version["name"], crd["spec"]["names"]["kind"])
        for crd in crds
        for version in crd["spec"]["versions"]
        if version.get("served")
    }


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


_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "definitions"})


def _strict(node: Any) -> Any:
    """Copy of ``node`` with ``additionalProperties: false`` on closed objects."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    # `properties` (and `definitions`) map names to schemas: the map itself is not a
    # schema, or a property called "properties" (JSONSchemaProps, in the CRD kind's
    # own schema) would get `additionalProperties` added next to it.
    out = {
        k: {name: _strict(sub) for name, sub in v.items()}
        if k in _SCHEMA_MAPS and isinstance(v, dict)
        else _strict(v)
        for k, v in node.items()
    }
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    # Built-in kinds mark int-or-string with a format, CRDs with an extension (and
    # no type at all, which would accept any value, an object included).
    if out.get("format") == "int-or-string" or out.get("x-kubernetes-int-or-string"):
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


def _write_all(schemas: Mapping[str, dict[str, Any]], directory: Path) -> int:
    for rel, schema in schemas.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, separators=(",", ":")))
    return len(schemas)


def write(openapi_v2: dict[str, Any], directory: Path) -> int:
    """Write the converted schemas under ``directory``; return how many."""
    return _write_all(convert(openapi_v2), directory)


def fetch_openapi_v2(kubectl: str, kubeconfig: Path) -> dict[str, Any]:
    """The API server's ``/openapi/v2`` document."""
    raw = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "get", "--raw", "/openapi/v2"],
        capture_output=True,
        check=True,
    ).stdout
    document: dict[str, Any] = json.loads(raw)
    return document


def write_from_server(
    kubectl: str,
    kubeconfig: Path,
    directory: Path,
    *,
    expect: Iterable[str] = (),
    timeout: float = 60,
) -> int:
    """Fetch ``/openapi/v2`` from the API server and write its schemas; return how many.

    ``expect`` lists schema paths (see :func:`crd_schema_paths`) that must be in
    the document: it is fetched again until they are, for up to ``timeout``
    seconds, since the server publishes a CRD shortly after it is Established.
    """
    wanted = set(expect)
    deadline = time.monotonic() + timeout
    while True:
        schemas = convert(fetch_openapi_v2(kubectl, kubeconfig))
        missing = wanted - set(schemas)
        if not missing:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"after {timeout} s /openapi/v2 still lacks {sorted(missing)}: a CRD without a "
                "structural schema is published without one"
            )
        time.sleep(1)
    return _write_all(schemas, directory)


def kubeconform_args(directory: Path) -> list[str]:
    """The kubeconform flags that validate strictly against ``directory`` only."""
    return ["-strict", "-summary", "-schema-location", f"{directory}/{SCHEMA_LOCATION}"]
