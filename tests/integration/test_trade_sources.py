"""A file of trades through the real broker (issue 11, point 6).

A generated trades file (three symbols, bursts of ticks sharing a millisecond) is
replayed with ``hftpipe produce`` as a user would; the processor computes its windows
over the trades into Redis, which must equal an independent pandas oracle
(``tests/oracle.py``: VWAP = sum(price * size) / sum(size) over (t - W, t]) to 1e-9
relative; the loader stores the trades and their metrics in their own tables. With
``--bars 1m`` the bars on the topic must equal pandas' resample of the same trades, and
a replay killed mid-way must resume with every bar exactly once.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
import redis
from faults import assert_every_bar_once, committed_bars, kill_mid_replay, topic_records
from oracle import (
    assert_close,
    assert_window_matches,
    redis_history,
    resample_bars,
    trade_oracle,
)

from hftpipe_devstack.testing import CLI, process, produce
from hftpipe_workers.bars import Bar, Trade
from hftpipe_workers.contract import Topics
from hftpipe_workers.loader import Loader
from hftpipe_workers.settings import KafkaSettings, RedisSettings
from hftpipe_workers.warehouse import open_sink

NS = 1_000_000_000
START_MS = 1_709_337_000_000  # 2024-03-01T23:50:00Z: the trades cross midnight UTC
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def new_job() -> str:
    return f"trd-{uuid.uuid4().hex[:8]}"


def write_trades(path: Path, n: int, seed: int) -> pd.DataFrame:
    """A Binance-like trades file (``time`` in unix ms, ``qty``, a ``side`` column) of
    ``n`` trades, and what it means: one row per trade with its UTC time and its seq."""
    rng = np.random.default_rng(seed)
    # Bursts: most ticks share the millisecond of the one before (per file, so also
    # across symbols), some come seconds later.
    gaps = rng.choice([0, 0, 0, 1, 250, 4_000, 30_000], size=n)
    ms = START_MS + np.cumsum(gaps)
    symbol = rng.choice(SYMBOLS, size=n)
    base = np.array(
        [{"BTCUSDT": 62_000.0, "ETHUSDT": 3_400.0, "SOLUSDT": 130.0}[s] for s in symbol]
    )
    price = np.round(base * np.exp(np.cumsum(rng.normal(0, 3e-4, n))), 2)
    size = np.round(rng.exponential(0.4, n), 5)
    side = rng.choice(["buy", "sell"], size=n)
    with path.open("w") as f:
        f.write("time,symbol,price,qty,side\n")
        for row in zip(ms.tolist(), symbol, price.tolist(), size.tolist(), side, strict=True):
            f.write(f"{row[0]},{row[1]},{row[2]!r},{row[3]!r},{row[4]}\n")
    return pd.DataFrame(
        {
            "symbol": symbol,
            "time": pd.to_datetime(ms, unit="ms", utc=True),
            "seq": np.arange(n),
            "price": price,
            "size": size,
        }
    )


def assert_bars_equal_the_resample(records: list[Bar | Trade], trades: pd.DataFrame) -> None:
    bars = [r for r in records if isinstance(r, Bar)]
    assert len(bars) == len(records), "--bars replays bars only"
    assert [b.seq for b in bars] == list(range(len(bars)))
    got = pd.DataFrame(bars).sort_values(["symbol", "ts_ns"]).reset_index(drop=True)
    expected = resample_bars(trades, "1m")
    assert len(got) == len(expected)
    assert got["symbol"].tolist() == expected["symbol"].tolist()
    # Each bar's time is the start of its minute.
    assert got["ts_ns"].tolist() == expected["time"].dt.as_unit("ns").astype("int64").tolist()
    for name in ("open", "high", "low", "close"):
        assert got[name].tolist() == expected[name].tolist(), name
    np.testing.assert_allclose(got["volume"], expected["volume"], rtol=1e-12)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trade-sources")


def test_trades_replayed_as_trades_give_vwaps_equal_to_the_oracle(
    data: Path,
    subprocess_env: dict[str, str],
    kafka_bootstrap: str,
    redis_url: str,
) -> None:
    path = data / "trades.csv"
    trades = write_trades(path, 6_000, seed=11)
    assert trades["time"].duplicated().sum() > 2_000  # ticks share times, across symbols too
    job = new_job()
    report = produce(subprocess_env, job, path, "--speed", "max")
    assert report["produced"] == len(trades), report

    records = topic_records(kafka_bootstrap, job)
    assert all(isinstance(r, Trade) for r in records)
    assert [(r.symbol, r.seq) for r in records] == list(
        zip(trades["symbol"], trades["seq"], strict=True)
    )

    windows = ["1m", "5m"]
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    done = process(job, kafka, RedisSettings(url=redis_url), windows)
    assert done.bars_in == len(trades)
    assert done.ignored == 0, "trades sharing a time must not be taken for duplicates"

    docs = pd.DataFrame(redis_history(redis.Redis.from_url(redis_url), job))
    assert len(docs) == len(trades)
    got = docs.sort_values("seq").reset_index(drop=True)
    for window in windows:
        expected = trade_oracle(trades, window).sort_values("seq").reset_index(drop=True)
        assert (got["seq"] == expected["seq"]).all()
        assert_window_matches(got, expected, window, "trades")

    # The loader: trades and their metrics in their own tables, one row per trade (and
    # window), though trades share times; loading again adds nothing.
    with open_sink(data / "wh.duckdb") as sink:
        for _ in range(2):
            Loader(job=job, kafka=kafka, sink=sink, backend="duckdb").run(
                until_caught_up=True, idle_timeout=1.0
            )
        count = sink.query(
            "SELECT count(*) AS n, count(DISTINCT seq) AS k FROM trades WHERE job = $job",
            {"job": job},
        )
        assert count.iloc[0].tolist() == [len(trades), len(trades)]
        rows = sink.query(
            "SELECT seq, vwap FROM trade_metrics WHERE job = $job AND \"window\" = '5m' "
            "ORDER BY seq",
            {"job": job},
        )
        five = trade_oracle(trades, "5m").sort_values("seq")
        assert rows["seq"].tolist() == five["seq"].tolist()
        assert_close(rows["vwap"].astype(float), five["vwap"], "warehouse 5m vwap")


def test_bars_built_from_trades_equal_a_pandas_resample(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    path = data / "trades-for-bars.csv"
    trades = write_trades(path, 5_000, seed=12)
    job = new_job()
    report = produce(subprocess_env, job, path, "--bars", "1m", "--speed", "max")
    assert_bars_equal_the_resample(topic_records(kafka_bootstrap, job), trades)
    # Progress counts the source's rows (the trades), not the bars sent.
    assert report["rows_read"] == len(trades), report
    assert report["produced"] == len(resample_bars(trades, "1m")), report


def test_bars_from_trades_killed_mid_way_resume_with_every_bar_once(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    """Paced, SIGKILLed twice once bars are on the topic: a rerun adds the rest, every
    bar exactly once, and they are the bars of an uninterrupted run."""
    path = data / "trades-killed.csv"
    trades = write_trades(path, 40_000, seed=13)
    n_bars = len(resample_bars(trades, "1m"))
    assert n_bars > 1_500
    job = new_job()
    topic = Topics.for_job(job).bars
    cmd = [*CLI, "produce", str(path), "--job", job, "--bars", "1m", "--rate", "400"]
    cmd += ["--metrics-port", "-1"]
    kill_mid_replay(cmd, subprocess_env, kafka_bootstrap, topic, more=(300, 500))
    report = produce(subprocess_env, job, path, "--bars", "1m")
    assert report["skipped_already_in_kafka"] > 0, "the kills must land mid-replay"
    assert report["produced"] + report["skipped_already_in_kafka"] == n_bars, report
    assert_every_bar_once(committed_bars(kafka_bootstrap, topic), n_bars)
    assert_bars_equal_the_resample(topic_records(kafka_bootstrap, job), trades)
