"""Loader: bars and metrics from Kafka -> the warehouse (DuckDB by default, or Snowflake).

Micro-batches are bounded by size and by time. A batch is merged into the
warehouse (staging table + MERGE on the natural key, see :mod:`.warehouse`)
and only then are its Kafka offsets committed, synchronously. A loader that
dies between the two re-reads the batch after restart and merges it again,
which changes nothing: replays and crashes never duplicate rows.

The merge of one batch runs on a thread of its own while the loop collects and
decodes the next (the warehouse and librdkafka both work without the GIL): the two
took about as long each, one after the other. One batch at most is in flight; its
offsets (and those of partitions read to their end meanwhile) move only once its
merge has returned, on the loop's thread, which alone uses the consumer.

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
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from . import codec
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
from .warehouse.schema import BAR_METRICS, LOADED_AT, TRADE_METRICS, TRADES, Table, arrow_schema

log = logging.getLogger("hftpipe.loader")

Poison = tuple[Message, str, str]
"""A record set aside: the message, a kind (see :mod:`.deadletters`), the reason."""
Refused = tuple[int, str, str]
"""A value the warehouse cannot store: its index in the batch, a kind, the reason."""


NS_PER_US: Final = 1_000
_NO_ERROR: Final = frozenset((type(None),))


def _time_precision(
    ts_ns: list[int] | npt.NDArray[np.int64], refused: list[Refused], positions: list[int]
) -> npt.NDArray[np.bool_]:
    """Which of *ts_ns* the warehouse can store (whole microseconds); the others go to
    *refused*, under their index in the batch (*positions*)."""
    ts = np.asarray(ts_ns, dtype=np.int64)
    fine: npt.NDArray[np.bool_] = ts % NS_PER_US == 0
    for k in np.flatnonzero(~fine).tolist():
        refused.append(
            (
                positions[k],
                TIME_PRECISION,
                f"bar time {ts_ns[k]} ns has a sub-microsecond part, which the warehouse "
                "does not store (it keeps microseconds)",
            )
        )
    return fine


def _times(ts: npt.NDArray[np.int64]) -> pa.Array:
    return pa.array(ts // NS_PER_US, type=pa.timestamp("us"))


def bars_table(job: str, values: Sequence[bytes]) -> tuple[pa.Table, pa.Table, list[Refused]]:
    """Rows of the ``bars`` and the ``trades`` tables from bars-topic values, as Arrow
    tables, and the values they cannot store (pure). Columnar: no Python code per bar
    while the values are good (:func:`.codec.decode_bars_lenient`)."""
    cols, bad = codec.decode_bars_lenient(values)
    refused: list[Refused] = [(i, BAD_MESSAGE, reason) for i, reason in bad]
    skipped = {i for i, _ in bad}
    positions = (
        [i for i in range(len(values)) if i not in skipped] if bad else list(range(len(values)))
    )
    fine = _time_precision(cols.ts_ns, refused, positions)
    ts = np.asarray(cols.ts_ns, dtype=np.int64)
    table = pa.table(
        {
            "job": pa.repeat(job, len(ts)),
            "symbol": pa.array(cols.symbol, type=pa.string()),
            "bar_time": _times(ts),
            "open": pa.array(cols.open, type=pa.float64()),
            "high": pa.array(cols.high, type=pa.float64()),
            "low": pa.array(cols.low, type=pa.float64()),
            "close": pa.array(cols.close, type=pa.float64()),
            "volume": pa.array(cols.volume, type=pa.float64()),
            "seq": pa.array(cols.seq, type=pa.int64()),
        }
    )
    trades = _empty(TRADES)
    if cols.trade is not None:  # a topic of trades: codec gives them as bars of one price
        trade = np.asarray(cols.trade, dtype=np.bool_)
        trades = pa.table(
            {
                "job": pa.repeat(job, len(ts)),
                "symbol": table.column("symbol"),
                "trade_time": table.column("bar_time"),
                "seq": table.column("seq"),
                "price": table.column("close"),
                "size": table.column("volume"),
            }
        ).filter(pa.array(fine & trade))
        fine &= ~trade
    if not fine.all():
        table = table.filter(pa.array(fine))
    refused.sort()
    return table, trades, refused


def metrics_table(job: str, values: Sequence[bytes]) -> tuple[pa.Table, pa.Table, list[Refused]]:
    """Rows of the ``bar_metrics`` table (one per bar and window) and of the
    ``trade_metrics`` table (one per trade and window) from metrics-topic values, as
    Arrow tables, and the values they cannot store (pure).

    The session window becomes the ``session_vwap`` column of every row, not a row.
    Columnar (:func:`.codec.decode_metrics_arrays`, else
    :func:`.codec.decode_metrics_columns` in Python) while every value is good and carries the
    same windows, as the processor writes them; else message by message. A float
    column's NaN is a null (``from_pandas``): the arrays' nulls; JSON has no NaN.
    """
    cols: codec.MetricsArrays | codec.MetricsColumns | None = codec.decode_metrics_arrays(values)
    if cols is None:
        # The core's array reader refuses exactly what its column reader refuses: on to
        # the Python one, not a second compiled pass over the batch.
        cols = codec.decode_metrics_columns(values, compiled=False)
    if cols is None:
        return _metrics_table_slow(job, values)
    refused: list[Refused] = []
    ts = np.asarray(cols.ts_ns, dtype=np.int64)
    fine = _time_precision(ts, refused, list(range(len(values))))
    session = next((w.vwap for w in cols.windows if w.window == SESSION), None)
    symbol = pa.array(cols.symbol, type=pa.string())
    times = _times(ts)
    session_vwap = pa.array(
        session if session is not None else [None] * len(ts), pa.float64(), from_pandas=True
    )
    seq = pa.array(cols.seq, type=pa.int64())
    blocks = []
    for w in cols.windows:
        if w.window == SESSION:
            continue
        blocks.append(
            pa.table(
                {
                    "job": pa.repeat(job, len(ts)),
                    "symbol": symbol,
                    "bar_time": times,
                    "window": pa.repeat(w.window, len(ts)),
                    "window_seconds": pa.repeat(
                        parse_window(w.window).ns // 1_000_000_000, len(ts)
                    ).cast(pa.int64()),
                    "vwap": pa.array(w.vwap, type=pa.float64(), from_pandas=True),
                    "sma_close": pa.array(w.sma, type=pa.float64(), from_pandas=True),
                    "std_close": pa.array(w.std, type=pa.float64(), from_pandas=True),
                    "std_log_return": pa.array(w.ret_std, type=pa.float64(), from_pandas=True),
                    "bar_count": pa.array(w.n_bars, type=pa.int64()),
                    "session_vwap": session_vwap,
                    _SEQ: seq,
                }
            )
        )
    if not blocks:
        return _empty(BAR_METRICS), _empty(TRADE_METRICS), refused
    trade = np.asarray(cols.trade if cols.trade is not None else [False] * len(ts), np.bool_)
    table = pa.concat_tables(blocks)
    return *_split_metrics(table, np.tile(fine, len(blocks)), np.tile(trade, len(blocks))), refused


_SEQ: Final = "seq"
_TRADE_NAMES: Final = {
    "bar_time": "trade_time",
    "sma_close": "sma_price",
    "std_close": "std_price",
    "bar_count": "trade_count",
}
"""``bar_metrics`` columns and their ``trade_metrics`` names (one table of values for
both, split by kind)."""


def _split_metrics(
    table: pa.Table, fine: npt.NDArray[np.bool_], trade: npt.NDArray[np.bool_]
) -> tuple[pa.Table, pa.Table]:
    """Metrics rows in ``bar_metrics`` columns (plus ``seq``) as the ``bar_metrics`` rows
    and the ``trade_metrics`` rows; ``fine``: the rows the warehouse can store."""
    bars = table.filter(pa.array(fine & ~trade)).drop_columns([_SEQ]).combine_chunks()
    if not trade.any():
        return bars, _empty(TRADE_METRICS)
    trades = table.filter(pa.array(fine & trade)).rename_columns(
        [_TRADE_NAMES.get(name, name) for name in table.column_names]
    )
    return bars, trades.select(list(TRADE_METRICS.input_columns)).combine_chunks()


def _empty(tbl: Table) -> pa.Table:
    return arrow_schema(tbl).empty_table().drop_columns([LOADED_AT])


def _metrics_table_slow(
    job: str, values: Sequence[bytes]
) -> tuple[pa.Table, pa.Table, list[Refused]]:
    """:func:`metrics_table` message by message: a batch with a bad value, or windows
    that differ between messages."""
    refused: list[Refused] = []
    rows: list[tuple[Any, ...]] = []
    trade: list[bool] = []
    seconds: dict[str, int] = {}
    for i, value in enumerate(values):
        try:
            doc = codec.decode_bar_metrics(value)
        except CodecError as exc:
            refused.append((i, BAD_MESSAGE, str(exc)))
            continue
        if not _time_precision([doc.ts_ns], refused, [i])[0]:
            continue
        session = next((m.vwap for m in doc.windows if m.window == SESSION), None)
        for m in doc.windows:
            if m.window == SESSION:
                continue
            if m.window not in seconds:
                seconds[m.window] = parse_window(m.window).ns // 1_000_000_000
            rows.append(
                (
                    *(job, doc.symbol, doc.ts_ns // NS_PER_US, m.window, seconds[m.window]),
                    *(m.vwap, m.sma, m.std, m.ret_std, m.n_bars, session, doc.seq),
                )
            )
            trade.append(doc.trade)
    if not rows:
        return _empty(BAR_METRICS), _empty(TRADE_METRICS), refused
    schema = arrow_schema(BAR_METRICS).append(pa.field(_SEQ, pa.int64()))
    names = (*BAR_METRICS.input_columns, _SEQ)
    table = pa.table(
        {
            name: pa.array(column, type=schema.field(name).type)
            for name, column in zip(names, zip(*rows, strict=True), strict=True)
        }
    )
    fine = np.ones(len(rows), dtype=np.bool_)
    return *_split_metrics(table, fine, np.asarray(trade, dtype=np.bool_)), refused


def _values(msgs: list[Message]) -> list[bytes]:
    """The records' values (an empty value for a tombstone, which then fails to decode)."""
    values = list(map(Message.value, msgs))
    return [v or b"" for v in values] if None in values else cast(list[bytes], values)


def _last_offsets(topics: list[str | None], msgs: list[Message]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the highest offset among *msgs* (their *topics* given),
    computed in numpy: a partition re-read after a rebalance may come twice in a batch,
    lower offsets after higher ones, so the last is not always the highest."""
    # A record (not an error event) always has its topic and partition.
    keys = cast(list[tuple[str, int]], list(zip(topics, map(Message.partition, msgs), strict=True)))
    unique = list(dict.fromkeys(keys))
    index = {key: k for k, key in enumerate(unique)}
    highest = np.full(len(unique), -1, dtype=np.int64)
    offsets = np.fromiter(map(Message.offset, msgs), dtype=np.int64, count=len(msgs))
    np.maximum.at(highest, np.fromiter(map(index.__getitem__, keys), np.int64, len(keys)), offsets)
    return dict(zip(unique, highest.tolist(), strict=True))


@dataclass
class _Prepared:
    """A collected batch, decoded on the loop's thread, for the merge thread."""

    tables: list[tuple[str, pa.Table]]
    """(warehouse table, rows), only tables with rows."""
    offsets: dict[tuple[str, int], int]
    """(topic, partition) -> the highest offset in the batch."""
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    """Partitions read to their end while the batch was collected (see ``_reached``)."""
    bars_in: int = 0
    metrics_in: int = 0
    records: int = 0


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
        # The batch being merged on the merge thread, if any (see the module docstring).
        self._writing: tuple[Future[dict[str, int]], _Prepared] | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._report = LoaderReport()

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
        report = self._report = LoaderReport()
        self._writer = writer = ThreadPoolExecutor(1, thread_name_prefix="hftpipe-merge")
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
                lambda batch: self._load(consumer, batch),
            )
            self._await_write(consumer)
            self._commit_pending(consumer)
        finally:
            # A merge still running (an error elsewhere) uses the sink: let it end
            # before the caller closes that. Its offsets are not committed.
            self._abandon_write()
            writer.shutdown()
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
        generation still allows it (the batch being merged first)."""
        self._await_write(consumer)
        self._commit_pending(consumer, only={(tp.topic, tp.partition) for tp in partitions})
        self._on_lost(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away without a revoke: their next owner re-reads from the
        last commit (a second MERGE of the same rows changes nothing)."""
        self._await_write(consumer)  # else its offsets would come back as pending
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
        # (else a drained loader would show lag forever). Ends met by collections
        # that found no record count only once every record before them is merged.
        if self._writing is None:
            self._reached(consumer, self._ends)
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
            errors = list(map(Message.error, msgs))
            # By type: KafkaError's == refuses to compare with None (it raises).
            if set(map(type, errors)) <= _NO_ERROR:
                batch += msgs  # the usual case, without Python code per record
                msgs_or_errors: list[tuple[Message, KafkaError | None]] = []
            else:
                msgs_or_errors = list(zip(msgs, errors, strict=True))
            for msg, err in msgs_or_errors:
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
            if not msgs:
                # The topics are drained for now: load what we have. With nothing yet,
                # back to the caller too (a poll of nothing is idle time, the group
                # join's wait included): a batch's time starts near its first record.
                break
        if not batch and self._writing is not None:
            # Nothing new: the batch in flight is finished now, so that its offsets
            # (and the lag that says the loader is done) need not wait for a record.
            self._await_write(consumer)
            self._reached(consumer, self._ends)
            self._commit_pending(consumer)
        return batch

    def _load(self, consumer: Consumer, batch: list[Message]) -> None:
        """The loop's part of a batch: decode it (dead letters set aside), wait for
        the batch before it to be merged, then hand this one to the merge thread."""
        prepared = self._prepare(batch)
        prepared.ends, self._ends = self._ends, {}
        self._await_write(consumer)
        self._commit_pending(consumer)
        assert self._writer is not None  # run() made it
        self._writing = (self._writer.submit(self._write, prepared), prepared)

    def _prepare(self, batch: list[Message]) -> _Prepared:
        # Per record, only C calls (map, compress): no Python code per record.
        topics = list(map(Message.topic, batch))
        bar_msgs = list(compress(batch, map(self.topics.bars.__eq__, topics)))
        metric_msgs = list(compress(batch, map(self.topics.metrics.__eq__, topics)))
        bars, trades, refused_bars = bars_table(self.job_id, _values(bar_msgs))
        metrics, trade_metrics, refused_metrics = metrics_table(self.job_id, _values(metric_msgs))
        bad: list[Poison] = [(bar_msgs[i], kind, why) for i, kind, why in refused_bars]
        bad_metrics: list[Poison] = [
            (metric_msgs[i], kind, why) for i, kind, why in refused_metrics
        ]
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
        tables = [
            (name, rows)
            for name, rows in (
                ("bars", bars),
                ("trades", trades),
                ("bar_metrics", metrics),
                ("trade_metrics", trade_metrics),
            )
            if rows.num_rows
        ]
        return _Prepared(
            tables,
            _last_offsets(topics, batch),
            bars_in=len(bar_msgs) - len(bad),
            metrics_in=len(metric_msgs) - len(bad_metrics),
            records=len(batch),
        )

    def _write(self, prepared: _Prepared) -> dict[str, int]:
        """On the merge thread: the batch into the warehouse; rows written per table."""
        started = time.monotonic()
        written = {name: self.sink.write(name, rows) for name, rows in prepared.tables}
        LOADER_BATCH_SECONDS.labels(self.job, self.backend).observe(time.monotonic() - started)
        return written

    def _await_write(self, consumer: Consumer) -> None:
        """Wait for the batch being merged; its offsets become pending (committed by
        the caller). A failed merge raises here, its offsets never move: the restart
        re-reads the batch."""
        if self._writing is None:
            return
        (future, prepared), self._writing = self._writing, None
        written = future.result()
        report = self._report
        for name, n in written.items():
            LOADER_ROWS.labels(self.job, name, self.backend).inc(n)
        rows = dict(prepared.tables)
        report.bars += sum(rows[t].num_rows for t in ("bars", "trades") if t in rows)
        report.metrics_rows += sum(written.get(t, 0) for t in ("bar_metrics", "trade_metrics"))
        # Offsets only after the warehouse has the rows (at-least-once delivery,
        # made exactly-once in effect by the MERGE on the natural key).
        # Only partitions still assigned: a partition revoked while the batch was
        # collected belongs to another loader now, which re-reads it from the last commit.
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        for key, offset in prepared.offsets.items():
            if key in assigned:
                self._pending[key] = max(self._pending.get(key, 0), offset + 1)
        self._reached(consumer, prepared.ends)
        report.batches += 1
        RECORDS_IN.labels("loader", self.job, self.topics.bars).inc(prepared.bars_in)
        RECORDS_IN.labels("loader", self.job, self.topics.metrics).inc(prepared.metrics_in)
        BATCH_SIZE.labels("loader", self.job).observe(prepared.records)

    def _abandon_write(self) -> None:
        """Let a merge in flight end (the sink is in use) without taking its offsets."""
        if self._writing is None:
            return
        (future, _), self._writing = self._writing, None
        error = future.exception()
        if error is not None:
            log.warning("the batch being merged failed as the loader stopped: %s", error)

    def _reached(self, consumer: Consumer, ends: dict[tuple[str, int], int]) -> None:
        """Partitions read to their end, every record before it loaded: their offsets move
        to the end. Past the last record there are transaction markers only (the
        producer writes in transactions), which no consumer is given: without this, a
        drained loader would show a lag of one marker for ever. Called only when every
        record collected before ``ends`` were met is in the warehouse."""
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        for key, end in ends.items():
            if key in assigned:
                self._pending[key] = max(self._pending.get(key, 0), end)
        ends.clear()

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
