"""``hftpipe`` options come from the pydantic-settings classes: every option is also an
environment variable, the command line beats the environment, which beats the default,
and a bad value, from either, is a usage error naming the option and the variable.

The commands run for real up to the worker they start, which is replaced by a stand-in
that records what it was given (no Kafka, Redis or warehouse is needed).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

import hftpipe_workers.loader
import hftpipe_workers.processor
import hftpipe_workers.producer
import hftpipe_workers.warehouse
from hftpipe_devstack import docs
from hftpipe_operator import builders, workerapi
from hftpipe_operator.settings import OperatorSettings
from hftpipe_operator.spec import ReplayJob, ReplayJobSpec
from hftpipe_workers import cli
from hftpipe_workers.pacing import Pacing
from hftpipe_workers.settings import (
    COMMAND_SETTINGS,
    KafkaSettings,
    LoadSettings,
    ProcessSettings,
    ProduceSettings,
    RedisSettings,
    env_names,
)
from hftpipe_workers.warehouse import SnowflakeSettings

README = Path(__file__).resolve().parents[2] / "README.md"
WORKERS = ("produce", "process", "load")
QUIET = ["--metrics-port", "-1"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No HFTPIPE_* (or the stack's aliases) from the test runner's own environment."""
    for var in list(os.environ):
        if var.startswith("HFTPIPE_") or var in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
            monkeypatch.delenv(var)
    return monkeypatch


class _Recorder:
    """Stands in for a worker class: records its keyword arguments and method calls."""

    def __init__(self, report: Any, calls: dict[str, Any]) -> None:
        self.report, self.calls = report, calls

    def __call__(self, **kwargs: Any) -> _Recorder:
        self.calls["init"] = kwargs
        return self

    def install_signal_handlers(self) -> None:
        pass

    @property
    def redis(self) -> SimpleNamespace:
        return SimpleNamespace(ping=lambda: True)

    def ensure_metrics_topic(self, **kwargs: Any) -> None:
        self.calls["ensure_metrics_topic"] = kwargs

    def run(self, **kwargs: Any) -> Any:
        self.calls["run"] = kwargs
        return self.report


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """What each command handed its worker: ``{"produce": {"init": {...}, ...}, ...}``."""
    calls: dict[str, dict[str, Any]] = {c: {} for c in WORKERS}
    reports = {
        "produce": hftpipe_workers.producer.ReplayReport(),
        "process": SimpleNamespace(bars_in=0, bars_out=0, batches=0, ignored=0, seconds=0.0),
        "load": hftpipe_workers.loader.LoaderReport(),
    }
    recorders = {c: _Recorder(reports[c], calls[c]) for c in WORKERS}
    monkeypatch.setattr(hftpipe_workers.producer, "Replay", recorders["produce"])
    monkeypatch.setattr(hftpipe_workers.processor, "Processor", recorders["process"])
    monkeypatch.setattr(hftpipe_workers.loader, "Loader", recorders["load"])

    def open_sink(target: str) -> contextlib.AbstractContextManager[Any]:
        calls["load"]["warehouse"] = target
        return contextlib.nullcontext(SimpleNamespace())

    monkeypatch.setattr(hftpipe_workers.warehouse, "open_sink", open_sink)
    return calls


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args))


def click_command(command: str) -> Any:
    return getattr(typer.main.get_command(cli.app), "commands")[command]  # noqa: B009


def one_line(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------- options are the settings


@pytest.mark.parametrize("command", [*WORKERS, "demo"])
def test_every_field_is_an_option_with_its_variable_and_default(command: str) -> None:
    settings = COMMAND_SETTINGS[command]
    params = {p.name: p for p in click_command(command).params}
    assert set(params) == set(settings.model_fields)
    for name, field in settings.model_fields.items():
        names = env_names(settings, name)
        assert params[name].envvar == (names[0] if len(names) == 1 else list(names))
        if field.is_required():
            assert params[name].required
        else:
            assert params[name].default == field.default


def test_variable_names_the_operator_and_scripts_rely_on() -> None:
    assert env_names(LoadSettings, "batch_max") == ("HFTPIPE_LOAD_BATCH_MAX",)
    assert env_names(LoadSettings, "batch_seconds") == ("HFTPIPE_LOAD_BATCH_SECONDS",)
    assert env_names(ProcessSettings, "batch_max") == ("HFTPIPE_BATCH_MAX",)
    assert env_names(ProduceSettings, "source") == ("HFTPIPE_SOURCE",)
    assert env_names(ProduceSettings, "profile") == ("HFTPIPE_KAFKA_PROFILE",)
    assert env_names(ProduceSettings, "layout") == ("HFTPIPE_LAYOUT",)
    for command in WORKERS:
        for name in ("job", "metrics_port", "log_json"):
            assert env_names(COMMAND_SETTINGS[command], name) == (f"HFTPIPE_{name.upper()}",)
    assert env_names(ProcessSettings, "replication") == ("HFTPIPE_REPLICATION",)
    assert env_names(ProcessSettings, "partitions") == ("HFTPIPE_PARTITIONS",)


@pytest.mark.parametrize("command", [*WORKERS, "demo"])
def test_help_shows_every_variable_and_default(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    text = one_line(result.output)
    settings = COMMAND_SETTINGS[command]
    for name, field in settings.model_fields.items():
        for var in env_names(settings, name):
            assert var in text, f"{var} missing from hftpipe {command} --help"
        doc = one_line(field.description or "").replace("``", "'")
        assert one_line(doc)[:30] in text
        if field.default not in (None, False, True) and not field.is_required():
            assert f"default: {field.default}" in text
    if command in WORKERS:
        port = settings.model_fields["metrics_port"].default
        assert f"HFTPIPE_METRICS_PORT; default: {port}]" in text


def test_help_does_not_import_the_heavy_libraries() -> None:
    code = (
        "import sys; from hftpipe_workers import cli; "
        "heavy = {'pandas', 'numpy', 'confluent_kafka', 'duckdb', 'redis'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------ precedence


def test_defaults_when_neither_option_nor_variable(workers: dict[str, dict[str, Any]]) -> None:
    result = invoke("produce", "data.csv", *QUIET)
    assert result.exit_code == 0, result.output
    init = workers["produce"]["init"]
    assert init["source"] == ["data.csv"]
    assert init["job"] == "demo"
    assert init["pacing"] == Pacing("max")
    assert (init["partitions"], init["replication"], init["create_topics"]) == (
        3,
        None,
        True,
    )  # replication None: min(3, brokers)
    assert init["layout"] == "auto"
    assert init["mapping"] is None
    assert init["kafka"].profile == "throughput"


def test_environment_variables_set_the_options(
    workers: dict[str, dict[str, Any]], clean_env: pytest.MonkeyPatch
) -> None:
    for var, value in {
        "HFTPIPE_SOURCE": "s3://bucket/bars.csv.gz",
        "HFTPIPE_JOB": "btc",
        "HFTPIPE_SPEED": "60x",
        "HFTPIPE_SYMBOL": "BTCUSDT",
        "HFTPIPE_START": "2020-01-01T00:00:00Z",
        "HFTPIPE_END": "2021-01-01",
        "HFTPIPE_LAYOUT": "binance",
        "HFTPIPE_PARTITIONS": "6",
        "HFTPIPE_REPLICATION": "3",
        "HFTPIPE_CREATE_TOPICS": "false",
        "HFTPIPE_KAFKA_PROFILE": "latency",
        "HFTPIPE_METRICS_PORT": "-1",
        "HFTPIPE_WINDOWS": "1m, 1h",
        "HFTPIPE_BATCH_MAX": "500",
        "HFTPIPE_UNTIL_CAUGHT_UP": "true",
        "HFTPIPE_LOAD_BATCH_MAX": "7000",
        "HFTPIPE_LOAD_BATCH_SECONDS": "2.5",
        "HFTPIPE_WAREHOUSE": "duckdb:///w.duckdb",
    }.items():
        clean_env.setenv(var, value)

    assert invoke("produce").exit_code == 0
    produced = workers["produce"]["init"]
    assert produced["source"] == ["s3://bucket/bars.csv.gz"]  # one source, as it is
    assert (produced["job"], produced["symbol"]) == ("btc", "BTCUSDT")
    assert produced["pacing"] == Pacing("speed", 60.0)
    assert produced["start_ns"] == 1_577_836_800 * 10**9
    assert produced["end_ns"] == 1_609_459_200 * 10**9
    assert produced["layout"] == "binance"
    assert (produced["partitions"], produced["replication"]) == (6, 3)
    assert produced["create_topics"] is False
    assert produced["kafka"].profile == "latency"

    # The processor creates no metrics topic (HFTPIPE_CREATE_TOPICS=false)...
    assert invoke("process").exit_code == 0
    processed = workers["process"]
    assert processed["init"]["windows"] == ["1m", "1h"]
    assert processed["init"]["batch_max"] == 500
    assert processed["run"] == {"until_caught_up": True}
    assert "ensure_metrics_topic" not in processed
    # ... unless asked to, with the partitions and replication the variables give.
    assert invoke("process", "--create-topics").exit_code == 0
    assert processed["ensure_metrics_topic"] == {"replication": 3, "partitions": 6}

    assert invoke("load").exit_code == 0
    loaded = workers["load"]
    assert loaded["warehouse"] == "duckdb:///w.duckdb"
    assert (loaded["init"]["batch_max"], loaded["init"]["batch_seconds"]) == (7000, 2.5)
    assert loaded["init"]["job"] == "btc"
    assert loaded["run"] == {"until_caught_up": True}


def test_the_command_line_beats_the_environment(
    workers: dict[str, dict[str, Any]], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("HFTPIPE_SOURCE", "from-env.csv")
    clean_env.setenv("HFTPIPE_PARTITIONS", "6")
    clean_env.setenv("HFTPIPE_LAYOUT", "binance")
    clean_env.setenv("HFTPIPE_CREATE_TOPICS", "false")
    clean_env.setenv("HFTPIPE_KAFKA_PROFILE", "latency")
    clean_env.setenv("HFTPIPE_METRICS_PORT", "9")
    clean_env.setenv("HFTPIPE_LOAD_BATCH_MAX", "7000")
    result = invoke(
        "produce",
        "from-cli.csv",
        "--partitions",
        "2",
        "--layout",
        "auto",
        "--create-topics",
        "--profile",
        "throughput",
        *QUIET,
    )
    assert result.exit_code == 0, result.output
    init = workers["produce"]["init"]
    assert (init["source"], init["partitions"], init["layout"]) == (["from-cli.csv"], 2, "auto")
    assert init["create_topics"] is True
    assert init["kafka"].profile == "throughput"

    result = invoke(
        "process", "--partitions", "12", "--replication", "2", "--create-topics", *QUIET
    )
    assert result.exit_code == 0, result.output
    assert workers["process"]["ensure_metrics_topic"] == {"replication": 2, "partitions": 12}

    assert invoke("load", "--batch-max", "10", *QUIET).exit_code == 0
    assert workers["load"]["init"]["batch_max"] == 10


def test_a_processor_without_partitions_copies_the_bars_topic(
    workers: dict[str, dict[str, Any]],
) -> None:
    assert invoke("process", *QUIET).exit_code == 0
    assert workers["process"]["ensure_metrics_topic"] == {"replication": None, "partitions": None}


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "env", "option", "variable", "problem"),
    [
        (["produce", "x.csv", "--rate", "-1"], {}, "--rate", "HFTPIPE_RATE", "greater than 0"),
        (["produce", "x.csv"], {"HFTPIPE_RATE": "0"}, "--rate", "HFTPIPE_RATE", "greater than 0"),
        (["produce", "x.csv"], {"HFTPIPE_SPEED": "fast"}, "--speed", "HFTPIPE_SPEED", "'fast'"),
        (
            ["produce", "x.csv", "--rate", "10"],
            {"HFTPIPE_SPEED": "60x"},
            "--rate",
            "HFTPIPE_RATE",
            "not both",
        ),
        (
            ["produce", "x.csv", "--start", "2021-01-01", "--end", "2020-01-01"],
            {},
            "--end",
            "HFTPIPE_END",
            "not after the start",
        ),
        (["produce", "x.csv"], {"HFTPIPE_START": "yesterday"}, "--start", "HFTPIPE_START", "bad"),
        (
            ["produce", "x.csv", "--layout", "binance", "--mapping", "time=t:iso"],
            {},
            "--layout",
            "HFTPIPE_LAYOUT",
            "not both",
        ),
        (
            ["produce", "x.csv"],
            {"HFTPIPE_MAPPING": "time=t"},
            "--mapping",
            "HFTPIPE_MAPPING",
            "time=COLUMN:FORMAT",
        ),
        (["produce", "x.csv"], {"HFTPIPE_LAYOUT": "excel"}, "--layout", "HFTPIPE_LAYOUT", ""),
        (
            ["produce", "x.csv", "--partitions", "0"],
            {},
            "--partitions",
            "HFTPIPE_PARTITIONS",
            "greater than or equal to 1",
        ),
        (["produce", "x.csv"], {"HFTPIPE_JOB": "Not_A_Label"}, "--job", "HFTPIPE_JOB", "job"),
        (
            ["process"],
            {"HFTPIPE_PARTITIONS": "0"},
            "--partitions",
            "HFTPIPE_PARTITIONS",
            "greater than or equal to 1",
        ),
        (["process"], {"HFTPIPE_WINDOWS": "5m,5x"}, "--windows", "HFTPIPE_WINDOWS", "5x"),
        (["process", "--batch-max", "0"], {}, "--batch-max", "HFTPIPE_BATCH_MAX", "1"),
        (
            ["load"],
            {"HFTPIPE_LOAD_BATCH_MAX": "0"},
            "--batch-max",
            "HFTPIPE_LOAD_BATCH_MAX",
            "greater than or equal to 1",
        ),
        (
            ["load"],
            {"HFTPIPE_LOAD_BATCH_MAX": "many"},
            "--batch-max",
            "HFTPIPE_LOAD_BATCH_MAX",
            "integer",
        ),
        (
            ["load", "--warehouse", "postgres://db"],
            {},
            "--warehouse",
            "HFTPIPE_WAREHOUSE",
            "unsupported warehouse URL",
        ),
        (
            ["load"],
            {"HFTPIPE_LOAD_BATCH_SECONDS": "0"},
            "--batch-seconds",
            "HFTPIPE_LOAD_BATCH_SECONDS",
            "greater than 0",
        ),
        (["load"], {"HFTPIPE_LOG_JSON": "maybe"}, "--log-json", "HFTPIPE_LOG_JSON", ""),
    ],
)
def test_a_bad_value_names_the_option_and_the_variable(
    args: list[str],
    env: dict[str, str],
    option: str,
    variable: str,
    problem: str,
    workers: dict[str, dict[str, Any]],
    clean_env: pytest.MonkeyPatch,
) -> None:
    for var, value in env.items():
        clean_env.setenv(var, value)
    result = invoke(*args, *QUIET)
    assert result.exit_code == 2, result.output
    message = one_line(result.output)
    assert re.search(rf"Invalid value for '{option}'.*\(env var: '{variable}'\)", message), message
    assert problem in message
    assert "Traceback" not in message
    assert workers[args[0]] == {}, "the worker must not start"


def test_a_bad_metrics_port_from_the_environment(
    workers: dict[str, dict[str, Any]], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("HFTPIPE_METRICS_PORT", "70000")
    result = invoke("load")
    assert result.exit_code == 2
    assert "'--metrics-port' (env var: 'HFTPIPE_METRICS_PORT')" in result.output
    assert "65535" in result.output


def test_several_bad_values_are_reported_together(workers: dict[str, dict[str, Any]]) -> None:
    result = invoke("produce", "x.csv", "--partitions", "0", "--replication", "0", *QUIET)
    assert result.exit_code == 2
    assert "'--partitions' (env var: 'HFTPIPE_PARTITIONS')" in result.output
    assert "'--replication' (env var: 'HFTPIPE_REPLICATION')" in result.output


def test_a_bad_connection_variable_is_a_usage_error_naming_it(
    workers: dict[str, dict[str, Any]], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("HFTPIPE_KAFKA_SESSION_TIMEOUT_MS", "5")
    clean_env.setenv("HFTPIPE_KAFKA_SASL_PASSWORD", "hunter2")
    result = invoke("process", *QUIET)
    assert result.exit_code == 2
    assert "HFTPIPE_KAFKA_SESSION_TIMEOUT_MS" in one_line(result.output)
    assert "hunter2" not in result.output
    assert workers["process"] == {}


def test_a_missing_source_is_a_usage_error() -> None:
    result = invoke("produce", *QUIET)
    assert result.exit_code == 2
    assert "HFTPIPE_SOURCE" in result.output or "source" in result.output.lower()


# ------------------------------------------------------ the operator and the docs


def test_the_operator_reads_names_and_defaults_from_the_settings() -> None:
    assert workerapi.cli_envvar("load", "batch_max") == "HFTPIPE_LOAD_BATCH_MAX"
    assert workerapi.cli_envvar("produce", "source") == "HFTPIPE_SOURCE"
    assert workerapi.cli_default(cli.produce, "partitions") == 3
    assert workerapi.cli_default("process", "windows") == "5m,15m,1h,1d"
    assert workerapi.METRICS_PORTS == {"producer": 9100, "processor": 9101, "loader": 9102}
    with pytest.raises(LookupError):
        workerapi.cli_envvar("load", "no_such_option")
    for command in WORKERS:
        assert workerapi.cli_envvars(command) == {
            p.envvar for p in click_command(command).params if isinstance(p.envvar, str)
        }


def test_the_operators_configmap_holds_only_variables_some_worker_reads() -> None:
    spec = {
        "source": {"url": "s3://b/x.csv", "layout": "kaggle-btc", "symbol": "BTCUSD"},
        "pacing": {"rate": 100},
        "kafka": {"bootstrapServers": "kafka:9092", "topic": {"partitions": 4, "replicas": 3}},
        "redis": {"url": "redis://redis:6379/0"},
    }
    job = ReplayJob("btc", "markets", ReplayJobSpec.model_validate(spec))
    data = builders.build_settings_configmap(job)["data"]
    assert set(data) <= workerapi.all_envvars()
    assert data["HFTPIPE_LAYOUT"] == "kaggle-btc"
    assert (data["HFTPIPE_PARTITIONS"], data["HFTPIPE_REPLICATION"]) == ("4", "3")
    # The processor reads the same two for its metrics topic.
    assert {"HFTPIPE_PARTITIONS", "HFTPIPE_REPLICATION"} <= workerapi.cli_envvars("process")
    auto = ReplayJob(
        "btc", "markets", ReplayJobSpec.model_validate(spec | {"source": {"url": "x"}})
    )
    assert "HFTPIPE_LAYOUT" not in builders.build_settings_configmap(auto)["data"]


SETTINGS: tuple[type[BaseSettings], ...] = (
    *COMMAND_SETTINGS.values(),
    KafkaSettings,
    RedisSettings,
    SnowflakeSettings,
    OperatorSettings,
)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.__name__)
def test_every_setting_is_in_the_readme_table(settings: type[BaseSettings]) -> None:
    text = README.read_text()
    table = text[text.index("<!-- generated:settings -->") : text.index("<!-- /generated:settings")]
    rows = table.splitlines()
    for name in settings.model_fields:
        variables = " / ".join(f"`{v}`" for v in env_names(settings, name))
        assert any(row.startswith(f"| {variables} |") for row in rows), (settings, name)
    assert docs.settings_table() in text


# ------------------------------------------------ source formats (issue 11, point 8)


def test_the_source_format_options_reach_the_producer(
    workers: dict[str, dict[str, Any]], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("HFTPIPE_TIMEZONE", "America/New_York")
    result = invoke(
        *("produce", "dump.csv", "--delimiter", "tab", "--columns", "t, o,h,l,c,v"),
        *("--time-format", "%d.%m.%Y %H:%M:%S.%f", *QUIET),
    )
    assert result.exit_code == 0, result.output
    init = workers["produce"]["init"]
    assert (init["delimiter"], init["columns"]) == ("\t", ["t", "o", "h", "l", "c", "v"])
    assert (init["time_format"], init["timezone"]) == ("%d.%m.%Y %H:%M:%S.%f", "America/New_York")
    assert invoke("produce", "dump.csv", *QUIET).exit_code == 0  # the zone from the env only
    init = workers["produce"]["init"]
    assert (init["delimiter"], init["columns"], init["time_format"]) == (None, None, None)
    assert init["timezone"] == "America/New_York"


@pytest.mark.parametrize(
    ("args", "option", "problem"),
    [
        (["--delimiter", ":"], "--delimiter", "':'"),
        (["--columns", "a,,b"], "--columns", "an empty column name"),
        (["--columns", "a,b,a"], "--columns", "['a'] are named twice"),
        (["--time-format", "seconds"], "--time-format", "unknown time format 'seconds'"),
        (
            ["--mapping", "time=t:iso", "--time-format", "unix"],
            "--time-format",
            "not both",
        ),
        (["--timezone", "Mars/Olympus"], "--timezone", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_a_bad_source_format_option_names_itself(
    args: list[str], option: str, problem: str, workers: dict[str, dict[str, Any]]
) -> None:
    result = invoke("produce", "x.csv", *args, *QUIET)
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert problem in one_line(result.output)


def test_the_replayjobs_source_formats_reach_the_producer_through_the_configmap() -> None:
    spec = {
        "source": {
            "url": "/data/dump.csv",
            "symbol": "EURUSD",
            "delimiter": ";",
            "columns": ["Date", "Time", "Open", "High", "Low", "Close", "Volume"],
            "timeFormat": "%Y.%m.%d %H:%M",
            "timezone": "Europe/London",
        },
        "kafka": {"bootstrapServers": "kafka:9092"},
        "redis": {"url": "redis://redis:6379/0"},
    }
    job = ReplayJob("fx", "markets", ReplayJobSpec.model_validate(spec))
    data = builders.build_settings_configmap(job)["data"]
    assert set(data) <= workerapi.all_envvars()
    with pytest.MonkeyPatch.context() as env:
        for var, value in data.items():
            env.setenv(var, value)
        produce = ProduceSettings(source=job.spec.source.all_urls)
    assert (produce.delimiter_char, produce.column_list) == (
        ";",
        ["Date", "Time", "Open", "High", "Low", "Close", "Volume"],
    )
    assert (produce.time_format, produce.timezone) == ("%Y.%m.%d %H:%M", "Europe/London")
    plain = ReplayJob(
        "fx", "markets", ReplayJobSpec.model_validate(spec | {"source": {"url": "x"}})
    )
    names = ("HFTPIPE_DELIMITER", "HFTPIPE_COLUMNS", "HFTPIPE_TIME_FORMAT", "HFTPIPE_TIMEZONE")
    assert not set(names) & set(builders.build_settings_configmap(plain)["data"])


# ------------------------------------------------ trades (issue 11, point 6)


def test_bars_from_trades_reach_the_producer_from_the_cli_and_the_replayjob(
    workers: dict[str, dict[str, Any]],
) -> None:
    result = invoke("produce", "trades.csv", "--bars", "5m", "--layout", "trades", *QUIET)
    assert result.exit_code == 0, result.output
    assert workers["produce"]["init"]["bar_interval_ns"] == 300 * 1_000_000_000
    assert invoke("produce", "trades.csv", *QUIET).exit_code == 0
    assert workers["produce"]["init"]["bar_interval_ns"] is None
    bad = invoke("produce", "trades.csv", "--bars", "5 min", *QUIET)
    assert bad.exit_code == 2, bad.output
    assert "--bars" in bad.output
    assert "bad bar interval '5 min'" in one_line(bad.output)

    spec = {
        "source": {"url": "/data/trades.csv", "layout": "trades", "bars": "1m"},
        "kafka": {"bootstrapServers": "kafka:9092"},
        "redis": {"url": "redis://redis:6379/0"},
    }
    job = ReplayJob("ticks", "markets", ReplayJobSpec.model_validate(spec))
    data = builders.build_settings_configmap(job)["data"]
    assert (data["HFTPIPE_BARS"], data["HFTPIPE_LAYOUT"]) == ("1m", "trades")
    with pytest.MonkeyPatch.context() as env:
        for var, value in data.items():
            env.setenv(var, value)
        assert job.spec.source.url is not None
        produce = ProduceSettings(source=[job.spec.source.url])
    assert produce.bar_interval_ns == 60 * 1_000_000_000


def test_compression_overrides_the_profile_s_for_producers_only() -> None:
    from hftpipe_workers.settings import KafkaSettings  # noqa: PLC0415

    assert KafkaSettings().producer()["compression.type"] == "lz4"  # the throughput profile
    assert KafkaSettings(profile="latency").producer()["compression.type"] == "none"
    assert KafkaSettings(compression="none").producer()["compression.type"] == "none"
    assert KafkaSettings(profile="latency", compression="zstd").producer()["compression.type"] == (
        "zstd"
    )
    assert "compression.type" not in KafkaSettings(compression="none").consumer("g")


def test_the_producer_s_transactions_last_as_the_profile_or_the_setting_says() -> None:
    """A read_committed consumer sees a bar when its transaction commits: at 10,000
    bars/s the 100 ms of the throughput profile made the latency run's p50 76-108 ms."""
    from hftpipe_workers.pacing import Pacing  # noqa: PLC0415
    from hftpipe_workers.producer import Replay  # noqa: PLC0415
    from hftpipe_workers.settings import KafkaSettings  # noqa: PLC0415

    def replay(kafka: KafkaSettings, **kwargs: Any) -> Replay:
        return Replay(
            job="txn",
            source="unused.csv",
            bars_topic="txn.bars",
            dead_topic="txn.deadletter",
            kafka=kafka,
            pacing=Pacing("max"),
            progress=False,
            **kwargs,
        )

    assert replay(KafkaSettings()).transaction_seconds == 0.1
    assert replay(KafkaSettings(profile="latency")).transaction_seconds == 0.01
    assert replay(KafkaSettings(profile="latency", transaction_ms=250)).transaction_seconds == 0.25
    assert replay(KafkaSettings(), transaction_seconds=2.0).transaction_seconds == 2.0
    with pytest.raises(ValueError, match="transaction_ms"):
        KafkaSettings(transaction_ms=0)
