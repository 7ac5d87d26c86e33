"""Trades as records (issue 11, point 6): reading a file of trades, their Kafka messages,
OHLCV bars built from them (``--bars``) and their warehouse tables. The engine over trades
is in ``test_trade_metrics.py``; the real broker sees them in
``tests/integration/test_trade_sources.py``."""

from __future__ import annotations

import io
import itertools

import numpy as np
import orjson
import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs is not in the lock
import pytest

from hftpipe_workers import codec
from hftpipe_workers.bars import NS_PER_SECOND, Bar, Trade, parse_utc
from hftpipe_workers.csvformat import BarBatch, BarReader, ColumnMapping, RejectedRow, SourceError
from hftpipe_workers.loader import bars_table, metrics_table
from hftpipe_workers.metrics import MetricsEngine, WindowMetrics
from hftpipe_workers.pacing import Pacing
from hftpipe_workers.producer import Replay
from hftpipe_workers.settings import KafkaSettings, ProduceSettings
from hftpipe_workers.sourceinfo import describe_reading, summarize
from hftpipe_workers.tradebars import BarBuilder, parse_interval

MINUTE = 60 * NS_PER_SECOND


def read(text: str, **kwargs: object) -> tuple[BarReader, BarBatch, list[RejectedRow]]:
    reader = BarReader(io.BytesIO(text.encode()), source="t.csv", **kwargs)  # type: ignore[arg-type]
    chunks = list(reader)
    batch = BarBatch.from_bars([b for ch in chunks for b in ch.bars.bars()])
    return reader, batch, [r for ch in chunks for r in ch.rejected]


TRADES_CSV = (
    "time,symbol,price,qty,side\n"
    "2024-01-01T00:00:00.5Z,BTC,42000.5,0.1,buy\n"
    "2024-01-01T00:00:00.5Z,BTC,42001.0,0.2,sell\n"  # the same time: a second tick
    "2024-01-01T00:00:00.5Z,ETH,2300.25,1.5,buy\n"
    "2024-01-01T00:00:00.4Z,BTC,42000.0,0.3,buy\n"  # back in time: set aside
    "2024-01-01T00:00:01Z,BTC,0,0.3,buy\n"  # a zero price: set aside
    "2024-01-01T00:00:01Z,BTC,42002.0,-1,buy\n"  # a negative size: set aside
    "2024-01-01T00:01:00Z,BTC,42003.0,0,buy\n"  # a size of 0 is a trade of nothing: kept
)


# -- reading -----------------------------------------------------------------------


def test_a_trades_file_is_recognised_and_ticks_sharing_a_time_are_kept() -> None:
    reader, batch, rejected = read(TRADES_CSV)
    lay = reader.layout
    assert (lay.name, lay.kind, lay.close, lay.volume, lay.side) == (
        "trades",
        "trade",
        "price",
        "qty",
        "side",
    )
    assert "price=price, size=qty, side=side (not replayed)" in lay.describe()
    assert batch.symbol.tolist() == ["BTC", "BTC", "ETH", "BTC"]
    assert batch.ts_ns.tolist()[:3] == [parse_utc("2024-01-01T00:00:00.5Z")] * 3
    assert batch.close.tolist() == [42000.5, 42001.0, 2300.25, 42003.0]
    assert batch.open.tolist() == batch.close.tolist() == batch.high.tolist()
    assert batch.volume.tolist() == [0.1, 0.2, 1.5, 0.0]
    assert batch.seq.tolist() == [0, 1, 2, 3]
    assert batch.line.tolist() == [2, 3, 4, 8]
    assert [(r.line, r.kind) for r in rejected] == [
        (5, "time_backwards"),
        (6, "not_positive"),
        (7, "negative_volume"),
    ]
    assert rejected[1].reason == "price 0.0 is not a positive price"
    assert rejected[2].reason == "size -1.0 is negative"
    assert "records: trades" in "\n".join(describe_reading(reader))


def test_inspect_counts_trades() -> None:
    reader = BarReader(io.BytesIO(TRADES_CSV.encode()), source="t.csv")
    summary = summarize(reader)
    assert summary.kind == "trade"
    assert "read: 4 trades, 3 set aside" in summary.lines()[2]


def test_a_mapping_of_trades_reads_any_column_names() -> None:
    text = "ts;px;q;sym\n1704067200000;100.5;2;A\n1704067200000;100.25;1;A\n"
    mapping = ColumnMapping.parse("time=ts:unix_ms,price=px,size=q,symbol=sym")
    assert mapping.kind == "trade"
    reader, batch, rejected = read(text, mapping=mapping)
    assert (reader.layout.name, reader.layout.kind) == ("mapping-trades", "trade")
    assert not rejected
    assert batch.close.tolist() == [100.5, 100.25]
    assert batch.ts_ns.tolist() == [1704067200000 * 1_000_000] * 2


@pytest.mark.parametrize(
    "spec",
    ["time=t:iso,price=p", "time=t:iso,price=p,size=q,close=c", "time=t:iso,size=q"],
)
def test_a_mapping_of_trades_needs_price_and_size_and_no_bar_columns(spec: str) -> None:
    with pytest.raises(ValueError, match="a mapping of trades names price=COLUMN"):
        ColumnMapping.parse(spec)


def test_bars_keep_refusing_a_duplicate_time() -> None:
    text = "time,open,high,low,close,volume\n2024-01-01,1,1,1,1,1\n2024-01-01,1,1,1,1,1\n"
    reader, _, rejected = read(text, symbol="X")
    assert reader.layout.kind == "bar"
    assert [r.kind for r in rejected] == ["duplicate_time"]


def test_the_layout_can_be_named() -> None:
    text = "Time,Price,Volume\n2024-01-01T00:00:00Z,5,1\n"
    reader, batch, _ = read(text, symbol="X", layout="trades")
    assert reader.layout.kind == "trade"
    assert batch.volume.tolist() == [1.0]


# -- messages ------------------------------------------------------------------------


def test_a_trade_message_round_trips_and_says_its_kind() -> None:
    trade = Trade("BTC", 1_700_000_000_123_456_789, 42000.5, 0.001, 17, 9)
    data = codec.encode_trade(trade)
    assert orjson.loads(data)["k"] == "t"
    assert codec.decode_trade(data) == trade
    assert codec.decode_record(data) == trade
    with pytest.raises(codec.CodecError, match="not a bar: read it with decode_record"):
        codec.decode_bar(data)
    bar = Bar("BTC", 0, 1.0, 2.0, 0.5, 1.5, 3.0, 1, 2)
    assert b'"k"' not in codec.encode_bar(bar)  # bars are written as before
    assert codec.decode_record(codec.encode_bar(bar)) == bar
    bad = orjson.dumps({**orjson.loads(data), "k": "q"})
    with pytest.raises(codec.CodecError, match="unknown record kind"):
        codec.decode_record(bad)
    negative = orjson.dumps({**orjson.loads(data), "v": -1.0})
    with pytest.raises(codec.CodecError, match=r"size -1\.0 is negative"):
        codec.decode_record(negative)


def test_trade_batches_decode_as_bars_of_one_price_flagged() -> None:
    trades = [Trade("A", k * NS_PER_SECOND, 10.0 + k, 0.5, k, k + 2) for k in range(5)]
    values = [codec.encode_trade(t) for t in trades]
    cols = codec.decode_bars(values)
    assert cols.trade == [True] * 5
    assert cols.close == cols.open == cols.high == cols.low == [t.price for t in trades]
    assert cols.volume == [0.5] * 5
    assert cols.seq == [0, 1, 2, 3, 4]
    bar = Bar("A", 9 * NS_PER_SECOND, 1.0, 2.0, 0.5, 1.5, 3.0, 9, 2)
    mixed, bad = codec.decode_bars_lenient([*values[:2], codec.encode_bar(bar), b"{"])
    assert mixed.trade == [True, True, False]
    assert mixed.high == [10.0, 11.0, 2.0]
    assert [i for i, _ in bad] == [3]
    assert codec.decode_bars([codec.encode_bar(bar)]).trade is None


def test_a_trade_metrics_message_says_its_kind() -> None:
    engine = MetricsEngine(["1m"], session=False)
    _, windows = engine.update_trades("A", [0, 0], [0, 1], [10.0, 11.0], [1.0, 3.0])
    messages = codec.encode_metrics_columns(
        "A", [0, 0], [0, 1], [10.0, 11.0], [1.0, 3.0], windows, trade=True
    )
    decoded = codec.decode_bar_metrics(messages[1])
    assert decoded.trade
    assert decoded.window("1m").vwap == (10.0 + 33.0) / 4.0
    cols = codec.decode_metrics_columns(messages)
    assert cols is not None
    assert cols.trade == [True, True]
    w = windows[0]
    one = WindowMetrics("A", "1m", 0, 1, w.n_bars[1], w.volume[1], w.vwap[1], w.sma[1],
                        w.std[1], w.ret_std[1])  # fmt: skip
    bar = Bar("A", 0, 11.0, 11.0, 11.0, 11.0, 3.0, 1)
    assert messages[1] == codec.encode_bar_metrics(bar, [one], trade=True)


# -- bars from trades ------------------------------------------------------------------


def random_trades(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    gaps = rng.choice([0, 0, 1, 3, 20, 200], size=n) * NS_PER_SECOND
    ts = parse_utc("2024-03-01T23:50:00Z") + np.cumsum(gaps)
    return pd.DataFrame(
        {
            "symbol": rng.choice(["A", "B", "C"], size=n),
            "ts": ts,
            "price": np.round(100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n))), 3),
            "size": np.round(rng.exponential(1.0, n), 4),
        }
    )


def as_batch(frame: pd.DataFrame) -> BarBatch:
    p = frame.price.to_numpy()
    return BarBatch(
        frame.symbol.to_numpy(dtype=object),
        frame.ts.to_numpy(dtype=np.int64),
        p,
        p,
        p,
        p,
        frame["size"].to_numpy(),
        np.arange(len(frame), dtype=np.int64),
        np.arange(len(frame), dtype=np.int64) + 2,
    )


def build(batch: BarBatch, interval: int, cuts: list[int]) -> list[Bar]:
    builder = BarBuilder(interval)
    out: list[Bar] = []
    edges = [0, *cuts, len(batch)]
    for a, b in itertools.pairwise(edges):
        out += builder.add(batch.take(np.arange(a, b))).bars()
    return out + list(builder.finish().bars())


def test_bars_from_trades_equal_a_pandas_resample() -> None:
    frame = random_trades(4000, 5)
    bars = build(as_batch(frame), parse_interval("1m"), [])
    got = pd.DataFrame(bars).set_index(["symbol", "ts_ns"]).sort_index()
    indexed = frame.set_index(pd.to_datetime(frame.ts))
    expected = (
        indexed.groupby("symbol")
        .resample("1min", label="left", closed="left")
        .agg({"price": ["first", "max", "min", "last"], "size": "sum"})
        .dropna()
    )
    expected.columns = ["open", "high", "low", "close", "volume"]
    expected.index = expected.index.set_levels(expected.index.levels[1].as_unit("ns").asi8, level=1)
    assert list(got.index) == list(expected.index)
    for name in ("open", "high", "low", "close"):
        assert got[name].tolist() == expected[name].tolist(), name
    np.testing.assert_allclose(got.volume, expected.volume, rtol=1e-12)
    assert sorted(b.seq for b in bars) == list(range(len(bars)))


def test_bars_from_trades_are_the_same_however_the_trades_are_cut() -> None:
    frame = random_trades(3000, 9)
    batch = as_batch(frame)
    whole = build(batch, MINUTE, [])
    rng = np.random.default_rng(2)
    for cuts in ([1, 2, 3], sorted(rng.choice(np.arange(1, 3000), 50, replace=False).tolist())):
        assert build(batch, MINUTE, cuts) == whole
    # Each bar comes once its symbol trades in a later minute (in file order), seq in
    # that order; the partial last bars at the end, by start time and symbol.
    assert [b.seq for b in whole] == list(range(len(whole)))
    last = {s: frame[frame.symbol == s].ts.max() for s in "ABC"}
    tail = whole[-3:]
    assert {b.symbol for b in tail} == {"A", "B", "C"}
    assert [(b.ts_ns, b.symbol) for b in tail] == sorted((b.ts_ns, b.symbol) for b in tail)
    assert all(b.ts_ns == last[b.symbol] - last[b.symbol] % MINUTE for b in tail)


def test_a_bar_starts_on_its_interval_and_keeps_its_first_line() -> None:
    t = parse_utc("2024-01-01T00:00:30Z")
    trades = BarBatch.from_bars(
        [
            Bar("X", t, 5.0, 5.0, 5.0, 5.0, 1.0, 0, 10),
            Bar("X", t + 10 * NS_PER_SECOND, 7.0, 7.0, 7.0, 7.0, 2.0, 1, 11),
            Bar("X", t + 20 * NS_PER_SECOND, 4.0, 4.0, 4.0, 4.0, 0.5, 2, 12),
            Bar("X", t + 40 * NS_PER_SECOND, 6.0, 6.0, 6.0, 6.0, 1.0, 3, 13),
        ]
    )
    builder = BarBuilder(MINUTE)
    (first,) = builder.add(trades).bars()
    assert first == Bar("X", parse_utc("2024-01-01T00:00:00Z"), 5.0, 7.0, 4.0, 4.0, 3.5, 0, 10)
    (partial,) = builder.finish().bars()
    assert partial == Bar("X", parse_utc("2024-01-01T00:01:00Z"), 6.0, 6.0, 6.0, 6.0, 1.0, 1, 13)


@pytest.mark.parametrize("text", ["0m", "session", "1 minute", "5x"])
def test_a_bad_bar_interval_says_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="bar interval"):
        parse_interval(text)


def test_bars_of_a_file_of_bars_are_refused_before_anything_is_created(
    tmp_path: object,
) -> None:
    from pathlib import Path  # noqa: PLC0415

    path = Path(str(tmp_path)) / "bars.csv"
    path.write_text("time,open,high,low,close,volume\n2024-01-01,1,1,1,1,1\n")
    replay = Replay(
        job="j",
        source=str(path),
        bars_topic="b",
        dead_topic="d",
        kafka=KafkaSettings(),
        pacing=Pacing.parse(None, None),
        symbol="X",
        bar_interval_ns=MINUTE,
    )
    with pytest.raises(SourceError, match="--bars builds bars from trades, but the file holds"):
        replay._check_source()
    assert ProduceSettings(source=["x"], bars="5m").bar_interval_ns == 5 * MINUTE


# -- warehouse ------------------------------------------------------------------------


def test_the_loader_puts_trades_and_their_metrics_in_their_own_tables() -> None:
    t = 1_700_000_000_000_000_000
    trades = [Trade("A", t, 10.0, 1.0, 0, 2), Trade("A", t, 11.0, 3.0, 1, 3)]
    bar = Bar("B", t, 1.0, 2.0, 0.5, 1.5, 3.0, 2, 4)
    bars, trade_rows, refused = bars_table(
        "j", [*map(codec.encode_trade, trades), codec.encode_bar(bar)]
    )
    assert not refused
    assert bars.column("symbol").to_pylist() == ["B"]
    assert trade_rows.column("seq").to_pylist() == [0, 1]
    assert trade_rows.column("price").to_pylist() == [10.0, 11.0]
    assert trade_rows.column("size").to_pylist() == [1.0, 3.0]

    engine = MetricsEngine(["1m"])
    _, windows = engine.update_trades("A", [t, t], [0, 1], [10.0, 11.0], [1.0, 3.0])
    messages = codec.encode_metrics_columns(
        "A", [t, t], [0, 1], [10.0, 11.0], [1.0, 3.0], windows, trade=True
    )
    for values in (messages, [*messages, b"[]"]):  # columnar, and one by one
        bar_metrics, trade_metrics, _ = metrics_table("j", values)
        assert bar_metrics.num_rows == 0
        assert trade_metrics.column("seq").to_pylist() == [0, 1]
        assert trade_metrics.column("trade_count").to_pylist() == [1, 2]
        assert trade_metrics.column("vwap").to_pylist() == [10.0, 43.0 / 4.0]
        assert trade_metrics.column("session_vwap").to_pylist() == [10.0, 43.0 / 4.0]


# -- processor and Parquet --------------------------------------------------------------


def test_the_processor_computes_the_same_whatever_the_slices_with_kinds_mixed() -> None:
    """A topic that mixes bars and trades of one symbol (not what a producer writes, but
    a topic may): each symbol's records reach the engine in message order, so cutting the
    stream into other slices gives the same messages (exactly-once relies on it)."""
    from hftpipe_workers.processor import _compute  # noqa: PLC0415

    values: list[bytes] = []
    for k in range(60):
        t = k * NS_PER_SECOND
        if k % 7 == 3:
            values.append(codec.encode_bar(Bar("A", t, 9.0, 11.0, 8.0, 10.0, 2.0, k)))
        else:
            values.append(codec.encode_trade(Trade("AB"[k % 2], t, 10.0 + k % 5, 1.0, k)))

    def run(cuts: list[int]) -> list[bytes]:
        engine = MetricsEngine(["1m"])
        out: list[bytes] = []
        for a, b in itertools.pairwise([0, *cuts, len(values)]):
            for o in _compute(engine, codec.decode_bars(values[a:b])):
                out += o.messages
        return sorted(out)

    whole = run([])
    assert len(whole) == 60
    assert run([1, 2, 3, 17, 30, 44]) == run([29]) == whole
    assert sum(b'"k":"t"' in m for m in whole) == 60 - len(range(3, 60, 7))


def test_a_parquet_file_of_trades_is_read_as_trades() -> None:
    import pyarrow as pa  # type: ignore[import-untyped]  # noqa: PLC0415
    import pyarrow.parquet as pq  # type: ignore[import-untyped]  # noqa: PLC0415

    from hftpipe_workers.arrowformat import open_reader  # noqa: PLC0415

    t = pa.array([1_700_000_000_000] * 3 + [1_700_000_001_000], type=pa.timestamp("ms", "UTC"))
    table = pa.table({"time": t, "price": [1.5, 1.25, 1.75, 2.0], "qty": [1.0, 2.0, 0.5, 1.0]})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=2)
    buf.seek(0)
    reader = open_reader(buf, source="t.parquet", symbol="X")
    assert reader.layout.kind == "trade"
    batch = BarBatch.from_bars([b for ch in reader for b in ch.bars.bars()])
    assert batch.close.tolist() == [1.5, 1.25, 1.75, 2.0]
    assert batch.volume.tolist() == [1.0, 2.0, 0.5, 1.0]
    assert batch.ts_ns.tolist()[:3] == [1_700_000_000_000_000_000] * 3
