"""VWAP processor: bars from Kafka -> rolling metrics -> Redis, exactly once.

Exactly-once into Redis, without Kafka transactions: for each batch of one input
partition (at most :data:`SLICE_BARS` records), the metrics, the next offset to
read and a snapshot of the partition's window state are written in **one Redis
MULTI/EXEC**. Redis, not Kafka's committed offsets, is the source of truth for
where to resume: on partition assignment the processor reads the stored offset
and state and seeks there. A processor killed at any instant has either written a whole batch
(offset and state included) or nothing of it, so a restart recomputes exactly
what is missing and Redis ends identical to an uninterrupted run.

Fencing: the transaction WATCHes the partition's offset key and checks it still
holds the offset this processor read; a processor that lost the partition in a
rebalance (a zombie) fails its EXEC instead of overwriting the new owner.

The metrics topic (the loader's input, so the warehouse's) is inside the same
boundary: a slice's metrics records are produced and acknowledged by the broker
before its Redis transaction is sent. A processor killed between the two publishes
them again after restart, bit for bit, and the loader's MERGE on (job, symbol,
bar_time, window) makes the second copy a no-op: at-least-once on the topic,
exactly-once in the warehouse.

Kafka offsets are committed too, after Redis, only so that lag and progress are
visible to Kafka tooling and the operator.

Speed (see bench/README.md): bars are decoded, computed and encoded a column at a
time (``codec.decode_bars``, ``update_columns`` of the compiled metrics engine, or of
the pure-Python one it is tested against, ``codec.encode_metrics_columns``), with the
same bits as bar by bar; the transaction is written in the Redis protocol directly, and
its reply is read while the next batch is computed.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Final, NamedTuple

import orjson
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
from .contract import Groups, RedisKeys, Topics, job_id
from .deadletters import BAD_MESSAGE, set_aside
from .kafka_admin import check_no_gap, ensure_topics, partition_count, wait_for_topics
from .lifecycle import DrainClock, stop_on_signals
from .metrics import (
    DEFAULT_WINDOWS,
    AnyEngine,
    CompiledMetricsEngine,
    WindowColumns,
    WindowMetrics,
    engine_class,
)
from .observability import (
    BATCH_SIZE,
    CONSUMER_LAG,
    ERRORS,
    EVENT_TO_REDIS_SECONDS,
    LATEST_CLOSE,
    LATEST_VWAP,
    READY,
    RECORDS_IN,
    RECORDS_OUT,
    declare_series,
)
from .settings import EngineChoice, KafkaSettings, RedisSettings

log = logging.getLogger("hftpipe.processor")

_core_zadd_command: Callable[[bytes, Sequence[int], Sequence[bytes]], bytes] | None
try:  # the compiled core, when installed (a core built before it lacks it)
    from hftpipe_core import zadd_command as _core_zadd_command
except ImportError:
    _core_zadd_command = None


class LostPartition(RuntimeError):
    """Another processor wrote the partition's offset (its new owner in a handover):
    this processor's transaction was refused, and what it holds in memory is stale."""

    def __init__(self, partition: int, why: str) -> None:
        super().__init__(f"partition {partition}: {why}")
        self.partition = partition


class RedisStateLost(RuntimeError):
    """Redis lost a partition's keys and the bars topic no longer holds what rebuilds them."""


def redis_client(settings: RedisSettings) -> redis.Redis:
    """A Redis client from settings (URL, optional ACL user/password and TLS CA)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": min(10.0, settings.socket_timeout),
    }
    if settings.username:
        kwargs["username"] = settings.username
    if settings.password:
        kwargs["password"] = settings.password.get_secret_value()
    if settings.tls_ca_file:
        kwargs["ssl_ca_certs"] = settings.tls_ca_file
    return redis.Redis.from_url(settings.url, **kwargs)


SLICE_BARS = 4096
"""Most bars per Redis transaction: a consumed batch is processed in slices of this many.

Small enough that a slice's lists and messages stay in the CPU caches (encoding
20,000 bars at once was twice as slow per bar) and that memory does not follow
``batch_max``; large enough that the per-transaction costs (round trips, the
state snapshot) are a small share."""


class _Output(NamedTuple):
    """The processed bars of one symbol in a slice: columns, and the encoded messages."""

    symbol: str
    ts_ns: list[int]
    seq: list[int]
    close: list[float]
    windows: list[WindowColumns]
    """Per window, metrics as columns whose last entry is the last bar's (all that is
    read; the compiled engine returns that entry only)."""
    messages: list[bytes]

    def latest(self) -> tuple[Bar, list[WindowMetrics]]:
        """The last bar (the fields the ``latest`` hash needs) and its metrics."""
        t, q, c = self.ts_ns[-1], self.seq[-1], self.close[-1]
        bar = Bar(self.symbol, t, c, c, c, c, 0.0, q)
        windows = [
            WindowMetrics(
                self.symbol,
                w.window,
                t,
                q,
                w.n_bars[-1],
                w.volume[-1],
                w.vwap[-1],
                w.sma[-1],
                w.std[-1],
                w.ret_std[-1],
            )
            for w in self.windows
        ]
        return bar, windows


def _rows_by_symbol(symbols: list[str]) -> list[tuple[str, list[int] | None]]:
    """The rows of each symbol in first-seen order; None means every row (one symbol)."""
    first = symbols[0]
    if symbols.count(first) == len(symbols):
        return [(first, None)]
    rows: dict[str, list[int]] = {}
    for i, symbol in enumerate(symbols):
        rows.setdefault(symbol, []).append(i)
    return list(rows.items())


def _compute(engine: AnyEngine, bars: codec.BarColumns) -> list[_Output]:
    """The metrics of a slice's records, per symbol (and run of one kind), encoded."""
    outputs: list[_Output] = []
    for symbol, rows, trade in _runs(bars):
        ts, seq, close, volume = bars.ts_ns, bars.seq, bars.close, bars.volume
        high, low = bars.high, bars.low
        if rows is not None:
            ts, seq, close, volume = (_pick(c, rows) for c in (ts, seq, close, volume))
            high, low = _pick(high, rows), _pick(low, rows)
        if trade:  # the price is the close (codec.BarColumns)
            done, windows = engine.update_trades(symbol, ts, seq, close, volume)
            if len(done) != len(ts):  # some trades were ignored (not after the last one)
                ts, seq, close, volume = (_pick(c, done) for c in (ts, seq, close, volume))
            messages = codec.encode_metrics_columns(
                symbol, ts, seq, close, volume, windows, trade=True
            )
        else:
            done, windows, messages = _update_and_encode(
                engine, symbol, ts, seq, high, low, close, volume
            )
            if len(done) != len(ts):  # some bars were ignored (not after the last one)
                ts, seq, close, volume = (_pick(c, done) for c in (ts, seq, close, volume))
        if not done:
            continue
        outputs.append(_Output(symbol, ts, seq, close, windows, messages))
    return outputs


def _runs(cols: codec.BarColumns) -> list[tuple[str, list[int] | None, bool]]:
    """(symbol, rows, whether they are trades) for each symbol of a slice, its rows cut
    into runs of one kind in message order (a slice holds one kind but for a topic that
    mixes them): the engine then sees every symbol's records in order however the
    stream is cut into slices."""
    if not cols.symbol:
        return []
    if cols.trade is None or not any(cols.trade):
        return [(symbol, rows, False) for symbol, rows in _rows_by_symbol(cols.symbol)]
    kinds = cols.trade
    out: list[tuple[str, list[int] | None, bool]] = []
    for symbol, rows in _rows_by_symbol(cols.symbol):
        picked = list(range(len(kinds))) if rows is None else rows
        if all(kinds[i] for i in picked):
            out.append((symbol, rows, True))
            continue
        for kind, run in groupby(picked, key=kinds.__getitem__):
            out.append((symbol, list(run), kind))
    return out


def _update_and_encode(
    engine: AnyEngine,
    symbol: str,
    ts: list[int],
    seq: list[int],
    high: list[float],
    low: list[float],
    close: list[float],
    volume: list[float],
) -> tuple[list[int], list[WindowColumns], list[bytes]]:
    """A symbol's bars through the engine: the processed rows, their metrics as columns (of
    the compiled engine, the last bar's only) and their messages (the compiled engine
    writes them itself, the same bytes)."""
    if isinstance(engine, CompiledMetricsEngine):
        try:
            return engine.update_encoded(
                codec.SCHEMA_VERSION, symbol, ts, seq, high, low, close, volume
            )
        except OverflowError:  # a seq in [2**63, 2**64) (nothing changed): Python's ints below
            pass
    done, windows = engine.update_columns(symbol, ts, high, low, close, volume)
    if len(done) != len(ts):
        ts, seq, close, volume = (_pick(c, done) for c in (ts, seq, close, volume))
    return done, windows, codec.encode_metrics_columns(symbol, ts, seq, close, volume, windows)


def _pick(column: list[Any], rows: list[int]) -> list[Any]:
    return [column[i] for i in rows]


# -- Redis protocol ----------------------------------------------------------------
# The batch's transaction is written in the Redis protocol (RESP) here rather than
# through redis-py's pipeline: its packer costs ~1.3 us per ZADD member (a fifth of
# the processor's time at 20k-bar batches), this costs ~0.1 us; and WATCH and GET go
# out together, one round trip fewer per batch. redis-py still makes, authenticates
# and pools the connection and parses the replies.


def _command(*args: bytes) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


def _zadd_command(key: bytes, ts_ns: list[int], members: list[bytes], *, compiled: bool) -> bytes:
    """``ZADD key score member ...`` as RESP, each member scored by its bar's time in
    milliseconds: with ``compiled``, the compiled core's (the same bytes), else built
    column-wise (C loops, no per-member Python code)."""
    if compiled and _core_zadd_command is not None:
        try:
            return _core_zadd_command(key, ts_ns, members)
        except OverflowError:  # a time beyond 64 bits: Python's ints below
            pass
    return _zadd_command_python(key, [t // 1_000_000 for t in ts_ns], members)


def _zadd_command_python(key: bytes, scores: list[int], members: list[bytes]) -> bytes:
    """What :func:`_command` gives for ``ZADD key score member ...``, faster."""
    n = len(members)
    score_text = orjson.dumps(scores)[1:-1].split(b",")
    lengths = orjson.dumps([*map(len, score_text), *map(len, members)])[1:-1].split(b",")
    # head, then per member: \r\n$<len>\r\n<score>\r\n$<len>\r\n<member>, then \r\n
    pieces: list[bytes] = [b""] * (2 + 8 * n)
    pieces[0] = b"*%d\r\n$4\r\nZADD\r\n$%d\r\n%b" % (2 + 2 * n, len(key), key)
    pieces[1:-1:8] = [b"\r\n$"] * n
    pieces[2:-1:8] = lengths[:n]
    pieces[3:-1:8] = [b"\r\n"] * n
    pieces[4:-1:8] = score_text
    pieces[5:-1:8] = [b"\r\n$"] * n
    pieces[6:-1:8] = lengths[n:]
    pieces[7:-1:8] = [b"\r\n"] * n
    pieces[8:-1:8] = members
    pieces[-1] = b"\r\n"
    return b"".join(pieces)


_JOIN_BELOW: Final = 1 << 20
_OVERLAP_MIN: Final = 1024  # batches at least this large overlap Redis with the next one
KAFKA_COMMIT_SECONDS: Final = 1.0
"""Kafka offsets (progress and lag only) are committed at most this often."""
_MULTI: Final = _command(b"MULTI")
_EXEC: Final = _command(b"EXEC")


def _observe_many(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for every value, counted per bucket in one go.

    prometheus_client has no bulk observe and ``observe`` costs ~0.5 us (a lock per
    call); this adds each bucket's count and the sum once, through the same value
    objects ``observe`` uses. Falls back to ``observe`` if those are not there.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    ordered = sorted(values)
    done = 0
    for bound, bucket in zip(bounds, buckets, strict=True):
        upto = bisect_right(ordered, bound, lo=done)  # observe() counts v <= bound
        if upto > done:
            bucket.inc(upto - done)
            done = upto
    total.inc(sum(ordered))


_METRICS_PRODUCER: Final[dict[str, str | int | bool]] = {
    # One Python callback per delivered record cost ~0.3 us each; only failures matter.
    "delivery.report.only.error": True,
    # The metrics topic's records wait here at most until the broker takes them;
    # bound them (librdkafka's default is 1 GB, the throughput profile 1M records)
    # so that a slow broker makes the processor wait rather than grow.
    "queue.buffering.max.kbytes": 65_536,
}


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


class _Pending(NamedTuple):
    """A transaction sent to Redis whose replies are not read yet (see ``_confirm_commit``)."""

    conn: Any
    partition: int
    next_offset: int
    replies: int
    msgs: list[Message]


@dataclass
class _Partition:
    engine: AnyEngine
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
        namespace: str | None = None,
        engine: EngineChoice = "auto",
    ) -> None:
        # Topics, groups and keys carry the job id (namespace-qualified under the
        # operator); metric labels carry the plain name.
        self.job, self.kafka, self.redis_settings = job, kafka, redis_settings
        self.job_id = job_id(job, namespace)
        declare_series("processor", job, (BAD_MESSAGE,))
        self.windows = tuple(windows)
        # The compiled engine when installed (same bits as the Python reference: a
        # partition's state written by either restores in the other).
        self.engine_class = engine_class(engine)
        log.info("metrics engine: %s", self.engine_class.__name__)
        self.batch_max = batch_max
        self.publish_metrics = publish_metrics
        self.topics, self.groups, self.keys = (
            Topics.for_job(self.job_id),
            Groups.for_job(self.job_id),
            RedisKeys(self.job_id),
        )
        self.redis = redis_client(redis_settings)
        self.stop = threading.Event()
        self._parts: dict[int, _Partition] = {}
        self._consumer: Consumer | None = None
        self._delivery_errors: list[str] = []
        self._letters: Producer | None = None  # dead letters, when metrics are not published
        self._pending: _Pending | None = None
        self._uncommitted: dict[int, int] = {}  # partition -> offset, in Redis, not in Kafka
        self._committed_at = 0.0
        # Metric children, looked up once (``labels()`` costs microseconds per call).
        self._event_to_redis = EVENT_TO_REDIS_SECONDS.labels(job)
        self._records_in = RECORDS_IN.labels("processor", job, self.topics.bars)
        self._records_redis = RECORDS_OUT.labels("processor", job, "redis")
        self._records_published = RECORDS_OUT.labels("processor", job, self.topics.metrics)
        self._batch_size = BATCH_SIZE.labels("processor", job)
        self._close_gauges: dict[str, Any] = {}
        self._vwap_gauges: dict[tuple[str, str], Any] = {}

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(str(err))
            ERRORS.labels("processor", self.job, "delivery").inc()

    def ensure_metrics_topic(
        self, replication: int | None = None, partitions: int | None = None
    ) -> None:
        """Create the metrics topic if missing, with ``replication`` replicas (``None``:
        the cluster's default, see :func:`.kafka_admin.default_replication`) and
        ``partitions`` partitions (``None``: as many as the bars topic)."""
        admin = AdminClient(self.kafka.common())
        # In a pod the processor may start before the producer has created the bars
        # topic (the metrics topic copies its partition count): wait, as run() does.
        if not wait_for_topics(self.kafka.common(), [self.topics.bars], self.stop):
            return
        bars_partitions = partition_count(admin, self.topics.bars)
        ensure_topics(admin, {self.topics.metrics: partitions or bars_partitions}, replication)

    # -- partition lifecycle --------------------------------------------------

    def _load(self, partition: int, done: int = 0) -> _Partition:
        """A partition's engine and offset as Redis holds them.

        ``done``: how far this job is known to have processed the partition (Kafka's
        committed offset, or the offset held in memory). Redis holding nothing then
        means Redis lost the job's keys (a restart without persistence, an eviction, a
        FLUSHALL): never papered over (issue 10, point 14), see :meth:`_state_lost`.
        """
        offset_raw, state = self.redis.mget(self.keys.offset(partition), self.keys.state(partition))
        if offset_raw is None:
            if done > 0:
                self._state_lost(partition, done)
            return _Partition(self.engine_class(self.windows), None)
        engine = (
            self.engine_class.restore(_as_bytes(state), expect_windows=self.windows)
            if state
            else self.engine_class(self.windows)
        )
        return _Partition(engine, int(offset_raw))

    def _state_lost(self, partition: int, done: int) -> None:
        """Redis lost partition ``partition``'s keys after ``done`` records: rebuild it from
        the beginning of the bars topic, deliberately and loudly, or stop if the topic
        no longer starts at offset 0 (retention deleted what the state was built from)."""
        ERRORS.labels("processor", self.job, "redis_state_lost").inc()
        where = f"{self.topics.bars}[{partition}]"
        low = 0
        if self._consumer is not None:
            low, _ = self._consumer.get_watermark_offsets(
                TopicPartition(self.topics.bars, partition), timeout=10, cached=False
            )
        if low > 0:
            raise RedisStateLost(
                f"Redis lost the state of {where}: this job had processed {done:,} of its "
                f"records, and its keys in {self.redis_settings.url} are gone. It cannot be "
                f"rebuilt: the topic now starts at offset {low:,} (retention deleted the "
                "rest). Restore Redis from its persistence (AOF/RDB), or replay into a new job."
            )
        log.error(
            "Redis lost the state of %s: this job had processed %d of its records, and its "
            "keys in Redis are gone (a Redis restart without persistence, an eviction, a "
            "flush). Rebuilding it from the beginning of the topic; give Redis persistence "
            "(appendonly yes) to avoid this.",
            where,
            done,
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = {
            tp.partition: tp.offset
            for tp in consumer.committed(
                [TopicPartition(tp.topic, tp.partition) for tp in partitions], timeout=10
            )
        }
        for tp in partitions:
            part = self._parts[tp.partition] = self._load(
                tp.partition, max(0, committed.get(tp.partition, 0))
            )
            tp.offset = OFFSET_BEGINNING if part.offset is None else part.offset
            if part.offset is not None:
                # A seek past the topic's start would go on silently from there.
                check_no_gap(consumer, tp, part.offset, "processed")
            if part.offset is not None:
                # Redis holds where this partition is done; Kafka's group offset (what
                # progress and lag read) may lag behind it if the last owner died
                # before its commit. With nothing left to process, nothing else would
                # commit it, and the job would never be Complete.
                self._uncommitted[tp.partition] = part.offset
                self._committed_at = 0.0
            log.info(
                "assigned %s[%d], resuming at %s",
                tp.topic,
                tp.partition,
                "the beginning" if part.offset is None else f"offset {part.offset}",
            )
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Every finished batch is in Redis once its reply is read; then just forget.
        try:
            self._confirm_commit()
        except LostPartition as lost:
            # Its new owner wrote it first: that owner's state stands, ours is dropped.
            self._count_lost(lost)
        self._commit_offsets(force=True)
        for tp in partitions:
            self._parts.pop(tp.partition, None)
            self._uncommitted.pop(tp.partition, None)
        consumer.incremental_unassign(partitions)

    def _count_lost(self, lost: LostPartition) -> None:
        ERRORS.labels("processor", self.job, "lost_partition").inc()
        log.warning("%s: another processor wrote it (a partition handover)", lost)

    def _resync(self, consumer: Consumer, lost: LostPartition) -> None:
        """A transaction was fenced: reload every held partition from Redis and seek there.

        All of them, not only the one that was refused: the refusal can surface while
        another partition's slice was being committed, whose engine had already
        advanced in memory. Redis is the truth; its new owner's state stands, and if
        the partition is still ours, the next batch goes on from it (its metrics are
        published again: the loader's MERGE keeps one row)."""
        self._count_lost(lost)
        self._drop_pending()
        for partition, held in list(self._parts.items()):
            part = self._parts[partition] = self._load(partition, held.offset or 0)
            offset = OFFSET_BEGINNING if part.offset is None else part.offset
            consumer.seek(TopicPartition(self.topics.bars, partition, offset))
            log.warning("partition %d: resync from Redis, at %s", partition, part.offset)

    # -- the loop -------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: finish and commit the current batch, then exit cleanly."""
        stop_on_signals(self.stop, log)

    def run(self, *, until_caught_up: bool = False, idle_timeout: float = 5.0) -> ProcessorReport:
        """Process until stopped (or, with ``until_caught_up``, until every assigned
        partition is at its end offset and nothing arrived for ``idle_timeout`` seconds)."""
        if not wait_for_topics(self.kafka.common(), [self.topics.bars], self.stop):
            return ProcessorReport()
        consumer = Consumer(
            {**self.kafka.consumer(self.groups.processor), "on_commit": self._on_commit}
        )
        self._consumer = consumer
        producer = None
        if self.publish_metrics:
            producer = Producer({**self.kafka.producer(), **_METRICS_PRODUCER})
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
            clock.drain(
                self.stop,
                lambda: self._next_batch(consumer),
                lambda msgs: self._handle(msgs, producer, report),
            )
            self._confirm_commit()
            self._commit_offsets(force=True, wait=True)
        finally:
            self._drop_pending()
            READY.labels("processor", self.job).set(0)
            if producer is not None and producer.flush(30) > 0:
                self._delivery_errors.append("metrics still queued after 30 s")
            consumer.close()
            self._consumer = None
        self._raise_delivery_errors()
        report.seconds = time.monotonic() - started
        return report

    def _handle(
        self, msgs: list[Message], producer: Producer | None, report: ProcessorReport
    ) -> None:
        """One consumed batch: split by partition, process each, serve delivery reports."""
        by_partition: dict[int, list[Message]] = {}
        ends: dict[int, int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    ends[msg.partition() or 0] = msg.offset() or 0
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
                ERRORS.labels("processor", self.job, "consume").inc()
                continue
            by_partition.setdefault(msg.partition() or 0, []).append(msg)
        try:
            for partition, batch in by_partition.items():
                self._process(partition, batch, producer, report)
            for partition, end in ends.items():
                self._skip_markers(partition, end)
        except LostPartition as lost:
            if self._consumer is None:
                raise
            self._resync(self._consumer, lost)
            return  # the rest of this batch is re-read from where Redis says
        if producer is not None:
            producer.poll(0)
            self._raise_delivery_errors()

    def _raise_delivery_errors(self) -> None:
        if self._delivery_errors:
            raise KafkaException(
                f"{len(self._delivery_errors)} metrics record(s) not delivered to "
                f"{self.topics.metrics}: {self._delivery_errors[:3]}"
            )

    def _next_batch(self, consumer: Consumer) -> list[Message]:
        """Whatever is queued now (up to ``batch_max`` and :data:`SLICE_BARS`), else wait
        up to 50 ms for one record.

        ``consume(n, timeout)`` waits for *n* records or the timeout, so at a paced
        10k bars/s every batch would sit out the whole timeout first. Taking what
        has arrived keeps batches as large as the backlog (throughput) and as
        small as the arrivals (latency). At most a slice at a time: the records
        (and the fetch buffers they pin in librdkafka) of a 20,000-record batch
        were tens of MB of the processor's memory.
        """
        limit = min(self.batch_max, SLICE_BARS)
        msgs = consumer.consume(limit, timeout=0)
        if msgs:
            return msgs
        # Nothing queued: the last transaction's reply is worth reading now rather
        # than after the wait (that is when its bars count as committed).
        self._confirm_commit()
        self._commit_offsets()
        first = consumer.consume(1, timeout=0.05)
        if not first or limit == 1:
            return first
        return first + consumer.consume(limit - 1, timeout=0)

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
        for at in range(0, len(msgs), SLICE_BARS):
            self._process_slice(partition, part, msgs[at : at + SLICE_BARS], producer, report)

    def _process_slice(
        self,
        partition: int,
        part: _Partition,
        msgs: list[Message],
        producer: Producer | None,
        report: ProcessorReport,
    ) -> None:
        """Decode, compute and encode a slice of a batch, then commit it to Redis at once.

        The engine's column path gives the same bits as bar by bar however the
        stream is cut into batches and slices (batch boundaries differ between a
        run that was killed and one that was not: exactly-once means identical).
        """
        engine = part.engine
        ignored_before = engine.ignored
        bars, bad = codec.decode_bars_lenient(
            [m.value() or b"" for m in msgs],
            compiled=self.engine_class is CompiledMetricsEngine,
        )
        letters = self._dead_letters(producer) if bad else None
        for i, reason in bad:
            # Met again at every restart, it would crash-loop the processor: set aside.
            assert letters is not None
            set_aside(
                letters,
                self.topics.deadletter,
                self.job,
                "processor",
                msgs[i],
                BAD_MESSAGE,
                reason,
                on_delivery=self._on_delivery,
            )
        outputs = _compute(engine, bars)
        next_offset = (msgs[-1].offset() or 0) + 1
        if producer is not None:
            # The metrics topic is inside the exactly-once boundary: the slice's
            # metrics are acknowledged by the broker *before* Redis advances the
            # offset. A crash in between re-publishes them on restart (bit-identical
            # records, absorbed by the loader's MERGE); the other order lost them for
            # good (issue 10, point 1: thousands of warehouse rows per SIGKILL run).
            self._publish(producer, outputs)
        # Built while the broker takes the records just published: the wait for its
        # acknowledgement below is then shorter by this much work.
        commands = self._transaction(partition, part, outputs, next_offset)
        flushed = letters if letters is not None else producer
        if flushed is not None:
            # Metrics and dead letters acknowledged before Redis moves past them.
            self._flush_metrics(flushed)
        self._commit_to_redis(partition, part, commands, next_offset, msgs)
        part.offset = next_offset

        bars_out = sum(len(out.messages) for out in outputs)
        report.bars_in += len(msgs)
        report.bars_out += bars_out
        report.batches += 1
        report.ignored += engine.ignored - ignored_before
        report.partitions.add(partition)
        self._records_in.inc(len(msgs))
        self._records_redis.inc(bars_out)
        self._batch_size.observe(len(msgs))
        for out in outputs:
            close_gauge = self._close_gauges.get(out.symbol)
            if close_gauge is None:
                close_gauge = self._close_gauges[out.symbol] = LATEST_CLOSE.labels(
                    self.job, out.symbol
                )
            close_gauge.set(out.close[-1])
            for w in out.windows:
                vwap = w.vwap[-1]
                if vwap is not None:
                    gauge = self._vwap_gauges.get((out.symbol, w.window))
                    if gauge is None:
                        gauge = LATEST_VWAP.labels(self.job, out.symbol, w.window)
                        self._vwap_gauges[out.symbol, w.window] = gauge
                    gauge.set(vwap)

    def _skip_markers(self, partition: int, end: int) -> None:
        """The partition was read to ``end``: the offsets between the last bar and there
        hold transaction markers only (or records of aborted transactions, which
        ``read_committed`` never delivers). Move the offset in Redis past them, fenced
        like any commit, so that the lag reaches 0 and the job can be Complete.

        The offset alone: a marker leaves the engine as it was, so the snapshot in Redis
        (written with the partition's last bars, or absent if it had none, which
        restores as an empty engine) is already the state at ``end``. Rewriting it
        cost a write of every window's state per transaction while caught up."""
        part = self._parts.get(partition)
        if part is None or (part.offset or 0) >= end:
            return
        commands = self._transaction(partition, part, [], end, snapshot=False)
        self._commit_to_redis(partition, part, commands, end, [])
        part.offset = end

    def _publish(self, producer: Producer, outputs: list[_Output]) -> None:
        """Each bar's metrics to the metrics topic too (for the loader and anyone else)."""
        count = 0
        for out in outputs:
            key = out.symbol.encode()
            pending: list[dict[str, Any]] = [{"value": m, "key": key} for m in out.messages]
            while pending:
                queued = producer.produce_batch(
                    self.topics.metrics, pending, on_delivery=self._on_delivery
                )
                count += queued
                if queued == len(pending):
                    break
                failed = [record for record in pending if "_error" in record]
                for record in failed:
                    err = record.pop("_error")
                    if err.code() != KafkaError._QUEUE_FULL:
                        raise KafkaException(err)
                pending = failed  # the queue is full: let the broker take some, retry
                producer.poll(0.05)
        self._records_published.inc(count)

    def _dead_letters(self, producer: Producer | None) -> Producer:
        """Where dead letters go: the metrics producer, or one of their own."""
        if producer is not None:
            return producer
        if self._letters is None:
            self._letters = Producer({**self.kafka.producer(), "delivery.report.only.error": True})
        return self._letters

    def _flush_metrics(self, producer: Producer) -> None:
        """Wait until the broker has acknowledged every metrics record produced so far.

        A record the broker refuses, or that times out (``message.timeout.ms``: a
        broker outage longer than that), raises here, before its slice reaches
        Redis: the processor exits and its restart recomputes the slice."""
        while producer.flush(1.0) > 0:
            self._raise_delivery_errors()
        self._raise_delivery_errors()

    def _transaction(
        self,
        partition: int,
        part: _Partition,
        outputs: list[_Output],
        next_offset: int,
        *,
        snapshot: bool = True,
    ) -> list[bytes]:
        """The Redis commands that commit a slice: every output, the next offset and
        (with ``snapshot``) the engine's snapshot, as RESP."""
        keys = self.keys
        limit = self.redis_settings.history_limit
        symbols_key = keys.symbols.encode()
        compiled = self.engine_class is CompiledMetricsEngine
        commands: list[bytes] = []
        for out in outputs:
            symbol = out.symbol.encode()
            bar, windows = out.latest()
            fields = latest_fields(bar, windows)
            hset = [b"HSET", keys.latest(out.symbol).encode()]
            for name, value in fields.items():
                hset += (name.encode(), value.encode())
            commands.append(_command(*hset))
            commands.append(_command(b"SADD", symbols_key, symbol))
            if limit:
                history = keys.history(out.symbol).encode()
                commands.append(_zadd_command(history, out.ts_ns, out.messages, compiled=compiled))
                commands.append(_command(b"ZREMRANGEBYRANK", history, b"0", b"%d" % -(limit + 1)))
        commands.append(_command(b"SET", keys.offset(partition).encode(), b"%d" % next_offset))
        if snapshot:
            commands.append(
                _command(b"SET", keys.state(partition).encode(), part.engine.snapshot())
            )
        return commands

    def _commit_to_redis(
        self,
        partition: int,
        part: _Partition,
        commands: list[bytes],
        next_offset: int,
        msgs: list[Message],
    ) -> None:
        """Send ``commands`` (see :meth:`_transaction`) in one MULTI/EXEC, fenced by
        WATCHing the partition's offset key (see the module docstring).

        Its replies are read by :meth:`_confirm_commit`: for a large batch at the
        latest before the next transaction, so that Redis applies this one while
        the next batch is computed (the processor and Redis work at once: 4,096
        bars take Redis ~8 ms); for a small one at once. Only then do the bars
        count as committed (latency observed, Kafka offset committed).
        """
        offset_key = self.keys.offset(partition).encode()
        self._confirm_commit()  # the previous transaction first: it set the offset we expect
        expected = None if part.offset is None else str(part.offset).encode()
        pool = self.redis.connection_pool
        conn = pool.get_connection()
        send: Any = conn.send_packed_command  # untyped; takes a list of bytes to send
        try:
            send([_command(b"WATCH", offset_key) + _command(b"GET", offset_key)])
            conn.read_response()
            if conn.read_response() != expected:
                send([_command(b"UNWATCH")])
                conn.read_response()
                raise LostPartition(partition, "offset moved under us")
            parts = [_MULTI, *commands, _EXEC]
            # One write for a small transaction (a write per command costs a
            # syscall each); a large one goes as it is rather than be copied.
            send([b"".join(parts)] if sum(map(len, parts)) < _JOIN_BELOW else parts)
        except LostPartition:
            pool.release(conn)
            raise
        except BaseException:
            # A reply may be unread, so the connection's state is unknown: close it
            # (Redis drops a MULTI that never got its EXEC).
            conn.disconnect()  # type: ignore[no-untyped-call]
            pool.release(conn)
            raise
        self._pending = _Pending(conn, partition, next_offset, len(commands) + 2, msgs)
        if len(msgs) < _OVERLAP_MIN:
            # A small batch (arrivals at a paced rate): Redis answers within a
            # fraction of a millisecond, and reading now keeps its bars' latency
            # from waiting on the next batch's computation.
            self._confirm_commit()

    def _confirm_commit(self) -> None:
        """Read the replies of the transaction :meth:`_commit_to_redis` sent, if any: from
        then on its bars are in Redis (latency observed, Kafka offset committed).

        Raises LostPartition if another processor took the partition meanwhile.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        conn = pending.conn
        pool = self.redis.connection_pool
        try:
            for _ in range(pending.replies - 1):
                conn.read_response()  # MULTI's OK, then QUEUED for each command
            result = conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if result is None:
            ERRORS.labels("processor", self.job, "lost_partition").inc()
            raise LostPartition(pending.partition, "another processor wrote it")
        for reply in result:
            if isinstance(reply, Exception):
                raise reply
        now = time.time()
        _observe_many(
            self._event_to_redis,
            [max(0.0, now - m.timestamp()[1] / 1000) for m in pending.msgs],
        )
        self._uncommitted[pending.partition] = pending.next_offset
        self._commit_offsets()

    def _commit_offsets(self, *, force: bool = False, wait: bool = False) -> None:
        """Commit the offsets Redis has confirmed to Kafka: at most every
        :data:`KAFKA_COMMIT_SECONDS`, or now with ``force``.

        They only show progress and lag (Redis holds where to resume). One commit
        per batch, hundreds a second at a paced rate, queued the group's
        heartbeats behind them until a stalled commit cost the partitions (seen:
        a session timeout and a 50 s rebalance in the latency bench).
        """
        consumer = self._consumer
        if not self._uncommitted or consumer is None:
            return
        now = time.monotonic()
        if not force and now - self._committed_at < KAFKA_COMMIT_SECONDS:
            return
        offsets = [TopicPartition(self.topics.bars, p, o) for p, o in self._uncommitted.items()]
        self._uncommitted.clear()
        self._committed_at = now
        if not wait:
            consumer.commit(offsets=offsets, asynchronous=True)  # errors: _on_commit
            return
        # The last commit (shutdown): synchronous, retried while the group rebalances.
        for attempt in range(5):
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
                return
            except KafkaException as exc:
                if exc.args[0].fatal() or attempt == 4:
                    ERRORS.labels("processor", self.job, "commit").inc()
                    log.warning("offsets not committed at exit (%s): %s", exc, offsets)
                    return
                time.sleep(0.5)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """An asynchronous commit's outcome: a refused one (a rebalance) goes again with
        the next, unless a newer offset of its partition is already waiting."""
        if err is None:
            return
        ERRORS.labels("processor", self.job, "commit").inc()
        log.warning("offset commit refused, retried with the next: %s", err)
        for tp in partitions:
            if tp.partition in self._parts and tp.offset >= 0:
                self._uncommitted.setdefault(tp.partition, tp.offset)

    def _drop_pending(self) -> None:
        """On the way out after an error: close a connection whose replies are unread.

        Redis applies or drops the transaction whole either way."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.conn.disconnect()
            self.redis.connection_pool.release(pending.conn)


def latest_metrics(client: redis.Redis, job: str, symbol: str) -> dict[str, float | None]:
    """The latest metrics of a symbol, parsed (one HGETALL)."""
    raw: dict[bytes, bytes] = client.hgetall(RedisKeys(job).latest(symbol))  # type: ignore[assignment]
    return {k.decode(): (float(v) if v else None) for k, v in raw.items()}
