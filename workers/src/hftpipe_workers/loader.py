"""Loader: bars and metrics from Kafka -> the warehouse (DuckDB by default, or Snowflake).

Micro-batches are bounded by size and by time. A batch is merged into the
warehouse (staging table + MERGE on the natural key, see :mod:`.warehouse`)
and only then are its Kafka offsets committed, synchronously. A loader that
dies between the two re-reads the batch after restart and merges it again,
which changes nothing: replays and crashes never duplicate rows.

A commit refused during a consumer-group rebalance (``ILLEGAL_GENERATION``,
``REBALANCE_IN_PROGRESS``: the processor creating the metrics topic is enough to
start one) is not a crash: the rows are in the warehouse, so their offsets stay
pending and go with the next commit. Offsets of a partition that leaves this
loader are committed on revoke or, if lost, dropped: its next owner re-reads
from the last commit and merges again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import pandas as pd  # type: ignore[import-untyped]
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from . import codec
from .bars import Bar
from .codec import CodecError
from .contract import Groups, Topics, job_id
from .deadletters import BAD_MESSAGE, CONSUMER_KINDS, TIME_PRECISION, set_aside
from .kafka_admin import check_no_gap, wait_for_topics
from .lifecycle import DrainClock, stop_on_signals
from .metrics import SESSION, parse_window
from .observability import (
    BATCH_SIZE,
    CONSUMER_LAG,
    ERRORS,
    LOADER_BATCH_SECONDS,
    LOADER_ROWS,
    READY,
    RECORDS_IN,
    declare_series,
)
from .settings import KafkaSettings
from .warehouse import Sink
from .warehouse.schema import BAR_METRICS, BARS

log = logging.getLogger("hftpipe.loader")

T = TypeVar("T")
Poison = tuple[Message, str, str]
"""A record set aside: the message, a kind (see :mod:`.deadletters`), the reason."""


NS_PER_US: Final = 1_000


def usable(msgs: list[Message], decode: Callable[[bytes], T]) -> tuple[list[T], list[Poison]]:
    """The decoded records the warehouse can store, and (message, kind, reason) of the
    others (pure): a record that does not decode, or whose time has a sub-microsecond
    part (the warehouse keeps microseconds; flooring it could merge two bars)."""
    good: list[T] = []
    bad: list[Poison] = []
    for msg in msgs:
        try:
            record = decode(msg.value() or b"")
        except CodecError as exc:
            bad.append((msg, BAD_MESSAGE, str(exc)))
            continue
        ts_ns = record.ts_ns  # type: ignore[attr-defined]  # Bar and BarMetrics have it
        if ts_ns % NS_PER_US:
            bad.append(
                (
                    msg,
                    TIME_PRECISION,
                    f"bar time {ts_ns} ns has a sub-microsecond part, which the warehouse "
                    "does not store (it keeps microseconds)",
                )
            )
            continue
        good.append(record)
    return good, bad


def bars_frame(job: str, values: list[bytes] | list[Bar]) -> pd.DataFrame:
    """Rows of the ``bars`` table from bars-topic values or decoded bars (pure)."""
    bars = [v if isinstance(v, Bar) else codec.decode_bar(v) for v in values]
    return pd.DataFrame(
        {
            "job": job,
            "symbol": [b.symbol for b in bars],
            "bar_time": pd.to_datetime([b.ts_ns for b in bars], unit="ns"),
            "open": [b.open for b in bars],
            "high": [b.high for b in bars],
            "low": [b.low for b in bars],
            "close": [b.close for b in bars],
            "volume": [b.volume for b in bars],
            "seq": pd.array([b.seq for b in bars], dtype="int64"),
        },
        columns=list(BARS.input_columns),
    )


def metrics_frame(job: str, values: list[bytes] | list[codec.BarMetrics]) -> pd.DataFrame:
    """Rows of the ``bar_metrics`` table (one per bar and window) from metrics-topic values.

    The session window becomes the ``session_vwap`` column of every row, not a row.
    """
    rows: list[tuple[Any, ...]] = []
    seconds: dict[str, int] = {}
    for value in values:
        doc = value if isinstance(value, codec.BarMetrics) else codec.decode_bar_metrics(value)
        session = next((m.vwap for m in doc.windows if m.window == SESSION), None)
        for m in doc.windows:
            if m.window == SESSION:
                continue
            if m.window not in seconds:
                seconds[m.window] = parse_window(m.window).ns // 1_000_000_000
            rows.append(
                (
                    job,
                    doc.symbol,
                    doc.ts_ns,
                    m.window,
                    seconds[m.window],
                    m.vwap,
                    m.sma,
                    m.std,
                    m.ret_std,
                    m.n_bars,
                    session,
                )
            )
    frame = pd.DataFrame(rows, columns=list(BAR_METRICS.input_columns))
    frame["bar_time"] = pd.to_datetime(frame["bar_time"], unit="ns")
    for col in ("vwap", "sma_close", "std_close", "std_log_return", "session_vwap"):
        frame[col] = frame[col].astype("float64")
    for col in ("window_seconds", "bar_count"):
        frame[col] = frame[col].astype("int64")
    return frame


@dataclass
class LoaderReport:
    """Totals of one loader run."""

    bars: int = 0
    metrics_rows: int = 0
    batches: int = 0
    seconds: float = 0.0


class Loader:
    """Consumes one job's bars and metrics topics into a warehouse sink."""

    def __init__(
        self,
        *,
        job: str,
        kafka: KafkaSettings,
        sink: Sink,
        backend: str,
        batch_max: int = 50_000,
        batch_seconds: float = 1.0,
        namespace: str | None = None,
    ) -> None:
        self.job, self.kafka, self.sink, self.backend = job, kafka, sink, backend
        # Topics, groups and the warehouse's job column carry the job id
        # (namespace-qualified under the operator); metric labels the plain name.
        self.job_id = job_id(job, namespace)
        declare_series("loader", job, CONSUMER_KINDS)
        self.batch_max, self.batch_seconds = batch_max, batch_seconds
        self.topics, self.groups = Topics.for_job(self.job_id), Groups.for_job(self.job_id)
        self.stop = threading.Event()
        # (topic, partition) -> next offset: rows in the warehouse, offset not committed.
        self._pending: dict[tuple[str, int], int] = {}
        # (topic, partition) -> where it ended when last read to its end (see _reached).
        self._ends: dict[tuple[str, int], int] = {}
        self._letters: Producer | None = None

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: finish and commit the current batch, then exit cleanly."""
        stop_on_signals(self.stop, log)

    def run(self, *, until_caught_up: bool = False, idle_timeout: float = 5.0) -> LoaderReport:
        """Load until stopped (or caught up and idle, with ``until_caught_up``)."""
        # The bars topic comes first (the producer makes it); the metrics topic may
        # appear later (the processor makes it), so refresh metadata often enough to
        # notice it within a second rather than librdkafka's default 5 minutes (one
        # small metadata request a second; at 5 s the demo's loader sat idle that long).
        if not wait_for_topics(self.kafka.common(), [self.topics.bars], self.stop):
            return LoaderReport()
        consumer = Consumer(
            {**self.kafka.consumer(self.groups.loader), "topic.metadata.refresh.interval.ms": 1000}
        )
        consumer.subscribe(
            [self.topics.bars, self.topics.metrics],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.sink.ensure_tables()
        report = LoaderReport()
        started = time.monotonic()
        clock = DrainClock(
            lambda: self._export_lag(consumer),
            until_caught_up=until_caught_up,
            idle_timeout=idle_timeout,
        )
        READY.labels("loader", self.job).set(1)
        try:
            clock.drain(
                self.stop,
                lambda: self._collect(consumer),
                lambda batch: self._load(consumer, batch, report),
            )
            self._commit_pending(consumer)
        finally:
            READY.labels("loader", self.job).set(0)
            if self._pending:
                log.warning(
                    "stopping with offsets not committed (re-read on restart): %s", self._pending
                )
            consumer.close()
        report.seconds = time.monotonic() - started
        return report

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions arrive: where this job's loads stopped must still be in the topic."""
        for tp in consumer.committed(partitions, timeout=10):
            if tp.offset >= 0:
                check_no_gap(consumer, tp, tp.offset, "loaded")
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions leave in a rebalance: commit what is loaded of them while the
        generation still allows it."""
        self._commit_pending(consumer, only={(tp.topic, tp.partition) for tp in partitions})
        self._on_lost(consumer, partitions)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away without a revoke: their next owner re-reads from the
        last commit (a second MERGE of the same rows changes nothing)."""
        for tp in partitions:
            self._pending.pop((tp.topic, tp.partition), None)
            self._ends.pop((tp.topic, tp.partition), None)

    def _commit_pending(self, consumer: Consumer, only: set[tuple[str, int]] | None = None) -> None:
        """Commit the pending offsets (synchronously); on a retriable refusal keep them
        for the next try. Fatal consumer errors still raise."""
        keys = [k for k in self._pending if only is None or k in only]
        if not keys:
            return
        offsets = [TopicPartition(t, p, self._pending[(t, p)]) for t, p in keys]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None or err.fatal():
                raise
            log.warning("offset commit refused, retried with the next batch: %s", err.str())
            ERRORS.labels("loader", self.job, "commit").inc()
            return
        for key in keys:
            del self._pending[key]

    def _collect(self, consumer: Consumer) -> list[Message]:
        # Offsets a rebalance refused last time go now, even when nothing new arrives
        # (else a drained loader would show lag forever).
        self._reached(consumer)
        self._commit_pending(consumer)
        batch: list[Message] = []
        deadline = time.monotonic() + self.batch_seconds
        while len(batch) < self.batch_max and not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            msgs = consumer.consume(
                min(10_000, self.batch_max - len(batch)), timeout=min(remaining, 0.2)
            )
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        self._ends[(msg.topic() or "", msg.partition() or 0)] = msg.offset() or 0
                        continue
                    if err.fatal():
                        raise KafkaException(err)
                    if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        # The metrics topic is created by the processor, which may start
                        # after the loader: it is picked up at the next metadata refresh.
                        log.info("waiting for a topic: %s", err.str())
                        continue
                    log.warning("consumer error: %s", err)
                    ERRORS.labels("loader", self.job, "consume").inc()
                    continue
                batch.append(msg)
            if not msgs and batch:
                break  # the topic is drained for now: load what we have
        return batch

    def _load(self, consumer: Consumer, batch: list[Message], report: LoaderReport) -> None:
        bar_values, bad = usable(
            [m for m in batch if m.topic() == self.topics.bars], codec.decode_bar
        )
        metric_values, bad_metrics = usable(
            [m for m in batch if m.topic() == self.topics.metrics], codec.decode_bar_metrics
        )
        if bad or bad_metrics:
            # Met again at every restart, they would crash-loop the loader: set aside,
            # and acknowledged before the offsets move past them.
            if self._letters is None:
                self._letters = Producer(self.kafka.producer())
            refused: list[str] = []

            def on_delivery(err: KafkaError | None, _msg: Message) -> None:
                if err is not None:
                    refused.append(err.str())

            for msg, kind, reason in bad + bad_metrics:
                set_aside(
                    self._letters,
                    self.topics.deadletter,
                    self.job,
                    "loader",
                    msg,
                    kind,
                    reason,
                    on_delivery=on_delivery,
                )
            if self._letters.flush(60) > 0:
                raise KafkaException("dead letters not acknowledged within 60 s")
            if refused:
                # Not committed past: the restart meets the records again.
                raise KafkaException(
                    f"{len(refused)} dead letter(s) refused by {self.topics.deadletter}: "
                    f"{refused[:3]}"
                )
        started = time.monotonic()
        if bar_values:
            n = self.sink.write("bars", bars_frame(self.job_id, bar_values))
            LOADER_ROWS.labels(self.job, "bars", self.backend).inc(n)
            report.bars += len(bar_values)
        if metric_values:
            n = self.sink.write("bar_metrics", metrics_frame(self.job_id, metric_values))
            LOADER_ROWS.labels(self.job, "bar_metrics", self.backend).inc(n)
            report.metrics_rows += n
        LOADER_BATCH_SECONDS.labels(self.job, self.backend).observe(time.monotonic() - started)
        # Offsets only after the warehouse has the rows (at-least-once delivery,
        # made exactly-once in effect by the MERGE on the natural key).
        # Only partitions still assigned: a partition revoked while the batch was
        # collected belongs to another loader now, which re-reads it from the last commit.
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        for m in batch:
            key = (m.topic() or "", m.partition() or 0)
            if key in assigned:
                self._pending[key] = max(self._pending.get(key, 0), (m.offset() or 0) + 1)
        self._reached(consumer)
        self._commit_pending(consumer)
        report.batches += 1
        RECORDS_IN.labels("loader", self.job, self.topics.bars).inc(len(bar_values))
        RECORDS_IN.labels("loader", self.job, self.topics.metrics).inc(len(metric_values))
        BATCH_SIZE.labels("loader", self.job).observe(len(batch))

    def _reached(self, consumer: Consumer) -> None:
        """Partitions read to their end, every record before it loaded: their offsets move
        to the end. Past the last record there are transaction markers only (the
        producer writes in transactions), which no consumer is given: without this, a
        drained loader would show a lag of one marker for ever. Called only when every
        record collected so far is in the warehouse."""
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        for key, end in self._ends.items():
            if key in assigned:
                self._pending[key] = max(self._pending.get(key, 0), end)
        self._ends.clear()

    def _export_lag(self, consumer: Consumer) -> dict[tuple[str, int], int] | None:
        """Lag per assigned partition (end offset minus committed offset), exported as
        a gauge; None while nothing is assigned."""
        assigned = consumer.assignment()
        if not assigned:
            return None
        lags = {}
        for tp in consumer.committed(assigned, timeout=10):
            _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            lag = max(0, high - max(tp.offset, 0))
            lags[(tp.topic, tp.partition)] = lag
            CONSUMER_LAG.labels("loader", self.job, tp.topic, str(tp.partition)).set(lag)
        return lags
