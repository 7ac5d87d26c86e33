"""``hftpipe produce | process | load | demo | inspect``: the workers' one command line.

Each command's options are generated from its pydantic-settings class in
:mod:`.settings` (:class:`~.settings.ProduceSettings`...): the option of a field
is read from the same environment variable as the field, its ``--help`` text is
the field's docstring and its default the field's default. A command builds its
settings object from the options given on the command line, and pydantic-settings
reads the environment for the others: the command line beats the environment,
which beats the defaults. An invalid value, from either, is a usage error (exit
code 2) naming the option and its variable.

Connection settings (Kafka, Redis, Snowflake) have no options: they come from
the environment only (``HFTPIPE_KAFKA_*``, ``HFTPIPE_REDIS_*``...), so a pod's
environment and a laptop's ``source .stack/env`` configure the same code.

Importing this module stays cheap (typer and pydantic, no pandas or Kafka), so
that ``--help`` is fast; each command imports what it runs.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from .contract import Topics
from .settings import (
    SOURCE_OPTIONS,
    DemoSettings,
    KafkaSettings,
    LoadSettings,
    ProcessSettings,
    ProduceSettings,
    RedisSettings,
    WorkerSettings,
    env_names,
)

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo
    from pydantic_core import ErrorDetails

    from .observability import MetricsServer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="hftpipe: replay market data through Kafka into Redis and a warehouse.",
    # Plain help: rich's boxes cut long variable names at 80 columns.
    rich_markup_mode=None,
)

S = TypeVar("S", bound=BaseSettings)

_DECLS: Final[Mapping[str, tuple[str, ...]]] = {
    "log_json": ("--log-json/--log-text",),
    "until_caught_up": ("--until-caught-up",),
    "keep_stack": ("--keep-stack/--stop-stack",),
}
"""Option names other than typer's default (``--name``, ``--name/--no-name`` for flags)."""

_COMMON: Final = frozenset({*WorkerSettings.model_fields, "metrics_port"})
"""Options every worker command has: listed last in ``--help``."""


# ------------------------------------------------------------ options from settings


def _help(field: FieldInfo) -> str:
    return " ".join((field.description or "").split()).replace("``", "'")


def _parameter(settings: type[BaseSettings], name: str, *, argument: bool) -> inspect.Parameter:
    """The typer parameter of one settings field: its variable, help and default."""
    field = settings.model_fields[name]
    names = env_names(settings, name)
    envvar: str | list[str] = names[0] if len(names) == 1 else list(names)
    info: Any = (
        typer.Argument(envvar=envvar, help=_help(field), show_envvar=True)
        if argument
        else typer.Option(*_DECLS.get(name, ()), envvar=envvar, help=_help(field))
    )
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Annotated[field.annotation, info],
        default=inspect.Parameter.empty if field.is_required() else field.default,
    )


def _field_of(settings: type[BaseSettings], loc: tuple[int | str, ...]) -> str | None:
    """The field an error location names (pydantic-settings reports env values by alias)."""
    if not loc:
        return None
    key = str(loc[0]).lower()
    for name in settings.model_fields:
        if key == name or key in (v.lower() for v in env_names(settings, name)):
            return name
    return None


class _Problems(typer.BadParameter):
    """Several invalid values, each message already naming its option."""

    def format_message(self) -> str:
        return self.message


def _message(error: ErrorDetails, *, secret: bool = False) -> str:
    """Pydantic's message; with the value, unless it is secret or the message shows it."""
    if error["type"] == "value_error":
        return error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    return error["msg"] + ("" if secret or isinstance(value, dict) else f" (got {value!r})")


def _usage_error(
    ctx: typer.Context, settings: type[BaseSettings], exc: ValidationError
) -> typer.BadParameter:
    """One usage error for every problem, each naming its option and variable."""
    # typer's own parameter classes, typed as click's by the Context.
    params: dict[str | None, Any] = {p.name: p for p in ctx.command.params}
    errors: list[typer.BadParameter] = []
    for error in exc.errors():
        name = _field_of(settings, error["loc"])
        param = params.get(name) if name else None
        errors.append(typer.BadParameter(_message(error), ctx=ctx, param=param))
    if len(errors) == 1:
        return errors[0]
    return _Problems("\n".join(e.format_message() for e in errors), ctx=ctx)


def _settings_command(
    settings: type[S], *, arguments: tuple[str, ...] = (), only: tuple[str, ...] = ()
) -> Callable[[Callable[[S], None]], Callable[..., None]]:
    """A typer command with one option per field of ``settings`` (``arguments`` are positional;
    ``only``: these fields, the others from the environment or their defaults) that calls the
    decorated function with the settings object."""

    def decorate(body: Callable[[S], None]) -> Callable[..., None]:
        def command(ctx: typer.Context, **values: Any) -> None:
            # Only what the command line gave is passed: pydantic-settings reads the
            # environment for the rest, and falls back on the defaults.
            given = {
                name: value
                for name, value in values.items()
                if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
            }
            try:
                chosen = settings(**given)
            except ValidationError as exc:
                raise _usage_error(ctx, settings, exc) from None
            body(chosen)

        # Arguments, then the command's own options, then those every worker has.
        order = sorted(
            only or settings.model_fields,
            key=lambda n: (n not in arguments, n in _COMMON),
        )
        command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
                *(_parameter(settings, n, argument=n in arguments) for n in order),
            ]
        )
        command.__name__ = command.__qualname__ = body.__name__
        command.__doc__ = body.__doc__
        command.__annotations__ = {}
        return command

    return decorate


def _connection(settings: type[S], **values: Any) -> S:
    """Connection settings from the environment; a bad variable is a usage error naming it."""
    try:
        return settings(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = _field_of(settings, error["loc"])
            where = " / ".join(env_names(settings, name)) if name else settings.__name__
            secret = name is None or "Secret" in repr(settings.model_fields[name].annotation)
            problems.append(f"Invalid value for {where}: {_message(error, secret=secret)}")
        raise _Problems("\n".join(problems)) from None


# ----------------------------------------------------------------------- running


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


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at the moment of writing."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _setup(log_json: bool, metrics_port: int, stall_seconds: float = 120.0) -> MetricsServer | None:
    from .observability import MetricsServer  # noqa: PLC0415 - keep --help fast

    # The handler looks sys.stderr up at each write: a command run in-process (tests,
    # CliRunner) must not leave a handler bound to a stream that is closed afterwards.
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(
        _JsonFormatter()
        if log_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    if metrics_port < 0:
        return None
    server = MetricsServer(metrics_port, stall_seconds=stall_seconds).start()
    logging.getLogger("hftpipe").info("metrics on :%d/metrics", server.port)
    return server


# ---------------------------------------------------------------------- commands


@app.command()
@_settings_command(ProduceSettings, arguments=("source",))
def produce(settings: ProduceSettings) -> None:
    """Replay a CSV, Parquet or Arrow file of OHLCV bars or of trades, or many files merged
    by event time, into Kafka (resumes where an earlier run stopped)."""
    from .csvformat import SourceError  # noqa: PLC0415 - keep --help fast
    from .producer import Fenced, Replay  # noqa: PLC0415

    kafka = _connection(KafkaSettings, profile=settings.profile)
    server = _setup(settings.log_json, settings.metrics_port, settings.stall_seconds)
    topics = Topics.for_job(settings.job_id)
    if server:
        server.ready.set()
    try:
        report = Replay(
            job=settings.job,
            source=settings.source,
            symbol_from_filename=settings.symbol_from_filename,
            bars_topic=topics.bars,
            dead_topic=topics.deadletter,
            progress_topic=topics.progress,
            kafka=kafka,
            pacing=settings.pacing,
            symbol=settings.symbol,
            mapping=settings.column_mapping,
            layout=settings.layout,
            delimiter=settings.delimiter_char,
            columns=settings.column_list,
            time_format=settings.time_format,
            timezone=settings.timezone,
            start_ns=settings.start_ns,
            end_ns=settings.end_ns,
            partitions=settings.partitions,
            replication=settings.replication,
            create_topics=settings.create_topics,
            dead_letter_excerpt=settings.dead_letter_excerpt,
            job_id=settings.job_id,
            bar_interval_ns=settings.bar_interval_ns,
            engine=settings.engine,
        ).run()
    except (SourceError, FileNotFoundError) as exc:
        # One line naming the file, the line, the cause and what to do: no traceback.
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except Fenced as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(4) from exc
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


@app.command("inspect")
@_settings_command(ProduceSettings, arguments=("source",), only=SOURCE_OPTIONS)
def inspect_source(settings: ProduceSettings) -> None:
    """Read a source as produce would, producing nothing: print its format, layout, delimiter,
    time format and zone (of each file, for many), first and last event time, and rows by
    outcome."""
    from contextlib import ExitStack  # noqa: PLC0415

    from .arrowformat import open_reader  # noqa: PLC0415 - keep --help fast
    from .csvformat import BarReader, SourceError  # noqa: PLC0415
    from .multifile import FilenameSymbol, MergedReader, expand_sources  # noqa: PLC0415
    from .producer import open_source  # noqa: PLC0415
    from .sourceinfo import describe_reading, summarize  # noqa: PLC0415

    options = settings.reader_options
    pattern = settings.symbol_from_filename
    named = FilenameSymbol(pattern) if pattern else None
    try:
        files = expand_sources(settings.source)
        with ExitStack() as stack:
            readers: list[BarReader] = []
            for url in files:
                if named is not None:
                    options["symbol"] = named.symbol(url)
                stream, _ = open_source(url)
                stack.enter_context(stream)
                try:
                    readers.append(open_reader(stream, source=url, **options))
                except SourceError:
                    raise
                except ValueError as exc:  # options the file cannot be read with
                    raise SourceError(" ".join(str(exc).split())) from exc
            reader = readers[0] if len(readers) == 1 else MergedReader(readers)
            reading = describe_reading(reader)
            summary = summarize(reader)
    except (SourceError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    source = ", ".join(settings.source)
    typer.echo("\n".join([f"source: {source}", *reading, *summary.lines()]))


@app.command()
@_settings_command(ProcessSettings)
def process(settings: ProcessSettings) -> None:
    """Compute rolling VWAP, SMA and volatility from the bars topic into Redis (exactly once)."""
    from .kafka_admin import RetentionGap  # noqa: PLC0415 - keep --help fast
    from .processor import Processor, RedisStateLost  # noqa: PLC0415

    kafka = _connection(KafkaSettings, profile=settings.profile)
    redis_settings = _connection(RedisSettings)
    server = _setup(settings.log_json, settings.metrics_port, settings.stall_seconds)
    processor = Processor(
        job=settings.job,
        namespace=settings.namespace,
        kafka=kafka,
        redis_settings=redis_settings,
        windows=settings.window_list,
        batch_max=settings.batch_max,
        engine=settings.engine,
    )
    processor.install_signal_handlers()
    processor.redis.ping()  # fail fast, with Redis's own message, on a bad URL or password
    if settings.create_topics:
        processor.ensure_metrics_topic(
            replication=settings.replication, partitions=settings.partitions
        )
    if server:
        server.ready.set()
    try:
        report = processor.run(until_caught_up=settings.until_caught_up)
    except (RedisStateLost, RetentionGap) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from exc
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
@_settings_command(LoadSettings)
def load(settings: LoadSettings) -> None:
    """Load bars and metrics into the warehouse (idempotent MERGE, offsets after commit)."""
    from .kafka_admin import RetentionGap  # noqa: PLC0415 - keep --help fast
    from .loader import Loader  # noqa: PLC0415
    from .warehouse import open_sink  # noqa: PLC0415

    kafka = _connection(KafkaSettings, profile=settings.profile)
    server = _setup(settings.log_json, settings.metrics_port, settings.stall_seconds)
    with open_sink(settings.warehouse) as sink:
        loader = Loader(
            job=settings.job,
            namespace=settings.namespace,
            kafka=kafka,
            sink=sink,
            backend=settings.warehouse.split(":", 1)[0],
            batch_max=settings.batch_max,
            batch_seconds=settings.batch_seconds,
        )
        loader.install_signal_handlers()
        if server:
            server.ready.set()
        try:
            report = loader.run(until_caught_up=settings.until_caught_up)
        except RetentionGap as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(3) from exc
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
@_settings_command(DemoSettings)
def demo(settings: DemoSettings) -> None:
    """Replay the BTC bars end to end through the Kafka and Redis the environment names
    (make demo starts local ones), then print a report."""
    from .demo import run_demo  # noqa: PLC0415 - keep --help fast

    raise typer.Exit(run_demo(source=settings.source, data_dir=settings.data_dir))
