"""Kafka administration shared by the workers: topics are created explicitly, never auto-created."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .contract import JOB_TOPIC_CONFIG

log = logging.getLogger("hftpipe.kafka")


def default_replication(brokers: int) -> int:
    """Replicas of a job topic when none is asked for: 3, or every broker if fewer (pure)."""
    return max(1, min(3, brokers))


def durable_config(replication: int) -> dict[str, str]:
    """The configs every job topic gets (pure): :data:`JOB_TOPIC_CONFIG`, and with
    replicas, ``min.insync.replicas`` 2 so that an ``acks=all`` write survives a
    broker (1 replica: 1)."""
    return {**JOB_TOPIC_CONFIG, "min.insync.replicas": str(min(2, replication))}


def ensure_topics(
    admin: AdminClient,
    names: Mapping[str, int],
    replication: int | None,
    timeout: float = 30,
    *,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create missing topics (``name -> partitions``); existing ones are left as they are.

    ``replication`` None means :func:`default_replication` of the cluster's brokers.
    Every topic created gets :func:`durable_config`; ``configs`` adds or overrides
    configs (``name -> {"cleanup.policy": "compact", ...}``) of the topics it names.
    """
    metadata = admin.list_topics(timeout=timeout)
    existing = metadata.topics
    if replication is None:
        replication = default_replication(len(metadata.brokers))
    configs = configs or {}
    new = [
        NewTopic(n, p, replication, config={**durable_config(replication), **configs.get(n, {})})
        for n, p in names.items()
        if n not in existing
    ]
    if not new:
        return
    for name, future in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    # A created topic is not usable until every partition has a leader; clients
    # that ask for offsets before that get NOT_LEADER_FOR_PARTITION.
    wait_for_leaders(admin, [t.topic for t in new], timeout)


def wait_for_leaders(admin: AdminClient, topics: list[str], timeout: float = 30) -> None:
    """Block until every partition of ``topics`` has a leader."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=timeout).topics
        pending = [
            t
            for t in topics
            if t not in metadata
            or metadata[t].error is not None
            or any(p.leader < 0 or p.error is not None for p in metadata[t].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"topics {pending} have partitions without a leader after {timeout} s"
            )
        time.sleep(0.1)


def partition_count(admin: AdminClient, topic: str, timeout: float = 30) -> int:
    """Partitions of ``topic``; 0 if it does not exist."""
    meta = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        return 0
    return len(meta.partitions)


def wait_for_topics(
    config: Mapping[str, str | int | float | bool],
    topics: list[str],
    stop: threading.Event,
    *,
    interval: float = 1.0,
) -> bool:
    """Block until every topic exists (another worker creates it); False if stopped first.

    A consumer subscribed to a topic that does not exist yet notices it only at its
    next metadata refresh (librdkafka's ``topic.metadata.refresh.interval.ms``, 5
    minutes by default), so a loader that starts before the processor has created
    the metrics topic would idle for minutes. Workers wait here before subscribing.
    """
    admin = AdminClient(dict(config))
    said = False
    while not stop.is_set():
        present = admin.list_topics(timeout=10).topics
        missing = [t for t in topics if t not in present or present[t].error is not None]
        if not missing:
            return True
        if not said:
            log.info("waiting for topics %s to be created", ", ".join(missing))
            said = True
        stop.wait(interval)
    return False


class RetentionGap(RuntimeError):
    """Records a worker had not used yet were deleted from its topic (retention)."""


def check_no_gap(consumer: Consumer, tp: TopicPartition, next_offset: int, did: str) -> None:
    """Raise :class:`RetentionGap` if ``tp`` now starts after ``next_offset``, the next
    record this worker would use (it ``did`` the ones before: processed, loaded)."""
    low, _ = consumer.get_watermark_offsets(
        TopicPartition(tp.topic, tp.partition), timeout=10, cached=False
    )
    if next_offset < low:
        raise RetentionGap(
            f"{tp.topic}[{tp.partition}]: the next record to use is offset {next_offset:,}, "
            f"but the topic now starts at {low:,}: {low - next_offset:,} records were "
            f"deleted (retention) before this job {did} them, and their results cannot be "
            "made any more. Replay into a new job, and keep job topics' retention.ms=-1 "
            "(as hftpipe creates them)."
        )
