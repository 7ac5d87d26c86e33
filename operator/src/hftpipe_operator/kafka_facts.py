"""What the operator asks Kafka: the job's end offsets, its groups' commits, the producer's
progress record, and topic clean-up.

Every call has a short timeout and raises :class:`KafkaUnavailable` when Kafka
cannot answer, so an observation records that in a condition instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from hftpipe_workers.contract import Groups, ProducerProgress, Topics
from hftpipe_workers.kafka_admin import last_records, reader

from .status import OffsetFacts

ClientConfig = Mapping[str, str | int | float | bool]

log = logging.getLogger(__name__)

PROGRESS_TIMEOUT: Final = 2.0
"""Seconds at most to fetch the producer's progress record: it is a nice-to-have."""

_QUIET: Final[dict[str, Any]] = {
    # librdkafka logs a refused connection at error level every retry; that failure
    # reaches the caller as an exception anyway.
    "log_level": 2,
    "reconnect.backoff.ms": 500,
    "log.connection.close": False,
    "logger": logging.getLogger(__name__),
}
"""librdkafka logs to Python logging, not stderr: an unreachable broker is reported once
per observation, as a condition."""


class KafkaUnavailable(Exception):
    """Kafka did not answer within the timeout (or refused)."""


def _consumer(config: ClientConfig, group: str) -> Consumer:
    return Consumer(
        {
            **config,
            **_QUIET,
            "group.id": group,
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
        }
    )


def _partitions(consumer: Consumer, topics: list[str], timeout: float) -> dict[str, list[int]]:
    metadata = consumer.list_topics(timeout=timeout)
    if not metadata.brokers:
        raise KafkaUnavailable("no broker answered")
    out: dict[str, list[int]] = {}
    for topic in topics:
        found = metadata.topics.get(topic)
        out[topic] = sorted(found.partitions) if found is not None and not found.error else []
    return out


def _ends(consumer: Consumer, topic: str, partitions: list[int], timeout: float) -> dict[int, int]:
    ends = {}
    for p in partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        ends[p] = int(high)
    return ends


def _committed(
    config: ClientConfig, group: str, topic: str, partitions: list[int], timeout: float
) -> dict[int, int]:
    if not partitions:
        return {}
    consumer = _consumer(config, group)
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
    finally:
        consumer.close()
    return {tp.partition: int(tp.offset) for tp in found}


def last_progress(
    consumer: Consumer, topic: str, partitions: list[int], timeout: float
) -> ProducerProgress | None:
    """The latest committed record of the progress topic (partition 0), or None: no such
    topic, no record yet, or none readable within ``timeout``. Never raises for what it
    finds. ``consumer``: a :func:`~hftpipe_workers.kafka_admin.reader` (the producer
    writes in transactions, so the last offset is a commit marker, not a record)."""
    if 0 not in partitions:
        return None
    try:
        found = last_records(consumer, topic, [0], timeout).get(0)
    except (KafkaException, TimeoutError) as exc:  # e.g. a topic without a leader yet
        log.debug("reading %s[0]: %s", topic, exc)
        return None
    if found is None:
        return None
    try:
        return ProducerProgress.decode(found.value())
    except ValueError as exc:
        log.warning("%s[0]@%s: %s", topic, found.offset(), exc)
        return None


def read_offsets(config: ClientConfig, job: str, timeout: float) -> OffsetFacts:
    """End offsets of the job's bars and metrics topics, the commits of its groups, and
    the producer's latest progress record."""
    topics, groups = Topics.for_job(job), Groups.for_job(job)
    try:
        consumer = _consumer(config, groups.processor)
        try:
            partitions = _partitions(
                consumer, [topics.bars, topics.metrics, topics.progress], timeout
            )
            bars_end = _ends(consumer, topics.bars, partitions[topics.bars], timeout)
            metrics_end = _ends(consumer, topics.metrics, partitions[topics.metrics], timeout)
        finally:
            consumer.close()
        progress_reader = reader({**config, **_QUIET}, groups.reader)
        try:
            progress = last_progress(
                progress_reader,
                topics.progress,
                partitions[topics.progress],
                min(timeout, PROGRESS_TIMEOUT),
            )
        finally:
            progress_reader.close()
        return OffsetFacts(
            bars_end=bars_end,
            metrics_end=metrics_end,
            processor=_committed(
                config, groups.processor, topics.bars, partitions[topics.bars], timeout
            ),
            loader_bars=_committed(
                config, groups.loader, topics.bars, partitions[topics.bars], timeout
            ),
            loader_metrics=_committed(
                config, groups.loader, topics.metrics, partitions[topics.metrics], timeout
            ),
            producer_progress=progress,
        )
    except KafkaException as exc:
        raise KafkaUnavailable(str(exc.args[0] if exc.args else exc)) from exc


def delete_topics(config: ClientConfig, job: str, timeout: float) -> list[str]:
    """Delete the job's topics; the names deleted (missing ones are not an error)."""
    topics = Topics.for_job(job)
    names = [topics.bars, topics.metrics, topics.deadletter, topics.progress]
    admin = AdminClient({**config, **_QUIET})
    futures = admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
    deleted = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise KafkaUnavailable(f"deleting {name}: {exc}") from exc
        except TimeoutError as exc:
            raise KafkaUnavailable(f"deleting {name}: no answer in {timeout} s") from exc
        deleted.append(name)
    return deleted
