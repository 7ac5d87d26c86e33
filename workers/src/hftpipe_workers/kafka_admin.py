"""Kafka administration shared by the workers: topics are created explicitly, never auto-created."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger("hftpipe.kafka")


def ensure_topics(
    admin: AdminClient, names: dict[str, int], replication: int, timeout: float = 30
) -> None:
    """Create missing topics (``name -> partitions``); existing ones are left as they are."""
    existing = admin.list_topics(timeout=timeout).topics
    new = [NewTopic(n, p, replication) for n, p in names.items() if n not in existing]
    if not new:
        return
    for name, future in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def partition_count(admin: AdminClient, topic: str, timeout: float = 30) -> int:
    """Partitions of ``topic``; 0 if it does not exist."""
    meta = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        return 0
    return len(meta.partitions)
