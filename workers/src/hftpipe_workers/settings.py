"""Typed settings of the workers, read from the environment (and CLI options).

One env prefix, ``HFTPIPE_``; the few variables the local stack writes
(``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``) are accepted as aliases so
``source .stack/env`` is enough to point a worker at it. Every default works
against the local stack. Secrets are ``SecretStr``: never logged, never echoed.

Connection settings (:class:`KafkaSettings`, :class:`RedisSettings`) are read
from the environment only; the options of each ``hftpipe`` command are a
settings class too (:class:`ProduceSettings`, :class:`ProcessSettings`,
:class:`LoadSettings`, :class:`DemoSettings`), from which :mod:`.cli` builds the
command's options: the command line beats the environment, which beats the
defaults here. The field docstrings are the ``--help`` texts and the README's.

This module stays light (no pandas or numpy at import) so that ``--help`` is
fast: validators that need the parsers import them when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .contract import check_job_name, check_namespace, job_id

if TYPE_CHECKING:
    from .csvformat import ColumnMapping
    from .pacing import Pacing

KafkaProfile = Literal["throughput", "latency"]

EngineChoice = Literal["auto", "compiled", "python"]
"""The compiled core or the pure-Python reference, for the processor's metrics engine and
the producer's encoding (see :func:`hftpipe_workers.metrics.compiled_chosen`)."""
LayoutChoice = Literal["auto", "kaggle-btc", "binance", "binance-kline", "generic", "trades"]
"""``auto`` or one of ``csvformat.KNOWN_LAYOUTS`` (a unit test keeps them equal; csvformat
itself imports pandas, too slow to import for ``--help``)."""

DelimiterChoice = Literal["auto", ",", ";", "tab", "pipe"]
"""``auto`` (sniffed) or one of ``csvformat.DELIMITERS``; tab and pipe by name (a ``|``
among typer's choices would read as a separator)."""


def check_filename_pattern(pattern: str) -> str:
    """A ``--symbol-from-filename`` pattern (:class:`.multifile.FilenameSymbol`): a file
    name with ``{symbol}`` once, ``*`` and ``?`` as in globs; a ValueError saying what is
    wrong otherwise. Here, not in :mod:`.multifile`, so that the operator's spec checks it
    without loading pandas."""
    if pattern.count("{symbol}") != 1:
        raise ValueError(
            f"{pattern!r}: the pattern must hold {{symbol}} once, where the file name "
            "holds the symbol, e.g. '{symbol}-1m-*.csv'"
        )
    if "/" in pattern:
        raise ValueError(f"{pattern!r}: a file name pattern, without a directory (no /)")
    return pattern


def env_names(settings: type[BaseSettings], name: str) -> tuple[str, ...]:
    """The environment variables a settings field is read from, the preferred one first."""
    field = settings.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(c for c in alias.choices if isinstance(c, str))
    if isinstance(alias, str):
        return (alias,)
    prefix = str(settings.model_config.get("env_prefix", ""))
    return ((prefix + (field.alias or name)).upper(),)


# librdkafka settings pull throughput and latency in opposite directions: larger
# batches and longer lingering/fetch waits amortise per-request costs, but every
# millisecond a record waits in a batch is a millisecond of end-to-end latency.
_PRODUCER_PROFILES: dict[str, dict[str, str | int | float | bool]] = {
    "throughput": {
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "batch.num.messages": 100_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    },
    "latency": {
        # 1 ms, not 0: at a paced 10k records/s, 0 sent a request per record, kept
        # the broker at ~80 % of a core and gave a worse p50 (~15 ms against ~5 ms).
        "linger.ms": 1,
        "batch.size": 65_536,
        "compression.type": "none",
    },
}
# The producer's transactions: a read_committed consumer sees a bar once its
# transaction commits, so the interval is latency (see KafkaSettings.transaction_ms).
_TRANSACTION_MS: dict[str, int] = {"throughput": 100, "latency": 10}
# Consumers: librdkafka prefetches into a local queue until it holds
# queued.min.messages per partition or queued.max.messages.kbytes in all; its
# defaults (100,000 records, 64 MB) and 200,000 records here made up most of the
# processor's ~400 MB. 50,000 records / 16 MB are still a second of work; once
# the queue is full, the next fetch waits fetch.queue.backoff.ms (default 1 s,
# long enough for the processor to drain the queue and sit idle).
# Latency: fetch.min.bytes=1 lets the broker answer a fetch the moment a record
# arrives, so a long fetch.wait.max.ms costs no latency; a 1 ms wait only made
# the broker and the client's fetch thread spin through ~1,000 empty fetches a
# second, CPU the processor then lacked on a small machine.
_BOUNDED_PREFETCH: dict[str, str | int | float | bool] = {
    "queued.min.messages": 50_000,
    "queued.max.messages.kbytes": 16_384,
    "fetch.queue.backoff.ms": 20,
}
_CONSUMER_PROFILES: dict[str, dict[str, str | int | float | bool]] = {
    "throughput": {
        "fetch.wait.max.ms": 100,
        "fetch.min.bytes": 65_536,
        **_BOUNDED_PREFETCH,
    },
    "latency": {
        "fetch.wait.max.ms": 100,
        "fetch.min.bytes": 1,
        **_BOUNDED_PREFETCH,
    },
}


class KafkaSettings(BaseSettings):
    """How to reach Kafka (``HFTPIPE_KAFKA_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="HFTPIPE_KAFKA_",
        extra="ignore",
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("HFTPIPE_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    """Comma-separated ``host:port`` list (also read from ``KAFKA_BOOTSTRAP_SERVERS``)."""

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka ``security.protocol``."""

    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism when the protocol is SASL_*: SCRAM for Strimzi ``KafkaUser``s."""

    sasl_username: str | None = None
    """SASL user name."""

    sasl_password: SecretStr | None = None
    """SASL password (from a Secret in Kubernetes)."""

    ssl_ca_location: str | None = None
    """CA bundle path for SSL listeners (Strimzi's cluster CA)."""

    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    """Consumer group session timeout: how soon a dead worker's partitions move."""

    profile: KafkaProfile = "throughput"
    """``throughput`` (batching, lz4) or ``latency`` (1 ms linger, no compression)."""
    compression: Literal["none", "lz4", "zstd", "snappy", "gzip"] | None = None
    """Producers' ``compression.type``, over the profile's. lz4 of the processor's
    ~725-byte metrics records cost ~2.5 us of CPU per bar; ``none`` ran the processor
    ~1.15x faster in a same-run A/B, for ~1.75x the bytes on the broker."""
    transaction_ms: int | None = Field(default=None, ge=1, le=60_000)
    """Longest the producer's transaction stays open while bars are sent: a consumer
    reads committed bars only, so half of it is latency added to every bar, against a
    commit round trip and a marker per partition per transaction. Unset: the profile's,
    100 ms for throughput (Kafka Streams' exactly-once default), 10 ms for latency
    (at 10,000 bars/s: event -> Redis p50 13-27 ms against 76-108 ms with 100 ms)."""
    delivery_timeout_ms: int | None = Field(default=None, ge=1_000)
    """How long a record may wait for the broker before its delivery fails (librdkafka's
    ``message.timeout.ms``); unset: 60 s for the producer (its transaction timeout), 5
    minutes for the processor's metrics. A failed delivery stops nothing silently: the
    producer aborts and resends, the processor exits before Redis moves."""

    def common(self) -> dict[str, str | int | float | bool]:
        """librdkafka settings shared by producers, consumers and admin clients."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        return config

    def transaction_seconds(self) -> float:
        """The producer's longest open transaction (see ``transaction_ms``), in seconds."""
        if self.transaction_ms is not None:
            return self.transaction_ms / 1000
        return _TRANSACTION_MS[self.profile] / 1000

    def producer(self) -> dict[str, str | int | float | bool]:
        """Idempotent producer (no duplicates or reordering on retries), acks from all ISRs."""
        config: dict[str, str | int | float | bool] = {
            **self.common(),
            "enable.idempotence": True,
            "acks": "all",
            **_PRODUCER_PROFILES[self.profile],
        }
        if self.compression is not None:
            config["compression.type"] = self.compression
        if self.delivery_timeout_ms is not None:
            config["message.timeout.ms"] = self.delivery_timeout_ms
        return config

    def consumer(self, group: str) -> dict[str, str | int | float | bool]:
        """Consumer in ``group`` that never auto-commits: workers commit where they write."""
        return {
            **self.common(),
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            # The producer writes in transactions: a partition's last offsets are
            # commit markers, which no consumer is given. The end-of-partition event
            # says where the partition ends, so that a worker can move its offset past
            # them (else its lag would never reach 0, nor a job Complete).
            "enable.partition.eof": True,
            "partition.assignment.strategy": "cooperative-sticky",
            # A crashed pod's partitions move after this long (the broker's minimum
            # is 6 s); the default 45 s would stall a restarted job for that long.
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(1000, self.session_timeout_ms // 3),
            **_CONSUMER_PROFILES[self.profile],
        }


class RedisSettings(BaseSettings):
    """How to reach Redis and how much history to keep (``HFTPIPE_REDIS_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="HFTPIPE_REDIS_",
        extra="ignore",
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("HFTPIPE_REDIS_URL", "REDIS_URL"),
    )
    """``redis://[user:password@]host:port/db`` or ``rediss://`` for TLS (also ``REDIS_URL``)."""

    username: str | None = None
    """ACL user name, if not in the URL."""

    password: SecretStr | None = None
    """Password, if not in the URL (from a Secret in Kubernetes)."""

    tls_ca_file: str | None = None
    """CA bundle for ``rediss://`` URLs."""

    history_limit: int = Field(default=100_000, ge=0)
    """Bars of per-symbol history kept in Redis (older ones are trimmed); 0 keeps none."""

    socket_timeout: float = Field(default=30.0, gt=0)
    """Seconds a Redis call may take before it fails (the worker exits and restarts)
    rather than hang: a Redis that stops answering never stalls a processor for ever."""


class JobSettings(BaseSettings):
    """Which replay job a worker belongs to (``HFTPIPE_JOB``)."""

    model_config = SettingsConfigDict(
        env_prefix="HFTPIPE_", extra="ignore", use_attribute_docstrings=True
    )

    job: str = "demo"
    """Job name: names the topics, consumer groups and Redis keys (a DNS label)."""

    namespace: str | None = None
    """Namespace of the ReplayJob (the operator sets it): the job's topics, consumer
    groups, Redis keys and warehouse rows are then named by `<namespace>.<job>`."""

    @field_validator("job")
    @classmethod
    def _valid_job(cls, value: str) -> str:
        return check_job_name(value)

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, value: str | None) -> str | None:
        return None if value is None else check_namespace(value)

    @property
    def job_id(self) -> str:
        """What the job's topics, consumer groups, Redis keys and warehouse rows carry."""
        return job_id(self.job, self.namespace)


# ------------------------------------------------------------------ command options


MetricsPort = Annotated[
    int,
    Field(
        ge=-1,
        le=65_535,
        description="Port of /metrics, /healthz and /readyz (0 picks a free port; -1 serves none).",
    ),
]


class WorkerSettings(JobSettings):
    """Options every worker command has (``HFTPIPE_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="HFTPIPE_",
        extra="ignore",
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    profile: KafkaProfile = Field(
        default="throughput", validation_alias=AliasChoices("HFTPIPE_KAFKA_PROFILE")
    )
    """Kafka client tuning: throughput (batching, lz4) or latency (1 ms linger, no
    compression, small batches)."""

    log_json: bool = False
    """Structured JSON logs (for log shippers) instead of plain text."""

    stall_seconds: float = Field(default=120.0, gt=0)
    """/healthz fails when the processor's or loader's main loop has not come round for
    this long (a call that hangs): the kubelet then restarts the pod."""


class ProduceSettings(WorkerSettings):
    """Options of ``hftpipe produce``."""

    # NoDecode: the variable holds one source as it is (a path may hold spaces), not JSON.
    source: Annotated[list[str], NoDecode] = Field(min_length=1)
    """CSV, Parquet or Arrow IPC (Feather v2) file: a path, file://, s3:// or https://
    URL; .gz, .bz2, .xz, .zst are decompressed; Parquet and Arrow are told by their first
    bytes (or a .parquet, .pq, .arrow, .feather, .ipc suffix). Or many files, replayed as
    one stream merged by event time (ties: symbol, then file order): a directory, a glob
    (s3://bucket/2024/*.csv.gz), or several sources on the command line."""

    speed: str | None = None
    """Pace on event time: 60x is sixty times real time, max is as fast as possible
    (the default unless a rate is given)."""

    rate: float | None = Field(default=None, gt=0)
    """Pace at a fixed number of bars per second instead of a speed."""

    symbol: str | None = Field(default=None, min_length=1)
    """Symbol of every bar, for files without a symbol column."""

    symbol_from_filename: str | None = Field(default=None, min_length=1)
    """Take each file's symbol from its name, for files without a symbol column: a
    pattern of the file name with {symbol} where the symbol is, * and ? as in globs, e.g.
    '{symbol}-1m-*.csv' reads BTCUSDT off BTCUSDT-1m-2024-01.csv."""

    start: str | None = None
    """First bar time to replay (inclusive), ISO-8601; UTC if it has no offset."""

    end: str | None = None
    """Bar time to stop at (exclusive), ISO-8601; after the start."""

    mapping: str | None = None
    """Column mapping for other layouts, e.g.
    time=ts:unix_ms,open=o,high=h,low=l,close=c,volume=v,symbol=sym; the time format is
    unix (the unit from the magnitude), unix_s, unix_ms, unix_us, unix_ns, iso or a
    strftime pattern (time=Time:%d.%m.%Y %H:%M:%S.%f), of one column or two
    (time=Date+Time:%Y.%m.%d %H:%M). A file of trades maps price and size instead:
    time=ts:unix_ms,price=p,size=q[,side=s][,symbol=sym]."""

    layout: LayoutChoice = "auto"
    """Layout the file must have; auto recognises it from the header (a file that
    several layouts match, e.g. a generic one with kaggle-btc's column names, is read
    the named way); trades: time, price, size[, side][, symbol], one trade per row."""

    delimiter: DelimiterChoice = "auto"
    """Field delimiter of CSV text: comma, semicolon, tab or pipe (|); auto sniffs it from
    the first lines."""

    columns: str | None = Field(default=None, min_length=1)
    """Column names of a CSV file without a header, comma-separated (line 1 is then a
    row), e.g. time,open,high,low,close,volume. Binance's kline dumps need none."""

    time_format: str | None = Field(default=None, min_length=1)
    """Format of the time column, instead of the one recognised: unix (the unit from
    the magnitude), unix_s, unix_ms, unix_us, unix_ns, iso, or a strftime pattern such as
    %d.%m.%Y %H:%M:%S.%f. With a mapping, give it in the mapping's time entry."""

    timezone: str | None = Field(default=None, min_length=1)
    """IANA time zone of times without an offset, e.g. America/New_York (daylight saving
    from the zone database); unset: UTC. Unix times are UTC regardless."""

    bars: str | None = Field(default=None, min_length=1)
    """For a file of trades: build OHLCV bars of this interval (1m, 5m, 1h, 1d...) and
    replay them instead of the trades; each bar's time is the start of its interval, the
    partial last bars are sent at the end of the file. Unset: trades are replayed as
    trades."""

    engine: EngineChoice = "auto"
    """Message encoding: ``compiled`` (the hftpipe-core package, Rust: a slice of bars
    per call, when not paced), ``python`` (the pure-Python reference: the same bytes,
    slower), or ``auto``: compiled when installed."""

    partitions: int = Field(default=3, ge=1)
    """Partitions of the bars topic, if it is created."""

    replication: int | None = Field(default=None, ge=1)
    """Replication factor of the job's topics, if they are created; unset: 3, or every
    broker if the cluster has fewer (with min.insync.replicas 2 where there are 2+)."""

    create_topics: bool = True
    """Create the bars and dead-letter topics if missing."""

    dead_letter_excerpt: int = Field(default=200, ge=0, le=1_000_000)
    """Characters of a rejected line kept in its dead letter (the rest is cut, and
    counted); 0 keeps none of it."""

    metrics_port: MetricsPort = 9100

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("symbol_from_filename")
    @classmethod
    def _valid_filename_pattern(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("symbol") is not None:
            raise ValueError(
                f"give a symbol ({info.data['symbol']!r}) or a pattern to read it from the "
                "file names, not both"
            )
        return check_filename_pattern(value)

    @field_validator("speed")
    @classmethod
    def _valid_speed(cls, value: str | None) -> str | None:
        from .pacing import Pacing  # noqa: PLC0415 - pandas; not at import

        if value is not None:
            Pacing.parse(value, None)  # a ValueError is pydantic's validation error
        return value

    @field_validator("rate")
    @classmethod
    def _rate_or_speed(cls, value: float | None, info: ValidationInfo) -> float | None:
        speed = info.data.get("speed")
        if value is not None and speed is not None:
            raise ValueError(f"give either a speed or a rate, not both (speed is {speed!r})")
        return value

    @field_validator("start", "end")
    @classmethod
    def _valid_time(cls, value: str | None, info: ValidationInfo) -> str | None:
        from .bars import parse_utc  # noqa: PLC0415 - pandas; not at import

        if value is None:
            return None
        ts_ns = parse_utc(value)
        start = info.data.get("start")
        if info.field_name == "end" and start is not None and parse_utc(start) >= ts_ns:
            raise ValueError(f"the end {value!r} is not after the start {start!r}")
        return value

    @field_validator("mapping")
    @classmethod
    def _valid_mapping(cls, value: str | None) -> str | None:
        from .csvformat import ColumnMapping  # noqa: PLC0415 - pandas; not at import

        if value is not None:
            ColumnMapping.parse(value)
        return value

    @field_validator("layout")
    @classmethod
    def _layout_or_mapping(cls, value: LayoutChoice, info: ValidationInfo) -> LayoutChoice:
        if value != "auto" and info.data.get("mapping") is not None:
            raise ValueError(f"give a column mapping or a layout ({value}), not both")
        return value

    @field_validator("columns")
    @classmethod
    def _valid_columns(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = [c.strip() for c in value.split(",")]
        if not all(names):
            raise ValueError(f"an empty column name in {value!r}: e.g. time,open,high,...")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"columns {repeated} are named twice in {value!r}")
        return value

    @field_validator("time_format")
    @classmethod
    def _valid_time_format(cls, value: str | None, info: ValidationInfo) -> str | None:
        from .csvformat import check_time_format  # noqa: PLC0415 - pandas; not at import

        if value is None:
            return None
        if info.data.get("mapping") is not None:
            raise ValueError(
                "give the time format in the mapping's time entry (time=COLUMN:FORMAT) or "
                "as a time format, not both"
            )
        return check_time_format(value)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str | None) -> str | None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown time zone {value!r}: give an IANA name such as "
                    "America/New_York, Europe/London or UTC"
                ) from None
        return value

    @field_validator("bars")
    @classmethod
    def _valid_bars(cls, value: str | None) -> str | None:
        from .tradebars import parse_interval  # noqa: PLC0415 - pandas; not at import

        if value is not None:
            parse_interval(value)
        return value

    @property
    def bar_interval_ns(self) -> int | None:
        """:attr:`bars` in nanoseconds (None: trades are replayed as trades)."""
        from .tradebars import parse_interval  # noqa: PLC0415

        return parse_interval(self.bars) if self.bars else None

    @property
    def reader_options(self) -> dict[str, Any]:
        """How the source is read, as the readers take it (``arrowformat.open_reader``)."""
        return {
            "symbol": self.symbol,
            "mapping": self.column_mapping,
            "layout": self.layout,
            "delimiter": self.delimiter_char,
            "columns": self.column_list,
            "time_format": self.time_format,
            "timezone": self.timezone,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
        }

    @property
    def delimiter_char(self) -> str | None:
        """:attr:`delimiter` as the character (None: sniff it)."""
        names = {"auto": None, "tab": "\t", "pipe": "|"}
        return names.get(self.delimiter, self.delimiter)

    @property
    def column_list(self) -> list[str] | None:
        """:attr:`columns` as a list."""
        return [c.strip() for c in self.columns.split(",")] if self.columns else None

    @property
    def pacing(self) -> Pacing:
        """The parsed :attr:`speed` or :attr:`rate` (neither: max speed)."""
        from .pacing import Pacing  # noqa: PLC0415

        return Pacing.parse(self.speed, self.rate)

    @property
    def column_mapping(self) -> ColumnMapping | None:
        """The parsed :attr:`mapping`."""
        from .csvformat import ColumnMapping  # noqa: PLC0415

        return ColumnMapping.parse(self.mapping) if self.mapping else None

    @property
    def start_ns(self) -> int | None:
        """:attr:`start` in nanoseconds since the epoch."""
        from .bars import parse_utc  # noqa: PLC0415

        return parse_utc(self.start) if self.start else None

    @property
    def end_ns(self) -> int | None:
        """:attr:`end` in nanoseconds since the epoch."""
        from .bars import parse_utc  # noqa: PLC0415

        return parse_utc(self.end) if self.end else None


class ProcessSettings(WorkerSettings):
    """Options of ``hftpipe process``."""

    windows: str = Field(default="5m,15m,1h,1d", min_length=1)
    """Rolling windows, comma-separated: a whole number of s, m, h or d each."""

    batch_max: int = Field(default=20_000, ge=1)
    """Most records per processed batch."""

    engine: EngineChoice = "auto"
    """Metrics engine: ``compiled`` (the hftpipe-core package, Rust: it also decodes the bars
    and writes the metrics messages), ``python`` (the pure-Python reference: the same
    results and bytes, slower), or ``auto``: compiled when installed."""

    until_caught_up: bool = False
    """Exit once every partition is processed to its end and idle (for batch jobs and tests)."""

    create_topics: bool = True
    """Create the metrics topic if missing."""

    partitions: int | None = Field(default=None, ge=1)
    """Partitions of the metrics topic, if it is created; unset: as many as the bars topic."""

    replication: int | None = Field(default=None, ge=1)
    """Replication factor of the metrics topic, if it is created; unset: 3, or every
    broker if the cluster has fewer."""

    metrics_port: MetricsPort = 9101

    @field_validator("windows")
    @classmethod
    def _valid_windows(cls, value: str) -> str:
        from .metrics import parse_window  # noqa: PLC0415 - numpy; not at import

        labels = [w.strip() for w in value.split(",") if w.strip()]
        if not labels:
            raise ValueError("no window given: e.g. 5m,15m,1h,1d")
        if len(set(labels)) != len(labels):
            raise ValueError(f"windows are repeated in {value!r}")
        for label in labels:
            parse_window(label)
        return value

    @property
    def window_list(self) -> list[str]:
        """:attr:`windows` as a list."""
        return [w.strip() for w in self.windows.split(",") if w.strip()]


class LoadSettings(WorkerSettings):
    """Options of ``hftpipe load``."""

    warehouse: str = "duckdb:///hftpipe.duckdb"
    """duckdb:///path/file.duckdb, or snowflake:// (connection from HFTPIPE_SNOWFLAKE_*)."""

    batch_max: int = Field(
        default=50_000, ge=1, validation_alias=AliasChoices("HFTPIPE_LOAD_BATCH_MAX")
    )
    """Most rows per warehouse MERGE."""

    batch_seconds: float = Field(
        default=1.0, gt=0, validation_alias=AliasChoices("HFTPIPE_LOAD_BATCH_SECONDS")
    )
    """Longest wait, in seconds, to fill a batch before it is merged."""

    until_caught_up: bool = False
    """Exit once both topics are loaded to their end and idle (for batch jobs and tests)."""

    metrics_port: MetricsPort = 9102

    @field_validator("warehouse")
    @classmethod
    def _valid_warehouse(cls, value: str) -> str:
        from .warehouse import parse_target  # noqa: PLC0415 - duckdb; not at import

        parse_target(value)
        return value


class DemoSettings(BaseSettings):
    """Options of ``hftpipe demo`` (``HFTPIPE_DEMO_*``); Kafka and Redis come from the
    environment, as for every worker."""

    model_config = SettingsConfigDict(
        env_prefix="HFTPIPE_DEMO_",
        extra="ignore",
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    source: str | None = None
    """CSV to replay; unset: the BTC/USDT hourly bars shipped with hftpipe."""

    data_dir: Path = Path(".stack")
    """Where the demo's DuckDB file (demo.duckdb) goes."""


SOURCE_OPTIONS: Final = (
    "source",
    "symbol",
    "symbol_from_filename",
    "start",
    "end",
    "mapping",
    "layout",
    "delimiter",
    "columns",
    "time_format",
    "timezone",
)
"""The options of :class:`ProduceSettings` that say how the source is read: ``hftpipe
inspect`` takes exactly these (from the same variables)."""

COMMAND_SETTINGS: dict[str, type[BaseSettings]] = {
    "produce": ProduceSettings,
    "process": ProcessSettings,
    "load": LoadSettings,
    "demo": DemoSettings,
}
"""The settings class of each ``hftpipe`` command."""
