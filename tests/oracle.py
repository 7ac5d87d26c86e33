"""The pandas oracle of the processor's metrics, shared by the integration and e2e tiers.

Computed with pandas' time-based rolling windows, independently of
:mod:`hftpipe_workers.metrics`, and compared to what the processor wrote to Redis.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import redis

from hftpipe_workers import codec
from hftpipe_workers.contract import RedisKeys


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else np.nan


def oracle(frame: pd.DataFrame, window: str) -> pd.DataFrame:
    """Rolling metrics per symbol with pandas, independently of the engine: (t - W, t]."""
    window = _pandas_window(window)
    out = []
    for _symbol, group in frame.groupby("symbol", sort=False):
        g = group.set_index("time").sort_index()
        tp = (g["high"] + g["low"] + g["close"]) / 3

        def roll(series: pd.Series, w: str = window) -> Any:
            return series.rolling(w, closed="right")

        vol = roll(g["volume"]).sum()
        vwap = roll(tp * g["volume"]).sum() / vol
        out.append(
            pd.DataFrame(
                {
                    "symbol": g["symbol"],
                    "vwap": vwap.where(vol > 0),
                    "sma": roll(g["close"]).mean(),
                    # Not rolling().std(): pandas' online variance loses digits when a
                    # window's closes are nearly equal (1e-5 relative seen on real BTC
                    # bars); numpy's two-pass std over each window is the exact oracle.
                    "std": roll(g["close"]).apply(_std, raw=True),
                    "n": roll(g["close"]).count(),
                }
            )
        )
    return pd.concat(out).reset_index()


def _pandas_window(window: str) -> str:
    # pandas reads "5m" as five months: spell minutes "min".
    return window[:-1] + {"s": "s", "m": "min", "h": "h", "d": "D"}[window[-1]]


def trade_oracle(frame: pd.DataFrame, window: str) -> pd.DataFrame:
    """Rolling metrics of trades per symbol with pandas, independently of the engine.

    ``frame``: one row per trade, columns symbol, time (UTC), seq, price, size. A trade's
    window holds the symbol's trades with time in (t - W, t] up to and including it (in
    seq order: ticks share times, and pandas' time-based rolling window ends at the row
    itself); VWAP = sum(price * size) / sum(size), SMA and std over the trade prices."""
    out = []
    for _symbol, group in frame.groupby("symbol", sort=False):
        g = group.sort_values(["time", "seq"], kind="stable").set_index("time")

        def roll(series: pd.Series, w: str = _pandas_window(window)) -> Any:
            return series.rolling(w, closed="right")

        size = roll(g["size"]).sum()
        vwap = roll(g["price"] * g["size"]).sum() / size
        out.append(
            pd.DataFrame(
                {
                    "symbol": g["symbol"],
                    "seq": g["seq"],
                    "vwap": vwap.where(size > 0),
                    "sma": roll(g["price"]).mean(),
                    "std": roll(g["price"]).apply(_std, raw=True),
                    "n": roll(g["price"]).count(),
                }
            )
        )
    return pd.concat(out).reset_index()


def resample_bars(frame: pd.DataFrame, interval: str) -> pd.DataFrame:
    """OHLCV bars of ``interval`` per symbol from trades (columns symbol, time, seq,
    price, size), by pandas' resample: labelled by the interval's start, intervals without
    trades left out. Columns symbol, time, open, high, low, close, volume."""
    g = frame.sort_values(["time", "seq"], kind="stable").set_index("time")
    bars = (
        g.groupby("symbol")
        .resample(_pandas_window(interval), label="left", closed="left")
        .agg({"price": ["first", "max", "min", "last"], "size": ["sum", "count"]})
    )
    bars.columns = ["open", "high", "low", "close", "volume", "trades"]
    bars = bars[bars["trades"] > 0].drop(columns="trades")
    return bars.reset_index().sort_values(["symbol", "time"]).reset_index(drop=True)


def redis_history(client: redis.Redis, job: str) -> list[dict[str, Any]]:
    """Every bar's metrics from the Redis history, as plain dicts."""
    keys = RedisKeys(job)
    docs: list[dict[str, Any]] = []
    symbols = cast("set[bytes]", client.smembers(keys.symbols))
    for symbol in sorted(symbols):
        members = cast("list[bytes]", client.zrange(keys.history(symbol.decode()), 0, -1))
        for member in members:
            decoded = codec.decode_bar_metrics(member)
            windows = {
                m.window: {"vwap": m.vwap, "sma": m.sma, "std": m.std, "n": m.n_bars}
                for m in decoded.windows
            }
            docs.append(
                {
                    "symbol": decoded.symbol,
                    "ts_ns": decoded.ts_ns,
                    "seq": decoded.seq,
                    "windows": windows,
                }
            )
    return docs


def assert_close(actual: pd.Series, expected: pd.Series, what: str) -> None:
    a, e = actual.to_numpy(float), expected.to_numpy(float)
    assert np.array_equal(np.isnan(a), np.isnan(e)), f"{what}: nulls differ"
    ok = ~np.isnan(e)
    rel = np.abs(a[ok] - e[ok]) / np.maximum(np.abs(e[ok]), 1e-300)
    assert rel.max(initial=0) <= 1e-9, f"{what}: max relative error {rel.max()}"


def assert_window_matches(
    got: pd.DataFrame, expected: pd.DataFrame, window: str, what: str, *, counts: bool = True
) -> None:
    """The *window* metrics of the Redis history entries *got* (:func:`redis_history`, rows
    in the order of *expected*) equal the oracle's: VWAP, SMA and std as
    :func:`assert_close` says, and (with *counts*) the number of records in the window."""
    metrics = got["windows"].map(lambda w: w[window])
    for name in ("vwap", "sma", "std"):
        assert_close(
            metrics.map(lambda m, n=name: np.nan if m[n] is None else m[n]),
            expected[name],
            f"{what} {window} {name}",
        )
    if counts:
        assert (metrics.map(lambda m: m["n"]) == expected["n"]).all(), f"{what} {window} n"
