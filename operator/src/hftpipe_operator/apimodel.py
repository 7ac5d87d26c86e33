"""The base of the ReplayJob's typed models: one definition, two validators.

A field's type, constraints, docstring and default are read twice: by pydantic,
which validates a spec in Python (the operator, the tests), and by
:mod:`.crd`, which turns the same models into the CRD's OpenAPI schema, so the
API server validates and defaults exactly the same way. Cross-field rules are
:class:`Rule` objects that hold both the CEL expression the API server evaluates
and the Python predicate pydantic evaluates, under one message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: ``x-kubernetes-validations`` in the CRD, a check in pydantic.

    ``cel`` sees the object as ``self`` (the API server's view: unset optional
    fields are absent, test them with ``has()``); ``holds`` gets the pydantic
    model (unset fields are ``None``). ``field_path`` (relative, e.g.
    ``.replicas``) is where the API server reports a violation.
    """

    cel: str
    message: str
    holds: Callable[..., bool]
    """``holds(model)``; for a transition rule ``holds(old, new)``."""
    field_path: str | None = None
    transition: bool = False
    """A rule on an update (``cel`` reads ``oldSelf``): what may not change. pydantic
    validates one object, so these are checked by :meth:`ApiModel.transition_violations`."""

    def to_crd(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry."""
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


@dataclass(frozen=True, eq=False)
class Crd:
    """Extra OpenAPI keywords for a field's CRD schema (``format``, list types...).

    Used as ``Annotated[T, Crd({...})]``; pydantic ignores it.
    """

    schema: Mapping[str, Any] = field(default_factory=dict)


class ApiModel(BaseModel):
    """A part of a custom resource: camelCase on the wire, snake_case in Python, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()
    """Cross-field rules of this object (see :class:`Rule`)."""

    @model_validator(mode="after")
    def _rules_hold(self) -> Self:
        broken = [
            rule.message
            for rule in type(self).rules
            if not rule.transition and not rule.holds(self)
        ]
        if broken:
            raise ValueError("; ".join(broken))
        return self

    @classmethod
    def transition_violations(cls, old: Self, new: Self) -> list[str]:
        """The messages of this model's transition rules that an update from ``old`` to
        ``new`` breaks (what the API server refuses, for a CRD installed without them)."""
        return [rule.message for rule in cls.rules if rule.transition and not rule.holds(old, new)]

    def to_api(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, unset fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------- common types

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

DnsLabel = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
"""A Kubernetes name that must be a DNS label (namespaces, Strimzi clusters)."""

ObjectName = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
]
"""A Kubernetes object name (Secrets, PersistentVolumeClaims)."""

SecretKey = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
]
"""A key of a Secret's ``data``."""

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$",
)


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 date-time with a time zone, as the API server's ``date-time`` format wants."""
    if not _RFC3339.match(text):
        raise ValueError(
            f"{text!r} is not an RFC 3339 date-time with a time zone, "
            "e.g. 2021-01-01T00:00:00Z or 2021-01-01T02:00:00+02:00"
        )
    try:
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date-time: {exc}") from exc


def _valid_timestamp(text: str) -> str:
    parse_timestamp(text)
    return text


Timestamp = Annotated[
    str,
    StringConstraints(max_length=64),
    AfterValidator(_valid_timestamp),
    Crd({"format": "date-time"}),
]
"""RFC 3339 date-time with a zone (``format: date-time``, so CEL's ``timestamp()`` takes it)."""

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""Kubernetes' resource.Quantity syntax (the pattern its own generated CRDs carry)."""


def _valid_quantity(value: str | int) -> str | int:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity such as 500m, 2, 256Mi or 1Gi")
    return value


Quantity = Annotated[
    str | int,
    AfterValidator(_valid_quantity),
    Crd({"pattern": QUANTITY_PATTERN}),
]
"""A resource quantity: an integer or a string like ``500m`` or ``1Gi`` (int-or-string)."""
