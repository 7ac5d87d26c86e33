"""Dead letters of the consumers: records a worker cannot use, set aside, never a crash.

A record of the bars or metrics topic that the processor or the loader cannot use (it
does not decode, or the warehouse cannot store it) would otherwise be met again at
every restart: the worker crash-loops and the job ends Failed. Instead it goes to the
job's dead-letter topic with where it was (topic, partition, offset), which worker set
it aside and why, and is counted (``hftpipe_dead_letters_total{reason=...}``); the
stream goes on past it. The letter is flushed before the worker records its progress
past that offset (the Redis transaction, the loader's commit): none is lost.

The producer's dead letters (rows of the source file) share the topic and the
``kind``/``reason``/``text`` fields; a consumer's letter also has ``worker``,
``topic``, ``partition`` and ``offset``, and no ``line``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import orjson
from confluent_kafka import KafkaError, Message, Producer

from .observability import DEAD_LETTERS

BAD_MESSAGE: Final = "bad_message"
"""A record that is not a valid message of its topic's schema."""

TIME_PRECISION: Final = "time_precision"
"""A bar time with a sub-microsecond part, which the warehouse does not store."""

CONSUMER_KINDS: Final = (BAD_MESSAGE, TIME_PRECISION)

EXCERPT_CHARS: Final = 200
"""How much of a record a consumer's dead letter quotes."""


def excerpt(text: str, limit: int) -> str:
    """At most ``limit`` characters of ``text``, and how many were cut (pure).

    A dead letter carries a bounded excerpt of what was rejected, not all of it: a
    20 MB line, or a file that was never market data, is not copied into Kafka."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit:,} more characters]"


def consumer_letter(worker: str, msg: Message, kind: str, reason: str) -> bytes:
    """The dead letter of one record a consumer set aside (pure)."""
    value = (msg.value() or b"").decode("utf-8", errors="replace")
    return orjson.dumps(
        {
            "worker": worker,
            "topic": msg.topic(),
            "partition": msg.partition(),
            "offset": msg.offset(),
            "kind": kind,
            "reason": excerpt(reason, 2 * EXCERPT_CHARS),
            "text": excerpt(value, EXCERPT_CHARS),
        }
    )


def set_aside(
    producer: Producer,
    topic: str,
    job: str,
    worker: str,
    msg: Message,
    kind: str,
    reason: str,
    *,
    on_delivery: Callable[[KafkaError | None, Message], None],
) -> None:
    """Queue a record's dead letter on ``topic`` and count it; the caller flushes.

    ``on_delivery`` hears whether the broker took it: a letter it refuses (an ACL, a
    missing topic, a size limit) must stop the worker before its progress moves past
    the record, or the record would be neither used nor set aside."""
    DEAD_LETTERS.labels(job, kind).inc()
    produce_when_room(
        producer,
        topic,
        consumer_letter(worker, msg, kind, reason),
        partition=0,
        on_delivery=on_delivery,
    )


def produce_when_room(
    producer: Producer,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = None,
    partition: int = 0,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
) -> None:
    """``producer.produce``, waiting while the local queue is full (deliveries drain it)."""
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, value=value, key=key, partition=partition)
            else:
                producer.produce(
                    topic, value=value, key=key, partition=partition, on_delivery=on_delivery
                )
            return
        except BufferError:
            producer.poll(0.05)
