"""The ReplayJob CustomResourceDefinition, rendered from the pydantic models: one source.

:func:`build_crd` walks :class:`~.spec.ReplayJobSpec` and
:class:`~.status.ReplayJobStatus` and writes their types, constraints,
docstrings, defaults and :class:`~.apimodel.Rule` objects as a structural
OpenAPI schema with CEL rules. The Helm chart and ``k8s/`` render the CRD from
here (``python -m hftpipe_operator.crd > crd.yaml``); tests check that the API
server and pydantic accept, reject and default alike.

Unknown fields: a structural schema cannot say ``additionalProperties: false``
next to ``properties`` (the API server refuses the CRD), so unknown fields are
pruned on write, and rejected when the client asks for strict field validation
(what ``kubectl`` does by default).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable
from types import NoneType, UnionType
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from . import labels
from .apimodel import ApiModel, Crd
from .naming import JOB_NAME_MESSAGE, JOB_NAME_PATTERN
from .spec import ReplayJobSpec
from .status import ReplayJobStatus

GROUP: Final = labels.DOMAIN
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "ReplayJob"
PLURAL: Final = "replayjobs"
SINGULAR: Final = "replayjob"
SHORT_NAMES: Final = ("rj",)
NAME: Final = f"{PLURAL}.{GROUP}"

PRINTER_COLUMNS: Final = (
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress.percent",
        "description": "Share of the source through the whole pipeline",
    },
    {
        "name": "Lag",
        "type": "integer",
        "jsonPath": ".status.progress.lag",
        "description": "Records the processor and loader have not consumed yet",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "ETA",
        "type": "integer",
        "jsonPath": ".status.progress.etaSeconds",
        "description": "Estimated seconds to completion",
        "priority": 1,
    },
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1},
)
"""``kubectl get rj`` columns; ``-o wide`` adds the priority-1 ones."""

_JSON_TYPES: Final[dict[type, str]] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
}


def _text(doc: str) -> str:
    """A docstring as one paragraph (as ``kubectl explain`` shows descriptions)."""
    return " ".join(inspect.cleandoc(doc).split())


def _flatten(metadata: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in metadata:
        if isinstance(item, at.GroupedMetadata):  # StringConstraints: MaxLen, pattern...
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def _unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """Strip ``Annotated`` (collecting its metadata) and ``| None``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            base, *extra = get_args(annotation)
            annotation, metadata = base, [*metadata, *extra]
        elif origin in (Union, UnionType):
            args = [a for a in get_args(annotation) if a is not NoneType]
            if len(args) != 1:
                return annotation, _flatten(metadata)
            annotation = args[0]
        else:
            return annotation, _flatten(metadata)


def _constrain(schema: dict[str, Any], metadata: list[Any]) -> dict[str, Any]:
    array = schema.get("type") == "array"
    for item in metadata:
        if isinstance(item, Crd):
            schema.update(item.schema)
        elif isinstance(item, at.Ge):
            schema["minimum"] = item.ge
        elif isinstance(item, at.Gt):
            schema["minimum"], schema["exclusiveMinimum"] = item.gt, True
        elif isinstance(item, at.Le):
            schema["maximum"] = item.le
        elif isinstance(item, at.Lt):
            schema["maximum"], schema["exclusiveMaximum"] = item.lt, True
        elif isinstance(item, at.MinLen):
            schema["minItems" if array else "minLength"] = item.min_length
        elif isinstance(item, at.MaxLen):
            schema["maxItems" if array else "maxLength"] = item.max_length
        elif isinstance(item, at.BaseMetadata):
            # pydantic's Field(pattern=...) and StringConstraints carry the pattern in a
            # metadata object of their own; anything else pydantic would enforce but the
            # CRD would not: refuse to drift.
            pattern = getattr(item, "pattern", None)
            other = {k: v for k, v in vars(item).items() if k != "pattern" and v is not None}
            if other or pattern is None:
                raise TypeError(f"no CRD rendering for the constraint {item!r}")
            schema["pattern"] = pattern
    return schema


def _type_schema(annotation: Any, metadata: list[Any], *, defaults: bool) -> dict[str, Any]:
    annotation, metadata = _unwrap(annotation, metadata)
    origin = get_origin(annotation)
    schema: dict[str, Any]
    if origin is Literal:
        values = list(get_args(annotation))
        schema = {"type": _JSON_TYPES[type(values[0])], "enum": values}
    elif origin in (Union, UnionType):
        if set(get_args(annotation)) != {str, int}:
            raise TypeError(f"no CRD rendering for the union {annotation!r}")
        schema = {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
        }
    elif origin is list:
        (item,) = get_args(annotation)
        schema = {"type": "array", "items": _type_schema(item, [], defaults=defaults)}
    elif origin is dict and get_args(annotation)[1] is str:
        # A string map (labels, CSI volume attributes).
        schema = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 4096}}
    elif origin is dict:
        # A raw Kubernetes object (a volume source): its schema is Kubernetes', not ours.
        schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        schema = openapi_schema(annotation, defaults=defaults)
    elif annotation in _JSON_TYPES:
        schema = {"type": _JSON_TYPES[annotation]}
    else:
        raise TypeError(f"no CRD rendering for {annotation!r}")
    return _constrain(schema, metadata)


def crd_default(info: FieldInfo) -> Any:
    """A field's default as the CRD states it, or ``None`` for no default.

    A nested object's default is spelled out in full, not as ``{}`` left for
    its fields' own defaults to fill: the API server checks a default against
    the CEL rules as written, without defaulting it first.
    """
    value = info.get_default(call_default_factory=True)
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return to_jsonable_python(value)


def openapi_schema(model: type[BaseModel], *, defaults: bool = True) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model`` (``defaults=False`` for status)."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        alias = info.alias or name
        schema = _type_schema(info.annotation, list(info.metadata), defaults=defaults)
        if info.description:
            schema["description"] = _text(info.description)
        if info.is_required():
            required.append(alias)
        elif defaults and (default := crd_default(info)) is not None:
            schema["default"] = default
        properties[alias] = schema
    out: dict[str, Any] = {"type": "object"}
    if model.__doc__:
        out["description"] = _text(model.__doc__)
    out["properties"] = properties
    if required:
        out["required"] = required
    if issubclass(model, ApiModel) and model.rules:
        out["x-kubernetes-validations"] = [rule.to_crd() for rule in model.rules]
    return out


def _root_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": _text(ReplayJobSpec.__doc__ or KIND),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": openapi_schema(ReplayJobSpec),
            "status": openapi_schema(ReplayJobStatus, defaults=False),
        },
        # Root rules may read metadata.name (and nothing else of metadata).
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.matches('{JOB_NAME_PATTERN}')",
                "message": JOB_NAME_MESSAGE,
            }
        ],
    }


def build_crd() -> dict[str, Any]:
    """The ``replayjobs.hftpipe.io`` CustomResourceDefinition."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": NAME,
            "labels": {labels.APP_NAME: labels.APP, labels.APP_PART_OF: labels.APP},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": [labels.APP],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "schema": {"openAPIV3Schema": _root_schema()},
                }
            ],
        },
    }


PEERING_GROUP: Final = "kopf.dev"


def build_peering_crds() -> list[dict[str, Any]]:
    """kopf's ``KopfPeering`` and ``ClusterKopfPeering`` CRDs (from kopf's docs, "Peering").

    Operator replicas announce themselves in a peering object and only the one of
    highest priority handles resources; kopf needs these CRDs (and the peering
    object itself) whenever more than one replica runs.
    """
    crds: list[dict[str, Any]] = []
    for kind, scope in (("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")):
        plural = f"{kind.lower()}s"
        crds.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.{PEERING_GROUP}"},
                "spec": {
                    "group": PEERING_GROUP,
                    "scope": scope,
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "properties": {
                                        "status": {
                                            "type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        }
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        )
    return crds


def crd_yaml() -> str:
    """The CRD as YAML, with a header saying where it comes from."""
    body = yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)
    return (
        "# Generated by `python -m hftpipe_operator.crd` from hftpipe_operator.spec; do not edit.\n"
        + body
    )


SAMPLE_SOURCE: Final = (
    "/opt/venv/lib/python3.11/site-packages/hftpipe_workers/sample_data/btcusdt_1h_binance.csv.gz"
)
"""The BTC/USDT hourly bars shipped in the workers' image (``workers/Dockerfile``)."""


def example_replayjob(name: str = "btc", namespace: str = "default") -> dict[str, Any]:
    """A ReplayJob of the bars shipped in the workers' image: a starting point for users."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {
                "url": SAMPLE_SOURCE,
                "symbol": "BTCUSDT",
                "start": "2019-01-01T00:00:00Z",
            },
            # 2,000 bars a second: the five years from 2019 in about half a minute, so
            # `kubectl wait --for=condition=Complete` returns while you watch. `speed:
            # 3600x` paces by event time instead (an hourly bar a second: ~12 hours here).
            "pacing": {"rate": 2000},
            # The client Service Strimzi creates for the stack chart's Kafka (cluster
            # `kafka` in values-kind.yaml): `<cluster>-kafka-bootstrap`, port 9092.
            "kafka": {"bootstrapServers": "kafka-kafka-bootstrap:9092", "topic": {"partitions": 3}},
            "processing": {"windows": ["5m", "1h", "1d"], "replicas": 2},
            "redis": {
                "url": "redis://redis:6379/0",
                "credentials": {"secretRef": {"name": "redis", "passwordKey": "password"}},
            },
        },
    }


def main() -> None:
    """Print the CRD's YAML (what the chart and ``k8s/`` are rendered from)."""
    sys.stdout.write(crd_yaml())


if __name__ == "__main__":
    main()


SAMPLE_HEADER = """\
# A ReplayJob of the BTC/USDT hourly bars shipped in the workers image.
# kubectl apply -f k8s/replayjob.yaml && kubectl get replayjobs -w
# Generated from hftpipe_operator.crd.example_replayjob (make manifests); edit a copy.
"""


def sample_yaml() -> str:
    """``k8s/replayjob.yaml``: the example ReplayJob with a header."""
    return SAMPLE_HEADER + yaml.safe_dump(example_replayjob(), sort_keys=False)
