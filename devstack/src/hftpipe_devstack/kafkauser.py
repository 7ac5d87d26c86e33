"""A chart's ``KafkaUser`` on a real broker: its SCRAM credentials and its ACLs, applied
with the Admin API as Strimzi's User Operator applies them on a cluster.

The ACLs come from the rendered manifest only (:func:`rendered_user` runs ``helm
template`` on the stack chart), so what a test proves against the local broker is what
the chart grants in production: nothing is copied by hand. :func:`acl_bindings` is the
pure translation of Strimzi's ``spec.authorization.acls`` into Kafka's ACL bindings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Final

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from . import charts

STACK_CHART: Final = charts.REPO / charts.CHARTS_DIR / "hftpipe-stack"
"""The chart whose ``templates/kafkauser.yaml`` is the workers' user."""

Manifest = Mapping[str, Any]

RESOURCE_TYPES: Final = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactionalId": ResourceType.TRANSACTIONAL_ID,
    "cluster": ResourceType.BROKER,
}
"""Strimzi's ``acls[].resource.type`` -> Kafka's resource type (librdkafka calls the
cluster ``BROKER``)."""

CLUSTER_NAME: Final = "kafka-cluster"
"""The one name of the cluster resource (Strimzi's cluster rules carry no name)."""

PATTERN_TYPES: Final = {
    "literal": ResourcePatternType.LITERAL,
    "prefix": ResourcePatternType.PREFIXED,
}
"""Strimzi's ``patternType`` (``literal`` when absent) -> Kafka's."""

OPERATIONS: Final = {
    "Read": AclOperation.READ,
    "Write": AclOperation.WRITE,
    "Create": AclOperation.CREATE,
    "Delete": AclOperation.DELETE,
    "Alter": AclOperation.ALTER,
    "Describe": AclOperation.DESCRIBE,
    "ClusterAction": AclOperation.CLUSTER_ACTION,
    "AlterConfigs": AclOperation.ALTER_CONFIGS,
    "DescribeConfigs": AclOperation.DESCRIBE_CONFIGS,
    "IdempotentWrite": AclOperation.IDEMPOTENT_WRITE,
    "All": AclOperation.ALL,
}
"""Strimzi's operation names -> Kafka's."""

PERMISSIONS: Final = {"allow": AclPermissionType.ALLOW, "deny": AclPermissionType.DENY}

SCRAM_ITERATIONS: Final = 4096
"""Iterations of the salted password (Kafka's minimum for SCRAM-SHA-512, and Strimzi's)."""


def rendered_user(
    values_files: Sequence[str | os.PathLike[str]],
    set_values: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The one ``KafkaUser`` that the stack chart renders with these values."""
    objects = charts.render(STACK_CHART, values_files, set_values=set_values)
    users = [o for o in objects if o.get("kind") == "KafkaUser"]
    if len(users) != 1:
        raise ValueError(
            f"{STACK_CHART.name} with {[str(v) for v in values_files]} renders "
            f"{len(users)} KafkaUser(s), not one: set kafka.user.enabled"
        )
    return users[0]


def principal(user: Manifest) -> str:
    """``User:<name>``: the principal of a SCRAM user is its KafkaUser's name."""
    return f"User:{user['metadata']['name']}"


def _one(table: Mapping[str, Any], value: Any, what: str, rule: int) -> Any:
    try:
        return table[value]
    except (KeyError, TypeError):
        raise ValueError(
            f"spec.authorization.acls[{rule}]: {what} {value!r} is not one of {sorted(table)}"
        ) from None


def acl_bindings(user: Manifest) -> list[AclBinding]:
    """Kafka's ACL bindings for a KafkaUser's ``spec.authorization`` (pure): one binding
    per rule and operation, for :func:`principal` of the user.

    Only ``simple`` authorization has ACLs; a value this translation does not know is a
    ValueError naming the rule, never an ACL silently left out.
    """
    authorization = user.get("spec", {}).get("authorization") or {}
    if authorization.get("type") != "simple":
        raise ValueError(
            f"KafkaUser {user['metadata']['name']}: spec.authorization.type is "
            f"{authorization.get('type')!r}; only 'simple' authorization carries ACLs"
        )
    who = principal(user)
    bindings = []
    for index, rule in enumerate(authorization.get("acls") or []):
        resource = rule["resource"]
        kind = _one(RESOURCE_TYPES, resource.get("type"), "resource.type", index)
        if kind is ResourceType.BROKER:
            name, pattern = CLUSTER_NAME, ResourcePatternType.LITERAL
        else:
            name = resource["name"]
            pattern = _one(
                PATTERN_TYPES, resource.get("patternType", "literal"), "patternType", index
            )
        permission = _one(PERMISSIONS, rule.get("type", "allow"), "type", index)
        # `operation` (one) is Strimzi's older spelling of `operations`.
        names = rule.get("operations") or [rule["operation"]]
        for op in names:
            bindings.append(
                AclBinding(
                    kind,
                    name,
                    pattern,
                    who,
                    rule.get("host", "*"),
                    _one(OPERATIONS, op, "operation", index),
                    permission,
                )
            )
    return bindings


def apply(
    admin_config: Mapping[str, str | int | float | bool],
    user: Manifest,
    password: str,
    *,
    timeout: float = 30,
) -> list[AclBinding]:
    """Create (or update) the user's SCRAM-SHA-512 credentials with ``password`` and its
    ACLs, as the super user of ``admin_config``; return the bindings created."""
    authentication = user.get("spec", {}).get("authentication", {}).get("type")
    if authentication != "scram-sha-512":
        raise ValueError(
            f"KafkaUser {user['metadata']['name']}: authentication {authentication!r}; "
            "the local broker authenticates scram-sha-512 users only"
        )
    admin = AdminClient(dict(admin_config))
    name = str(user["metadata"]["name"])
    upsert = UserScramCredentialUpsertion(
        name,
        ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
        password.encode(),
    )
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout)
    bindings = acl_bindings(user)
    for future in admin.create_acls(bindings, request_timeout=timeout).values():
        future.result(timeout)
    return bindings
