"""Producer: replay a CSV of bars into Kafka at a chosen pace, resumably.

Reading is streamed (fsspec: local paths, ``file://``, ``s3://``, ``https://``;
gzip and other compressions by file suffix), parsing is the columnar
:mod:`.csvformat`. Each bar goes to the bars topic keyed by symbol, to a
partition chosen by a stable hash of the symbol (so order per symbol holds and
resuming knows where every bar would have gone). Rejected rows go to the
dead-letter topic with their file, line and reason.

Resuming: after a crash the producer reads the last record of every partition
of the bars topic (and of the dead-letter topic) and skips what is already
there. Because the idempotent producer keeps order within a partition, "every
bar of partition p with seq <= the last seq in p" is exactly the set delivered:
no duplicates, no gaps.
"""

from __future__ import annotations

import logging
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import fsspec
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from . import codec
from .csvformat import BarBatch, BarReader, ColumnMapping, LayoutName, RejectedRow
from .kafka_admin import ensure_topics, partition_count
from .observability import (
    BYTES_OUT,
    DEAD_LETTERS,
    ERRORS,
    RECORDS_OUT,
    REPLAY_ROWS_DONE,
    REPLAY_ROWS_TOTAL,
)
from .pacing import Pacer, Pacing
from .settings import KafkaSettings

log = logging.getLogger("hftpipe.producer")


def partition_for(symbol: str, partitions: int) -> int:
    """Stable partition of a symbol (crc32, identical in every process and language)."""
    return zlib.crc32(symbol.encode()) % partitions


@dataclass
class ResumePoint:
    """What is already in Kafka: last seq per bars partition, last dead-lettered line."""

    last_seq: dict[int, int] = field(default_factory=dict)
    last_dead_line: int = 0

    def bar_done(self, partition: int, seq: int) -> bool:
        """Whether the bar with ``seq`` bound for ``partition`` was delivered before."""
        return seq <= self.last_seq.get(partition, -1)

    @property
    def empty(self) -> bool:
        """Nothing was produced before."""
        return not self.last_seq and self.last_dead_line == 0


_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TRANSPORT,
    }
)


def _watermarks(consumer: Consumer, tp: TopicPartition, timeout: float) -> tuple[int, int]:
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


def _last_records(consumer: Consumer, topic: str, timeout: float = 10) -> dict[int, Message]:
    """The last record of every non-empty partition of ``topic``."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
    if metadata.error is not None:
        raise KafkaException(metadata.error)
    last: dict[int, Message] = {}
    for partition in metadata.partitions:
        low, high = _watermarks(consumer, TopicPartition(topic, partition), timeout)
        if high <= low:
            continue
        consumer.assign([TopicPartition(topic, partition, high - 1)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                raise KafkaException(msg.error())
            last[partition] = msg
            break
        else:
            raise TimeoutError(f"could not read the last record of {topic}[{partition}]")
    consumer.unassign()
    return last


def find_resume_point(settings: KafkaSettings, bars_topic: str, dead_topic: str) -> ResumePoint:
    """Read where an earlier run of this job stopped."""
    consumer = Consumer(
        {**settings.common(), "group.id": "hftpipe-producer-resume", "enable.auto.commit": False}
    )
    try:
        point = ResumePoint()
        for partition, msg in _last_records(consumer, bars_topic).items():
            point.last_seq[partition] = codec.decode_bar(msg.value() or b"").seq
        for msg in _last_records(consumer, dead_topic).values():
            point.last_dead_line = max(
                point.last_dead_line, int(orjson.loads(msg.value() or b"{}")["line"])
            )
        return point
    finally:
        consumer.close()


def open_source(url: str) -> tuple[IO[bytes], Callable[[], float]]:
    """Open ``url`` for streaming; also return a function giving the fraction read.

    The fraction is measured on the raw (compressed) bytes, so progress works
    for gzip files too.
    """
    fs_file = fsspec.open(url, mode="rb")
    raw: IO[bytes] = fs_file.open()
    size = float(fs_file.fs.size(fs_file.path) or 0)
    compression = fsspec.utils.infer_compression(url)
    stream: IO[bytes] = (
        fsspec.compression.compr[compression](raw, mode="rb") if compression else raw
    )

    def fraction() -> float:
        try:
            return min(1.0, raw.tell() / size) if size else 0.0
        except (OSError, ValueError):
            return 0.0

    return stream, fraction


def count_rows(url: str) -> int:
    """Data rows in the file (lines minus the header, blank lines excluded): for ETA."""
    stream, _ = open_source(url)
    with stream:
        lines, last = 0, b"\n"
        for block in iter(lambda: stream.read(1 << 22), b""):
            lines += block.count(b"\n") - block.count(b"\n\n")
            last = block[-1:]
        if last != b"\n":
            lines += 1
    return max(0, lines - 1)


@dataclass
class ReplayReport:
    """Totals of one producer run."""

    produced: int = 0
    skipped_already_in_kafka: int = 0
    dead_lettered: int = 0
    out_of_range: int = 0
    rows_read: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Rows read per second."""
        return self.rows_read / self.seconds if self.seconds else 0.0


class _Progress:
    def __init__(self, total: int, fraction: Callable[[], float], every: float = 2.0) -> None:
        self.total, self.fraction, self.every = total, fraction, every
        self.started = self.last = time.monotonic()

    def tick(self, rows: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        done = rows / self.total if self.total else self.fraction()
        eta = elapsed * (1 - done) / done if done > 0 else float("nan")
        total = f"/{self.total:,}" if self.total else ""
        print(
            f"[produce] {rows:,}{total} rows ({done:6.1%}), {rows / elapsed:,.0f} rows/s, "
            f"ETA {eta:,.0f} s",
            file=sys.stderr,
            flush=True,
        )


class Replay:
    """One replay of a file into a job's topics."""

    def __init__(
        self,
        *,
        job: str,
        source: str,
        bars_topic: str,
        dead_topic: str,
        kafka: KafkaSettings,
        pacing: Pacing,
        symbol: str | None = None,
        mapping: ColumnMapping | None = None,
        layout: LayoutName | Literal["auto"] = "auto",
        start_ns: int | None = None,
        end_ns: int | None = None,
        partitions: int = 3,
        replication: int = 1,
        create_topics: bool = True,
        count_source_rows: bool = True,
        progress: bool = True,
    ) -> None:
        self.job, self.source = job, source
        self.bars_topic, self.dead_topic = bars_topic, dead_topic
        self.kafka, self.pacing = kafka, pacing
        self.symbol, self.mapping, self.start_ns, self.end_ns = symbol, mapping, start_ns, end_ns
        self.layout: LayoutName | Literal["auto"] = layout
        self.partitions, self.replication = partitions, replication
        self.create_topics, self.count_source_rows, self.show_progress = (
            create_topics,
            count_source_rows,
            progress,
        )
        self._failed: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed.append(str(err))
            ERRORS.labels("producer", self.job, "delivery").inc()

    def run(self) -> ReplayReport:
        """Replay the file; raises if any record could not be delivered."""
        admin = AdminClient(self.kafka.common())
        if self.create_topics:
            ensure_topics(
                admin, {self.bars_topic: self.partitions, self.dead_topic: 1}, self.replication
            )
        partitions = partition_count(admin, self.bars_topic)
        if partitions == 0:
            raise RuntimeError(
                f"topic {self.bars_topic} does not exist: create it or pass --create-topics"
            )
        resume = find_resume_point(self.kafka, self.bars_topic, self.dead_topic)
        if not resume.empty:
            log.info(
                "resuming: topic already holds bars up to seq %s per partition, dead "
                "letters up to line %d",
                resume.last_seq,
                resume.last_dead_line,
            )
        total = count_rows(self.source) if self.count_source_rows else 0
        REPLAY_ROWS_TOTAL.labels(self.job).set(total)
        producer = Producer({**self.kafka.producer(), "on_delivery": self._on_delivery})
        report = ReplayReport()
        pacer = Pacer(self.pacing)
        started = time.monotonic()
        with ExitStack() as stack:
            stream, fraction = open_source(self.source)
            stack.enter_context(stream)
            progress = _Progress(total, fraction)
            reader = BarReader(
                stream,
                source=self.source,
                symbol=self.symbol,
                mapping=self.mapping,
                layout=self.layout,
                start_ns=self.start_ns,
                end_ns=self.end_ns,
            )
            log.info(
                "reading %s: %s; pacing: %s", self.source, reader.layout.describe(), self.pacing
            )
            for chunk in reader:
                report.rows_read += len(chunk.bars) + len(chunk.rejected) + chunk.out_of_range
                report.out_of_range += chunk.out_of_range
                for row in chunk.rejected:
                    if row.line > resume.last_dead_line:
                        self._dead_letter(producer, row)
                        report.dead_lettered += 1
                sent, skipped = self._send(producer, chunk.bars, partitions, resume, pacer, started)
                report.produced += sent
                report.skipped_already_in_kafka += skipped
                if self._failed:
                    break
                REPLAY_ROWS_DONE.labels(self.job).set(report.rows_read)
                if self.show_progress:
                    progress.tick(report.rows_read)
            remaining = producer.flush(60)
        if self._failed or remaining:
            raise KafkaException(
                f"{len(self._failed)} record(s) could not be delivered ({remaining} still queued)"
                f": {self._failed[:3]}; restart the producer to resume from what Kafka has"
            )
        report.seconds = time.monotonic() - started
        if self.show_progress:
            progress.tick(report.rows_read, force=True)
        RECORDS_OUT.labels("producer", self.job, self.bars_topic).inc(report.produced)
        return report

    def _dead_letter(self, producer: Producer, row: RejectedRow) -> None:
        DEAD_LETTERS.labels(self.job, row.kind).inc()
        payload = orjson.dumps(
            {
                "source": row.source,
                "line": row.line,
                "kind": row.kind,
                "reason": row.reason,
                "text": row.text,
            }
        )
        self._produce(producer, self.dead_topic, None, payload, 0)

    def _produce(
        self, producer: Producer, topic: str, key: bytes | None, value: bytes, partition: int
    ) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition)
                return
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain

    def _send(
        self,
        producer: Producer,
        batch: BarBatch,
        partitions: int,
        resume: ResumePoint,
        pacer: Pacer,
        started: float,
    ) -> tuple[int, int]:
        sent = skipped = size = 0
        paced = self.pacing.mode != "max"
        cache: dict[str, tuple[bytes, int]] = {}
        for bar in batch.bars():
            entry = cache.get(bar.symbol)
            if entry is None:
                entry = cache[bar.symbol] = (
                    bar.symbol.encode(),
                    partition_for(bar.symbol, partitions),
                )
            key, partition = entry
            if resume.bar_done(partition, bar.seq):
                skipped += 1
                continue
            if paced:
                wait = started + pacer.due(bar.ts_ns) - time.monotonic()
                if wait > 0.001:
                    producer.poll(0)
                    time.sleep(wait)
            value = codec.encode_bar(bar)
            self._produce(producer, self.bars_topic, key, value, partition)
            sent += 1
            size += len(value)
        producer.poll(0)
        BYTES_OUT.labels("producer", self.job, self.bars_topic).inc(size)
        return sent, skipped


def iter_dead_letters(
    settings: KafkaSettings, topic: str, timeout: float = 10
) -> Iterator[dict[str, Any]]:
    """Every dead letter of a topic (for reports and tests)."""
    consumer = Consumer(
        {
            **settings.common(),
            "group.id": "hftpipe-deadletter-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        for partition in metadata.partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, partition), timeout)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            seen = low
            while seen < high:
                msg = consumer.poll(timeout)
                if msg is None:
                    raise TimeoutError(f"reading {topic}[{partition}] stalled at {seen}")
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                seen = (msg.offset() or 0) + 1
                yield orjson.loads(msg.value() or b"{}")
    finally:
        consumer.close()
