"""Producer: replay a file of bars into Kafka at a chosen pace, resumably.

Reading is streamed (fsspec: local paths, ``file://``, ``s3://``, ``https://``;
gzip and other compressions by file suffix), parsing is the columnar
:mod:`.csvformat` (CSV text) or :mod:`.arrowformat` (Parquet, Arrow IPC), whichever
:func:`~.arrowformat.open_reader` finds the file to be. Each bar goes to the bars
topic keyed by symbol, to a partition chosen by a stable hash of the symbol (so order
per symbol holds and resuming knows where every bar would have gone). Rejected rows go
to the dead-letter topic with their file, line (a Parquet or Arrow row's number) and
reason.

Exactly once into the topics, with Kafka transactions (issue 10, points 2 and 15):

- The transactional id is the job's (:func:`~.contract.transactional_id`): a producer
  that starts fences any earlier producer of the same job (the broker refuses its
  writes from then on; it stops with :class:`Fenced`, saying so) and aborts that
  one's open transaction. Two producers of one job never both add bars.
- Bars, dead letters and progress records are written in transactions of at most
  ``KafkaSettings.transaction_ms`` (and before any pacing wait). A delivery that fails (a
  broker away for longer than the delivery timeout) aborts the transaction, so no
  later bar can be committed behind a lost one; the producer then goes on from what
  is committed (:data:`ABORTED_RETRIES` times, then it exits for a restart).
- Resuming reads the last committed record of every partition of the bars topic
  (and of the dead-letter topic) and skips what is already there: every bar of
  partition p with seq <= the last committed seq in p is committed, in order, and
  none after it. Consumers read ``read_committed``, so an aborted transaction's
  records are never seen downstream.

Bad sources: the source is opened, its header understood and (unless counting is
off) read to its end before any topic is created, so a file that cannot be replayed
leaves nothing behind. Whatever stops it (no such file, an HTTP status, missing S3
credentials, binary data, a truncated archive) is a
:class:`~.csvformat.SourceError`: one line naming the file, the line where it
applies, the cause and what to do.

Progress: while it sends, the producer keeps its metrics current (records out
and rows done, at least every 0.5 s) and about once a second writes a
:class:`~.contract.ProducerProgress` record to the job's compacted progress
topic, plus a last one with ``done`` after every bar was delivered. The operator
reads rows in the source and rows read from there.
"""

from __future__ import annotations

import io
import logging
import math
import os
import socket
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import islice
from typing import IO, Any, Final, Literal

import fsspec
import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs is not in the lock
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from . import arrowformat, codec
from .arrowformat import open_reader
from .bars import format_utc
from .contract import PROGRESS_TOPIC_CONFIG, Groups, ProducerProgress, Topics, transactional_id
from .csvformat import (
    REJECT_KINDS,
    BarBatch,
    BarReader,
    ColumnMapping,
    LayoutName,
    RejectedRow,
    SourceError,
    one_line,
    read_error,
    utf8_stream,
)
from .deadletters import excerpt, produce_when_room
from .kafka_admin import (
    ensure_topics,
    last_records,
    partition_count,
    read_to_end,
    reader,
    watermarks,
)
from .metrics import compiled_chosen
from .multifile import FilenameSymbol, MergedReader, expand_sources
from .observability import (
    BYTES_OUT,
    DEAD_LETTERS,
    ERRORS,
    HEARTBEAT,
    RECORDS_OUT,
    REPLAY_ROWS_DONE,
    REPLAY_ROWS_TOTAL,
    declare_series,
)
from .pacing import Pacer, Pacing
from .settings import EngineChoice, KafkaSettings
from .sourceinfo import Reading, SourceSummary, describe_reading, kind_of, reading_of
from .tradebars import BarBuilder

log = logging.getLogger("hftpipe.producer")

PACED_BLOCK_BYTES: Final = 256 << 10
"""A paced replay's CSV read block (at --speed max: the reader's own, 4 MiB)."""

LIVE_EVERY: Final = 0.5
"""Seconds between two updates of the producer's metrics while it sends (at most)."""
PROGRESS_EVERY: Final = 1.0
"""Seconds between two progress records (at least; none while nothing changes)."""
SLICE_BARS: Final = 8192
"""Bars sent between two looks at the clock: the metrics are updated per slice, never
per bar (at ~250k bars/s a slice takes ~30 ms)."""
ABORTED_RETRIES: Final = 5
"""Aborted transactions (a broker away for longer than the delivery timeout) the
producer goes on from, from what is committed, before it exits for a restart."""
TRANSACTION_TIMEOUT_MS: Final = 60_000
"""librdkafka's default ``transaction.timeout.ms`` (a longer delivery timeout raises it)."""
CHECK_BLOCK_BYTES: Final = 1 << 16
"""Blocks read to judge a source's first rows before topics are created."""
INIT_SECONDS: Final = 60.0
"""How long to wait for the transaction coordinator (and for an earlier producer's
open transaction to be aborted) at start."""


class Fenced(RuntimeError):
    """Another producer of the same job started: this one's writes are refused."""


class TransactionAborted(RuntimeError):
    """A transaction was aborted (a delivery failed): go on from what is committed."""


_FENCED_CODES: Final = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)


def partition_for(symbol: str, partitions: int) -> int:
    """Stable partition of a symbol (crc32, identical in every process and language)."""
    return zlib.crc32(symbol.encode()) % partitions


@dataclass
class ResumePoint:
    """What is already in Kafka: last seq per bars partition, and the dead letters: the
    last dead-lettered line of one file, or how many (in the merged order) of many."""

    last_seq: dict[int, int] = field(default_factory=dict)
    last_dead_line: int = 0
    dead_letters: int | None = None
    """The producer's dead letters committed, for a source of many files (their lines
    are of several files; their order is the merge's, the same on every read)."""

    def bar_done(self, partition: int, seq: int) -> bool:
        """Whether the bar with ``seq`` bound for ``partition`` was delivered before."""
        return seq <= self.last_seq.get(partition, -1)

    def bars_done(
        self, partition: npt.NDArray[np.int64], seq: npt.NDArray[np.int64], partitions: int
    ) -> npt.NDArray[np.bool_]:
        """:meth:`bar_done` of many bars at once (``partitions``: the topic's count)."""
        last = np.array([self.last_seq.get(p, -1) for p in range(partitions)], np.int64)
        return seq <= last[partition]

    def dead_letter_done(self, line: int, ordinal: int) -> bool:
        """Whether the row set aside at ``line`` of its file, the ``ordinal``-th (from 1)
        set aside in the read, was dead-lettered before."""
        if self.dead_letters is not None:
            return ordinal <= self.dead_letters
        return line <= self.last_dead_line

    @property
    def empty(self) -> bool:
        """Nothing was produced before."""
        return not self.last_seq and self.last_dead_line == 0 and not self.dead_letters


def find_resume_point(
    settings: KafkaSettings, bars_topic: str, dead_topic: str, group: str, *, merged: bool = False
) -> ResumePoint:
    """Read where an earlier run of this job stopped: its last committed records.

    ``group``: the job's reader group (:attr:`.contract.Groups.reader`; nothing is
    committed, but an authorizing broker checks it). ``merged``: the source is many
    files: count the producer's dead letters (the whole dead-letter topic is read)."""
    consumer = reader(settings.common(), group)
    try:
        point = ResumePoint()
        for partition, msg in last_records(consumer, bars_topic).items():
            point.last_seq[partition] = codec.decode_record(msg.value() or b"").seq
        if merged:
            point.dead_letters = sum(
                1 for d in iter_dead_letters(settings, dead_topic, group) if "line" in d
            )
            return point
        for msg in last_records(consumer, dead_topic).values():
            line = orjson.loads(msg.value() or b"{}").get("line")
            if line is None:
                # The processor's or the loader's dead letter came last (see
                # deadletters): the producer's own last line is further back.
                line = max(
                    (
                        d["line"]
                        for d in iter_dead_letters(settings, dead_topic, group)
                        if "line" in d
                    ),
                    default=0,
                )
            point.last_dead_line = max(point.last_dead_line, int(line))
        return point
    finally:
        consumer.close()


def open_source(url: str) -> tuple[IO[bytes], Callable[[], float]]:
    """Open ``url`` for streaming; also return a function giving the fraction read.

    The fraction is measured on the raw (compressed) bytes, so progress works
    for gzip files too. A source that cannot be opened is a :class:`SourceError`
    saying why (see :func:`open_error`).
    """
    try:
        fs_file = fsspec.open(url, mode="rb")
        raw: IO[bytes] = fs_file.open()
        size = float(fs_file.fs.size(fs_file.path) or 0)
    except Exception as exc:  # whatever stops it: one message that says why
        raise open_error(url, exc) from exc
    compression = fsspec.utils.infer_compression(url)
    stream: IO[bytes] = raw
    if compression:
        # Buffered: zstandard's reader (.zst) has no readline(), which the parser needs.
        stream = io.BufferedReader(fsspec.compression.compr[compression](raw, mode="rb"))

    def fraction() -> float:
        try:
            return min(1.0, raw.tell() / size) if size else 0.0
        except (OSError, ValueError):
            return 0.0

    return stream, fraction


def _error_type(module: str, name: str) -> type[BaseException] | None:
    """An exception class of a library, if that library was imported at all (an
    exception of a library that never loaded cannot be at hand)."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _is(exc: BaseException, module: str, name: str) -> bool:
    kind = _error_type(module, name)
    return kind is not None and isinstance(exc, kind)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (fsspec wraps an HTTP status or a
    refused connection in a bare FileNotFoundError)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


_S3_CREDENTIALS: Final = (
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (a ReplayJob: spec.source.s3.credentials."
    "secretRef), or give the pod an IAM role"
)


def _http_status(status: int, reason: str) -> str:
    if status in (404, 410):
        hint = "the server has no file at this URL: check it"
    elif status in (401, 403):
        hint = (
            "the server wants credentials the producer does not send: use a URL that "
            "needs none (a pre-signed URL, or s3:// with credentials)"
        )
    elif status >= 500:
        hint = "the server failed: try again later"
    else:
        hint = "check the URL"
    return f"HTTP {status} {reason}: {hint}"


def _connect_error(exc: BaseException) -> str:
    host, port = getattr(exc, "host", "?"), getattr(exc, "port", "?")
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, socket.gaierror):
        reason = f"the host name does not resolve ({os_error.strerror})"
    elif isinstance(os_error, OSError) and os_error.errno:
        reason = os.strerror(os_error.errno).lower()
    else:
        reason = one_line(os_error or exc)
    return (
        f"cannot connect to {host}:{port}: {reason}: check the URL, and that the server "
        "runs and is reachable from here"
    )


def _library_error(exc: BaseException) -> str | None:  # noqa: PLR0911 - one case per kind
    """What an error of the HTTP or S3 client says, in words; None for other errors."""
    if _is(exc, "botocore.exceptions", "NoCredentialsError"):
        return (
            "no AWS credentials: none in the environment, a profile, a web identity "
            f"token or an instance role; set {_S3_CREDENTIALS}"
        )
    if _is(exc, "botocore.exceptions", "PartialCredentialsError"):
        missing = getattr(exc, "kwargs", {}).get("cred_var", "a variable")
        provider = getattr(exc, "kwargs", {}).get("provider", "?")
        where = "the environment" if provider == "env" else provider
        return (
            f"incomplete AWS credentials: {missing} is missing (the rest is in {where}); "
            f"set {_S3_CREDENTIALS}"
        )
    if _is(exc, "botocore.exceptions", "ClientError"):
        error = getattr(exc, "response", {}).get("Error", {})
        code, message = str(error.get("Code", "?")), str(error.get("Message", ""))
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
            return f"no such S3 object ({code} {message}): check the bucket and the key"
        return (
            f"S3 refused the request ({code} {message}): check {_S3_CREDENTIALS}, and the "
            "bucket's policy"
        )
    if _is(exc, "botocore.exceptions", "EndpointConnectionError"):
        return f"{one_line(exc)}: check AWS_ENDPOINT_URL and that the endpoint is reachable"
    if _is(exc, "aiohttp", "ClientResponseError"):
        return _http_status(int(getattr(exc, "status", 0)), str(getattr(exc, "message", "")))
    if _is(exc, "aiohttp", "ClientConnectorError"):
        return _connect_error(exc)
    if _is(exc, "aiohttp", "ServerTimeoutError") or isinstance(exc, TimeoutError):
        return f"no answer in time ({one_line(exc) or 'timeout'}): try again later"
    return None


def _other_error(url: str, exc: BaseException) -> str:  # noqa: PLR0911 - one case per kind
    if isinstance(exc, IsADirectoryError):
        return "is a directory: name a file"
    if isinstance(exc, FileNotFoundError):
        if "://" in url and not url.startswith("file://"):
            return f"no such file: check the URL ({one_line(exc)})"
        return "no such file: check the path (in a pod: below the source volume's mount path)"
    if isinstance(exc, PermissionError):
        return "permission denied: the producer may not read it"
    if isinstance(exc, ImportError):
        return f"this kind of URL needs a package that is not installed ({exc.name})"
    if isinstance(exc, ValueError) and "protocol" in str(exc).lower():
        return f"{one_line(exc)}: give a path, or a file://, s3://, http:// or https:// URL"
    return f"cannot open it: {type(exc).__name__}: {one_line(exc)}"


def open_error(url: str, exc: BaseException) -> SourceError:
    """The :class:`SourceError` for ``url`` that could not be opened: the HTTP status,
    the refused connection, the missing S3 credential, the missing file..."""
    for cause in _causes(exc):
        if isinstance(cause, SourceError):
            return cause
        said = _library_error(cause)
        if said is not None:
            return SourceError(f"{url}: {said}")
    return SourceError(f"{url}: {_other_error(url, exc)}")


def count_rows(url: str) -> int:
    """Data rows in the file (lines minus the header, blank lines excluded): for ETA.

    Reads the whole file: a stream that fails (a truncated archive...) is a
    :class:`SourceError` naming the line it got to. Parquet and Arrow IPC files say
    their rows in their metadata (an IPC stream is read through).
    """
    stream, _ = open_source(url)
    lines, last = 0, b"\n"
    with stream:
        found = arrowformat.source_format(url, arrowformat.peek(stream))
        if found != "csv":
            try:
                return arrowformat.count_rows(stream, found)
            except Exception as exc:  # whatever stops the stream: one message
                raise read_error(url, 1, exc) from exc
        try:
            text, _encoding = utf8_stream(stream)
            # Small reads: a stream that fails loses the read in progress, and the
            # line reported is the first one not read.
            for block in iter(lambda: text.read(1 << 16), b""):
                HEARTBEAT.beat()  # a source that stops sending stops the beats
                lines += block.count(b"\n") - block.count(b"\n\n")
                last = block[-1:]
        except Exception as exc:  # whatever stops the stream: one message
            raise read_error(url, lines + 1, exc) from exc
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
            + (f"ETA {eta:,.0f} s" if math.isfinite(eta) else "ETA unknown"),
            file=sys.stderr,
            flush=True,
        )


@dataclass
class _LiveState:
    """What the producer's metrics and progress record said last, per run."""

    progress: bool = False
    """The progress topic exists (else no records are written)."""
    rows_total: int = 0
    rejected: int = 0
    """Source rows set aside so far, this run's and those already in the topic."""
    bytes: int = 0
    counted: int = 0
    """Bars counted in ``hftpipe_records_out`` so far."""
    bytes_counted: int = 0
    at: float = 0.0
    """``time.monotonic()`` of the last metrics update."""
    record_at: float = float("-inf")
    """``time.monotonic()`` of the last progress record."""
    recorded: ProducerProgress | None = None
    """The last progress record, without its time."""
    printer: _Progress | None = None
    reading: Reading | None = None
    """How the source is read (for the progress record); None before it is opened."""
    summary: SourceSummary | None = None
    """What came of the source's rows so far (its first and last event time)."""


def _add(
    report: ReplayReport, live: _LiveState, sent: int, skipped: int, size: int, *, rows: bool
) -> None:
    """Count records sent and skipped; ``rows``: each is a row of the source (not a bar
    built from many, whose trades are counted as they are read)."""
    report.produced += sent
    report.skipped_already_in_kafka += skipped
    if rows:
        report.rows_read += sent + skipped
    live.bytes += size


def progress_record(
    report: ReplayReport,
    *,
    rows_total: int,
    rejected: int,
    done: bool = False,
    reading: Reading | None = None,
    summary: SourceSummary | None = None,
) -> ProducerProgress:
    """The progress record for a run's report so far (pure but for the clock): the row
    counts, and how the source is read and the span of its event times when known."""
    facts: dict[str, str] = {}
    if reading is not None:
        # (The layout names the kind of record, trades or bars: no field of its own.)
        facts.update(
            format=reading.format,
            layout=reading.layout,
            time=reading.time,
            time_zone=reading.time_zone,
        )
    if summary is not None and summary.first_ns is not None and summary.last_ns is not None:
        facts.update(
            first_event=format_utc(summary.first_ns), last_event=format_utc(summary.last_ns)
        )
    return ProducerProgress(
        rows_total=rows_total,
        rows_read=report.rows_read,
        produced=report.produced + report.skipped_already_in_kafka,
        dead_lettered=rejected,
        out_of_range=report.out_of_range,
        done=done,
        updated_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        **facts,
    )


class Replay:
    """One replay of a file, or of many merged by event time (:mod:`.multifile`), into a
    job's topics."""

    def __init__(
        self,
        *,
        job: str,
        source: str | Sequence[str],
        bars_topic: str,
        dead_topic: str,
        kafka: KafkaSettings,
        progress_topic: str | None = None,
        pacing: Pacing,
        symbol: str | None = None,
        symbol_from_filename: str | None = None,
        mapping: ColumnMapping | None = None,
        layout: LayoutName | Literal["auto"] = "auto",
        delimiter: str | None = None,
        columns: list[str] | None = None,
        time_format: str | None = None,
        timezone: str | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        partitions: int = 3,
        replication: int | None = None,
        create_topics: bool = True,
        count_source_rows: bool = True,
        progress: bool = True,
        dead_letter_excerpt: int = 200,
        job_id: str | None = None,
        transaction_seconds: float | None = None,
        bar_interval_ns: int | None = None,
        engine: EngineChoice = "auto",
    ) -> None:
        self.job = job
        self.sources = [source] if isinstance(source, str) else list(source)
        self.source = ", ".join(self.sources)
        """The source as given, for messages."""
        self.files: list[str] = []
        """The source's files, in file order (:func:`~.multifile.expand_sources`, when
        the source is checked)."""
        self.filename_symbol = (
            FilenameSymbol(symbol_from_filename) if symbol_from_filename else None
        )
        # The job id (namespace-qualified under the operator) names the transactional id
        # and the reader group; metric labels keep the plain name.
        self.transactional_id = transactional_id(job_id or job)
        self.reader_group = Groups.for_job(job_id or job).reader
        # Unset: the Kafka settings' (their profile's, or HFTPIPE_KAFKA_TRANSACTION_MS).
        self.transaction_seconds = (
            kafka.transaction_seconds() if transaction_seconds is None else transaction_seconds
        )
        self.dead_letter_excerpt = dead_letter_excerpt
        declare_series("producer", job, REJECT_KINDS)
        self.bars_topic, self.dead_topic = bars_topic, dead_topic
        self.kafka, self.pacing = kafka, pacing
        self.symbol, self.mapping, self.start_ns, self.end_ns = symbol, mapping, start_ns, end_ns
        self.layout: LayoutName | Literal["auto"] = layout
        self.delimiter, self.columns = delimiter, columns
        self.time_format, self.timezone = time_format, timezone
        self.partitions, self.replication = partitions, replication
        self.create_topics, self.count_source_rows, self.show_progress = (
            create_topics,
            count_source_rows,
            progress,
        )
        self.progress_topic = progress_topic or Topics.for_job(job).progress
        self._failed: list[str] = []
        self._fatal: KafkaError | None = None
        self._txn_since: float | None = None
        """``time.monotonic()`` when the open transaction began; None: none is open."""
        self._live_state = _LiveState()
        self.bar_interval_ns = bar_interval_ns
        """Build bars of this interval from a source of trades (``--bars``); None: off."""
        self.compiled = compiled_chosen(engine)
        """Encode by the compiled core, a slice of bars per call (when not paced)."""

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed.append(str(err))
            ERRORS.labels("producer", self.job, "delivery").inc()

    def _on_error(self, err: KafkaError) -> None:
        # Fatal errors (being fenced above all) surface here first; the call that
        # fails next only says "fatal".
        if err.fatal():
            self._fatal = err
        else:
            log.debug("kafka: %s", err)

    def _on_progress_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        # Progress is information only: a lost record never fails the replay.
        if err is not None:
            log.warning("progress record not delivered to %s: %s", self.progress_topic, err)
            ERRORS.labels("producer", self.job, "progress").inc()

    def _reader(self, stream: IO[bytes], url: str, **options: Any) -> BarReader:
        """The reader of the file ``url``, opened as ``stream``."""
        symbol = self.filename_symbol.symbol(url) if self.filename_symbol else self.symbol
        try:
            return open_reader(
                stream,
                source=url,
                symbol=symbol,
                mapping=self.mapping,
                layout=self.layout,
                delimiter=self.delimiter,
                columns=self.columns,
                time_format=self.time_format,
                timezone=self.timezone,
                start_ns=self.start_ns,
                end_ns=self.end_ns,
                **options,
            )
        except SourceError:
            raise
        except ValueError as exc:  # options the file cannot be read with
            raise SourceError(one_line(exc)) from exc

    def _check_source(self) -> None:
        """Open the source, read its header and its first rows: a :class:`SourceError` if
        it cannot be replayed (an :class:`~.csvformat.UnreadableSource` when the first
        rows are all set aside for one reason). Before anything is created in Kafka.
        Each file of a source of many, one after the other."""
        self.files = expand_sources(self.sources)
        if len(self.files) > 1:
            log.info("%s: %d files, merged by event time", self.source, len(self.files))
        for url in self.files:
            if self.filename_symbol is not None:
                self.filename_symbol.symbol(url)  # every name, before any file is read
        kinds: dict[str, str] = {}
        for url in self.files:
            stream, _ = open_source(url)
            with stream:
                reader = self._reader(stream, url, block_bytes=CHECK_BLOCK_BYTES)
                if self.bar_interval_ns is not None and reader.layout.kind != "trade":
                    raise SourceError(
                        f"{url}: --bars builds bars from trades, but the file holds bars "
                        f"(layout {reader.layout.name}): drop --bars (HFTPIPE_BARS; a "
                        "ReplayJob's spec.source.bars), or give a file of trades"
                    )
                reader.check_start()
            kinds.setdefault(reader.layout.kind, url)
            if len(kinds) > 1:
                raise SourceError(
                    f"{self.source}: the files hold different kinds of records "
                    f"({', '.join(f'{u} holds {k}s' for k, u in kinds.items())}): one "
                    "replay takes files of bars or files of trades, not both; replay them "
                    "as two jobs"
                )
            if reader.encoding != "UTF-8":
                log.info("%s is %s text: converted to UTF-8 as it is read", url, reader.encoding)

    def run(self) -> ReplayReport:
        """Replay the file; raises if any record could not be delivered, :class:`Fenced`
        if another producer of the job took over, and a :class:`SourceError` (before
        creating topics, if it can) for a bad source.

        Liveness watches it from the start: a source that stops sending (an HTTP or S3
        read that hangs), or a broker that takes no more records, stops the heartbeat
        (every other wait here is bounded, well below ``--stall-seconds``)."""
        HEARTBEAT.beat()
        try:
            return self._run()
        finally:
            HEARTBEAT.stop()

    def _run(self) -> ReplayReport:
        self._check_source()
        total = sum(count_rows(url) for url in self.files) if self.count_source_rows else 0
        admin = AdminClient(self.kafka.common())
        if self.create_topics:
            ensure_topics(
                admin,
                {self.bars_topic: self.partitions, self.dead_topic: 1, self.progress_topic: 1},
                self.replication,
                configs={self.progress_topic: PROGRESS_TOPIC_CONFIG},
            )
        partitions = partition_count(admin, self.bars_topic)
        if partitions == 0:
            raise RuntimeError(
                f"topic {self.bars_topic} does not exist: create it or pass --create-topics"
            )
        progress = partition_count(admin, self.progress_topic) > 0
        if not progress:
            log.warning(
                "topic %s does not exist: no progress records (the status shows no rows "
                "read until the producer is done)",
                self.progress_topic,
            )
        REPLAY_ROWS_TOTAL.labels(self.job).set(total)
        producer = Producer(
            {
                **self.kafka.producer(),
                "transactional.id": self.transactional_id,
                # A record's delivery timeout may not exceed its transaction's.
                "transaction.timeout.ms": max(
                    TRANSACTION_TIMEOUT_MS, int(self.kafka.producer().get("message.timeout.ms", 0))
                ),
                "on_delivery": self._on_delivery,
                "error_cb": self._on_error,
            }
        )
        # Fences any earlier producer of this job and aborts its open transaction, so
        # that what the resume point reads below is final.
        self._txn(producer, "start", lambda: producer.init_transactions(INIT_SECONDS))
        attempt = 0
        while True:  # until a replay returns, or one too many transactions abort
            attempt += 1
            self._live_state = _LiveState(progress=progress, rows_total=total)
            try:
                return self._replay(producer, partitions)
            except TransactionAborted as exc:
                if attempt > ABORTED_RETRIES:
                    raise KafkaException(
                        f"{exc}; {attempt} transactions aborted in a row: restart the "
                        "producer to resume from what Kafka has"
                    ) from exc
                log.warning(
                    "%s; going on from what is committed (attempt %d of %d)",
                    exc,
                    attempt + 1,
                    ABORTED_RETRIES + 1,
                )
                time.sleep(min(30.0, 2.0**attempt))

    def _open_readers(self, stack: ExitStack) -> BarReader | MergedReader:
        """The source's reader (one file's, or the merge of many), its files opened on
        ``stack``; and the progress printer, when shown."""
        readers: list[BarReader] = []
        fractions: list[Callable[[], float]] = []
        # A paced replay reads little ahead of what it sends: rows are set aside (their
        # dead letters and the metric) as the replay reaches them, not a whole block's
        # worth at its start, which a dashboard's rate() over seconds would not show.
        paced = {} if self.pacing.mode == "max" else {"block_bytes": PACED_BLOCK_BYTES}
        for url in self.files:
            stream, fraction = open_source(url)
            stack.enter_context(stream)
            readers.append(self._reader(stream, url, **paced))
            fractions.append(fraction)
        if self.show_progress:
            self._live_state.printer = _Progress(
                self._live_state.rows_total, lambda: sum(f() for f in fractions) / len(fractions)
            )
        return readers[0] if len(readers) == 1 else MergedReader(readers)

    def _replay(self, producer: Producer, partitions: int) -> ReplayReport:
        """One pass from the resume point to the end of the file."""
        live = self._live_state
        merged = len(self.files) > 1
        resume = find_resume_point(
            self.kafka, self.bars_topic, self.dead_topic, self.reader_group, merged=merged
        )
        if not resume.empty:
            log.info(
                "resuming: topic already holds bars up to seq %s per partition, dead letters %s",
                resume.last_seq,
                f"up to line {resume.last_dead_line}"
                if resume.dead_letters is None
                else f"{resume.dead_letters:,} (of the merged files)",
            )
        report = ReplayReport()
        pacer = Pacer(self.pacing)
        started = time.monotonic()
        HEARTBEAT.beat()
        with ExitStack() as stack:
            reader = self._open_readers(stack)
            # What hftpipe inspect prints: how the file is read now, what came of it at the
            # end; the progress records carry both, for the ReplayJob's status.
            live.reading = reading_of(reader)
            live.summary = summary = SourceSummary(self.source, kind=kind_of(reader))
            log.info(
                "reading %s: %s; pacing: %s; encoding: %s",
                self.source,
                "; ".join(describe_reading(reader)),
                self.pacing,
                "compiled" if self.compiled and self.pacing.mode == "max" else "python",
            )
            set_aside = 0
            builder = BarBuilder(self.bar_interval_ns) if self.bar_interval_ns else None
            trade = kind_of(reader) == "trade" and not builder
            if builder is not None:
                log.info("building %d-second bars from the trades", builder.interval_ns // 10**9)
            try:
                for chunk in reader:
                    summary.add(chunk)
                    report.out_of_range += chunk.out_of_range
                    live.rejected += len(chunk.rejected)
                    for row in chunk.rejected:
                        set_aside += 1
                        if not resume.dead_letter_done(row.line, set_aside):
                            self._dead_letter(producer, row)
                            report.dead_lettered += 1
                    report.rows_read += len(chunk.rejected) + chunk.out_of_range
                    if builder is None:
                        self._send(producer, chunk.bars, partitions, resume, pacer, started,
                                   report, trade=trade)  # fmt: skip
                    else:  # bars built from the trades: the trades are the rows read
                        report.rows_read += len(chunk.bars)
                        batch = builder.add(chunk.bars)
                        self._send(producer, batch, partitions, resume, pacer, started, report,
                                   rows=False)  # fmt: skip
                if builder is not None:  # the partial last bars
                    self._send(producer, builder.finish(), partitions, resume, pacer, started,
                               report, rows=False)  # fmt: skip
            except SourceError:
                # The source failed part way (not counted first): what was read is
                # committed, so that a rerun resumes after it.
                self._commit(producer)
                raise
            self._commit(producer)
        log.info("read %s: %s", self.source, "; ".join(summary.finish(reader.stats).lines()))
        report.seconds = time.monotonic() - started
        # Every bar is committed: only now may the progress record say done.
        self._live(producer, report, done=True)
        self._commit(producer)
        return report

    # -- transactions ---------------------------------------------------------

    def _txn(self, producer: Producer, what: str, call: Callable[[], object]) -> None:
        """A transactional call, with librdkafka's error classes made into ours: retried
        while retriable, :class:`TransactionAborted` once aborted, :class:`Fenced` if
        another producer of the job took over."""
        deadline = time.monotonic() + INIT_SECONDS
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is None:
                    raise
                self._raise_if_fenced(err)
                if err.txn_requires_abort():
                    self._abort(producer, f"{what}: {err.str()}")
                if err.retriable() and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                raise

    def _raise_if_fenced(self, err: KafkaError) -> None:
        fatal = self._fatal if err.code() == KafkaError._FATAL and self._fatal else err
        if fatal.code() in _FENCED_CODES:
            ERRORS.labels("producer", self.job, "fenced").inc()
            raise Fenced(
                f"fenced: another producer of job {self.job} (transactional id "
                f"{self.transactional_id}) started, and this one's writes are refused from "
                "now on. It stops; the other one goes on from what is committed. (Run "
                "one producer per job: the operator does.)"
            )

    def _ensure_transaction(self, producer: Producer) -> None:
        if self._txn_since is None:
            self._txn(producer, "begin", producer.begin_transaction)
            self._txn_since = time.monotonic()

    def _commit(self, producer: Producer) -> None:
        """Commit the open transaction, if any: its records become visible to consumers.

        A delivery that failed in it (reported to :meth:`_on_delivery`) aborts it instead."""
        if self._txn_since is None:
            return
        if self._failed:
            self._abort(producer, f"{len(self._failed)} record(s) not delivered")
        self._txn(producer, "commit", lambda: producer.commit_transaction(INIT_SECONDS))
        # Needed, though librdkafka documents that a record failing in the commit's flush
        # makes the commit raise: without this look, a producer fenced by a second one of
        # its job went on and exited 0 (test_producer_faults' fencing test failed in 2 runs
        # of 2), so a commit returned with failures reported during it. The abort raises
        # Fenced.
        if self._failed:  # reported while the commit flushed
            self._abort(producer, f"{len(self._failed)} record(s) not delivered")
        self._txn_since = None

    def _commit_if_due(self, producer: Producer) -> None:
        since = self._txn_since
        if since is not None and time.monotonic() - since >= self.transaction_seconds:
            self._commit(producer)

    def _abort(self, producer: Producer, why: str) -> None:
        """Abort the open transaction (none of its records will be seen) and raise
        :class:`TransactionAborted` to go on from what is committed."""
        failed, self._failed = self._failed, []
        self._txn_since = None
        deadline = time.monotonic() + INIT_SECONDS
        while True:
            try:
                producer.abort_transaction(INIT_SECONDS)
                break
            except KafkaException as exc:
                err = exc.args[0]
                self._raise_if_fenced(err)
                if not err.retriable() or time.monotonic() > deadline:
                    raise KafkaException(
                        f"transaction not aborted ({err.str()}) after: {why}; restart the "
                        "producer to resume from what Kafka has"
                    ) from exc
                time.sleep(0.5)
        ERRORS.labels("producer", self.job, "aborted").inc()
        raise TransactionAborted(f"transaction aborted: {why} {failed[:3]}")

    def _live(self, producer: Producer, report: ReplayReport, *, done: bool = False) -> None:
        """Bring the metrics up to ``report`` and, once a second (and when ``done``),
        write a progress record. Called per slice of bars, never per bar."""
        live = self._live_state
        now = time.monotonic()
        live.at = now
        if report.produced > live.counted:
            RECORDS_OUT.labels("producer", self.job, self.bars_topic).inc(
                report.produced - live.counted
            )
            live.counted = report.produced
        if live.bytes > live.bytes_counted:
            BYTES_OUT.labels("producer", self.job, self.bars_topic).inc(
                live.bytes - live.bytes_counted
            )
            live.bytes_counted = live.bytes
        REPLAY_ROWS_DONE.labels(self.job).set(report.rows_read)
        if live.printer is not None:
            live.printer.tick(report.rows_read, force=done)
        if not live.progress or (not done and now - live.record_at < PROGRESS_EVERY):
            return
        record = progress_record(
            report,
            rows_total=live.rows_total,
            rejected=live.rejected,
            done=done,
            reading=live.reading,
            summary=live.summary,
        )
        if replace(record, updated_at="") == live.recorded:
            return  # nothing changed (a paced replay waiting): no record
        self._ensure_transaction(producer)
        try:
            producer.produce(
                self.progress_topic,
                value=record.encode(),
                key=ProducerProgress.KEY,
                partition=0,
                on_delivery=self._on_progress_delivery,
            )
        except BufferError:
            # The local queue is full of bars: the next record will say it. (The last
            # one, ``done``, comes after flush(), so there is room for it.)
            return
        live.record_at, live.recorded = now, replace(record, updated_at="")

    def _dead_letter(self, producer: Producer, row: RejectedRow) -> None:
        DEAD_LETTERS.labels(self.job, row.kind).inc()
        limit = self.dead_letter_excerpt
        payload = orjson.dumps(
            {
                "source": row.source,
                "line": row.line,
                "kind": row.kind,
                # The reason quotes the offending fields: bounded like the line itself.
                "reason": excerpt(row.reason, max(limit, REASON_MIN_CHARS)),
                "text": excerpt(row.text, limit),
            }
        )
        self._produce(producer, self.dead_topic, None, payload, 0)

    def _produce(
        self, producer: Producer, topic: str, key: bytes | None, value: bytes, partition: int
    ) -> None:
        if self._txn_since is None:
            self._ensure_transaction(producer)
        produce_when_room(producer, topic, value, key=key, partition=partition)

    def _send(
        self,
        producer: Producer,
        batch: BarBatch,
        partitions: int,
        resume: ResumePoint,
        pacer: Pacer,
        started: float,
        report: ReplayReport,
        *,
        trade: bool = False,
        rows: bool = True,
    ) -> None:
        """Send a batch's bars (skipping those already in Kafka), adding them to ``report``.
        ``trade``: the records are trades, read as bars of one price and written as trades
        (:func:`~.codec.encode_trade_row`); ``rows``: each record is a row of the source
        (False for bars built from trades).

        In slices of :data:`SLICE_BARS`, with the metrics brought up to date after
        each slice and, when pacing makes it wait, before a wait (no per-bar cost).
        Unpaced with the compiled core: :meth:`_send_columns`; else bar by bar (the
        reference).
        """
        paced = self.pacing.mode != "max"
        if self.compiled and not paced:
            self._send_columns(producer, batch, partitions, resume, report, trade=trade, rows=rows)
            return
        encode = codec.encode_trade_row if trade else codec.encode_bar
        cache: dict[str, tuple[bytes, int]] = {}
        bars = batch.bars()
        live = self._live_state
        if not len(batch):  # a block of rejected or out-of-range rows only
            self._live(producer, report)
        for _ in range(0, len(batch), SLICE_BARS):
            HEARTBEAT.beat()
            sent = skipped = size = 0
            for bar in islice(bars, SLICE_BARS):
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
                        if time.monotonic() - live.at >= LIVE_EVERY:
                            _add(report, live, sent, skipped, size, rows=rows)
                            sent = skipped = size = 0
                            self._live(producer, report)
                        # Bars sent are visible once committed: never hold them over
                        # a long wait (a paced replay may wait minutes between bars).
                        if wait > self.transaction_seconds:
                            self._commit(producer)
                        else:
                            self._commit_if_due(producer)
                        _sleep(wait)
                value = encode(bar)
                self._produce(producer, self.bars_topic, key, value, partition)
                sent += 1
                size += len(value)
            producer.poll(0)
            _add(report, live, sent, skipped, size, rows=rows)
            self._live(producer, report)
            if self._failed:  # a delivery failed: nothing more goes into this transaction
                self._commit(producer)
            self._commit_if_due(producer)

    def _send_columns(
        self,
        producer: Producer,
        batch: BarBatch,
        partitions: int,
        resume: ResumePoint,
        report: ReplayReport,
        *,
        trade: bool,
        rows: bool,
    ) -> None:
        """:meth:`_send` unpaced, on the columns: the same records, keys, partitions and
        order, the same counts per slice, but per slice one mask of the bars already in
        Kafka, one call of the compiled core for the values (:func:`~.codec.encode_records`)
        and a tight loop of ``produce``. (The per-bar Python of the reference, a Bar, its
        key and partition, the resume check and orjson, was over half the producer's time.)
        """
        live = self._live_state
        n = len(batch)
        if not n:  # a block of rejected or out-of-range rows only
            self._live(producer, report)
            return
        keys, parts = _routes(batch.symbol, partitions)
        done = resume.bars_done(parts, batch.seq, partitions)
        resuming = bool(done.any())
        topic, produce = self.bars_topic, producer.produce
        for lo in range(0, n, SLICE_BARS):
            HEARTBEAT.beat()
            hi = min(lo + SLICE_BARS, n)
            index = np.arange(lo, hi)
            if resuming:
                index = index[~done[lo:hi]]
            skipped = hi - lo - len(index)
            values = codec.encode_records(batch.take(index), trade=trade)
            if values:
                self._ensure_transaction(producer)
            for value, key, partition in zip(
                values, keys[index].tolist(), parts[index].tolist(), strict=True
            ):
                try:
                    # Positional: keywords cost ~0.6 us more per call (measured: 0.43 s
                    # against 0.25 s for 300,000), a fifth of the rest of the loop.
                    produce(topic, value, key, partition)
                except BufferError:  # the local queue is full: wait for room
                    produce_when_room(producer, topic, value, key=key, partition=partition)
            producer.poll(0)
            _add(report, live, len(values), skipped, sum(map(len, values)), rows=rows)
            self._live(producer, report)
            if self._failed:  # a delivery failed: nothing more goes into this transaction
                self._commit(producer)
            self._commit_if_due(producer)


def _routes(
    symbols: npt.NDArray[np.object_], partitions: int
) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.int64]]:
    """Each row's Kafka key (its symbol's bytes) and partition (:func:`partition_for`),
    computed once per distinct symbol."""
    codes, uniques = pd.factorize(symbols, use_na_sentinel=False)
    keys = np.array([s.encode() for s in uniques], dtype=object)
    parts = np.array([partition_for(s, partitions) for s in uniques], dtype=np.int64)
    return keys[codes], parts[codes]


def _sleep(seconds: float) -> None:
    """A pacing wait (minutes, at a slow speed), beating the heartbeat meanwhile: the loop
    is waiting on purpose, not stalled."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        HEARTBEAT.beat()
        time.sleep(min(left, 1.0))


REASON_MIN_CHARS: Final = 120
"""A dead letter's reason keeps at least this much (it says what is wrong)."""


def iter_dead_letters(
    settings: KafkaSettings, topic: str, group: str | None = None, timeout: float = 10
) -> Iterator[dict[str, Any]]:
    """Every committed dead letter of a topic (for reports, resuming and tests).

    ``group``: a group id under the job's prefix (default ``<topic>.reader``)."""
    consumer = reader(settings.common(), group or f"{topic}.reader")
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        for partition in metadata.partitions:
            low, high = watermarks(consumer, TopicPartition(topic, partition), timeout)
            if high <= low:
                continue
            for msg in read_to_end(consumer, topic, partition, low, high, timeout):
                yield orjson.loads(msg.value() or b"{}")
    finally:
        consumer.close()
