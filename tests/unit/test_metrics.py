"""The rolling-window engine against a pandas oracle, exact recomputation, and its snapshots."""

from __future__ import annotations

import base64
import gzip
import io
import itertools
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs is not in the lock
import pytest

from hftpipe_workers.bars import NS_PER_SECOND, Bar
from hftpipe_workers.csvformat import BarBatch, BarReader
from hftpipe_workers.metrics import (
    DEFAULT_WINDOWS,
    SESSION,
    MetricsEngine,
    Window,
    WindowColumns,
    WindowMetrics,
    parse_window,
)

SAMPLE = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "btcusdt_1h_binance.csv.gz"
)
MINUTE = 60 * NS_PER_SECOND
RTOL = 1e-9
FIELDS = ("n_bars", "volume", "vwap", "sma", "std", "ret_std")
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def sample_path() -> Path:
    if not SAMPLE.is_file():
        pytest.fail(
            f"the shared BTC sample is missing: expected {SAMPLE} "
            "(see shared/data/README.md for how to recreate it)"
        )
    return SAMPLE


def real_btc_batch() -> BarBatch:
    with gzip.open(sample_path(), "rb") as f:
        chunks = [ch.bars for ch in BarReader(f, symbol="BTCUSDT", block_bytes=1 << 30)]
    assert len(chunks) == 1
    return chunks[0]


# -- the oracle: pandas rolling windows, computed independently --------------------


def window_std(values: Floats, starts: Ints, ends: Ints) -> Floats:
    """Sample stdev (ddof=1) of ``values[s:e]`` for every window, each from scratch.

    Two passes with numpy's pairwise sums; NaN when a window has fewer than 2
    values, exactly 0.0 when they are all equal. pandas' own rolling ``std()``
    cannot serve as the oracle: it updates one running sum along the whole
    series and drifts -- on the real BTC file by up to 1.6e-5 relative for
    4-hour windows (pandas-dev/pandas#60053, #46049).
    """
    out = np.full(len(starts), np.nan)
    width = int((ends - starts).max(initial=0))
    if width < 2:
        return out
    offsets = np.arange(width)
    step = max(1, 2_000_000 // width)
    for a in range(0, len(starts), step):
        s, e = starts[a : a + step], ends[a : a + step]
        idx = s[:, None] + offsets[None, :]
        inside = idx < e[:, None]
        x = np.where(inside, values[np.minimum(idx, len(values) - 1)], np.nan)
        n = inside.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # windows of NaN only
            mean = np.nanmean(x, axis=1)
            std = np.sqrt(np.nansum((x - mean[:, None]) ** 2, axis=1) / (n - 1))
            flat = np.nanmax(x, axis=1) == np.nanmin(x, axis=1)
        out[a : a + step] = np.where(n < 2, np.nan, np.where(flat, 0.0, std))
    return out


def oracle(frame: pd.DataFrame, labels: Sequence[str]) -> dict[str, dict[str, Floats]]:
    """Per window label, per metric: one value per row of ``frame`` (NaN = undefined).

    ``frame`` has columns symbol, ts_ns, high, low, close, volume, in stream
    order. Counts, sums and means come from pandas' rolling windows on a
    DatetimeIndex; standard deviations from :func:`window_std` over the same
    windows (their bounds are checked against pandas' counts).
    """
    out = {lab: {f: np.full(len(frame), np.nan) for f in FIELDS} for lab in labels}
    for _, g in frame.groupby("symbol", sort=False):
        rows = g.index.to_numpy()
        ts = g["ts_ns"].to_numpy()
        idx = pd.DatetimeIndex(pd.to_datetime(ts, unit="ns", utc=True))
        close = pd.Series(g["close"].to_numpy(), index=idx)
        vol = pd.Series(g["volume"].to_numpy(), index=idx)
        tpv = pd.Series(((g["high"] + g["low"] + g["close"]) / 3.0 * g["volume"]).to_numpy(), idx)
        nonzero = (vol > 0).astype(float)
        ret = np.log(close).diff().to_numpy()  # ret[j]: from bar j - 1 to bar j
        ends = np.arange(1, len(g) + 1)
        for label in labels:
            res = out[label]
            if label == SESSION:
                day = idx.floor("D")
                starts = np.searchsorted(ts, day.asi8, side="left")
                n = close.groupby(day).cumcount().to_numpy() + 1
                vsum = vol.groupby(day).cumsum()
                psum = tpv.groupby(day).cumsum()
                nz = nonzero.groupby(day).cumsum()
                sma = close.groupby(day).cumsum() / n
            else:
                width = pd.Timedelta(int(parse_window(label).ns), "ns")
                starts = np.searchsorted(ts, ts - width.value, side="right")  # (t - W, t]
                n = close.rolling(width, closed="right").count().to_numpy()
                vsum = vol.rolling(width, closed="right").sum()
                psum = tpv.rolling(width, closed="right").sum()
                nz = nonzero.rolling(width, closed="right").sum()
                sma = close.rolling(width, closed="right").mean()
            assert (n == ends - starts).all(), f"window bounds of {label} disagree with pandas"
            has_volume = nz.to_numpy() > 0
            res["n_bars"][rows] = n
            res["volume"][rows] = np.where(has_volume, vsum.to_numpy(), 0.0)
            res["vwap"][rows] = np.where(has_volume, (psum / vsum).to_numpy(), np.nan)
            res["sma"][rows] = sma.to_numpy()
            res["std"][rows] = window_std(close.to_numpy(), starts, ends)
            # A return belongs to a window when both its bars do: returns s+1 .. e-1.
            res["ret_std"][rows] = window_std(ret, starts + 1, ends)
    return out


def as_arrays(
    records: Iterable[WindowMetrics], labels: Sequence[str]
) -> dict[str, dict[str, Floats]]:
    """Engine records (bar-major, windows in order) as arrays like the oracle's."""
    values = np.array([r[4:] for r in records], dtype=np.float64)  # None becomes NaN
    k = len(labels)
    return {lab: {f: values[i::k, j] for j, f in enumerate(FIELDS)} for i, lab in enumerate(labels)}


def assert_matches(
    ours: dict[str, dict[str, Floats]], expected: dict[str, dict[str, Floats]], rtol: float = RTOL
) -> None:
    """Every metric of every window equal to ``rtol`` relative, and undefined (NaN) alike."""
    for label, metrics in expected.items():
        for field, want in metrics.items():
            got = ours[label][field]
            what = f"window {label}, {field}"
            differ = np.flatnonzero(np.isnan(got) != np.isnan(want))
            assert len(differ) == 0, f"{what}: undefined at different bars, e.g. rows {differ[:5]}"
            with np.errstate(invalid="ignore"):
                bad = np.flatnonzero(np.abs(got - want) > rtol * np.abs(want))
            assert len(bad) == 0, (
                f"{what}: {len(bad)} values differ by more than {rtol} relative, e.g. "
                f"row {bad[0]}: {got[bad[0]]!r} instead of {want[bad[0]]!r}"
            )


def frame_of(batch: BarBatch) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": batch.symbol,
            "ts_ns": batch.ts_ns,
            "high": batch.high,
            "low": batch.low,
            "close": batch.close,
            "volume": batch.volume,
        }
    )


def run_scalar(engine: MetricsEngine, bars: Iterable[Bar]) -> list[WindowMetrics]:
    return [m for bar in bars for m in engine.update(bar)]


# -- window parsing and configuration ------------------------------------------------


def test_window_labels() -> None:
    assert parse_window("30s") == Window("30s", 30 * NS_PER_SECOND)
    assert parse_window("15m").ns == 15 * MINUTE
    assert parse_window("4h").ns == 240 * MINUTE
    assert parse_window("1d").ns == 1440 * MINUTE
    assert parse_window("session").is_session
    for bad in ("5", "m5", "0m", "1w", "1.5h", ""):
        with pytest.raises(ValueError, match="expected a positive whole number followed by s, m"):
            parse_window(bad)
    assert MetricsEngine().labels == (*DEFAULT_WINDOWS, SESSION)
    assert MetricsEngine(["1h"], session=False).labels == ("1h",)
    with pytest.raises(ValueError, match="the same length twice"):
        MetricsEngine(["60m", "1h"])


# -- small cases worked by hand ------------------------------------------------------


def bar(t_min: float, close: float, volume: float = 1.0, symbol: str = "X", **kw: float) -> Bar:
    high = kw.get("high", close)
    low = kw.get("low", close)
    return Bar(symbol, int(t_min * MINUTE), close, high, low, close, volume, seq=int(t_min))


def test_window_edges_are_open_on_the_left_and_closed_on_the_right() -> None:
    engine = MetricsEngine(["2m"], session=False)
    counts = [engine.update(bar(t, 100.0))[0].n_bars for t in (0, 1, 2, 5, 6.5)]
    # At 2m the bar at 0 is exactly W old: out. At 5m, nothing else is younger than 2m.
    assert counts == [1, 2, 2, 1, 2]


def test_hand_computed_metrics_and_the_return_rule() -> None:
    engine = MetricsEngine(["3m"], session=False)
    closes = [100.0, 110.0, 99.0, 120.0]
    vols = [1.0, 2.0, 0.0, 3.0]
    out = [
        engine.update(bar(t, c, v, high=c + 3, low=c - 3))[0]
        for t, c, v in zip(range(4), closes, vols, strict=True)
    ]
    last = out[-1]  # window (0m, 3m]: bars 1, 2, 3
    assert last.n_bars == 3
    assert last.volume == 5.0
    assert last.vwap == pytest.approx((110.0 * 2 + 120.0 * 3) / 5, rel=1e-15)
    assert last.sma == pytest.approx((110 + 99 + 120) / 3, rel=1e-15)
    assert last.std == pytest.approx(float(np.std([110.0, 99.0, 120.0], ddof=1)), rel=1e-14)
    # Two returns (bar 1 -> 2, 2 -> 3); the return 0 -> 1 has its first bar outside.
    r1, r2 = math.log(99 / 110), math.log(120 / 99)
    assert last.ret_std == pytest.approx(abs(r2 - r1) / math.sqrt(2), rel=1e-13)
    assert out[1].ret_std is None  # one return
    assert out[2].ret_std is not None  # two returns


def test_zero_volume_windows_have_no_vwap() -> None:
    engine = MetricsEngine(["5m"])
    first = engine.update(bar(0, 10.0, 2.0))
    assert [m.vwap for m in first] == [10.0, 10.0]
    quiet, session = [engine.update(bar(t, 10.0, 0.0)) for t in range(5, 30)][-1]
    assert (quiet.window, quiet.n_bars, quiet.volume, quiet.vwap) == ("5m", 5, 0.0, None)
    assert session.vwap == 10.0  # the session still holds the first bar's volume
    assert quiet.std == 0.0  # flat closes: exactly 0, not 1e-17
    assert quiet.ret_std == 0.0
    woke = engine.update(bar(30, 12.0, 4.0))
    assert woke[0].vwap == 12.0


def test_bars_not_after_the_last_are_ignored_and_counted() -> None:
    engine = MetricsEngine(["5m"], session=False)
    first = [engine.update(bar(t, 100.0 + t)) for t in range(5)]
    assert engine.update(bar(4, 1.0)) == []  # a redelivery
    assert engine.update(bar(2, 1.0)) == []  # an older bar
    assert engine.ignored == 2
    after = engine.update(bar(5, 105.0))
    clean = MetricsEngine(["5m"], session=False)
    assert [clean.update(bar(t, 100.0 + t)) for t in range(5)] == first
    assert clean.update(bar(5, 105.0)) == after
    batch = BarBatch.from_bars([bar(5, 1.0), bar(6, 106.0), bar(6, 2.0)])
    result = engine.update_batch(batch)
    assert result.row.tolist() == [1]
    assert engine.ignored == 4


# -- the pandas oracle -----------------------------------------------------------------


def test_real_btc_hourly_matches_pandas() -> None:
    batch = real_btc_batch()
    windows = ["1h", "4h", "1d"]
    engine = MetricsEngine(windows)
    want = oracle(frame_of(batch), engine.labels)
    scalar = run_scalar(engine, batch.bars())
    assert len(scalar) == len(batch) * 4
    assert_matches(as_arrays(scalar, engine.labels), want)
    vector = MetricsEngine(windows)
    results = [
        vector.update_batch(batch.take(np.arange(i, min(i + 5000, len(batch)))))
        for i in range(0, len(batch), 5000)
    ]
    assert_matches(as_arrays((r for res in results for r in res.records()), engine.labels), want)
    # A 1h window of hourly bars holds one bar (no stdev, SMA = close), except
    # once: where the bars that were off the hour come back onto it.
    one = as_arrays(scalar, engine.labels)["1h"]
    single = one["n_bars"] == 1
    assert int((~single).sum()) == 1
    assert np.isnan(one["std"][single]).all()
    assert (one["sma"][single] == batch.close[single]).all()


def minute_csv(seed: int = 3) -> str:
    """Three symbols of minute bars, interleaved in time, with gaps and idle minutes.

    Idle minutes have zero volume and a flat price, as in the Kaggle set; one
    symbol stops for 3 hours and again for 30 hours (longer than every window).
    """
    rng = np.random.default_rng(seed)
    start = 1_704_067_200 // 60  # 2024-01-01, in minutes
    frames = []
    for symbol, price in (("BTCUSD", 42_000.0), ("ETHUSD", 2_300.0), ("DOGEUSD", 0.0812)):
        minutes = np.arange(start, start + 4 * 1440)
        keep = rng.random(len(minutes)) > 0.1
        if symbol == "ETHUSD":
            keep &= ~((minutes >= start + 600) & (minutes < start + 780))
            keep &= ~((minutes >= start + 2000) & (minutes < start + 3800))
        minutes = minutes[keep]
        n = len(minutes)
        idle = rng.random(n) < 0.15
        idle[200:260] = True  # an hour without a trade
        moves = np.where(idle, 0.0, rng.normal(0.0, 0.0015, n))
        close = np.round(price * np.exp(np.cumsum(moves)), 8)
        opens = np.concatenate(([close[0]], close[:-1]))
        spread = np.where(idle, 0.0, np.abs(rng.normal(0.0, 0.001, n)))
        high = np.round(np.maximum(opens, close) * (1 + spread), 8)
        low = np.round(np.minimum(opens, close) * (1 - spread), 8)
        volume = np.where(idle, 0.0, np.round(rng.lognormal(0.0, 2.0, n), 6))
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": pd.to_datetime(minutes * 60, unit="s").strftime(
                        "%Y-%m-%dT%H:%M:%SZ"
                    ),
                    "symbol": symbol,
                    "open": opens,
                    "high": high,
                    "low": low,
                    "close": close,
                    "volume": volume,
                    "minute": minutes,
                }
            )
        )
    data = pd.concat(frames).sort_values(["minute", "symbol"], kind="stable")
    return str(data.drop(columns="minute").to_csv(index=False))


def test_generated_minute_bars_with_gaps_and_idle_minutes_match_pandas() -> None:
    text = minute_csv()
    reader = BarReader(io.StringIO(text), source="minutes.csv")
    assert reader.layout.name == "generic-iso"
    chunks = list(reader)
    assert all(ch.rejected == [] for ch in chunks)
    batch = chunks[0].bars
    assert len(chunks) == 1
    engine = MetricsEngine()
    # The oracle reads the file itself, with pandas.
    raw = pd.read_csv(io.StringIO(text), float_precision="round_trip")
    raw["ts_ns"] = pd.to_datetime(raw["timestamp"], utc=True).astype("int64")
    want = oracle(raw, engine.labels)
    scalar = run_scalar(engine, batch.bars())
    ours = as_arrays(scalar, engine.labels)
    assert_matches(ours, want)
    vector = MetricsEngine().update_batch(batch)
    assert_matches(as_arrays(vector.records(), engine.labels), want)
    # The data did exercise the edge cases.
    assert np.isnan(ours["5m"]["vwap"]).sum() > 100
    assert (ours["15m"]["std"] == 0.0).sum() > 10
    assert (ours["1d"]["n_bars"] == 1).sum() >= 2  # windows restarted after the 30 h gap


# -- numerical stability over a long stream ------------------------------------------


def long_stream(n: int, seed: int = 11) -> BarBatch:
    """``n`` minute bars whose price climbs a thousandfold with volumes over 12 decades."""
    rng = np.random.default_rng(seed)
    minutes = np.cumsum(np.where(rng.random(n) < 0.05, rng.integers(2, 90, n), 1))
    close = 100.0 * np.exp(np.cumsum(rng.normal(math.log(1000) / n, 0.002, n)))
    spread = np.abs(rng.normal(0, 0.001, n))
    volume = rng.lognormal(0.0, 3.0, n) * (rng.random(n) > 0.2)
    volume[rng.random(n) < 1e-4] *= 1e6
    return BarBatch(
        symbol=np.full(n, "X", dtype=object),
        ts_ns=(minutes * MINUTE).astype(np.int64),
        open=close,
        high=close * (1 + spread),
        low=close * (1 - spread),
        close=close,
        volume=volume,
        seq=np.arange(n, dtype=np.int64),
        line=np.zeros(n, dtype=np.int64),
    )


def fresh(
    batch: BarBatch, i: int, width_ns: int
) -> tuple[float | None, float, float | None, float | None]:
    """vwap, sma, std, ret_std of the window ending at bar ``i``, from scratch (fsum)."""
    s = int(np.searchsorted(batch.ts_ns, batch.ts_ns[i] - width_ns, side="right"))
    c = batch.close[s : i + 1].tolist()
    v = batch.volume[s : i + 1].tolist()
    hi, lo = batch.high[s : i + 1].tolist(), batch.low[s : i + 1].tolist()
    tpv = [(h + low + cl) / 3.0 * vol for h, low, cl, vol in zip(hi, lo, c, v, strict=True)]
    vsum = math.fsum(v)
    mean = math.fsum(c) / len(c)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in c) / (len(c) - 1)) if len(c) > 1 else None
    rets = [math.log1p((b - a) / a) for a, b in itertools.pairwise(c)]
    rstd = None
    if len(rets) > 1:
        rmean = math.fsum(rets) / len(rets)
        rstd = math.sqrt(math.fsum((x - rmean) ** 2 for x in rets) / (len(rets) - 1))
    return (math.fsum(tpv) / vsum if vsum > 0 else None), mean, std, rstd


def test_a_million_bars_do_not_drift() -> None:
    n = 1_000_000
    batch = long_stream(n)
    windows = ["1h", "1d"]
    engine = MetricsEngine(windows, session=False)
    labels = engine.labels
    rows: list[tuple[float | None, ...]] = []
    update = engine.update
    for b in batch.bars():
        hour, day = update(b)
        rows.append((hour.vwap, hour.std, hour.ret_std, day.vwap, day.std, day.ret_std))
    scalar = np.array(rows, dtype=np.float64)  # None becomes NaN
    del rows
    # Every value against the double-double batch path (an independent algorithm)...
    vector = MetricsEngine(windows, session=False).update_batch(batch)
    for k, label in enumerate(labels):
        for j, field in enumerate(("vwap", "std", "ret_std")):
            got, want = scalar[:, 3 * k + j], getattr(vector, field)[:, k]
            assert (np.isnan(got) == np.isnan(want)).all(), f"{label} {field}: undefined differ"
            ok = ~np.isnan(want)
            rel = np.abs(got[ok] - want[ok]) / np.abs(want[ok])
            assert rel.max() < RTOL, f"{label} {field}: worst relative error {rel.max():.3g}"
    # ...and samples, the last bars among them, against an exact recomputation.
    rng = np.random.default_rng(5)
    for i in [*rng.integers(2, n, 300).tolist(), n - 1]:
        for k, label in enumerate(labels):
            width = parse_window(label).ns
            vwap, sma, std, rstd = fresh(batch, i, width)
            assert vector.sma[i, k] == pytest.approx(sma, rel=RTOL)
            for j, exact in enumerate((vwap, std, rstd)):
                got = scalar[i, 3 * k + j]
                assert (exact is None) == math.isnan(got)
                if exact is not None:
                    assert got == pytest.approx(exact, rel=RTOL), (i, label, j)


def test_numpy_cumsum_adds_left_to_right() -> None:
    # The batch path derives exact rounding errors from cumsum's partial sums.
    x = np.random.default_rng(1).lognormal(0, 5, 100_000)
    partial = np.cumsum(x)
    assert (partial[1:] == partial[:-1] + x[1:]).all()


# -- snapshots ---------------------------------------------------------------------------


def minute_batch() -> BarBatch:
    return next(iter(BarReader(io.StringIO(minute_csv(seed=8)), source="m.csv"))).bars


def test_restoring_a_snapshot_continues_bit_for_bit_one_bar_at_a_time() -> None:
    bars = list(minute_batch().bars())
    straight = MetricsEngine()
    expected = run_scalar(straight, bars)
    width = len(straight.labels)
    for cut in (1, 977, 5000, len(bars) // 2, len(bars) - 3):
        first = MetricsEngine()
        run_scalar(first, bars[:cut])
        resumed = MetricsEngine.restore(first.snapshot(), expect_windows=DEFAULT_WINDOWS)
        assert run_scalar(resumed, bars[cut:]) == expected[cut * width :]
        assert resumed.snapshot() == straight.snapshot()


def test_restoring_a_snapshot_continues_bit_for_bit_in_batches() -> None:
    batch = minute_batch()
    bounds = [0, 3, 700, 701, 4000, 9000, len(batch)]
    steps = [batch.take(np.arange(a, b)) for a, b in itertools.pairwise(bounds)]
    straight = MetricsEngine()
    resumed = MetricsEngine()
    for k, step in enumerate(steps):
        # Mix both paths: batches, and every third step bar by bar.
        if k % 3 == 2:
            want: list[WindowMetrics] = run_scalar(straight, step.bars())
            got = run_scalar(resumed, step.bars())
        else:
            want = list(straight.update_batch(step).records())
            got = list(resumed.update_batch(step).records())
        assert got == want
        resumed = MetricsEngine.restore(resumed.snapshot())
    assert resumed.snapshot() == straight.snapshot()


def test_both_paths_agree_whatever_the_batching() -> None:
    batch = minute_batch()
    one_by_one = run_scalar(MetricsEngine(), batch.bars())
    engine = MetricsEngine()
    mixed: list[WindowMetrics] = []
    for a, b in ((0, 2500), (2500, 2600), (2600, len(batch))):
        part = batch.take(np.arange(a, b))
        mixed += (
            run_scalar(engine, part.bars()) if a == 2500 else engine.update_batch(part).records()
        )
    labels = engine.labels
    assert_matches(as_arrays(mixed, labels), as_arrays(one_by_one, labels), rtol=1e-11)


def run_columns(engine: MetricsEngine, batch: BarBatch, cuts: Sequence[int]) -> list[WindowMetrics]:
    """update_columns over ``batch`` cut at ``cuts``, one call per symbol and piece,
    back as records in stream order (what run_scalar gives)."""
    records: dict[int, list[WindowMetrics]] = {}
    bounds = [0, *cuts, len(batch)]
    for a, b in itertools.pairwise(bounds):
        symbols = batch.symbol[a:b]
        for symbol in dict.fromkeys(symbols.tolist()):
            rows = a + np.flatnonzero(symbols == symbol)
            columns = [batch.ts_ns, batch.high, batch.low, batch.close, batch.volume]
            done, windows = engine.update_columns(symbol, *(c[rows].tolist() for c in columns))
            assert all(isinstance(w, WindowColumns) for w in windows)
            for j, row in enumerate(rows[done].tolist()):
                t, q = int(batch.ts_ns[row]), int(batch.seq[row])
                records[row] = [
                    WindowMetrics(
                        symbol, w.window, t, q, w.n_bars[j], w.volume[j], w.vwap[j], w.sma[j],
                        w.std[j], w.ret_std[j],
                    )
                    for w in windows
                ]  # fmt: skip
    return [m for row in sorted(records) for m in records[row]]


def same_bits(a: Sequence[WindowMetrics], b: Sequence[WindowMetrics]) -> bool:
    """Equal, floats compared by their bits (so -0.0 is not 0.0, and NaN would equal NaN)."""

    def key(m: WindowMetrics) -> tuple[object, ...]:
        return tuple(x.hex() if isinstance(x, float) else x for x in m)

    return len(a) == len(b) and all(key(x) == key(y) for x, y in zip(a, b, strict=True))


def test_columns_give_the_bits_of_bar_by_bar_however_the_stream_is_cut() -> None:
    batch = minute_batch()
    straight = MetricsEngine()
    expected = run_scalar(straight, batch.bars())
    rng = np.random.default_rng(4)
    n = len(batch)
    for cuts in (
        [],
        [*range(1, 40), 977, 978, 5000],  # pieces of one bar, then longer ones
        sorted(rng.choice(np.arange(1, n), 60, replace=False).tolist()),
    ):
        engine = MetricsEngine()
        assert same_bits(run_columns(engine, batch, cuts), expected)
        assert engine.snapshot() == straight.snapshot()
    # Restoring a snapshot in between changes nothing either, nor does mixing in
    # bars one by one.
    engine = MetricsEngine()
    head = batch.take(np.arange(0, 3000))
    got = run_columns(engine, head, [1000, 2000])
    engine = MetricsEngine.restore(engine.snapshot(), expect_windows=DEFAULT_WINDOWS)
    got += run_scalar(engine, batch.take(np.arange(3000, 3100)).bars())
    got += run_columns(engine, batch.take(np.arange(3100, n)), [1, 2, 3000])
    assert same_bits(got, expected)
    assert engine.snapshot() == straight.snapshot()


def test_columns_continue_bit_for_bit_after_the_numpy_batch_path() -> None:
    # update_batch leaves every window to be recomputed: both paths must do it alike.
    batch = minute_batch()
    first, rest = batch.take(np.arange(0, 2500)), batch.take(np.arange(2500, len(batch)))
    one, two = MetricsEngine(), MetricsEngine()
    one.update_batch(first)
    two.update_batch(first)
    assert same_bits(run_columns(one, rest, [7, 700]), run_scalar(two, rest.bars()))
    assert one.snapshot() == two.snapshot()


def test_columns_skip_bars_not_after_the_last_and_count_them() -> None:
    engine = MetricsEngine(["5m"], session=False)
    ts = [int(t * MINUTE) for t in (0, 1, 1, 0.5, 2, 2)]
    close = [100.0, 101.0, 1.0, 1.0, 102.0, 1.0]
    done, (five,) = engine.update_columns("X", ts, close, close, close, [1.0] * 6)
    assert done == [0, 1, 4]
    assert engine.ignored == 3
    assert five.n_bars == [1, 2, 3]
    assert five.sma == [100.0, 100.5, 101.0]
    assert engine.update_columns("X", ts[:2], close[:2], close[:2], close[:2], [1.0] * 2) == (
        [],
        [],
    )
    assert engine.ignored == 5


def _stored_in_order(snapshot: bytes, order: Sequence[str]) -> bytes:
    """``snapshot`` with its windows stored in ``order`` (as one taken before the engine
    ordered its windows by length was)."""
    doc = orjson.loads(snapshot)
    at = [doc["windows"].index(label) for label in order]
    doc["windows"] = list(order)
    for state in doc["symbols"].values():
        f64 = np.frombuffer(base64.b64decode(state["win_f64"]), "<f8").reshape(len(at), -1)
        state["win_f64"] = base64.b64encode(f64[at].tobytes()).decode()
        state["win_int"] = [state["win_int"][k] for k in at]
    return orjson.dumps(doc)


def test_a_window_list_in_another_order_is_the_same_engine() -> None:
    """Issue 10, point 8: a processor restarted with its windows reordered (a legal edit
    of a set) crash-looped on "restore with the same windows"."""
    bars = list(minute_batch().bars())
    straight = MetricsEngine(["5m", "1h", "15m"])
    expected = run_scalar(straight, bars)
    width = len(straight.labels)
    cut = len(bars) // 2
    first = MetricsEngine(["1h", "15m", "5m"])
    assert first.labels == straight.labels == ("5m", "15m", "1h", "session")
    run_scalar(first, bars[:cut])
    resumed = MetricsEngine.restore(first.snapshot(), expect_windows=["15m", "5m", "1h"])
    assert run_scalar(resumed, bars[cut:]) == expected[cut * width :]
    assert resumed.snapshot() == straight.snapshot()
    # A snapshot stored with its windows in another order restores to the same state.
    legacy = _stored_in_order(first.snapshot(), ["1h", "session", "5m", "15m"])
    assert legacy != first.snapshot()
    resumed = MetricsEngine.restore(legacy, expect_windows=["5m", "1h", "15m"])
    assert run_scalar(resumed, bars[cut:]) == expected[cut * width :]
    assert resumed.snapshot() == straight.snapshot()


def test_bad_snapshots_are_refused_with_a_reason() -> None:
    engine = MetricsEngine(["5m"])
    engine.update(bar(0, 1.0))
    snap = engine.snapshot()
    with pytest.raises(ValueError, match=r"taken with windows \['5m', 'session'\] but"):
        MetricsEngine.restore(snap, expect_windows=["1h"])
    with pytest.raises(ValueError, match="cannot restore the metrics state"):
        MetricsEngine.restore(b"{}")
    with pytest.raises(ValueError, match="cannot restore the metrics state"):
        MetricsEngine.restore(snap[:-20])
    assert MetricsEngine.restore(snap).snapshot() == snap
