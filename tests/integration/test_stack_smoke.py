"""The local stack is real: each component does what the real thing does.

These stay in the suite as canaries: when one fails, every higher tier's
failures are suspect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kubernetes import client
from kubernetes.client.rest import ApiException

from hftpipe_devstack import components, kubeschemas
from hftpipe_devstack.procs import ProcessTable, alive, port_open
from hftpipe_devstack.testing import wait_for

SMOKE_CHART = Path(__file__).parent / "fixtures" / "smoke-chart"


# --------------------------------------------------------------------------- Kafka


def test_kafka_round_trips_10k_records_through_3_partitions(kafka_bootstrap: str) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)

    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    n = 10_000
    for i in range(n):
        producer.produce(topic, key=f"k{i % 17}".encode(), value=str(i).encode())
        producer.poll(0)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: list[tuple[bytes, int, int]] = []
    deadline = time.monotonic() + 60
    while len(seen) < n and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=1.0):
            assert msg.error() is None, msg.error()
            raw_key, raw_value, partition = msg.key(), msg.value(), msg.partition()
            assert raw_key is not None
            assert raw_value is not None
            assert partition is not None
            seen.append((raw_key, int(raw_value), partition))
    # One more poll: nothing beyond the n records may arrive.
    extra = consumer.consume(1000, timeout=1.0)
    consumer.close()

    assert extra == []
    assert sorted(v for _, v, _ in seen) == list(range(n))  # all, exactly once
    assert {p for _, _, p in seen} == {0, 1, 2}
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for key, number, _ in seen:
        by_key[key].append(number)
    assert all(vals == sorted(vals) for vals in by_key.values())  # per-key order kept
    assert sum(_end_offsets(kafka_bootstrap, topic, 3)) == n


def _end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "smoke-watermarks"})
    try:
        return [
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        ]
    finally:
        c.close()


def test_kafka_does_not_auto_create_topics(kafka_bootstrap: str) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.timeout.ms": 3000})
    errors: list[Any] = []
    producer.produce(
        f"never-created-{uuid.uuid4().hex[:8]}",
        b"x",
        on_delivery=lambda err, _msg: errors.append(err),
    )
    producer.flush(10)
    assert len(errors) == 1
    assert errors[0] is not None  # delivery failed: the topic does not exist


# --------------------------------------------------------------------------- Redis


def test_redis_rejects_unauthenticated_clients(redis_url: str) -> None:
    authed = redis.Redis.from_url(redis_url)
    assert authed.ping() is True
    host = authed.connection_pool.connection_kwargs["host"]
    port = authed.connection_pool.connection_kwargs["port"]
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=host, port=port).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=host, port=port, password="wrong").ping()


# ---------------------------------------------------------------------- Kubernetes

CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "smoketests.smoke.hftpipe.io"},
    "spec": {
        "group": "smoke.hftpipe.io",
        "scope": "Namespaced",
        "names": {"plural": "smoketests", "singular": "smoketest", "kind": "SmokeTest"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["replicas"],
                                "properties": {
                                    "replicas": {"type": "integer", "minimum": 1},
                                    "mode": {"type": "string", "enum": ["fast", "slow"]},
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_api_server_enforces_crd_schema(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(CRD)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(CRD["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])
        )

    wait_for(established, 30, "the CRD to be Established")
    objects = client.CustomObjectsApi(api)

    def make(spec: dict[str, Any]) -> Any:
        return objects.create_namespaced_custom_object(
            "smoke.hftpipe.io",
            "v1",
            "default",
            "smoketests",
            {
                "apiVersion": "smoke.hftpipe.io/v1",
                "kind": "SmokeTest",
                "metadata": {"generateName": "ok-"},
                "spec": spec,
            },
        )

    assert make({"replicas": 2, "mode": "fast"})["spec"]["replicas"] == 2
    with pytest.raises(ApiException) as bad:
        make({"replicas": 0, "mode": "warp"})
    assert bad.value.status == 422
    assert "spec.replicas" in bad.value.body
    assert "spec.mode" in bad.value.body
    with pytest.raises(ApiException) as missing:
        make({"mode": "slow"})
    assert missing.value.status == 422
    assert "spec.replicas: Required value" in missing.value.body


def test_controller_manager_garbage_collects_dependents(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    name = f"owner-{uuid.uuid4().hex[:6]}"
    owner = core.create_namespaced_config_map("default", {"metadata": {"name": name}})
    core.create_namespaced_config_map(
        "default",
        {
            "metadata": {
                "name": f"{name}-child",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": name,
                        "uid": owner.metadata.uid,
                    }
                ],
            }
        },
    )
    core.delete_namespaced_config_map(name, "default", propagation_policy="Background")

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map(f"{name}-child", "default")
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(child_gone, 60, "the garbage collector to delete the dependent ConfigMap")


def test_controller_manager_turns_deployments_into_pods(api: client.ApiClient) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": f"smoke-{uuid.uuid4().hex[:6]}"}
    apps.create_namespaced_deployment(
        "default",
        {
            "metadata": {"name": labels["app"]},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "registry.example/none:1"}]},
                },
            },
        },
    )
    selector = f"app={labels['app']}"
    wait_for(
        lambda: len(core.list_namespaced_pod("default", label_selector=selector).items) == 2,
        60,
        "Deployment -> ReplicaSet -> 2 Pods",
    )
    rs = apps.list_namespaced_replica_set("default", label_selector=selector).items
    assert len(rs) == 1
    assert rs[0].metadata.owner_references[0].kind == "Deployment"


# ------------------------------------------------------------------ helm + kubeconform


def test_helm_renders_and_kubeconform_validates_against_server_schemas(
    stack_env: dict[str, str], kubeconfig: Path, tmp_path: Path
) -> None:
    schemas = tmp_path / "schemas"
    count = kubeschemas.write_from_server(stack_env["KUBECTL"], kubeconfig, schemas)
    assert count > 100

    def render_and_validate(*helm_args: str) -> subprocess.CompletedProcess[str]:
        rendered = subprocess.run(
            [stack_env["HELM"], "template", "smoke", str(SMOKE_CHART), *helm_args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return subprocess.run(
            [stack_env["KUBECONFORM"], *kubeschemas.kubeconform_args(schemas), "-"],
            input=rendered,
            capture_output=True,
            text=True,
            check=False,
        )

    good = render_and_validate()
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Valid: 2, Invalid: 0, Errors: 0, Skipped: 0" in good.stdout
    # The same chart with a port that is not a number must fail: validation is real.
    bad = render_and_validate("--set", "port=http")
    assert bad.returncode != 0
    assert "containerPort" in bad.stdout


def test_the_local_redis_keeps_its_data_across_a_crash(tmp_path: Path) -> None:
    """Issue 10, point 14: the local stack's Redis kept nothing on disk, so a Redis crash
    silently emptied every job's exactly-once state. It persists an append-only file."""
    redis_component = components.Redis()
    table = ProcessTable(tmp_path, tie_to_parent=True)
    try:
        redis_component.start(table, tmp_path / "redis")
        client = redis.Redis.from_url(redis_component.url)
        client.set("hftpipe:t:offset:0", "42")
        time.sleep(1.5)  # appendfsync everysec
        (record,) = [r for r in table.records() if r.name == "redis"]
        os.killpg(record.pid, signal.SIGKILL)  # a crash: no shutdown save
        wait_for(lambda: not alive(record), 10, "redis to die")
        # Its group may hold a forked child a moment longer (Redis rewrites its AOF in
        # one), with the listening socket: wait until nothing accepts on the port.
        wait_for(lambda: not port_open(redis_component.port), 10, "redis' port to close")
        redis_component.start(table, tmp_path / "redis")
        assert redis.Redis.from_url(redis_component.url).get("hftpipe:t:offset:0") == b"42"
    finally:
        table.stop_all(grace=1)
