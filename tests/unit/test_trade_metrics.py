"""The rolling-window engine over trades (issue 11, point 6): price instead of typical
price, trades at equal times all counted, dedup by (time, seq), the same bits however cut."""

from __future__ import annotations

import itertools
import math

import numpy as np
import orjson
import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs is not in the lock

from hftpipe_workers.bars import NS_PER_SECOND
from hftpipe_workers.metrics import MetricsEngine, WindowColumns

SECOND = NS_PER_SECOND


def trades(n: int = 3000, seed: int = 7) -> pd.DataFrame:
    """Trades of one symbol with many equal times (bursts of ticks at one time)."""
    rng = np.random.default_rng(seed)
    gaps = rng.choice([0, 0, 0, 1, 2, 7, 90], size=n) * SECOND // 2
    ts = 1_700_000_000 * SECOND + np.cumsum(gaps)
    price = 42_000.0 * np.exp(np.cumsum(rng.normal(0, 2e-4, n)))
    price = np.round(price, 2)  # ticks of a cent: equal prices in a row happen
    size = np.round(rng.exponential(0.05, n), 6)
    size[rng.random(n) < 0.02] = 0.0
    return pd.DataFrame({"ts": ts, "seq": np.arange(n) * 3 + 5, "price": price, "size": size})


def join(a: WindowColumns, b: WindowColumns) -> WindowColumns:
    """Two runs' columns of one window, one after the other."""
    return WindowColumns(
        a.window, a.n_bars + b.n_bars, a.volume + b.volume, a.vwap + b.vwap, a.sma + b.sma,
        a.std + b.std, a.ret_std + b.ret_std,
    )  # fmt: skip


def run(engine: MetricsEngine, frame: pd.DataFrame, cuts: list[int]) -> list[WindowColumns]:
    """The frame through update_trades in runs cut at ``cuts``, columns joined."""
    out: list[WindowColumns] = []
    edges = [0, *cuts, len(frame)]
    for a, b in itertools.pairwise(edges):
        part = frame.iloc[a:b]
        rows, cols = engine.update_trades(
            "X", part.ts.tolist(), part.seq.tolist(), part.price.tolist(), part["size"].tolist()
        )
        assert rows == list(range(b - a))
        out = cols if not out else [join(o, c) for o, c in zip(out, cols, strict=True)]
    return out


def test_equal_times_are_all_counted_and_vwap_uses_the_price() -> None:
    engine = MetricsEngine(["1m"], session=False)
    t = 60 * SECOND
    rows, (w,) = engine.update_trades(
        "X", [t, t, t, t + SECOND], [0, 1, 2, 3], [10.0, 11.0, 13.0, 12.0], [1.0, 2.0, 0.5, 1.5]
    )
    assert rows == [0, 1, 2, 3]
    assert w.n_bars == [1, 2, 3, 4]
    assert w.volume == [1.0, 3.0, 3.5, 5.0]
    assert w.vwap[2] == (10.0 + 22.0 + 6.5) / 3.5
    assert w.vwap[3] == (10.0 + 22.0 + 6.5 + 18.0) / 5.0
    assert w.sma[3] == 11.5
    assert w.ret_std[1] is None
    assert w.ret_std[2] is not None  # 2 returns from 3 trades
    assert engine.ignored == 0


def test_a_trade_not_after_the_last_time_and_seq_is_ignored() -> None:
    engine = MetricsEngine(["1m"], session=False)
    t = 60 * SECOND
    engine.update_trades("X", [t, t], [4, 5], [10.0, 11.0], [1.0, 1.0])
    # Redelivered (same seqs), older, and at the same time with a smaller seq: ignored.
    rows, _ = engine.update_trades(
        "X", [t, t, t - 1, t, t], [4, 5, 9, 3, 6], [1.0, 1.0, 1.0, 1.0, 12.0], [1.0] * 5
    )
    assert rows == [4]
    assert engine.ignored == 4
    # Bars keep their rule: a bar at the last time is a duplicate.
    assert engine.update_columns("X", [t], [13.0], [13.0], [13.0], [1.0])[0] == []


def test_a_single_trade_gives_its_price_exactly() -> None:
    # (h + l + c) / 3 * v with h = l = c = p is not always p * v: the trade's price is used.
    engine = MetricsEngine(["1m"], session=False)
    p = 0.1 + 0.2
    _, (w,) = engine.update_trades("X", [0], [0], [p], [3.0])
    assert w.vwap == [p * 3.0 / 3.0]
    assert w.sma == [p]


def test_trades_match_pandas_rolling_over_trade_prices() -> None:
    frame = trades()
    engine = MetricsEngine(["30s", "5m"], session=True)
    columns = {c.window: c for c in run(engine, frame, [])}
    g = frame.assign(pv=frame.price * frame["size"]).set_index(pd.to_datetime(frame.ts))
    day = g.index.floor("D")
    for label, window in (("30s", "30s"), ("5m", "5min")):
        roll = g.rolling(window, closed="right")
        vol = roll["size"].sum()
        expected = {
            "vwap": (roll["pv"].sum() / vol).where(vol > 0),
            "sma": roll["price"].mean(),
            "n_bars": roll["price"].count(),
        }
        got = columns[label]
        for name, series in expected.items():
            a = np.array(getattr(got, name), dtype=float)
            np.testing.assert_allclose(a, series.to_numpy(float), rtol=1e-9, err_msg=name)
    session = g.groupby(day)
    vwap = session["pv"].cumsum() / session["size"].cumsum()
    np.testing.assert_allclose(
        np.array(columns["session"].vwap, dtype=float), vwap.to_numpy(float), rtol=1e-9
    )


def test_trades_give_the_same_bits_however_cut_and_across_a_snapshot() -> None:
    frame = trades(2000, seed=3)
    straight = MetricsEngine(["30s", "5m"])
    expected = run(straight, frame, [])
    rng = np.random.default_rng(1)
    cuts = sorted(rng.choice(np.arange(1, len(frame)), 40, replace=False).tolist())
    cut = MetricsEngine(["30s", "5m"])
    assert run(cut, frame, cuts) == expected
    assert cut.snapshot() == straight.snapshot()
    first = MetricsEngine(["30s", "5m"])
    head = run(first, frame.iloc[:777], [3, 400])
    resumed = MetricsEngine.restore(first.snapshot(), expect_windows=["30s", "5m"])
    tail = run(resumed, frame.iloc[777:], [1, 500])
    joined = [join(h, t) for h, t in zip(head, tail, strict=True)]
    assert [
        [[x.hex() if isinstance(x, float) else x for x in col] for col in w[1:]] for w in joined
    ] == [
        [[x.hex() if isinstance(x, float) else x for x in col] for col in w[1:]] for w in expected
    ]
    assert resumed.snapshot() == straight.snapshot()
    # Redelivering the last trades after a restore changes nothing.
    again = MetricsEngine.restore(straight.snapshot())
    assert again.update_trades(
        "X", frame.ts.tolist()[-5:], frame.seq.tolist()[-5:], [1.0] * 5, [1.0] * 5
    ) == ([], [])


def test_a_snapshot_without_a_last_seq_restores_as_before_trades() -> None:
    engine = MetricsEngine(["1m"], session=False)
    engine.update_columns("X", [SECOND], [2.0], [1.0], [1.5], [1.0])
    doc = orjson.loads(engine.snapshot())
    assert doc["symbols"]["X"]["last_seq"] == -1
    del doc["symbols"]["X"]["last_seq"]
    restored = MetricsEngine.restore(orjson.dumps(doc))
    assert restored.snapshot() == engine.snapshot()
    rows, (w,) = restored.update_trades("X", [SECOND, 2 * SECOND], [0, 1], [1.5, 1.6], [1.0, 1.0])
    assert rows == [0, 1]  # the first has the bar's time: (t, 0) > (t, -1)
    assert math.isclose(w.sma[-1], (1.5 + 1.5 + 1.6) / 3)
