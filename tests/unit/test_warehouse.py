"""The warehouse layer: one schema, idempotent MERGE writes, DuckDB and Snowflake.

DuckDB runs in-process on a file in tmp_path; Snowflake is fakesnow, which
patches ``snowflake.connector.connect`` and ``write_pandas`` and runs the real
sink code (SQL translated to DuckDB). Both are fast enough for the unit tier.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import fakesnow
import numpy as np
import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs not in the lock
import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from hftpipe_workers.snowflake_settings import env_var
from hftpipe_workers.warehouse import (
    BAR_METRICS,
    BARS,
    MOST_VOLATILE_DAYS,
    TABLES,
    BatchError,
    DuckDBSink,
    Sink,
    SnowflakeConfigError,
    SnowflakeSettings,
    SnowflakeSink,
    most_volatile_days,
    open_sink,
    parse_target,
)
from hftpipe_workers.warehouse.schema import (
    arrow_schema,
    create_table_sql,
    markdown_table,
    merge_sql,
    prepare_table,
    quote,
)
from hftpipe_workers.warehouse.snowflake_sink import connect_kwargs, pyformat

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BTC_FILE = SHARED_DATA / "btcusdt_1h_binance.csv.gz"

pytestmark = pytest.mark.filterwarnings(
    # fakesnow fetches DuckDB results as Arrow through the DB-API, which DuckDB 2 warns about.
    "ignore:Arrow output on a DB-API result:UserWarning"
)

T0 = pd.Timestamp("2024-03-01 00:00:00")
LOADED = datetime(2024, 3, 2, 12, 0, 0)


@pytest.fixture(autouse=True)
def _no_snowflake_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own HFTPIPE_SNOWFLAKE_* variables must not leak into the tests."""
    for name in SnowflakeSettings.model_fields:
        monkeypatch.delenv(env_var(name), raising=False)


def fake_settings(**overrides: Any) -> SnowflakeSettings:
    """Settings fakesnow accepts (it ignores credentials, but they must validate)."""
    values: dict[str, Any] = {
        "account": "fake",
        "user": "loader",
        "password": SecretStr("pw"),
        "database": "HFTPIPE",
        "schema": "MARKET",
    }
    return SnowflakeSettings(**(values | overrides))


@pytest.fixture(params=["duckdb", "snowflake"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sink]:
    """Each backend, tables created, through the public entry point."""
    if request.param == "duckdb":
        with open_sink(tmp_path / "wh.duckdb") as s:
            yield s
    else:
        with fakesnow.patch(), open_sink(fake_settings()) as s:
            yield s


def fetch(sink: Sink, sql: str) -> list[tuple[Any, ...]]:
    """Raw rows, as the database driver returns them (None for NULL)."""
    if isinstance(sink, DuckDBSink):
        return sink.connection.execute(sql).fetchall()
    assert isinstance(sink, SnowflakeSink)
    with sink.connection.cursor() as cur:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]


def count(sink: Sink, table: str) -> int:
    return int(fetch(sink, f"SELECT count(*) FROM {table}")[0][0])  # noqa: S608 - test's own names


def bars(n: int, *, job: str = "j1", symbol: str = "BTCUSDT", start: pd.Timestamp = T0) -> Any:
    """*n* valid minute bars."""
    close = 100.0 + np.arange(n, dtype="float64")
    return pd.DataFrame(
        {
            "job": job,
            "symbol": symbol,
            "bar_time": pd.date_range(start, periods=n, freq="min"),
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": np.full(n, 2.0),
            "seq": np.arange(n, dtype="int64"),
        }
    )


def arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def metrics(n: int, *, window: str = "5m") -> Any:
    """*n* metric rows; the first has zero volume, so its VWAPs and stds are undefined."""
    vwap = 100.0 + np.arange(n, dtype="float64")
    vwap[0] = np.nan
    return pd.DataFrame(
        {
            "job": "j1",
            "symbol": "BTCUSDT",
            "bar_time": pd.date_range(T0, periods=n, freq="min"),
            "window": window,
            "window_seconds": 300,
            "vwap": vwap,
            "sma_close": 100.0 + np.arange(n, dtype="float64"),
            "std_close": [None] + [0.5] * (n - 1),
            "std_log_return": pd.array([pd.NA] + [0.01] * (n - 1), dtype="Float64"),
            "bar_count": np.arange(1, n + 1, dtype="int64"),
            "session_vwap": vwap,
        }
    )


# --- the one schema -------------------------------------------------------------------


def test_schema_is_what_the_loader_and_readme_expect() -> None:
    assert set(TABLES) == {"bars", "bar_metrics", "trades", "trade_metrics"}
    # Trades of a symbol share times: their key holds the seq (issue 11, point 6).
    assert TABLES["trades"].key == ("job", "symbol", "trade_time", "seq")
    assert TABLES["trade_metrics"].key == ("job", "symbol", "trade_time", "seq", "window")
    assert BARS.key == ("job", "symbol", "bar_time")
    assert BAR_METRICS.key == ("job", "symbol", "bar_time", "window")
    assert BARS.names[-1] == BAR_METRICS.names[-1] == "loaded_at"
    assert [c.name for c in BAR_METRICS.columns if c.nullable] == [
        "vwap",
        "std_close",
        "std_log_return",
        "session_vwap",
    ]
    assert not any(c.nullable for c in BARS.columns)
    assert "| `vwap` | DOUBLE | DOUBLE | yes |" in markdown_table(BAR_METRICS)


@pytest.mark.parametrize("tbl", TABLES.values(), ids=list(TABLES))
def test_duckdb_ddl_creates_exactly_the_schema(tbl: Any) -> None:
    con = duckdb.connect()
    con.execute(create_table_sql(tbl, "duckdb"))
    described = con.execute(f'DESCRIBE "{tbl.name}"').fetchall()
    assert [(r[0], r[1], r[2] == "YES", r[3] == "PRI") for r in described] == [
        (c.name, c.duckdb_type, c.nullable, c.key) for c in tbl.columns
    ]
    con.execute(create_table_sql(tbl, "duckdb"))  # IF NOT EXISTS: running it again is a no-op


@pytest.mark.parametrize("tbl", TABLES.values(), ids=list(TABLES))
def test_snowflake_ddl_and_merge_name_every_column(tbl: Any) -> None:
    ddl = create_table_sql(tbl, "snowflake")
    for c in tbl.columns:
        not_null = "" if c.nullable else " NOT NULL"
        assert f'"{c.name.upper()}" {c.snowflake_type}{not_null},' in ddl
    merge = merge_sql(tbl, "snowflake", '"STAGE"')
    for c in tbl.columns:
        assert f's."{c.name.upper()}"' in merge
    keys = " AND ".join(f't."{k.upper()}" = s."{k.upper()}"' for k in tbl.key)
    assert f"ON {keys}\n" in merge


def test_snowflake_ddl_runs_under_fakesnow() -> None:
    with fakesnow.patch(), SnowflakeSink(fake_settings()) as s:
        s.ensure_tables()
        s.ensure_tables()
        cols = fetch(
            s,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'BAR_METRICS' ORDER BY ordinal_position",
        )
    assert [r[0] for r in cols] == [c.name.upper() for c in BAR_METRICS.columns]


# --- batch validation (pure) ----------------------------------------------------------


def test_prepare_table_sets_loaded_at_and_types() -> None:
    batch = prepare_table(BAR_METRICS, arrow(metrics(3)), LOADED)
    got = batch.table
    assert got.schema == arrow_schema(BAR_METRICS)
    assert got.column("loaded_at").to_pylist() == [LOADED] * 3
    assert got.column("vwap").is_null().to_pylist() == [True, False, False]
    assert got.column("std_close").is_null().to_pylist() == [True, False, False]
    assert batch.duplicates == 0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["seq", "volume"]), r"missing columns \['volume', 'seq'\]"),
        (lambda f: f.assign(extra=1), r"unexpected columns \['extra'\]"),
        (lambda f: f.assign(loaded_at=T0), r"loaded_at is set by the sink"),
        (
            lambda f: f.assign(high=np.nan),
            r"bars\.high: is null or NaN .* in 3 row\(s\), first at row 0",
        ),
        (
            lambda f: f.assign(low=[1.0, np.inf, 1.0]),
            r"bars\.low: is infinite in 1 row\(s\), first at row 1",
        ),
        (lambda f: f.assign(symbol=["A", None, "B"]), r"bars\.symbol: is null .* first at row 1"),
        (lambda f: f.assign(job=""), r"bars\.job: is an empty string"),
        (lambda f: f.assign(symbol=1), r"bars\.symbol: must hold strings, got Arrow type int64"),
        (lambda f: f.assign(close="1.5"), r"bars\.close: must be numeric"),
        (lambda f: f.assign(seq=[0.0, 1.5, 2.0]), r"bars\.seq: must be integers"),
        (lambda f: f.assign(bar_time="2024-01-01"), r"bars\.bar_time: must be an Arrow timestamp"),
        (
            lambda f: f.assign(bar_time=f["bar_time"] + pd.Timedelta(1, "ns")),
            r"bars\.bar_time: has sub-microsecond precision",
        ),
    ],
)
def test_bad_frames_are_refused_with_what_to_do(mutate: Any, message: str) -> None:
    """A DataFrame's faults, as its Arrow table (``arrow``) meets them."""
    with pytest.raises(BatchError, match=message):
        prepare_table(BARS, arrow(mutate(bars(3))), LOADED)


def test_missing_and_extra_columns_named_together() -> None:
    frame = bars(2).drop(columns=["open"]).assign(opn=1.0)
    with pytest.raises(BatchError) as err:
        prepare_table(BARS, arrow(frame), LOADED)
    msg = str(err.value)
    assert "missing columns ['open']" in msg
    assert "unexpected columns ['opn']" in msg
    assert "job, symbol, bar_time, open, high, low, close, volume, seq" in msg


def test_unknown_table_lists_the_known_ones(tmp_path: Path) -> None:
    with (
        open_sink(tmp_path / "x.duckdb") as s,
        pytest.raises(BatchError, match="bar_metrics, bars, trade_metrics, trades"),
    ):
        s.write("ticks", arrow(bars(1)))


def test_timestamps_become_naive_utc() -> None:
    frame = bars(2)
    frame["bar_time"] = pd.to_datetime(["2024-03-01 01:00", "2024-07-01 02:00"]).tz_localize(
        "Europe/Berlin"
    )
    got = prepare_table(BARS, arrow(frame), LOADED).table.column("bar_time").to_pylist()
    assert got == [datetime(2024, 3, 1, 0, 0), datetime(2024, 7, 1, 0, 0)]


def test_in_batch_duplicates_last_wins_pure() -> None:
    frame = pd.concat([bars(3), bars(3).assign(close=7.0).iloc[[1]]], ignore_index=True)
    batch = prepare_table(BARS, arrow(frame), LOADED)
    assert batch.duplicates == 1
    assert batch.table.column("close").to_pylist() == [100.0, 102.0, 7.0]  # kept where it came


# --- writes through both backends -----------------------------------------------------


def test_rewriting_a_batch_updates_and_never_duplicates(sink: Sink) -> None:
    batch = bars(50)
    assert sink.write("bars", arrow(batch)) == 50
    first_loaded = fetch(sink, "SELECT max(loaded_at) FROM bars")[0][0]
    assert sink.write("bars", arrow(batch)) == 50  # redelivered after a crash: updated
    assert count(sink, "bars") == 50

    changed = batch.assign(close=batch["close"] * 2, seq=batch["seq"] + 1000)
    assert sink.write("bars", arrow(changed)) == 50
    assert count(sink, "bars") == 50
    rows = fetch(sink, "SELECT close, seq, loaded_at FROM bars ORDER BY bar_time")
    assert [r[0] for r in rows] == (batch["close"] * 2).tolist()
    assert [int(r[1]) for r in rows] == list(range(1000, 1050))
    assert all(r[2] >= first_loaded for r in rows)

    # A batch overlapping the stored rows: 10 updated, 10 inserted.
    assert sink.write("bars", arrow(bars(20, start=T0 + pd.Timedelta(minutes=40)))) == 20
    assert count(sink, "bars") == 60


def test_keys_separate_jobs_symbols_and_windows(sink: Sink) -> None:
    sink.write("bars", arrow(bars(5, job="j1")))
    sink.write("bars", arrow(bars(5, job="j2")))
    sink.write("bars", arrow(bars(5, symbol="ETHUSDT")))
    assert count(sink, "bars") == 15
    sink.write("bar_metrics", arrow(metrics(4, window="5m")))
    sink.write("bar_metrics", arrow(metrics(4, window="15m")))
    sink.write("bar_metrics", arrow(metrics(4, window="5m")))
    assert count(sink, "bar_metrics") == 8


def test_in_batch_duplicate_keys_last_wins(sink: Sink) -> None:
    first = bars(3)
    again = bars(3).assign(close=[1.0, 2.0, 3.0])
    assert sink.write("bars", arrow(pd.concat([first, again], ignore_index=True))) == 3
    assert count(sink, "bars") == 3
    assert [r[0] for r in fetch(sink, "SELECT close FROM bars ORDER BY bar_time")] == [
        1.0,
        2.0,
        3.0,
    ]
    assert sink.duplicates_dropped == 3


def test_null_metrics_are_stored_as_null_never_nan(sink: Sink) -> None:
    sink.write("bar_metrics", arrow(metrics(4)))
    sink.write("bar_metrics", arrow(metrics(4)))  # and through the MATCHED/UPDATE path too
    rows = fetch(
        sink,
        "SELECT vwap, std_close, std_log_return, session_vwap, sma_close "
        "FROM bar_metrics ORDER BY bar_time",
    )
    assert rows[0][:4] == (None, None, None, None)
    assert rows[1] == (101.0, 0.5, 0.01, 101.0, 101.0)
    # count(col) skips NULL but would count a NaN: exactly the 3 defined values remain.
    counts = fetch(
        sink,
        "SELECT count(vwap), count(std_close), count(std_log_return), count(session_vwap) "
        "FROM bar_metrics",
    )
    assert [int(v) for v in counts[0]] == [3, 3, 3, 3]
    assert sink.query("SELECT vwap FROM bar_metrics WHERE vwap IS NULL").shape == (1, 1)


def test_timestamps_round_trip_as_naive_utc(sink: Sink) -> None:
    frame = bars(2)
    frame["bar_time"] = pd.to_datetime(
        ["2024-03-01 09:30:00.123456", "2024-03-01 09:31:00"], format="ISO8601"
    ).tz_localize("America/New_York")
    sink.write("bars", arrow(frame))
    got = [r[0] for r in fetch(sink, "SELECT bar_time FROM bars ORDER BY bar_time")]
    assert got == [datetime(2024, 3, 1, 14, 30, 0, 123456), datetime(2024, 3, 1, 14, 31)]
    assert all(t.tzinfo is None for t in got)


def test_empty_batch_writes_nothing(sink: Sink) -> None:
    assert sink.write("bars", arrow_schema(BARS).empty_table().drop_columns(["loaded_at"])) == 0
    assert count(sink, "bars") == 0


def test_duckdb_rows_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "wh.duckdb"
    with open_sink(f"duckdb:///{path}") as s:
        s.write("bars", arrow(bars(7)))
    with open_sink(path) as s:
        s.write("bars", arrow(bars(7)))
        assert count(s, "bars") == 7


def test_writing_before_ensure_tables_says_what_to_do(tmp_path: Path) -> None:
    with (
        open_sink(tmp_path / "x.duckdb", create_tables=False) as s,
        pytest.raises(RuntimeError, match=r"Call ensure_tables\(\) first"),
    ):
        s.write("bars", arrow(bars(1)))


def test_duckdb_merge_throughput_100k_bars(tmp_path: Path) -> None:
    """Measured, and reported in the test output; the floor only catches a collapse."""
    frame = bars(100_000)
    batch, changed = arrow(frame), arrow(frame.assign(close=frame["close"] + 1))
    with open_sink(tmp_path / "bench.duckdb") as s:
        t0 = time.perf_counter()
        assert s.write("bars", batch) == 100_000
        t1 = time.perf_counter()
        assert s.write("bars", changed) == 100_000
        t2 = time.perf_counter()
        assert count(s, "bars") == 100_000
    insert_rate, update_rate = 100_000 / (t1 - t0), 100_000 / (t2 - t1)
    print(f"DuckDB write of 100k bars: insert {insert_rate:,.0f}/s, update {update_rate:,.0f}/s")
    assert min(insert_rate, update_rate) > 50_000


# --- Snowflake settings ----------------------------------------------------------------


def _pem(tmp_path: Path, passphrase: bytes | None, name: str = "rsa_key.p8") -> tuple[Path, bytes]:
    """A fresh RSA key as a PEM file, and its PKCS#8 DER bytes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    path = tmp_path / name
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return path, der


def test_settings_without_credentials_name_the_variables() -> None:
    with pytest.raises(ValueError, match="Snowflake settings incomplete") as err:
        SnowflakeSettings()
    msg = str(err.value)
    for var in (
        "HFTPIPE_SNOWFLAKE_ACCOUNT",
        "HFTPIPE_SNOWFLAKE_USER",
        "HFTPIPE_SNOWFLAKE_DATABASE",
        "HFTPIPE_SNOWFLAKE_PASSWORD",
        "HFTPIPE_SNOWFLAKE_PRIVATE_KEY_PATH",
    ):
        assert var in msg


def test_settings_from_env_with_encrypted_key_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, der = _pem(tmp_path, b"s3cret")
    env = {
        "ACCOUNT": "myorg-acct",
        "USER": "loader",
        "PRIVATE_KEY_PATH": str(path),
        "PRIVATE_KEY_PASSPHRASE": "s3cret",
        "ROLE": "LOADER",
        "WAREHOUSE": "WH_XS",
        "DATABASE": "MARKET",
        "SCHEMA": "HFT",
        "PASSWORD": "",  # empty counts as unset
    }
    for name, value in env.items():
        monkeypatch.setenv(f"HFTPIPE_SNOWFLAKE_{name}", value)
    monkeypatch.setenv("SCHEMA", "not-this-one")  # an unprefixed variable is ignored
    settings = SnowflakeSettings()
    assert settings.schema_ == "HFT"
    assert settings.password is None
    kwargs = connect_kwargs(settings)
    assert kwargs["private_key"] == der
    assert "password" not in kwargs
    assert {
        k: kwargs[k] for k in ("account", "user", "role", "warehouse", "database", "schema")
    } == {
        "account": "myorg-acct",
        "user": "loader",
        "role": "LOADER",
        "warehouse": "WH_XS",
        "database": "MARKET",
        "schema": "HFT",
    }
    assert kwargs["session_parameters"] == {"TIMEZONE": "UTC"}
    assert "s3cret" not in repr(settings)
    assert SnowflakeSettings(schema="KW").schema_ == "KW"  # a keyword wins over the env


def test_key_pair_errors_say_which_variable_to_fix(tmp_path: Path) -> None:
    path, _ = _pem(tmp_path, b"right")
    base: dict[str, Any] = {"account": "a", "user": "u", "database": "d", "private_key_path": path}
    wrong = SnowflakeSettings(**base, private_key_passphrase=SecretStr("wrong"))
    with pytest.raises(
        SnowflakeConfigError, match="wrong HFTPIPE_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"
    ):
        connect_kwargs(wrong)
    with pytest.raises(
        SnowflakeConfigError, match="set or unset HFTPIPE_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"
    ):
        connect_kwargs(SnowflakeSettings(**base))
    with pytest.raises(ValueError, match=r"PRIVATE_KEY_PATH=.*missing\.p8 is not a file"):
        SnowflakeSettings(**(base | {"private_key_path": tmp_path / "missing.p8"}))
    with pytest.raises(ValueError, match="set only one way to authenticate"):
        SnowflakeSettings(**base, password=SecretStr("pw"))
    with pytest.raises(ValueError, match="PASSPHRASE is set but no private key is"):
        SnowflakeSettings(
            account="a", user="u", database="d", password=SecretStr("p"),
            private_key_passphrase=SecretStr("x"),
        )  # fmt: skip
    plain_path, plain_der = _pem(tmp_path, None, "plain.p8")
    pem_text = plain_path.read_text()
    inline = SnowflakeSettings(account="a", user="u", database="d", private_key=SecretStr(pem_text))
    assert connect_kwargs(inline)["private_key"] == plain_der


def test_snowflake_sink_connects_with_a_key_pair(tmp_path: Path) -> None:
    path, _ = _pem(tmp_path, None)
    settings = fake_settings(password=None, private_key_path=path)
    with fakesnow.patch(), open_sink(settings) as s:
        assert s.write("bars", arrow(bars(3))) == 3


# --- choosing a backend -----------------------------------------------------------------


def test_parse_target() -> None:
    assert parse_target("duckdb:///data/wh.duckdb") == Path("data/wh.duckdb")
    assert parse_target("duckdb:////var/lib/wh.duckdb") == Path("/var/lib/wh.duckdb")
    assert parse_target("duckdb:///:memory:") == ":memory:"
    assert parse_target("wh.duckdb") == Path("wh.duckdb")
    assert parse_target("snowflake://") is None
    for bad, message in [
        ("postgres://user:hunter2@db/x", "scheme 'postgres'"),
        ("snowflake://acct/db", "not the URL"),
        ("duckdb:///", "has no file path"),
        ("  ", "empty warehouse target"),
    ]:
        with pytest.raises(ValueError, match=message) as err:
            parse_target(bad)
        assert "hunter2" not in str(err.value)


def test_open_sink_snowflake_url_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"ACCOUNT": "a", "USER": "u", "PASSWORD": "p", "DATABASE": "D"}.items():
        monkeypatch.setenv(f"HFTPIPE_SNOWFLAKE_{name}", value)
    with fakesnow.patch(), open_sink("snowflake://") as s:
        assert isinstance(s, SnowflakeSink)
        assert s.settings.schema_ == "PUBLIC"
        assert s.write("bars", arrow(bars(2))) == 2


def test_open_sink_in_memory() -> None:
    with open_sink("duckdb:///:memory:") as s:
        assert isinstance(s, DuckDBSink)
        assert s.write("bar_metrics", arrow(metrics(2))) == 2


# --- queries ----------------------------------------------------------------------------


def _day(day: str, hourly: list[tuple[float, float]], volume: float, **kw: Any) -> Any:
    """Hourly bars of one day with the given (high, low) pairs."""
    n = len(hourly)
    highs = [h for h, _ in hourly]
    lows = [lo for _, lo in hourly]
    mid = [(h + lo) / 2 for h, lo in hourly]
    frame = bars(n, start=pd.Timestamp(day), **kw)
    frame["bar_time"] = pd.date_range(day, periods=n, freq="h")
    return frame.assign(open=mid, close=mid, high=highs, low=lows, volume=volume)


HAND_MADE = pd.concat(
    [
        _day("2024-01-01", [(105, 100), (110, 102)], 1.0),  # swing 10, 10 %
        _day("2024-01-02", [(200, 150), (190, 170)], 2.0),  # swing 50, 33.3 %
        _day("2024-01-03", [(101, 99)], 3.0),  # swing 2
        _day("2024-01-04", [(140, 120), (150, 125), (130, 100)], 0.5),  # swing 50, 50 % (tie)
        _day("2024-01-05", [(1000, 1)], 9.0, symbol="ETHUSDT"),  # another symbol
        _day("2024-01-06", [(1000, 1)], 9.0, job="other"),  # another job
    ],
    ignore_index=True,
)


def test_most_volatile_days_on_a_hand_made_set(sink: Sink) -> None:
    sink.write("bars", arrow(HAND_MADE))
    top = most_volatile_days(sink, "j1", "BTCUSDT", limit=3)
    assert list(top.columns) == ["day", "high", "low", "swing", "swing_pct", "volume"]
    assert top["day"].dt.strftime("%Y-%m-%d").tolist() == ["2024-01-02", "2024-01-04", "2024-01-01"]
    assert top["high"].tolist() == [200.0, 150.0, 110.0]
    assert top["low"].tolist() == [150.0, 100.0, 100.0]
    assert top["swing"].tolist() == [50.0, 50.0, 10.0]
    assert top["swing_pct"].tolist() == pytest.approx([100 / 3, 50.0, 10.0])
    assert top["volume"].tolist() == [4.0, 1.5, 2.0]
    assert len(most_volatile_days(sink, "j1", "BTCUSDT")) == 4
    assert most_volatile_days(sink, "nobody", "BTCUSDT").empty


def test_most_volatile_days_refuses_a_bad_limit(sink: Sink) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        most_volatile_days(sink, "j1", "BTCUSDT", limit=0)


def test_pyformat_keeps_the_query_runnable_on_snowflake() -> None:
    assert pyformat("SELECT 100 * x % 2 FROM t WHERE a = $job AND b = $1") == (
        "SELECT 100 * x %% 2 FROM t WHERE a = %(job)s AND b = $1"
    )
    assert "%(limit)s" in pyformat(MOST_VOLATILE_DAYS)


def test_most_volatile_days_on_real_btc_bars(tmp_path: Path) -> None:
    if not BTC_FILE.is_file():
        pytest.fail(
            f"{BTC_FILE} is missing: it ships with the repository's shared data; see "
            f"{SHARED_DATA / 'README.md'} for how to recreate it from the registry"
        )
    raw = pd.read_csv(BTC_FILE, usecols=["date", "open", "high", "low", "close", "volume"])
    raw["date"] = pd.to_datetime(raw["date"], format="%Y-%m-%d %H:%M:%S")
    frame = raw.rename(columns={"date": "bar_time"}).assign(
        job="btc-2017", symbol="BTCUSDT", seq=np.arange(len(raw), dtype="int64")
    )

    # The oracle: the same definition, computed by pandas from the file.
    daily = raw.groupby(raw["date"].dt.floor("D")).agg(
        high=("high", "max"), low=("low", "min"), volume=("volume", "sum")
    )
    daily["swing"] = daily["high"] - daily["low"]
    daily["swing_pct"] = 100 * daily["swing"] / daily["low"]
    daily = daily.rename_axis("day").reset_index()
    expected = daily.sort_values(["swing", "day"], ascending=[False, True]).head(4)

    with open_sink(tmp_path / "btc.duckdb") as s:
        assert isinstance(s, DuckDBSink)
        assert s.write("bars", arrow(frame)) == len(raw)
        got = most_volatile_days(s, "btc-2017", "BTCUSDT")
        # ... and MOST_VOLATILE_DAYS runs as written (as the README shows it) on DuckDB.
        as_written = s.connection.execute(
            MOST_VOLATILE_DAYS, {"job": "btc-2017", "symbol": "BTCUSDT", "limit": 4}
        ).fetchall()

    assert got["day"].tolist() == expected["day"].tolist()
    for col in ("high", "low", "swing", "swing_pct", "volume"):
        assert got[col].tolist() == pytest.approx(expected[col].tolist(), rel=1e-12), col
    assert [pd.Timestamp(r[0]) for r in as_written] == expected["day"].tolist()
    assert len(got) == 4


def test_quote_upper_cases_for_snowflake_only() -> None:
    assert quote("window", "duckdb") == '"window"'
    assert quote("window", "snowflake") == '"WINDOW"'


def test_categorical_text_and_aware_loaded_at_are_accepted() -> None:
    frame = bars(2).assign(symbol=pd.Categorical(["BTCUSDT", "ETHUSDT"]))
    aware = datetime.fromisoformat("2024-03-02T14:00:00+02:00")
    batch = prepare_table(BARS, arrow(frame), aware)
    assert batch.table.column("symbol").to_pylist() == ["BTCUSDT", "ETHUSDT"]
    assert batch.table.column("loaded_at").to_pylist() == [datetime(2024, 3, 2, 12, 0)] * 2


def test_the_loader_builds_tables_with_the_schema_columns() -> None:
    """Arrow tables the loader builds from Kafka values fit the one schema exactly."""
    from hftpipe_workers import codec  # noqa: PLC0415
    from hftpipe_workers.bars import Bar  # noqa: PLC0415
    from hftpipe_workers.loader import bars_table, metrics_table  # noqa: PLC0415
    from hftpipe_workers.metrics import WindowMetrics  # noqa: PLC0415

    bar = Bar("BTCUSDT", 1_700_000_000_000_000_000, 1.0, 2.0, 0.5, 1.5, 0.0, 7, 3)
    table, trades, refused = bars_table("j", [codec.encode_bar(bar)])
    assert trades.num_rows == 0
    assert tuple(table.column_names) == BARS.input_columns
    assert not refused
    five = WindowMetrics("BTCUSDT", "5m", bar.ts_ns, 7, 1, 0.0, None, 1.5, None, None)
    message = codec.encode_bar_metrics(bar, [five, five._replace(window="session")])
    metrics, trade_metrics, refused = metrics_table("j", [message])
    assert trade_metrics.num_rows == 0
    assert tuple(metrics.column_names) == BAR_METRICS.input_columns
    assert not refused
    assert metrics.num_rows == 1  # the session window is a column, not a row
    assert metrics.column("window_seconds").to_pylist() == [300]
    assert metrics.column("vwap").to_pylist() == [None]


# --- Arrow batches: the loader's bulk path ----------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.drop_columns(["seq"]), r"missing columns \['seq'\]"),
        (
            lambda t: t.set_column(4, "high", pa.array([np.nan] * 3)),
            r"bars\.high: is null or NaN .* in 3 row\(s\), first at row 0",
        ),
        (
            lambda t: t.set_column(5, "low", pa.array([1.0, np.inf, 1.0])),
            r"bars\.low: is infinite in 1 row\(s\), first at row 1",
        ),
        (
            lambda t: t.set_column(1, "symbol", pa.array(["A", None, "B"])),
            r"bars\.symbol: is null in 1 row\(s\), first at row 1",
        ),
        (lambda t: t.set_column(0, "job", pa.array(["", "j", "j"])), r"bars\.job: is an empty"),
        (lambda t: t.set_column(1, "symbol", pa.array([1, 2, 3])), r"bars\.symbol: must hold"),
        (lambda t: t.set_column(6, "close", pa.array(["1"] * 3)), r"bars\.close: must be numeric"),
        (lambda t: t.set_column(8, "seq", pa.array([0.0, 1.0, 2.0])), r"bars\.seq: must be int"),
        (
            lambda t: t.set_column(2, "bar_time", pa.array([0, 1000, 1], pa.timestamp("ns"))),
            r"bars\.bar_time: has sub-microsecond precision.* in 1 row\(s\), first at row 2",
        ),
        (lambda t: t.set_column(2, "bar_time", pa.array([0, 1, 2])), r"bars\.bar_time: must be"),
    ],
)
def test_bad_arrow_batches_are_refused_with_what_to_do(mutate: Any, message: str) -> None:
    with pytest.raises(BatchError, match=message):
        prepare_table(BARS, mutate(arrow(bars(3))), LOADED)


def test_an_arrow_batch_is_prepared_nan_as_null_zones_as_utc_last_row_of_a_key() -> None:
    """NaN becomes NULL, a zone's instants become naive UTC, the last row of a key wins."""
    frame = pd.concat([metrics(4), metrics(4).assign(sma_close=7.0).iloc[[1]]], ignore_index=True)
    vwap = pa.array(frame["vwap"].to_numpy(), from_pandas=False)
    assert vwap.null_count == 0  # a NaN, not a null, in the batch
    nan = arrow(frame).set_column(5, "vwap", vwap)
    got = prepare_table(BAR_METRICS, nan, LOADED)
    assert got.duplicates == 1
    assert got.table.schema == arrow_schema(BAR_METRICS)
    assert got.table.column("sma_close").to_pylist() == [100.0, 102.0, 103.0, 7.0]
    assert got.table.column("vwap").null_count == 1
    aware = arrow(bars(2)).set_column(
        2, "bar_time", pa.array([0, 3_600_000_000], pa.timestamp("us", tz="Europe/Berlin"))
    )
    times = prepare_table(BARS, aware, LOADED).table.column("bar_time").to_pylist()
    assert times == [datetime(1970, 1, 1, 0, 0), datetime(1970, 1, 1, 1, 0)]


def test_the_loader_sets_aside_values_it_cannot_store_and_stages_the_rest() -> None:
    from hftpipe_workers import codec  # noqa: PLC0415
    from hftpipe_workers.bars import Bar  # noqa: PLC0415
    from hftpipe_workers.loader import (  # noqa: PLC0415
        _metrics_table_slow,
        bars_table,
        metrics_table,
    )
    from hftpipe_workers.metrics import WindowMetrics  # noqa: PLC0415

    bar = Bar("BTCUSDT", 1_700_000_000_000_000_000, 1.0, 2.0, 0.5, 1.5, 3.0, 7, 3)
    values = [
        codec.encode_bar(bar),
        b"{not json",
        codec.encode_bar(bar._replace(ts_ns=bar.ts_ns + 1)),  # sub-microsecond
        codec.encode_bar(bar._replace(ts_ns=bar.ts_ns + 60_000_000_000, seq=8)),
    ]
    table, _, refused = bars_table("j", values)
    assert [(i, kind) for i, kind, _ in refused] == [(1, "bad_message"), (2, "time_precision")]
    assert "sub-microsecond" in refused[1][2]
    assert table.column("seq").to_pylist() == [7, 8]

    messages = []
    for k in range(3):
        b = bar._replace(ts_ns=bar.ts_ns + k * 60_000_000_000, seq=k)
        five = WindowMetrics("BTCUSDT", "5m", b.ts_ns, k, 1, 0.0, None, 1.5, None, None)
        hour = five._replace(window="1h", vwap=1.5 + k, std=0.1)
        windows = [five, hour, five._replace(window="session", vwap=2.0 + k)]
        messages.append(codec.encode_bar_metrics(b, windows[::-1] if k == 2 else windows))
    key = [("symbol", "ascending"), ("bar_time", "ascending"), ("window", "ascending")]
    fast, _, none = metrics_table("j", messages[:2])  # columnar: the same windows
    slow, _, none_slow = _metrics_table_slow("j", messages[:2])
    assert none == none_slow == []
    assert fast.sort_by(key).to_pylist() == slow.sort_by(key).to_pylist()
    assert fast.column("session_vwap").to_pylist() == [2.0, 3.0, 2.0, 3.0]
    mixed, _, none = metrics_table("j", messages)  # windows in another order: one by one
    assert none == []
    assert mixed.num_rows == 6
    assert mixed.sort_by(key).to_pylist()[:4] == fast.sort_by(key).to_pylist()
    with_bad, _, refused = metrics_table("j", [*messages, b"[]"])
    assert [(i, kind) for i, kind, _ in refused] == [(3, "bad_message")]
    assert with_bad.to_pylist() == mixed.to_pylist()
