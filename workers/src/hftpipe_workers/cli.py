"""``hftpipe produce | process | load | demo``: the workers' one command line.

Each option can also be set by environment variable (shown in ``--help``);
connection settings (Kafka, Redis, Snowflake) come from the pydantic-settings
classes in :mod:`.settings` (``HFTPIPE_KAFKA_*``, ``HFTPIPE_REDIS_*``...), so a
pod's environment and a laptop's ``source .stack/env`` configure the same code.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from .bars import parse_utc
from .contract import Topics, check_job_name
from .csvformat import ColumnMapping, LayoutError
from .observability import MetricsServer
from .pacing import Pacing
from .settings import KafkaProfile, KafkaSettings, RedisSettings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="hftpipe: replay market data through Kafka into Redis and a warehouse.",
)

JobOpt = Annotated[
    str,
    typer.Option(
        "--job", envvar="HFTPIPE_JOB", help="Job name: names topics, groups and Redis keys."
    ),
]
ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        envvar="HFTPIPE_KAFKA_PROFILE",
        help="Kafka client tuning: 'throughput' (batching, lz4) or 'latency'.",
    ),
]
MetricsPortOpt = Annotated[
    int,
    typer.Option(
        "--metrics-port",
        envvar="HFTPIPE_METRICS_PORT",
        help="Port for /metrics, /healthz and /readyz (0 picks a free port; -1 disables).",
    ),
]
LogJsonOpt = Annotated[
    bool,
    typer.Option(
        "--log-json/--log-text",
        envvar="HFTPIPE_LOG_JSON",
        help="Structured JSON logs (for log shippers).",
    ),
]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _setup(log_json: bool, metrics_port: int) -> MetricsServer | None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter()
        if log_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    if metrics_port < 0:
        return None
    server = MetricsServer(metrics_port).start()
    logging.getLogger("hftpipe").info("metrics on :%d/metrics", server.port)
    return server


def _kafka(profile: str) -> KafkaSettings:
    if profile not in ("throughput", "latency"):
        raise typer.BadParameter(f"--profile must be 'throughput' or 'latency', not {profile!r}")
    chosen: KafkaProfile = "latency" if profile == "latency" else "throughput"
    return KafkaSettings(profile=chosen)


def _job(job: str) -> str:
    try:
        return check_job_name(job)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--job") from exc


@app.command()
def produce(
    source: Annotated[
        str,
        typer.Argument(
            envvar="HFTPIPE_SOURCE",
            help="CSV file: a path, file://, s3:// or https:// URL; .gz etc. decompressed.",
        ),
    ],
    job: JobOpt = "demo",
    speed: Annotated[
        str | None,
        typer.Option(envvar="HFTPIPE_SPEED", help="Pace on event time: '60x' real time, or 'max'."),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(envvar="HFTPIPE_RATE", help="Pace at a fixed number of bars per second."),
    ] = None,
    symbol: Annotated[
        str | None,
        typer.Option(envvar="HFTPIPE_SYMBOL", help="Symbol for files without a symbol column."),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            envvar="HFTPIPE_START", help="First bar time (inclusive), ISO-8601, UTC if naive."
        ),
    ] = None,
    end: Annotated[
        str | None, typer.Option(envvar="HFTPIPE_END", help="End bar time (exclusive), ISO-8601.")
    ] = None,
    mapping: Annotated[
        str | None,
        typer.Option(
            envvar="HFTPIPE_MAPPING",
            help="Column mapping for other layouts, e.g. "
            "'time=ts:unix_ms,open=o,high=h,low=l,close=c,volume=v,symbol=sym'.",
        ),
    ] = None,
    partitions: Annotated[
        int,
        typer.Option(
            envvar="HFTPIPE_PARTITIONS", min=1, help="Partitions of the bars topic if created."
        ),
    ] = 3,
    replication: Annotated[
        int,
        typer.Option(envvar="HFTPIPE_REPLICATION", min=1, help="Replication factor if created."),
    ] = 1,
    create_topics: Annotated[
        bool,
        typer.Option(
            "--create-topics/--no-create-topics",
            envvar="HFTPIPE_CREATE_TOPICS",
            help="Create the job's topics if missing.",
        ),
    ] = True,
    profile: ProfileOpt = "throughput",
    metrics_port: MetricsPortOpt = 9100,
    log_json: LogJsonOpt = False,
) -> None:
    """Replay a CSV of OHLCV bars into Kafka (resumes where an earlier run stopped)."""
    from .producer import Replay  # noqa: PLC0415 - keep --help fast

    server = _setup(log_json, metrics_port)
    try:
        pacing = Pacing.parse(speed, rate)
        column_mapping = ColumnMapping.parse(mapping) if mapping else None
        start_ns = parse_utc(start) if start else None
        end_ns = parse_utc(end) if end else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise typer.BadParameter(f"--start {start} must be before --end {end}")
    topics = Topics.for_job(_job(job))
    if server:
        server.ready.set()
    try:
        report = Replay(
            job=job,
            source=source,
            bars_topic=topics.bars,
            dead_topic=topics.deadletter,
            kafka=_kafka(profile),
            pacing=pacing,
            symbol=symbol,
            mapping=column_mapping,
            start_ns=start_ns,
            end_ns=end_ns,
            partitions=partitions,
            replication=replication,
            create_topics=create_topics,
        ).run()
    except (LayoutError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        json.dumps(
            {
                "produced": report.produced,
                "skipped_already_in_kafka": report.skipped_already_in_kafka,
                "dead_lettered": report.dead_lettered,
                "out_of_range": report.out_of_range,
                "rows_read": report.rows_read,
                "seconds": round(report.seconds, 3),
                "rows_per_second": round(report.rate),
            }
        )
    )


@app.command()
def process(
    job: JobOpt = "demo",
    windows: Annotated[
        str,
        typer.Option(
            envvar="HFTPIPE_WINDOWS", help="Rolling windows, comma-separated (s, m, h, d)."
        ),
    ] = "5m,15m,1h,1d",
    batch_max: Annotated[
        int, typer.Option(envvar="HFTPIPE_BATCH_MAX", min=1, help="Most records per batch.")
    ] = 20_000,
    until_caught_up: Annotated[
        bool,
        typer.Option(
            "--until-caught-up",
            envvar="HFTPIPE_UNTIL_CAUGHT_UP",
            help="Exit once every partition is processed to its end and idle.",
        ),
    ] = False,
    create_topics: Annotated[
        bool,
        typer.Option(
            "--create-topics/--no-create-topics",
            envvar="HFTPIPE_CREATE_TOPICS",
            help="Create the metrics topic if missing.",
        ),
    ] = True,
    profile: ProfileOpt = "throughput",
    metrics_port: MetricsPortOpt = 9101,
    log_json: LogJsonOpt = False,
) -> None:
    """Compute rolling VWAP, SMA and volatility from the bars topic into Redis (exactly once)."""
    from .processor import Processor  # noqa: PLC0415

    server = _setup(log_json, metrics_port)
    processor = Processor(
        job=_job(job),
        kafka=_kafka(profile),
        redis_settings=RedisSettings(),
        windows=[w.strip() for w in windows.split(",") if w.strip()],
        batch_max=batch_max,
    )
    processor.install_signal_handlers()
    processor.redis.ping()  # fail fast, with Redis's own message, on a bad URL or password
    if create_topics:
        processor.ensure_metrics_topic()
    if server:
        server.ready.set()
    report = processor.run(until_caught_up=until_caught_up)
    typer.echo(
        json.dumps(
            {
                "bars_in": report.bars_in,
                "bars_out": report.bars_out,
                "batches": report.batches,
                "ignored": report.ignored,
                "seconds": round(report.seconds, 3),
            }
        )
    )


@app.command()
def load(
    job: JobOpt = "demo",
    warehouse: Annotated[
        str,
        typer.Option(
            envvar="HFTPIPE_WAREHOUSE",
            help="duckdb:///path/file.duckdb (default) or snowflake:// (HFTPIPE_SNOWFLAKE_*).",
        ),
    ] = "duckdb:///hftpipe.duckdb",
    batch_max: Annotated[int, typer.Option(envvar="HFTPIPE_LOAD_BATCH_MAX", min=1)] = 50_000,
    batch_seconds: Annotated[float, typer.Option(envvar="HFTPIPE_LOAD_BATCH_SECONDS")] = 1.0,
    until_caught_up: Annotated[
        bool,
        typer.Option(
            "--until-caught-up",
            envvar="HFTPIPE_UNTIL_CAUGHT_UP",
            help="Exit once both topics are loaded to their end and idle.",
        ),
    ] = False,
    profile: ProfileOpt = "throughput",
    metrics_port: MetricsPortOpt = 9102,
    log_json: LogJsonOpt = False,
) -> None:
    """Load bars and metrics into the warehouse (idempotent MERGE, offsets after commit)."""
    from .loader import Loader  # noqa: PLC0415
    from .warehouse import open_sink  # noqa: PLC0415

    server = _setup(log_json, metrics_port)
    with open_sink(warehouse) as sink:
        loader = Loader(
            job=_job(job),
            kafka=_kafka(profile),
            sink=sink,
            backend=warehouse.split(":", 1)[0],
            batch_max=batch_max,
            batch_seconds=batch_seconds,
        )
        loader.install_signal_handlers()
        if server:
            server.ready.set()
        report = loader.run(until_caught_up=until_caught_up)
    typer.echo(
        json.dumps(
            {
                "bars": report.bars,
                "metrics_rows": report.metrics_rows,
                "batches": report.batches,
                "seconds": round(report.seconds, 3),
            }
        )
    )


@app.command()
def demo(
    source: Annotated[
        str | None,
        typer.Option(
            help="CSV to replay (default: the BTC/USDT hourly bars shipped with hftpipe)."
        ),
    ] = None,
    stack_dir: Annotated[Path, typer.Option(help="Where the local stack keeps its state.")] = Path(
        ".stack"
    ),
    keep_stack: Annotated[
        bool,
        typer.Option("--keep-stack/--stop-stack", help="Leave the local stack running afterwards."),
    ] = True,
) -> None:
    """Bring up the local stack, replay the BTC bars end to end, print a report."""
    from .demo import run_demo  # noqa: PLC0415

    raise typer.Exit(run_demo(source=source, stack_dir=stack_dir, keep_stack=keep_stack))
