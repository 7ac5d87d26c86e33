"""The chart's KafkaUser as Kafka ACL bindings (issue 10, point 12;
tests/integration/test_kafka_acls.py applies them to a broker that enforces them)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka.admin import (
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from hftpipe_devstack import kafkauser

PRODUCTION = kafkauser.STACK_CHART / "values-production.yaml"


def user(acls: list[dict[str, Any]], authorization: str = "simple") -> dict[str, Any]:
    return {
        "metadata": {"name": "someone"},
        "spec": {
            "authentication": {"type": "scram-sha-512"},
            "authorization": {"type": authorization, "acls": acls},
        },
    }


def test_the_production_user_gets_one_binding_per_rule_and_operation() -> None:
    rendered = kafkauser.rendered_user([PRODUCTION])
    bindings = kafkauser.acl_bindings(rendered)
    rules = rendered["spec"]["authorization"]["acls"]
    assert len(bindings) == sum(len(rule["operations"]) for rule in rules)
    assert {b.principal for b in bindings} == {"User:hftpipe-workers"}
    assert {b.host for b in bindings} == {"*"}
    assert {b.permission_type for b in bindings} == {AclPermissionType.ALLOW}
    assert {b.resource_pattern_type for b in bindings} == {ResourcePatternType.PREFIXED}
    by_type = {(b.restype, b.operation) for b in bindings}
    assert (ResourceType.GROUP, AclOperation.READ) in by_type
    assert (ResourceType.TRANSACTIONAL_ID, AclOperation.WRITE) in by_type
    assert (ResourceType.TOPIC, AclOperation.CREATE) in by_type


def test_the_default_values_render_no_user_to_apply() -> None:
    with pytest.raises(ValueError, match=r"renders 0 KafkaUser\(s\), not one"):
        kafkauser.rendered_user([])


def test_cluster_literal_deny_and_host_rules_translate() -> None:
    bindings = kafkauser.acl_bindings(
        user(
            [
                {"resource": {"type": "cluster"}, "operations": ["IdempotentWrite"]},
                {
                    "resource": {"type": "topic", "name": "audit"},
                    "operation": "Read",
                    "type": "deny",
                    "host": "10.0.0.1",
                },
            ]
        )
    )
    cluster, audit = bindings
    assert (cluster.restype, cluster.name, cluster.operation) == (
        ResourceType.BROKER,
        "kafka-cluster",
        AclOperation.IDEMPOTENT_WRITE,
    )
    assert audit.resource_pattern_type == ResourcePatternType.LITERAL  # Strimzi's default
    assert audit.permission_type == AclPermissionType.DENY
    assert audit.host == "10.0.0.1"


def test_an_unknown_value_names_its_rule_instead_of_dropping_it() -> None:
    acls = [
        {"resource": {"type": "topic", "name": "a"}, "operations": ["Read"]},
        {"resource": {"type": "topic", "name": "b"}, "operations": ["Read", "Fly"]},
    ]
    with pytest.raises(ValueError, match=r"acls\[1\]: operation 'Fly' is not one of"):
        kafkauser.acl_bindings(user(acls))
    with pytest.raises(ValueError, match="only 'simple' authorization"):
        kafkauser.acl_bindings(user(acls, authorization="opa"))
