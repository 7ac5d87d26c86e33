"""Kafka administration shared by the workers: topics are created explicitly, never auto-created."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
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


# ------------------------------------------------------------ reading a topic's end

_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TRANSPORT,
    }
)


def watermarks(consumer: Consumer, tp: TopicPartition, timeout: float) -> tuple[int, int]:
    """Low and high offsets, retrying the errors a just-created topic gives for a moment.

    Metadata can show a leader before that broker serves the partition, so the
    first offset request after creating a topic may fail with NOT_LEADER.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() not in _TRANSIENT or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def reader(config: Mapping[str, str | int | float | bool], group: str) -> Consumer:
    """A consumer for :func:`read_to_end` and :func:`last_records`: it only assigns,
    commits nothing, sees committed records only, and is told where a partition ends."""
    return Consumer(
        {
            **config,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )


def read_to_end(
    consumer: Consumer,
    topic: str,
    partition: int,
    start: int,
    end: int | None = None,
    timeout: float = 10,
) -> Iterator[Message]:
    """Every record of ``topic[partition]`` from offset ``start`` to its end (or to
    offset ``end``, exclusive: a partition still written to), as a :func:`reader` sees
    them.

    The end is the end-of-partition event, or the first record at or past ``end``; not
    "the record at offset end - 1": the producer writes in transactions, so the last
    offsets are commit markers (and records of an aborted transaction are never
    delivered), and a loop waiting for that record would wait for ever. ``timeout``:
    seconds without a record before giving up.
    """
    consumer.assign([TopicPartition(topic, partition, start)])
    try:
        deadline = time.monotonic() + timeout
        while True:
            msg = consumer.poll(0.5)
            if msg is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic}[{partition}] stalled after {start}")
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return
                raise KafkaException(err)
            if end is not None and (msg.offset() or 0) >= end:
                return
            deadline = time.monotonic() + timeout
            yield msg
    finally:
        consumer.unassign()


def last_records(
    consumer: Consumer, topic: str, partitions: list[int] | None = None, timeout: float = 10
) -> dict[int, Message]:
    """The last committed record of every non-empty partition of ``topic`` (all of them,
    or ``partitions``), read with a :func:`reader`.

    Read backwards in growing steps from the end: offset high - 1 is a transaction
    marker, and an aborted transaction before it can hide any number of offsets.
    """
    if partitions is None:
        metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        partitions = sorted(metadata.partitions)
    last: dict[int, Message] = {}
    for partition in partitions:
        low, high = watermarks(consumer, TopicPartition(topic, partition), timeout)
        step, start = 64, high
        while start > low:
            start = max(low, high - step)
            found = None
            for found in read_to_end(consumer, topic, partition, start, high, timeout):  # noqa: B007
                pass
            if found is not None:
                last[partition] = found
                break
            step *= 8
    return last


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
