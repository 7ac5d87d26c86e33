"""The ReplayJob's ``spec`` as pydantic models: the one source of the CRD's spec schema.

:mod:`.crd` renders these models (types, constraints, docstrings, defaults and
:class:`~.apimodel.Rule` objects) into the CRD's OpenAPI schema, so the API
server and :meth:`ReplayJobSpec.model_validate` accept, reject and default the
same specs. Defaults that the workers also have (partitions, windows, Redis
history, Snowflake schema, Kafka profile) are read from the workers' code, so
a ReplayJob without them behaves like ``hftpipe`` run by hand.

No field holds a secret: credentials are only ever named, by Secret and key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from annotated_types import Len
from pydantic import AfterValidator, Field, StringConstraints

from hftpipe_workers import cli
from hftpipe_workers.contract import job_id
from hftpipe_workers.settings import (
    DelimiterChoice,
    KafkaProfile,
    KafkaSettings,
    RedisSettings,
    check_filename_pattern,
)
from hftpipe_workers.snowflake_settings import SnowflakeSettings

from .apimodel import (
    ApiModel,
    Crd,
    DnsLabel,
    ObjectName,
    Quantity,
    Rule,
    SecretKey,
    Timestamp,
    parse_timestamp,
)
from .naming import check_name
from .workerapi import cli_default, settings_default

DEFAULT_WORKERS_IMAGE: Final = f"hftpipe-workers:{version('hftpipe-workers')}"
"""The workers' image built from this release (``workers/Dockerfile``)."""

WINDOW_PATTERN: Final = r"^[1-9][0-9]*[smhd]$"
SPEED_PATTERN: Final = r"^([1-9][0-9]*(\.[0-9]+)?|0\.[0-9]*[1-9][0-9]*)x$"
BOOTSTRAP_PATTERN: Final = r"^[^,\s:]+:[0-9]{1,5}(,[^,\s:]+:[0-9]{1,5})*$"
ABSOLUTE_PATH_PATTERN: Final = r"^/.*$"
RELATIVE_PATH_PATTERN: Final = r"^[A-Za-z0-9_][-A-Za-z0-9_.]*(/[A-Za-z0-9_][-A-Za-z0-9_.]*)*$"
DURATION_PATTERN: Final = r"^[1-9][0-9]*(ms|s|m|h)$"

Layout = Literal["auto", "kaggle-btc", "binance", "binance-kline", "generic", "trades"]
BAR_LAYOUTS: Final = ("kaggle-btc", "binance", "binance-kline", "generic")
"""The layouts of files of bars (``trades`` is the one of trades)."""
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
WarehouseType = Literal["duckdb", "snowflake"]

Window = Annotated[str, StringConstraints(max_length=16, pattern=WINDOW_PATTERN)]
AbsolutePath = Annotated[
    str, StringConstraints(min_length=1, max_length=1024, pattern=ABSOLUTE_PATH_PATTERN)
]


def _unique(values: list[str]) -> list[str]:
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"duplicate values {duplicates}")
    return values


def _zone_name(value: str) -> str:
    """An IANA zone the zone database knows (the API server cannot tell: pydantic does)."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r}: give an IANA name such as America/New_York"
        ) from None
    return value


NAMED_TIME_FORMATS: Final = ("unix", "unix_s", "unix_ms", "unix_us", "unix_ns", "iso")
"""The producer's named time formats (``csvformat.TIME_FORMATS``; a unit test keeps them equal)."""

ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^,]+$")]
SourceUrl = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
ListedUrl = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
"""A URL of ``source.urls``: shorter than ``source.url``, so that the rules over the list
(and the job's ``source`` immutability rule) stay within the API server's CEL budget."""


def _on_volume(url: str, mount_path: str) -> bool:
    return url.startswith(mount_path + "/") or url.startswith("file://" + mount_path + "/")


def _count(*flags: bool) -> int:
    return sum(1 for f in flags if f)


_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def window_seconds(window: str) -> int:
    """Length of a window matching :data:`WINDOW_PATTERN`, in seconds."""
    return int(window[:-1]) * _UNIT_SECONDS[window[-1]]


def _cel_window_seconds(var: str) -> str:
    """:func:`window_seconds` in CEL, for the window in variable ``var``."""
    return (
        f"int({var}.substring(0, size({var}) - 1)) * ({var}.endsWith('s') ? 1 : "
        f"{var}.endsWith('m') ? 60 : {var}.endsWith('h') ? 3600 : 86400)"
    )


# --------------------------------------------------------------------------- source


SECRETS_STORE_CSI_DRIVER: Final = "secrets-store.csi.k8s.io"


class CsiVolume(ApiModel):
    """A CSI volume (e.g. an S3 or blob-store mount); no `nodePublishSecretRef`."""

    rules = (
        Rule(
            cel=f"self.driver != '{SECRETS_STORE_CSI_DRIVER}'",
            message=(
                "source.volume.volumeSource.csi: the Secrets Store CSI driver mounts secrets, "
                "not market data"
            ),
            holds=lambda s: s.driver != SECRETS_STORE_CSI_DRIVER,
            field_path=".driver",
        ),
    )

    driver: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """Name of the CSI driver."""

    read_only: bool = True
    """Mount read-only (the producer only reads)."""

    fs_type: Annotated[str, StringConstraints(max_length=64)] | None = None
    """File system type, if the driver needs one."""

    volume_attributes: Annotated[dict[str, str], Field(max_length=64)] | None = None
    """Driver-specific attributes (bucket, share...)."""


class VolumeSource(ApiModel):
    """The kinds of volume a replay reads market data from: exactly one of them.

    Deliberately not any volume source: `hostPath`, `secret`, `projected` (service
    account tokens, Secrets) or `downwardAPI` would let whoever writes a ReplayJob read
    the node's files or a Secret through the producer (and its dead-letter topic)."""

    rules = (
        Rule(
            cel=(
                "(has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.configMap) ? 1 : 0)"
                " + (has(self.nfs) ? 1 : 0) + (has(self.csi) ? 1 : 0)"
                " + (has(self.ephemeral) ? 1 : 0) == 1"
            ),
            message=(
                "source.volume.volumeSource needs exactly one of persistentVolumeClaim, "
                "configMap, nfs, csi or ephemeral (other kinds, such as hostPath or secret, "
                "are not allowed)"
            ),
            holds=lambda s: (
                _count(
                    s.persistent_volume_claim is not None,
                    s.config_map is not None,
                    s.nfs is not None,
                    s.csi is not None,
                    s.ephemeral is not None,
                )
                == 1
            ),
        ),
    )

    persistent_volume_claim: dict[str, Any] | None = None
    """`{claimName: ...}`: a claim in the job's namespace (mounted read-only)."""

    config_map: dict[str, Any] | None = None
    """`{name: ..., items: [...]}`: a ConfigMap's keys as files (small files)."""

    nfs: dict[str, Any] | None = None
    """`{server: ..., path: ...}`: an NFS export."""

    csi: CsiVolume | None = None
    """A CSI driver's volume."""

    ephemeral: dict[str, Any] | None = None
    """`{volumeClaimTemplate: ...}`: a claim made for the pod (e.g. from a snapshot)."""


class SourceVolume(ApiModel):
    """Where a file-system source comes from: a PersistentVolumeClaim or any volume source."""

    rules = (
        Rule(
            cel="has(self.claimName) != has(self.volumeSource)",
            message="source.volume needs exactly one of claimName or volumeSource",
            holds=lambda s: (s.claim_name is None) != (s.volume_source is None),
        ),
    )

    claim_name: ObjectName | None = None
    """Name of a PersistentVolumeClaim in the job's namespace that holds the file."""

    volume_source: VolumeSource | None = None
    """A volume source instead of a claim, as in a Pod's volumes without the name, e.g.
    `{nfs: {server: nas, path: /exports/bars}}` or `{configMap: {name: bars}}`; only the
    kinds that hold data (see VolumeSource)."""


class S3SecretRef(ApiModel):
    """A Secret holding an S3 access key pair."""

    name: ObjectName
    """Name of the Secret, in the job's namespace."""

    access_key_id_key: SecretKey = "AWS_ACCESS_KEY_ID"
    """Key of the access key id."""

    secret_access_key_key: SecretKey = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a key's name
    """Key of the secret access key."""


class S3Credentials(ApiModel):
    """An S3 access key pair, by reference."""

    secret_ref: S3SecretRef
    """The Secret with the key pair."""


class S3Source(ApiModel):
    """How the producer reaches an `s3://` source beyond what its pod's identity gives.

    Left out, the AWS SDK's own chain applies (IRSA / Pod Identity, instance role)."""

    endpoint_url: (
        Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://")] | None
    ) = None
    """An S3-compatible store (MinIO, Ceph, R2...), e.g. `http://minio.storage:9000`
    (the producer's `AWS_ENDPOINT_URL`)."""

    region: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    """The bucket's region (`AWS_DEFAULT_REGION`)."""

    credentials: S3Credentials | None = None
    """An access key pair from a Secret (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`)."""


class SourceSpec(ApiModel):
    """The file to replay (CSV, Parquet or Arrow), or the files merged by event time, and
    which part of it."""

    rules = (
        Rule(
            cel="has(self.url) != has(self.urls)",
            message="set source.url (a file, a directory or a glob) or source.urls (a list), "
            "one of them",
            holds=lambda s: (s.url is None) != (s.urls is None),
            field_path=".url",
        ),
        Rule(
            cel="!has(self.symbol) || !has(self.symbolFromFilename)",
            message="set source.symbol or source.symbolFromFilename, not both",
            holds=lambda s: s.symbol is None or s.symbol_from_filename is None,
            field_path=".symbolFromFilename",
        ),
        Rule(
            cel=(
                "!has(self.symbolFromFilename) || self.symbolFromFilename.indexOf('{symbol}') "
                "== self.symbolFromFilename.lastIndexOf('{symbol}')"
            ),
            message="source.symbolFromFilename must hold {symbol} once, e.g. '{symbol}-1m-*.csv'",
            holds=lambda s: (
                s.symbol_from_filename is None or s.symbol_from_filename.count("{symbol}") == 1
            ),
            field_path=".symbolFromFilename",
        ),
        Rule(
            cel="!has(self.mapping) || self.layout == 'auto'",
            message="set source.mapping or a source.layout other than 'auto', not both",
            holds=lambda s: s.mapping is None or s.layout == "auto",
            field_path=".mapping",
        ),
        Rule(
            cel="!has(self.mapping) || !has(self.timeFormat)",
            message=(
                "set source.timeFormat or the format in source.mapping's time entry "
                "(time=COLUMN:FORMAT), not both"
            ),
            holds=lambda s: s.mapping is None or s.time_format is None,
            field_path=".timeFormat",
        ),
        Rule(
            cel=(
                "!has(self.timeFormat) || self.timeFormat in "
                f"{list(NAMED_TIME_FORMATS)} || self.timeFormat.contains('%')"
            ),
            message=(
                f"source.timeFormat must be one of {', '.join(NAMED_TIME_FORMATS)} or a strftime "
                "pattern such as %d.%m.%Y %H:%M:%S.%f"
            ),
            holds=lambda s: (
                s.time_format is None or s.time_format in NAMED_TIME_FORMATS or "%" in s.time_format
            ),
            field_path=".timeFormat",
        ),
        Rule(
            cel="!has(self.start) || !has(self.end) || timestamp(self.start) < timestamp(self.end)",
            message="source.start must be before source.end",
            holds=lambda s: (
                s.start is None
                or s.end is None
                or parse_timestamp(s.start) < parse_timestamp(s.end)
            ),
            field_path=".end",
        ),
        Rule(
            cel=(
                "!has(self.volume) || !has(self.url) || self.url.startsWith(self.mountPath + '/')"
                " || self.url.startsWith('file://' + self.mountPath + '/')"
            ),
            message="with source.volume, source.url must be under source.mountPath",
            holds=lambda s: s.volume is None or s.url is None or _on_volume(s.url, s.mount_path),
            field_path=".url",
        ),
        Rule(
            cel=(
                "!has(self.volume) || !has(self.urls) || self.urls.all(u, "
                "u.startsWith(self.mountPath + '/') || u.startsWith('file://' + self.mountPath "
                "+ '/'))"
            ),
            message="with source.volume, each of source.urls must be under source.mountPath",
            holds=lambda s: (
                s.volume is None
                or s.urls is None
                or all(_on_volume(u, s.mount_path) for u in s.urls)
            ),
            field_path=".urls",
        ),
        Rule(
            cel=f"!has(self.bars) || !(self.layout in {list(BAR_LAYOUTS)})",
            message=(
                "source.bars builds bars from trades: the layout must be auto or trades, "
                "not a layout of bars"
            ),
            holds=lambda s: s.bars is None or s.layout not in BAR_LAYOUTS,
            field_path=".bars",
        ),
        Rule(
            cel="!has(self.bars) || !has(self.mapping) || self.mapping.contains('price=')",
            message=(
                "source.bars builds bars from trades: a source.mapping with it names the "
                "trades' columns (time=...,price=COLUMN,size=COLUMN)"
            ),
            holds=lambda s: s.bars is None or s.mapping is None or "price=" in s.mapping,
            field_path=".bars",
        ),
        Rule(
            cel="!has(self.s3) || !has(self.url) || self.url.startsWith('s3://')",
            message="source.s3 is for an s3:// source.url",
            holds=lambda s: s.s3 is None or s.url is None or s.url.startswith("s3://"),
            field_path=".s3",
        ),
        Rule(
            cel="!has(self.s3) || !has(self.urls) || self.urls.all(u, u.startsWith('s3://'))",
            message="source.s3 is for s3:// source.urls",
            holds=lambda s: (
                s.s3 is None or s.urls is None or all(u.startswith("s3://") for u in s.urls)
            ),
            field_path=".s3",
        ),
    )

    url: SourceUrl | None = None
    """The CSV file, optionally compressed (.gz, .bz2, .xz, .zst), or a Parquet or Arrow
    IPC (Feather v2) file: a path in the producer's container (on `volume`, or shipped in
    the image), or a file://, s3:// (see `s3`), http:// or https:// URL. Or many files,
    replayed as one stream merged by event time (ties: symbol, then file order): a
    directory (a path, or a URL ending in `/`) or a glob (`s3://bucket/2024/*.csv.gz`).
    Exactly one of `url` and `urls`."""

    urls: (
        Annotated[
            list[ListedUrl],
            # annotated_types' Len, not Field(): the CRD states it as minItems/maxItems,
            # which bound the cost of the CEL rules over the list.
            Len(1, 16),
            AfterValidator(_unique),
            Crd({"x-kubernetes-list-type": "set"}),
        ]
        | None
    ) = None
    """Several sources (files, directories or globs, as `url`), replayed as one stream
    merged by event time; file order (which breaks ties of time and symbol) is this
    list's, each directory's or glob's files by name."""

    s3: S3Source | None = None
    """Endpoint, region and credentials for an `s3://` URL."""

    volume: SourceVolume | None = None
    """A volume to mount in the producer's pod at `mountPath` (read-only) for a
    file-system source."""

    mount_path: AbsolutePath = "/data"
    """Where `volume` is mounted in the producer's container."""

    layout: Layout = "auto"
    """Layout the file is expected to have; `auto` recognises it from the header
    (kaggle-btc, binance, binance-kline, also without a header, and generic are
    recognised, and trades: time, price, size[, side][, symbol]; the producer logs its
    choice)."""

    mapping: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    """Column mapping for other layouts (the producer's `--mapping`), e.g.
    `time=ts:unix_ms,open=o,high=h,low=l,close=c,volume=v,symbol=sym`; the time may be
    `unix` (unit from the magnitude), `unix_s`...`unix_ns`, `iso`, a strftime pattern
    (`time=Time:%d.%m.%Y %H:%M:%S.%f`) and span two columns (`time=Date+Time:%Y.%m.%d %H:%M`).
    A file of trades maps `price=` and `size=` instead of the bar columns."""

    bars: Window | None = None
    """For a file of trades (`--bars`): build OHLCV bars of this interval, e.g. `1m`, and
    replay them instead of the trades (a positive number and s, m, h or d); each bar's
    time is the start of its interval, the partial last bars are sent at the end.
    Unset: trades are replayed as trades."""

    delimiter: DelimiterChoice = "auto"
    """Field delimiter (the producer's `--delimiter`): `,`, `;`, `tab` or `pipe`; `auto`
    sniffs it."""

    # Unique as a set list (the API server checks it cheaply; a CEL rule comparing every
    # pair of 256 names of 128 characters was refused as too costly by the API server).
    columns: (
        Annotated[
            list[ColumnName],
            Field(min_length=1, max_length=256),
            AfterValidator(_unique),
            Crd({"x-kubernetes-list-type": "set"}),
        ]
        | None
    ) = None
    """Column names of a file without a header (`--columns`), in order; line 1 is then a
    row. Binance's kline dumps need none."""

    time_format: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    """Format of the time column instead of the one recognised (`--time-format`): `unix`,
    `unix_s`, `unix_ms`, `unix_us`, `unix_ns`, `iso` or a strftime pattern such as
    `%d.%m.%Y %H:%M:%S.%f`. With a mapping, give it in the mapping's time entry."""

    timezone: (
        Annotated[
            str,
            StringConstraints(max_length=64, pattern=r"^[A-Za-z][-A-Za-z0-9_+/]*$"),
            AfterValidator(_zone_name),
        ]
        | None
    ) = None
    """IANA time zone of times without an offset (`--timezone`), e.g. `America/New_York`;
    daylight saving from the zone database; unset: UTC."""

    symbol: (
        Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9][-A-Za-z0-9._:/]*$")]
        | None
    ) = None
    """Symbol of every bar, for files without a symbol column (e.g. BTCUSDT)."""

    symbol_from_filename: (
        Annotated[
            str,
            StringConstraints(max_length=256, pattern=r"^[^/]*\{symbol\}[^/]*$"),
            AfterValidator(check_filename_pattern),
        ]
        | None
    ) = None
    """Take each file's symbol from its name (`--symbol-from-filename`), for files without
    a symbol column: the file name with `{symbol}` where the symbol is, `*` and `?` as in
    globs, e.g. `{symbol}-1m-*.csv`."""

    @property
    def all_urls(self) -> list[str]:
        """The sources as the producer's arguments: `urls`, or `url`."""
        return list(self.urls) if self.urls is not None else [self.url] if self.url else []

    start: Timestamp | None = None
    """First bar time to replay (inclusive), RFC 3339 with a zone."""

    end: Timestamp | None = None
    """Bar time to stop at (exclusive), RFC 3339 with a zone; after `start`."""


# --------------------------------------------------------------------------- pacing


class PacingSpec(ApiModel):
    """How fast bars are sent: exactly one of `speed`, `rate` or `max: true`."""

    rules = (
        Rule(
            cel=(
                "(has(self.speed) ? 1 : 0) + (has(self.rate) ? 1 : 0)"
                " + (has(self.max) && self.max ? 1 : 0) == 1"
            ),
            message="pacing needs exactly one of speed, rate or max: true",
            holds=lambda s: _count(s.speed is not None, s.rate is not None, s.max is True) == 1,
        ),
    )

    speed: Annotated[str, StringConstraints(max_length=32, pattern=SPEED_PATTERN)] | None = None
    """A multiple of real time on event time, e.g. `60x` (an hour of bars per minute)."""

    rate: float | None = Field(default=None, gt=0)
    """A fixed number of bars per second, whatever their times."""

    max: bool | None = None
    """`true`: as fast as Kafka takes them."""


# ---------------------------------------------------------------------------- kafka


class StrimziClusterRef(ApiModel):
    """A Kafka cluster run by the Strimzi operator (its `Kafka` resource)."""

    name: DnsLabel
    """Name of the `Kafka` resource."""

    namespace: DnsLabel | None = None
    """Its namespace; unset means the ReplayJob's own. KafkaTopics are created there."""

    port: int = Field(default=9092, ge=1, le=65535)
    """Port of the listener to use on `<name>-kafka-bootstrap` (Strimzi's plain
    listener is usually 9092, TLS 9093)."""


class TopicSpec(ApiModel):
    """The job's bars and metrics topics (the dead-letter topic has one partition)."""

    partitions: int = Field(default=cli_default(cli.produce, "partitions"), ge=1, le=10_000)
    """Partitions of the bars and metrics topics: the most processors that can work at once."""

    replicas: int | None = Field(default=cli_default(cli.produce, "replication"), ge=1, le=32_767)
    """Replication factor of the job's topics; unset: 3, or every broker if the cluster
    has fewer (Strimzi: the cluster's default.replication.factor)."""


class KafkaSecretRef(ApiModel):
    """A Secret holding a SASL user name and password."""

    name: ObjectName
    """Name of the Secret, in the job's namespace."""

    username_key: SecretKey = "username"
    """Key of the user name."""

    password_key: SecretKey = "password"  # noqa: S105 - the name of a key, not a password
    """Key of the password."""

    mechanism: SaslMechanism = "SCRAM-SHA-512"
    """SASL mechanism (Strimzi's `scram-sha-512` KafkaUsers use SCRAM-SHA-512)."""


class KafkaCredentials(ApiModel):
    """SASL authentication to Kafka."""

    secret_ref: KafkaSecretRef
    """The Secret with the password (and the user name unless `username` is set)."""

    username: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    """The SASL user name, when the Secret holds only the password: a Strimzi
    `KafkaUser`'s Secret has `password` and `sasl.jaas.config`, and the user name is the
    KafkaUser's name. Takes precedence over `secretRef.usernameKey`."""


class CaSecretRef(ApiModel):
    """A Secret holding a PEM CA bundle."""

    name: ObjectName
    """Name of the Secret, in the job's namespace (e.g. a copy of Strimzi's
    `<cluster>-cluster-ca-cert`)."""

    key: SecretKey = "ca.crt"
    """Key of the CA bundle."""


class KafkaTls(ApiModel):
    """TLS to Kafka's listener."""

    ca_secret_ref: CaSecretRef
    """CA bundle to verify the brokers with."""


class KafkaSpec(ApiModel):
    """The Kafka cluster and the job's topics: exactly one of `bootstrapServers` or
    `strimziCluster`."""

    rules = (
        Rule(
            cel="has(self.bootstrapServers) != has(self.strimziCluster)",
            message="kafka needs exactly one of bootstrapServers or strimziCluster",
            holds=lambda s: (s.bootstrap_servers is None) != (s.strimzi_cluster is None),
        ),
    )

    bootstrap_servers: (
        Annotated[str, StringConstraints(max_length=2048, pattern=BOOTSTRAP_PATTERN)] | None
    ) = None
    """Comma-separated `host:port` list; the workers create the topics they need."""

    strimzi_cluster: StrimziClusterRef | None = None
    """A Strimzi-managed cluster; the operator creates the topics as KafkaTopics."""

    topic: TopicSpec = TopicSpec()
    """The job's topics."""

    credentials: KafkaCredentials | None = None
    """SASL credentials; unset means no authentication."""

    tls: KafkaTls | None = None
    """TLS settings; unset means a plaintext listener."""

    profile: KafkaProfile = settings_default(KafkaSettings, "profile")
    """Client tuning: `throughput` (batching, lz4) or `latency` (1 ms linger, no compression)."""


# ----------------------------------------------------------------------- processing


class ProcessingSpec(ApiModel):
    """The processor: rolling windows and how many run in parallel."""

    rules = (
        Rule(
            cel=(
                "self.windows.all(a, self.windows.exists_one(b, "
                f"{_cel_window_seconds('a')} == {_cel_window_seconds('b')}))"
            ),
            message=(
                "processing.windows must all differ in length (e.g. 60m and 1h are the same "
                "window): keep one of each"
            ),
            holds=lambda s: len({window_seconds(w) for w in s.windows}) == len(s.windows),
            field_path=".windows",
        ),
    )

    windows: Annotated[
        list[Window],
        Field(min_length=1, max_length=16),
        AfterValidator(_unique),
        Crd({"x-kubernetes-list-type": "set"}),
    ] = Field(default_factory=lambda: cli_default(cli.process, "windows").split(","))
    """Rolling event-time windows: a positive number and s, m, h or d."""

    replicas: int = Field(default=1, ge=1, le=10_000)
    """Processor pods; at most `kafka.topic.partitions` (each needs a partition)."""


# ---------------------------------------------------------------------------- redis


class RedisSecretRef(ApiModel):
    """A Secret holding the Redis password (and ACL user name)."""

    name: ObjectName
    """Name of the Secret, in the job's namespace."""

    password_key: SecretKey = "password"  # noqa: S105 - the name of a key, not a password
    """Key of the password."""

    username_key: SecretKey | None = None
    """Key of the ACL user name; unset means the default user."""


class RedisCredentials(ApiModel):
    """Redis authentication."""

    secret_ref: RedisSecretRef
    """The Secret with the password."""


class RedisSpec(ApiModel):
    """The Redis that serves the latest metrics."""

    rules = (
        Rule(
            cel="!self.url.contains('@')",
            message=(
                "redis.url must not hold credentials (user:password@): put them in a Secret "
                "and name it in redis.credentials.secretRef"
            ),
            holds=lambda s: "@" not in s.url,
            field_path=".url",
        ),
    )

    url: Annotated[
        str, StringConstraints(max_length=2048, pattern=r"^rediss?://[^\s/]+(/[0-9]+)?$")
    ]
    """`redis://host:port/db`, or `rediss://` for TLS; no credentials."""

    credentials: RedisCredentials | None = None
    """Password (and user) from a Secret; unset means no authentication."""

    history_limit: int = Field(default=settings_default(RedisSettings, "history_limit"), ge=0)
    """Bars of per-symbol history kept in Redis; 0 keeps none."""


# ------------------------------------------------------------------------ warehouse


class DuckDBSpec(ApiModel):
    """A DuckDB file on a PersistentVolumeClaim."""

    claim_name: ObjectName | None = None
    """An existing claim to use; unset means the operator creates `<job>-warehouse`."""

    size: Quantity = "1Gi"
    """Size of the claim the operator creates."""

    storage_class_name: ObjectName | None = None
    """Storage class of the claim the operator creates; unset means the cluster's default."""

    path: Annotated[str, StringConstraints(max_length=255, pattern=RELATIVE_PATH_PATTERN)] = (
        "hftpipe.duckdb"
    )
    """Path of the DuckDB file inside the volume."""


class SnowflakeSecretRef(ApiModel):
    """A Secret with the Snowflake password or private key: exactly one of `passwordKey`
    or `privateKeyKey`."""

    rules = (
        Rule(
            cel="has(self.passwordKey) != has(self.privateKeyKey)",
            message=(
                "warehouse.snowflake.secretRef needs exactly one of passwordKey or privateKeyKey"
            ),
            holds=lambda s: (s.password_key is None) != (s.private_key_key is None),
        ),
        Rule(
            cel="!has(self.privateKeyPassphraseKey) || has(self.privateKeyKey)",
            message="warehouse.snowflake.secretRef.privateKeyPassphraseKey needs privateKeyKey",
            holds=lambda s: s.private_key_passphrase_key is None or s.private_key_key is not None,
            field_path=".privateKeyPassphraseKey",
        ),
    )

    name: ObjectName
    """Name of the Secret, in the job's namespace."""

    password_key: SecretKey | None = None
    """Key of the password."""

    private_key_key: SecretKey | None = None
    """Key of the PEM private key (PKCS#8) for key-pair authentication."""

    private_key_passphrase_key: SecretKey | None = None
    """Key of the passphrase of an encrypted private key."""


_SnowflakeName = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class SnowflakeSpec(ApiModel):
    """Where to connect in Snowflake (the secret parts come from `secretRef`)."""

    secret_ref: SnowflakeSecretRef
    """The Secret with the password or private key."""

    account: _SnowflakeName
    """Account identifier, `<orgname>-<account_name>`."""

    user: _SnowflakeName
    """Login name of the user the loader connects as."""

    database: _SnowflakeName
    """Database holding the tables."""

    schema_: _SnowflakeName = Field(
        default=settings_default(SnowflakeSettings, "schema_"), alias="schema"
    )
    """Schema holding the tables; it must exist."""

    warehouse: _SnowflakeName | None = None
    """Virtual warehouse that runs the MERGEs; unset means the user's default."""

    role: _SnowflakeName | None = None
    """Role to use; unset means the user's default."""


class WarehouseSpec(ApiModel):
    """Where the loader keeps every bar and metric."""

    rules = (
        Rule(
            cel="self.type != 'snowflake' || has(self.snowflake)",
            message="warehouse.type snowflake needs the warehouse.snowflake section",
            holds=lambda s: s.type != "snowflake" or s.snowflake is not None,
            field_path=".type",
        ),
        Rule(
            cel="!has(self.snowflake) || self.type == 'snowflake'",
            message="warehouse.snowflake is only used with warehouse.type snowflake",
            holds=lambda s: s.snowflake is None or s.type == "snowflake",
            field_path=".snowflake",
        ),
    )

    type: WarehouseType = "duckdb"
    """`duckdb` (a file on a volume) or `snowflake`."""

    duckdb: DuckDBSpec = DuckDBSpec()
    """The DuckDB file, for type duckdb."""

    snowflake: SnowflakeSpec | None = None
    """The Snowflake connection, for type snowflake."""


# --------------------------------------------------------------------- pods, policy


class ImagesSpec(ApiModel):
    """The container image of the workers."""

    workers: Annotated[str, StringConstraints(min_length=1, max_length=512)] = DEFAULT_WORKERS_IMAGE
    """Image with the `hftpipe` command (built from `workers/Dockerfile`)."""

    pull_policy: PullPolicy = "IfNotPresent"
    """Image pull policy."""

    pull_secrets: Annotated[list[ObjectName], Field(max_length=16)] | None = None
    """Secrets for a private registry."""


class ResourceList(ApiModel):
    """CPU and memory."""

    cpu: Quantity | None = None
    """CPU, e.g. `500m` or `2`."""

    memory: Quantity | None = None
    """Memory, e.g. `512Mi`."""


class Resources(ApiModel):
    """Requests and limits of one worker's container (no CPU limit by default: throttling
    would distort the replay's timing)."""

    requests: ResourceList | None = None
    """What the scheduler reserves."""

    limits: ResourceList | None = None
    """What the container may not exceed."""


def _resources(cpu: str, memory: str, memory_limit: str) -> Resources:
    return Resources(
        requests=ResourceList(cpu=cpu, memory=memory), limits=ResourceList(memory=memory_limit)
    )


class WorkerResources(ApiModel):
    """Resources per worker; a worker's section, when given, replaces its defaults."""

    producer: Resources = _resources("250m", "256Mi", "512Mi")
    """The producer (parses CSV in chunks)."""

    processor: Resources = _resources("500m", "256Mi", "1Gi")
    """Each processor (window state of its partitions)."""

    loader: Resources = _resources("250m", "512Mi", "1Gi")
    """The loader (micro-batches of up to 50,000 rows)."""


class RestartPolicy(ApiModel):
    """How often a failing worker is restarted before the job is Failed."""

    rules = (
        Rule(
            cel="self.backoffSeconds <= self.maxBackoffSeconds",
            message="restartPolicy.backoffSeconds must not exceed maxBackoffSeconds",
            holds=lambda s: s.backoff_seconds <= s.max_backoff_seconds,
            field_path=".backoffSeconds",
        ),
    )

    max_restarts: int = Field(default=3, ge=0, le=1000)
    """Restarts of a worker before the job is Failed (the producer Job's backoffLimit)."""

    backoff_seconds: int = Field(default=10, ge=1, le=86_400)
    """First delay before the operator retries a failed step; doubles each time."""

    max_backoff_seconds: int = Field(default=300, ge=1, le=86_400)
    """Longest delay between retries."""


class CleanupSpec(ApiModel):
    """What is deleted with the ReplayJob (its pods and settings always are)."""

    delete_topics: bool = True
    """Delete the job's Kafka topics."""

    delete_redis_keys: bool = False
    """Delete the job's Redis keys (`hftpipe:<job>:*`)."""

    delete_warehouse: bool = False
    """Delete the DuckDB claim the operator created (never a claim you named)."""


class MonitoringSpec(ApiModel):
    """Prometheus scraping of the workers."""

    pod_monitor: bool = True
    """Create a PodMonitor (needs the Prometheus Operator's CRDs)."""

    interval: Annotated[str, StringConstraints(max_length=16, pattern=DURATION_PATTERN)] = "15s"
    """Scrape interval."""


# ----------------------------------------------------------------------------- spec


class ReplayJobSpec(ApiModel):
    """Replay a CSV of OHLCV bars through Kafka into Redis and a warehouse."""

    rules = (
        Rule(
            cel="self.processing.replicas <= self.kafka.topic.partitions",
            message=(
                "processing.replicas must not exceed kafka.topic.partitions: a processor "
                "without a partition has nothing to do"
            ),
            holds=lambda s: s.processing.replicas <= s.kafka.topic.partitions,
            field_path=".processing.replicas",
        ),
        # What a job's data is cannot change under it (as a Flink job's topology or a
        # Strimzi topic's partitions): the producer's resume, the processors' state and
        # every stored row are keyed by it. How it runs (pacing, replicas, resources,
        # suspend, history) may change; that applies live.
        Rule(
            cel="self.source == oldSelf.source",
            message=(
                "source is immutable: it defines the job's data (a new file or range would "
                "be read past, or mixed in, by the rows already replayed); create a new "
                "ReplayJob to replay another source"
            ),
            holds=lambda old, new: old.source == new.source,
            field_path=".source",
            transition=True,
        ),
        Rule(
            cel="self.kafka.topic.partitions == oldSelf.kafka.topic.partitions",
            message=(
                "kafka.topic.partitions is immutable: it decides which partition, and so "
                "which processor's state, each symbol belongs to; create a new ReplayJob "
                "for another partition count"
            ),
            holds=lambda old, new: old.kafka.topic.partitions == new.kafka.topic.partitions,
            field_path=".kafka.topic.partitions",
            transition=True,
        ),
        Rule(
            # A list-type set: the API server compares it as a set, so a reordered list
            # is equal (and so is the same job: the processor orders windows itself).
            cel="self.processing.windows == oldSelf.processing.windows",
            message=(
                "processing.windows is immutable (as a set: the order may change): the "
                "processors' state and every stored metric are per window; create a new "
                "ReplayJob for other windows"
            ),
            holds=lambda old, new: set(old.processing.windows) == set(new.processing.windows),
            field_path=".processing.windows",
            transition=True,
        ),
    )

    source: SourceSpec
    """The file to replay."""

    pacing: PacingSpec = PacingSpec(max=True)
    """How fast to replay; unset means as fast as possible."""

    kafka: KafkaSpec
    """The Kafka cluster and topics."""

    processing: ProcessingSpec = ProcessingSpec()
    """Rolling windows and processor replicas."""

    redis: RedisSpec
    """Where the latest metrics go."""

    warehouse: WarehouseSpec = WarehouseSpec()
    """Where every bar and metric goes."""

    images: ImagesSpec = ImagesSpec()
    """Container image of the workers."""

    resources: WorkerResources = WorkerResources()
    """Requests and limits per worker."""

    suspend: bool = False
    """`true` stops every worker (the producer resumes where it stopped)."""

    restart_policy: RestartPolicy = RestartPolicy()
    """Restarts and retry delays."""

    cleanup: CleanupSpec = CleanupSpec()
    """What is deleted with the job."""

    monitoring: MonitoringSpec = MonitoringSpec()
    """Prometheus scraping."""


# ------------------------------------------------------------------------ a ReplayJob


@dataclass(frozen=True)
class ReplayJob:
    """A ReplayJob as the builders need it: where it lives and its parsed spec."""

    name: str
    namespace: str
    spec: ReplayJobSpec

    def __post_init__(self) -> None:
        check_name(self.name)

    @property
    def job_id(self) -> str:
        """``<namespace>.<name>``: what its topics, consumer groups, Redis keys and
        warehouse rows are named by, so that same-named jobs in two namespaces sharing
        a Kafka cluster or a Redis stay apart (see :func:`hftpipe_workers.contract.job_id`)."""
        return job_id(self.name, self.namespace)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ReplayJob:
        """From the object the API server returns (or kopf's ``body``)."""
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            spec=ReplayJobSpec.model_validate(body.get("spec") or {}),
        )
