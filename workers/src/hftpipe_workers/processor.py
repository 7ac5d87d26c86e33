"""VWAP processor: bars from Kafka -> rolling metrics -> Redis, exactly once.

Exactly-once into Redis, without Kafka transactions: for each batch of one input
partition, the metrics, the next offset to read and a snapshot of the
partition's window state are written in **one Redis MULTI/EXEC**. Redis, not
Kafka's committed offsets, is the source of truth for where to resume: on
partition assignment the processor reads the stored offset and state and seeks
there. A processor killed at any instant has either written a whole batch
(offset and state included) or nothing of it, so a restart recomputes exactly
what is missing and Redis ends identical to an uninterrupted run.

Fencing: the transaction WATCHes the partition's offset key and checks it still
holds the offset this processor read; a processor that lost the partition in a
rebalance (a zombie) fails its EXEC instead of overwriting the new owner.

Kafka offsets are committed too, after Redis, only so that lag and progress are
visible to Kafka tooling and the operator.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from . import codec
from .bars import Bar
from .contract import Groups, RedisKeys, Topics
from .kafka_admin import ensure_topics, partition_count, wait_for_topics
from .lifecycle import DrainClock, stop_on_signals
from .metrics import DEFAULT_WINDOWS, MetricsEngine, WindowMetrics
from .observability import (
    BATCH_SIZE,
    CONSUMER_LAG,
    ERRORS,
    EVENT_TO_REDIS_SECONDS,
    LATEST_VWAP,
    READY,
    RECORDS_IN,
    RECORDS_OUT,
)
from .settings import KafkaSettings, RedisSettings

log = logging.getLogger("hftpipe.processor")


class LostPartition(RuntimeError):
    """Another processor now owns the partition (its offset moved under us)."""


def redis_client(settings: RedisSettings) -> redis.Redis:
    """A Redis client from settings (URL, optional ACL user/password and TLS CA)."""
    kwargs: dict[str, Any] = {}
    if settings.username:
        kwargs["username"] = settings.username
    if settings.password:
        kwargs["password"] = settings.password.get_secret_value()
    if settings.tls_ca_file:
        kwargs["ssl_ca_certs"] = settings.tls_ca_file
    return redis.Redis.from_url(settings.url, **kwargs)


class _Output(NamedTuple):
    """One processed bar: the bar, its metrics per window, and the encoded message."""

    bar: Bar
    windows: list[WindowMetrics]
    message: bytes


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def latest_fields(bar: Bar, windows: list[WindowMetrics]) -> dict[str, str]:
    """The ``latest:<symbol>`` hash of a bar: flat ``<window>:<metric>`` fields (pure).

    A metric that is undefined is stored as an empty string (Redis has no null).
    """
    fields = {"ts_ns": str(bar.ts_ns), "seq": str(bar.seq), "close": repr(bar.close)}
    for m in windows:
        for name, value in (
            ("n", m.n_bars),
            ("volume", m.volume),
            ("vwap", m.vwap),
            ("sma", m.sma),
            ("std", m.std),
            ("ret_std", m.ret_std),
        ):
            fields[f"{m.window}:{name}"] = "" if value is None else repr(value)
    return fields


@dataclass
class _Partition:
    engine: MetricsEngine
    offset: int | None
    """Next offset to read as stored in Redis; None if this job never wrote it."""


@dataclass
class ProcessorReport:
    """Totals of one processor run."""

    bars_in: int = 0
    bars_out: int = 0
    batches: int = 0
    ignored: int = 0
    seconds: float = 0.0
    partitions: set[int] = field(default_factory=set)


class Processor:
    """Consumes one job's bars topic and keeps its metrics in Redis."""

    def __init__(
        self,
        *,
        job: str,
        kafka: KafkaSettings,
        redis_settings: RedisSettings,
        windows: Sequence[str] = DEFAULT_WINDOWS,
        batch_max: int = 20_000,
        publish_metrics: bool = True,
    ) -> None:
        self.job, self.kafka, self.redis_settings = job, kafka, redis_settings
        self.windows = tuple(windows)
        self.batch_max = batch_max
        self.publish_metrics = publish_metrics
        self.topics, self.groups, self.keys = (
            Topics.for_job(job),
            Groups.for_job(job),
            RedisKeys(job),
        )
        self.redis = redis_client(redis_settings)
        self.stop = threading.Event()
        self._parts: dict[int, _Partition] = {}
        self._consumer: Consumer | None = None
        self._delivery_errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(str(err))
            ERRORS.labels("processor", self.job, "delivery").inc()

    def ensure_metrics_topic(self, replication: int = 1, partitions: int | None = None) -> None:
        """Create the metrics topic if missing, with ``replication`` replicas and
        ``partitions`` partitions (``None``: as many as the bars topic)."""
        admin = AdminClient(self.kafka.common())
        bars_partitions = partition_count(admin, self.topics.bars)
        if bars_partitions == 0:
            raise RuntimeError(
                f"the bars topic {self.topics.bars} does not exist yet: start the producer "
                "(it creates it) or create it first"
            )
        ensure_topics(admin, {self.topics.metrics: partitions or bars_partitions}, replication)

    # -- partition lifecycle --------------------------------------------------

    def _load(self, partition: int) -> _Partition:
        offset_raw, state = self.redis.mget(self.keys.offset(partition), self.keys.state(partition))
        if offset_raw is None:
            return _Partition(MetricsEngine(self.windows), None)
        engine = (
            MetricsEngine.restore(_as_bytes(state), expect_windows=self.windows)
            if state
            else MetricsEngine(self.windows)
        )
        return _Partition(engine, int(offset_raw))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            part = self._parts[tp.partition] = self._load(tp.partition)
            tp.offset = OFFSET_BEGINNING if part.offset is None else part.offset
            log.info(
                "assigned %s[%d], resuming at %s",
                tp.topic,
                tp.partition,
                "the beginning" if part.offset is None else f"offset {part.offset}",
            )
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Every finished batch is already in Redis; nothing to flush, just forget.
        for tp in partitions:
            self._parts.pop(tp.partition, None)
        consumer.incremental_unassign(partitions)

    # -- the loop -------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: finish and commit the current batch, then exit cleanly."""
        stop_on_signals(self.stop, log)

    def run(self, *, until_caught_up: bool = False, idle_timeout: float = 5.0) -> ProcessorReport:
        """Process until stopped (or, with ``until_caught_up``, until every assigned
        partition is at its end offset and nothing arrived for ``idle_timeout`` seconds)."""
        if not wait_for_topics(self.kafka.common(), [self.topics.bars], self.stop):
            return ProcessorReport()
        consumer = Consumer(self.kafka.consumer(self.groups.processor))
        self._consumer = consumer
        producer = None
        if self.publish_metrics:
            producer = Producer({**self.kafka.producer(), "on_delivery": self._on_delivery})
        consumer.subscribe(
            [self.topics.bars],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        report = ProcessorReport()
        started = time.monotonic()
        clock = DrainClock(
            lambda: self._export_lag(consumer),
            until_caught_up=until_caught_up,
            idle_timeout=idle_timeout,
        )
        # Every bar allocates a few short-lived objects and the cyclic GC took a
        # quarter of the processor's time (bench/README.md); nothing here makes
        # reference cycles worth chasing that often. Freeze what startup built.
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
        READY.labels("processor", self.job).set(1)
        try:
            while not self.stop.is_set():
                clock.before_poll()
                msgs = self._next_batch(consumer)
                if not msgs:
                    if clock.done_when_idle():
                        break
                    continue
                clock.got_data()
                by_partition: dict[int, list[Message]] = {}
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaException(err)
                        log.warning("consumer error: %s", err)
                        ERRORS.labels("processor", self.job, "consume").inc()
                        continue
                    by_partition.setdefault(msg.partition() or 0, []).append(msg)
                for partition, batch in by_partition.items():
                    self._process(partition, batch, producer, report)
                if producer is not None:
                    producer.poll(0)
                    self._raise_delivery_errors()
        finally:
            READY.labels("processor", self.job).set(0)
            if producer is not None and producer.flush(30) > 0:
                self._delivery_errors.append("metrics still queued after 30 s")
            consumer.close()
            self._consumer = None
        self._raise_delivery_errors()
        report.seconds = time.monotonic() - started
        return report

    def _raise_delivery_errors(self) -> None:
        if self._delivery_errors:
            raise KafkaException(
                f"{len(self._delivery_errors)} metrics record(s) not delivered to "
                f"{self.topics.metrics}: {self._delivery_errors[:3]}"
            )

    def _next_batch(self, consumer: Consumer) -> list[Message]:
        """Whatever is queued now (up to ``batch_max``), else wait up to 50 ms for one record.

        ``consume(n, timeout)`` waits for *n* records or the timeout, so at a paced
        10k bars/s every batch would sit out the whole timeout first. Taking what
        has arrived keeps batches as large as the backlog (throughput) and as
        small as the arrivals (latency).
        """
        msgs = consumer.consume(self.batch_max, timeout=0)
        if msgs:
            return msgs
        first = consumer.consume(1, timeout=0.05)
        if not first:
            return first
        return first + consumer.consume(self.batch_max - 1, timeout=0)

    def _export_lag(self, consumer: Consumer) -> dict[int, int] | None:
        """Lag per assigned partition (end offset minus the offset stored in Redis),
        exported as a gauge; None while nothing is assigned."""
        assigned = consumer.assignment()
        if not assigned:
            return None
        lags = {}
        for tp in assigned:
            _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            part = self._parts.get(tp.partition)
            done = part.offset if part and part.offset is not None else 0
            lags[tp.partition] = max(0, high - done)
            CONSUMER_LAG.labels("processor", self.job, tp.topic, str(tp.partition)).set(
                lags[tp.partition]
            )
        return lags

    def _process(
        self,
        partition: int,
        msgs: list[Message],
        producer: Producer | None,
        report: ProcessorReport,
    ) -> None:
        part = self._parts.get(partition)
        if part is None:  # revoked while the batch was in flight
            return
        first = msgs[0].offset() or 0
        if part.offset is not None and first < part.offset:
            # Re-delivered records already in Redis (e.g. after a seek race): drop them.
            msgs = [m for m in msgs if (m.offset() or 0) >= part.offset]
            if not msgs:
                return
        ignored_before = part.engine.ignored
        # Bar by bar, not update_batch: the per-bar path gives the same bits however
        # the stream is cut into batches, and batch boundaries differ between a
        # run that was killed and one that was not. Exactly-once means identical.
        docs: list[_Output] = []
        update = part.engine.update
        for m in msgs:
            bar = codec.decode_bar(m.value() or b"")
            windows = update(bar)
            if windows:
                docs.append(_Output(bar, windows, codec.encode_bar_metrics(bar, windows)))
        next_offset = (msgs[-1].offset() or 0) + 1
        self._commit_to_redis(partition, part, docs, next_offset)
        part.offset = next_offset

        now = time.time()
        for m in msgs:
            _, ts_ms = m.timestamp()
            EVENT_TO_REDIS_SECONDS.labels(self.job).observe(max(0.0, now - ts_ms / 1000))
        report.bars_in += len(msgs)
        report.bars_out += len(docs)
        report.batches += 1
        report.ignored += part.engine.ignored - ignored_before
        report.partitions.add(partition)
        RECORDS_IN.labels("processor", self.job, self.topics.bars).inc(len(msgs))
        RECORDS_OUT.labels("processor", self.job, "redis").inc(len(docs))
        BATCH_SIZE.labels("processor", self.job).observe(len(msgs))
        if docs:
            last = docs[-1]
            for wm in last.windows:
                if wm.vwap is not None:
                    LATEST_VWAP.labels(self.job, wm.symbol, wm.window).set(wm.vwap)
        if producer is not None:
            self._publish(producer, docs)
        if self._consumer is not None:
            self._consumer.commit(
                offsets=[TopicPartition(self.topics.bars, partition, next_offset)],
                asynchronous=True,
            )

    def _publish(self, producer: Producer, docs: list[_Output]) -> None:
        """Each bar's metrics to the metrics topic too (for the loader and anyone else)."""
        for doc in docs:
            while True:
                try:
                    producer.produce(
                        self.topics.metrics, value=doc.message, key=doc.bar.symbol.encode()
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        RECORDS_OUT.labels("processor", self.job, self.topics.metrics).inc(len(docs))

    def _commit_to_redis(
        self, partition: int, part: _Partition, docs: list[_Output], next_offset: int
    ) -> None:
        keys = self.keys
        limit = self.redis_settings.history_limit
        offset_key = keys.offset(partition)
        expected = None if part.offset is None else str(part.offset).encode()
        latest: dict[str, _Output] = {}
        history: dict[str, dict[bytes, float]] = {}
        for doc in docs:
            latest[doc.bar.symbol] = doc
            if limit:
                history.setdefault(doc.bar.symbol, {})[doc.message] = doc.bar.ts_ns // 1_000_000
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(offset_key)  # type: ignore[no-untyped-call]
                if pipe.get(offset_key) != expected:
                    raise LostPartition(f"partition {partition}: offset moved under us")
                pipe.multi()
                for symbol, doc in latest.items():
                    # redis-py types the mapping key invariantly; dict[str, str] works.
                    pipe.hset(keys.latest(symbol), mapping=latest_fields(doc.bar, doc.windows))  # type: ignore[arg-type]
                    pipe.sadd(keys.symbols, symbol)
                for symbol, members in history.items():
                    pipe.zadd(keys.history(symbol), members)
                    pipe.zremrangebyrank(keys.history(symbol), 0, -(limit + 1))
                pipe.set(offset_key, next_offset)
                pipe.set(keys.state(partition), part.engine.snapshot())
                pipe.execute()
            except redis.WatchError as exc:
                ERRORS.labels("processor", self.job, "lost_partition").inc()
                raise LostPartition(f"partition {partition}: another processor wrote it") from exc


def latest_metrics(client: redis.Redis, job: str, symbol: str) -> dict[str, float | None]:
    """The latest metrics of a symbol, parsed (one HGETALL)."""
    raw: dict[bytes, bytes] = client.hgetall(RedisKeys(job).latest(symbol))  # type: ignore[assignment]
    return {k.decode(): (float(v) if v else None) for k, v in raw.items()}
