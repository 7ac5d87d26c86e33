"""The compiled metrics engine (hftpipe-core, Rust) against the pure-Python reference, bit for bit.

Every float is compared by its bits (and every undefined metric by its position), on
randomised streams (many symbols, gaps across days, zero volumes, repeated and
out-of-order bars, flat prices, big jumps into quiet windows), on the shared BTC file
and on the bench's generated minute bars; each engine's stream is cut into calls at
random, and snapshots move state between the two engines in both directions
mid-stream (their bytes must be equal too).
"""

from __future__ import annotations

import gzip
import math
import random
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np
import orjson
import pytest
from hftpipe_core import decode_bars, dumps_float, encode_records, zadd_command

from hftpipe_workers import codec
from hftpipe_workers.bars import NS_PER_DAY, NS_PER_SECOND, Bar, Trade
from hftpipe_workers.csvformat import BarBatch, BarReader
from hftpipe_workers.metrics import (
    CompiledMetricsEngine,
    MetricsEngine,
    WindowColumns,
    compiled_available,
    compiled_chosen,
    engine_class,
)
from hftpipe_workers.processor import _command, _update_and_encode, _zadd_command
from hftpipe_workers.settings import ProcessSettings, ProduceSettings

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # bench/ is a directory of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from bench import datagen  # noqa: E402 - importable once the repo root is on sys.path

SAMPLE = REPO.parent / "shared" / "data" / "btcusdt_1h_binance.csv.gz"
MINUTE = 60 * NS_PER_SECOND
T0 = 1_700_000_000 * NS_PER_SECOND

Engine = MetricsEngine | CompiledMetricsEngine


class Stream(NamedTuple):
    """Bars in arrival order, as columns."""

    symbol: list[str]
    ts_ns: list[int]
    high: list[float]
    low: list[float]
    close: list[float]
    volume: list[float]
    seq: list[int]


def bits(column: Sequence[Any]) -> list[Any]:
    """A column as comparable bits: ints as they are, floats as their 8 bytes, None kept."""
    out: list[Any] = []
    for x in column:
        if x is None or isinstance(x, int):
            out.append(x)
        else:
            assert isinstance(x, float), f"{x!r} is a {type(x).__name__}, not a float"
            out.append(struct.pack("<d", x))
    return out


Result = tuple[list[int], list[WindowColumns]]


def assert_same(ref: Result, got: Result, where: str) -> None:
    assert ref[0] == got[0], f"{where}: processed rows differ"
    assert len(ref[1]) == len(got[1]), f"{where}: number of windows differs"
    for a, b in zip(ref[1], got[1], strict=True):
        assert a.window == b.window, where
        for field in WindowColumns._fields[1:]:
            want, have = bits(getattr(a, field)), bits(getattr(b, field))
            if want != have:
                j = next(i for i, (x, y) in enumerate(zip(want, have, strict=True)) if x != y)
                pytest.fail(
                    f"{where}, window {a.window}, {field}[{j}]: python "
                    f"{getattr(a, field)[j]!r}, compiled {getattr(b, field)[j]!r}"
                )


def feed(engine: Engine, stream: Stream, lo: int, hi: int, *, trades: bool = False) -> list[Result]:
    """Bars (or trades: price = close, size = volume) ``lo..hi`` of the stream as the
    processor feeds them: per symbol, in order of first appearance, each symbol's as one run."""
    by_symbol: dict[str, list[int]] = {}
    for j in range(lo, hi):
        by_symbol.setdefault(stream.symbol[j], []).append(j)
    out = []
    for symbol, rows in by_symbol.items():
        ts = [stream.ts_ns[j] for j in rows]
        high, low, close, volume = (
            [column[j] for j in rows]
            for column in (stream.high, stream.low, stream.close, stream.volume)
        )
        if trades:
            seq = [stream.seq[j] for j in rows]
            out.append(engine.update_trades(symbol, ts, seq, close, volume))
        else:
            out.append(engine.update_columns(symbol, ts, high, low, close, volume))
    return out


def random_cuts(rng: random.Random, size: int, most: int) -> Iterator[tuple[int, int]]:
    at = 0
    while at < size:
        step = rng.choice([1, 1, 2, 3, rng.randint(1, most)])
        yield at, min(size, at + step)
        at += step


def random_stream(rng: random.Random, size: int, symbols: int, *, trades: bool = False) -> Stream:
    """Bars of many symbols: gaps from a second to days, zero (and -0.0) volumes,
    repeated and older times (ignored), flat runs, big jumps, prices from 1e-3 to 1e5.
    With ``trades``, also many at equal times (with increasing seq), and repeated or
    older seqs (ignored)."""
    names = [f"S{k}" for k in range(symbols)]
    state = {s: [T0 + rng.randint(0, NS_PER_DAY), 10.0 ** rng.uniform(-3, 5)] for s in names}
    seqs = dict.fromkeys(names, 0)
    out = Stream([], [], [], [], [], [], [])
    for _ in range(size):
        s = rng.choice(names)
        t, c = state[s]
        seq = seqs[s]
        kind = rng.random()
        if kind < 0.05:
            t -= rng.choice([0, 0, MINUTE, 3 * MINUTE])  # a repeat or an older bar
            seq -= rng.choice([0, 1, 5])
        elif trades and kind < 0.5:
            seq = seqs[s] = seq + 1  # a trade at the same time
        else:
            seqs[s] = seq = seq + 1
            t += rng.choice(
                [
                    *(NS_PER_SECOND, MINUTE, MINUTE, MINUTE, 7 * MINUTE, 3600 * NS_PER_SECOND),
                    *(NS_PER_DAY, 3 * NS_PER_DAY, rng.randint(1, 10 * MINUTE)),
                ]
            )
            move = rng.random()
            if move < 0.25:
                pass  # flat: equal closes, zero returns
            elif move < 0.3:
                c *= rng.choice([0.3, 3.0, 50.0, 0.02])  # a jump that will leave quiet windows
            elif move < 0.35:
                c *= 1.001  # equal returns, or nearly
            else:
                c = max(1e-9, c * (1 + rng.gauss(0, 1e-3)))
            c = round(c, rng.choice([2, 8, 12]))
            if c <= 0.0:
                c = 0.01
            state[s] = [t, c]
        v = rng.choice([0.0, 0.0, -0.0, 1.0, rng.expovariate(1.0), rng.uniform(0, 1e6)])
        out.symbol.append(s)
        out.ts_ns.append(t)
        out.high.append(c * (1 + rng.uniform(0, 1e-3)))
        out.low.append(c * (1 - rng.uniform(0, 1e-3)))
        out.close.append(c)
        out.volume.append(v)
        out.seq.append(seq)
    return out


WINDOW_SETS = [
    ("5m", "15m", "1h", "1d"),
    ("1s", "30s", "2m"),
    ("3h",),
]


def compare_stream(
    stream: Stream,
    windows: Sequence[str],
    seed: int,
    *,
    restores: int = 4,
    most: int = 500,
    trades: bool = False,
) -> None:
    """Feed one stream to both engines, each cut into calls at random, and swap their
    state through snapshots ``restores`` times mid-stream, both ways."""
    rng = random.Random(seed)
    size = len(stream.ts_ns)
    ref = MetricsEngine(windows)
    got = CompiledMetricsEngine(windows)
    swaps = sorted(rng.sample(range(1, size), restores)) if size > restores else []
    # Cuts shared by both engines, so results can be compared call by call; the
    # reference's own independence of cuts is what test_metrics holds.
    for lo, hi in random_cuts(rng, size, most):
        while swaps and swaps[0] <= lo:
            swaps.pop(0)
            a, b = ref.snapshot(), got.snapshot()
            assert a == b, f"snapshots differ before bar {lo}"
            if rng.random() < 0.5:
                got = CompiledMetricsEngine.restore(a, expect_windows=windows)
                ref = MetricsEngine.restore(b, expect_windows=windows)
            else:
                ref = MetricsEngine.restore(b)
                got = CompiledMetricsEngine.restore(a)
        for k, (want, have) in enumerate(
            zip(
                feed(ref, stream, lo, hi, trades=trades),
                feed(got, stream, lo, hi, trades=trades),
                strict=True,
            )
        ):
            assert_same(want, have, f"bars {lo}..{hi}, run {k}")
    assert ref.ignored == got.ignored
    assert ref.symbols == got.symbols
    assert ref.snapshot() == got.snapshot()


def test_compiled_core_is_installed() -> None:
    # Fails (never skips) where the package is missing: every test here needs it.
    assert compiled_available(), "hftpipe-core is not installed: uv sync --all-packages builds it"
    assert engine_class("auto") is CompiledMetricsEngine
    assert engine_class("python") is MetricsEngine
    assert engine_class("compiled") is CompiledMetricsEngine
    with pytest.raises(ValueError, match="unknown engine 'rust'"):
        engine_class("rust")


@pytest.mark.parametrize("seed", range(6))
def test_random_streams_bit_for_bit(seed: int) -> None:
    rng = random.Random(seed)
    stream = random_stream(rng, size=rng.choice([3_000, 8_000]), symbols=rng.choice([1, 3, 40]))
    compare_stream(stream, WINDOW_SETS[seed % len(WINDOW_SETS)], seed)


@pytest.mark.parametrize("seed", range(3))
def test_random_trade_streams_bit_for_bit(seed: int) -> None:
    rng = random.Random(100 + seed)
    stream = random_stream(rng, size=5_000, symbols=rng.choice([1, 7]), trades=True)
    compare_stream(stream, WINDOW_SETS[seed], seed, trades=True)


def test_snapshot_without_last_seq_restores_alike() -> None:
    # Snapshots taken before trades had no last_seq: both engines restore it as -1.
    rng = random.Random(8)
    stream = random_stream(rng, size=500, symbols=3)
    engine = MetricsEngine()
    feed(engine, stream, 0, 500)
    doc = orjson.loads(engine.snapshot())
    for state in doc["symbols"].values():
        del state["last_seq"]
    old = orjson.dumps(doc)
    ref, got = MetricsEngine.restore(old), CompiledMetricsEngine.restore(old)
    assert ref.snapshot() == got.snapshot()
    assert b'"last_seq":-1' in got.snapshot()


def test_long_quiet_stream_recomputes_alike() -> None:
    # One symbol, 60,000 minute bars of a 1e5 price moving by cents with jumps: both
    # recomputation triggers (update count, shrunken sums of squares) fire many times.
    rng = random.Random(99)
    size = 60_000
    close, stream = 1e5, Stream([], [], [], [], [], [], [])
    for j in range(size):
        close = round(close + rng.choice([0.0, 0.01, -0.01]) + (5e3 if j % 7_001 == 0 else 0), 2)
        stream.symbol.append("BTC")
        stream.ts_ns.append(T0 + j * MINUTE)
        stream.high.append(close + 0.5)
        stream.low.append(close - 0.5)
        stream.close.append(close)
        stream.volume.append(rng.choice([0.0, 0.5, 2.0]))
        stream.seq.append(j)
    compare_stream(stream, ("5m", "1h", "1d"), 5, restores=6, most=5_000)


def test_stale_state_from_the_numpy_path_restores_alike() -> None:
    # update_batch leaves windows marked for recomputation (ops == -1); a snapshot of that
    # state continues identically in both engines.
    from hftpipe_workers.csvformat import BarBatch  # noqa: PLC0415  # pandas: only here

    rng = random.Random(3)
    stream = random_stream(rng, size=2_000, symbols=4)
    half = 1_000
    fresh = MetricsEngine()
    rows = feed(fresh, stream, 0, 0)
    assert rows == []
    n = half
    batch = BarBatch(
        symbol=np.array(stream.symbol[:n], dtype=object),
        ts_ns=np.array(stream.ts_ns[:n], dtype=np.int64),
        open=np.array(stream.close[:n]),
        high=np.array(stream.high[:n]),
        low=np.array(stream.low[:n]),
        close=np.array(stream.close[:n]),
        volume=np.array(stream.volume[:n]),
        seq=np.arange(n, dtype=np.int64),
        line=np.arange(n, dtype=np.int64),
    )
    fresh.update_batch(batch)
    state = fresh.snapshot()
    assert b"-1]" in state  # some window is stale
    ref, got = MetricsEngine.restore(state), CompiledMetricsEngine.restore(state)
    for lo, hi in random_cuts(rng, len(stream.ts_ns) - half, 50):
        for want, have in zip(
            feed(ref, stream, half + lo, half + hi),
            feed(got, stream, half + lo, half + hi),
            strict=True,
        ):
            assert_same(want, have, f"bars {half + lo}..{half + hi}")
    assert ref.snapshot() == got.snapshot()


def test_symbol_names_are_escaped_as_orjson_does() -> None:
    names = ["plain", 'quo"te', "back\\slash", "tab\there", "ctl\x01\x1f\x7f", "é€😀", "/"]
    ref, got = MetricsEngine(("1m",)), CompiledMetricsEngine(("1m",))
    for k, name in enumerate(names):
        for engine in (ref, got):
            engine.update_columns(name, [T0 + k], [2.0], [1.0], [1.5], [1.0])
    assert ref.snapshot() == got.snapshot()


def test_errors_are_pythons() -> None:
    for engine in (MetricsEngine(("1m",)), CompiledMetricsEngine(("1m",))):
        engine.update_columns("X", [T0], [1.0], [1.0], [1.0], [1.0])
        with pytest.raises(ValueError, match="math domain error"):
            engine.update_columns("X", [T0 + 1], [1.0], [0.0], [0.0], [1.0])  # log of 0
    engine = CompiledMetricsEngine(("1m",))
    with pytest.raises(ValueError, match="different lengths"):
        engine.update_columns("X", [T0, T0 + 1], [1.0], [1.0], [1.0], [1.0])
    with pytest.raises(ValueError, match="cannot restore the metrics state"):
        CompiledMetricsEngine.restore(b'{"format": "something else"}')
    with pytest.raises(ValueError, match="windows"):
        CompiledMetricsEngine.restore(MetricsEngine(("1m",)).snapshot(), expect_windows=["5m"])


def file_stream(path: Path, symbol: str) -> Stream:
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
        chunks = [ch.bars for ch in BarReader(f, symbol=symbol, block_bytes=1 << 30)]
    ts, high, low, close, volume = (
        [x for ch in chunks for x in getattr(ch, name).tolist()]
        for name in ("ts_ns", "high", "low", "close", "volume")
    )
    return Stream([symbol] * len(ts), ts, high, low, close, volume, list(range(len(ts))))


def test_shared_btc_file_bit_for_bit() -> None:
    if not SAMPLE.is_file():
        pytest.fail(f"the shared BTC sample is missing: expected {SAMPLE}")
    stream = file_stream(SAMPLE, "BTCUSDT")
    assert len(stream.ts_ns) > 10_000
    compare_stream(stream, ("5m", "15m", "1h", "4h", "1d", "7d"), 11, restores=5, most=4_096)


@pytest.mark.slow
def test_generated_bench_file_bit_for_bit(tmp_path: Path) -> None:
    # The bench's generated minute bars (bench/datagen.py): the full run's 4M rows.
    rows = int(4e6)
    path = datagen.ensure_dataset(rows, log=False)
    stream = file_stream(path, datagen.SYMBOL)
    assert len(stream.ts_ns) == rows
    compare_stream(stream, ("5m", "15m", "1h", "1d"), 12, restores=3, most=4_096)


# -- the metrics messages, written by the compiled core -----------------------------


def test_floats_are_written_as_orjson_writes_them() -> None:
    rng = random.Random(21)
    values = [
        struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(200_000)
    ]
    values += [round(rng.uniform(-1e6, 1e6), rng.randint(0, 12)) for _ in range(100_000)]
    values += [10.0 ** rng.uniform(-8, 18) for _ in range(100_000)]
    # The edges of the decimal notation, whole numbers, the smallest and largest doubles.
    values += [0.0, -0.0, 1e-5, 9.999999999999999e-6, 1e16, 9999999999999998.0, 2.0**63]
    values += [5e-324, 1.7976931348623157e308, 100.0, 0.1, 1e-7, 1.5e-7, 123456789012345.6]
    values += [math.nan, math.inf, -math.inf]  # orjson writes null
    wrong = [
        (x, dumps_float(x), orjson.dumps(x)) for x in values if dumps_float(x) != orjson.dumps(x)
    ]
    assert not wrong, f"{len(wrong)} of {len(values)} differ, e.g. {wrong[:3]}"


def encode_stream(
    engine: Engine, stream: Stream, lo: int, hi: int
) -> list[tuple[Result, list[bytes]]]:
    """Bars ``lo..hi`` through the processor's own helper (the compiled engine writes the
    messages itself, the Python one through codec.encode_metrics_columns)."""
    by_symbol: dict[str, list[int]] = {}
    for j in range(lo, hi):
        by_symbol.setdefault(stream.symbol[j], []).append(j)
    out = []
    for symbol, rows in by_symbol.items():
        ts, seq = [stream.ts_ns[j] for j in rows], [stream.seq[j] for j in rows]
        high, low, close, volume = (
            [column[j] for j in rows]
            for column in (stream.high, stream.low, stream.close, stream.volume)
        )
        done, windows, messages = _update_and_encode(
            engine, symbol, ts, seq, high, low, close, volume
        )
        out.append(((done, windows), messages))
    return out


def last_entry(w: WindowColumns) -> WindowColumns:
    return WindowColumns(
        w.window, w.n_bars[-1:], w.volume[-1:], w.vwap[-1:], w.sma[-1:], w.std[-1:], w.ret_std[-1:]
    )


@pytest.mark.parametrize("seed", range(4))
def test_messages_byte_for_byte(seed: int) -> None:
    rng = random.Random(300 + seed)
    stream = random_stream(rng, size=4_000, symbols=rng.choice([1, 5]))
    if seed == 1:  # names that JSON escapes
        renamed = {s: f'{s}"\\\t\x01é' for s in set(stream.symbol)}
        stream = stream._replace(symbol=[renamed[s] for s in stream.symbol])
    if seed == 2:  # a seq beyond i64 (orjson reads up to 2**64 - 1): Python's ints take it
        stream.seq[rng.randrange(len(stream.seq))] = 2**64 - 1
    windows = WINDOW_SETS[seed % len(WINDOW_SETS)]
    ref, got = MetricsEngine(windows), CompiledMetricsEngine(windows)
    for lo, hi in random_cuts(rng, len(stream.ts_ns), 700):
        for (want, want_msgs), (have, have_msgs) in zip(
            encode_stream(ref, stream, lo, hi), encode_stream(got, stream, lo, hi), strict=True
        ):
            # The compiled engine returns the last bar's metrics only (all the processor reads).
            assert_same(
                (want[0], [last_entry(w) for w in want[1]]),
                (have[0], [last_entry(w) for w in have[1]]),
                f"bars {lo}..{hi}",
            )
            assert want_msgs == have_msgs, f"bars {lo}..{hi}: messages differ"
    assert ref.snapshot() == got.snapshot()


# -- the Redis history write ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_zadd_command_is_the_python_one_byte_for_byte(seed: int) -> None:
    """The compiled ZADD is the command `_command` writes, with scores in whole
    milliseconds rounded down as Python's `//` does (before 1970 too)."""
    rng = random.Random(700 + seed)
    n = rng.choice([1, 17, 3_000])  # never empty: a symbol with no new bar writes none
    ts = [rng.choice([T0, 0, -1, -999_999, -1_000_000, 2**63 - 1, -(2**63)]) for _ in range(n)]
    ts = [t if rng.random() < 0.2 else rng.randrange(-(2**62), 2**62) for t in ts]
    members = [rng.randbytes(rng.choice([0, 1, 9, 700])) for _ in range(n)]
    key = "hftpipe:job:history:é\r\n".encode() * rng.choice([1, 3])
    flat = [x for t, m in zip(ts, members, strict=True) for x in (b"%d" % (t // 1_000_000), m)]
    want = _command(b"ZADD", key, *flat)
    assert zadd_command(key, ts, members) == want
    assert _zadd_command(key, ts, members, compiled=True) == want
    assert _zadd_command(key, ts, members, compiled=False) == want


def test_zadd_command_beyond_64_bits_falls_back_to_python() -> None:
    with pytest.raises(OverflowError):
        zadd_command(b"k", [2**63], [b"m"])
    assert _zadd_command(b"k", [2**63], [b"m"], compiled=True) == _command(
        b"ZADD", b"k", b"%d" % (2**63 // 1_000_000), b"m"
    )
    with pytest.raises(ValueError, match="different lengths"):
        zadd_command(b"k", [1, 2], [b"m"])


# -- decoding the bars, by the compiled core ------------------------------------------


def bar_message(rng: random.Random, j: int) -> bytes:
    """A valid bar message as the producer writes it, or with JSON's other spellings of the
    same (whitespace, integers for prices, more keys, keys in another order)."""
    low = round(rng.uniform(1, 1e5), rng.choice([0, 2, 8]))
    high = low + rng.choice([0.0, 1.0, 0.01, rng.uniform(0, 50)])
    close = rng.choice([low, high, (low + high) / 2])

    def spelt(x: float) -> float | int:  # JSON integers for whole prices, at times
        return int(x) if x.is_integer() and rng.random() < 0.5 else x

    doc: dict[str, Any] = {
        "sv": 1,
        "s": rng.choice(["BTCUSDT", "ETH-USD", "é€", "A" * 40]),
        "t": T0 + j * MINUTE,
        "o": spelt(rng.choice([low, high, close])),
        "h": spelt(high),
        "l": spelt(low),
        "c": spelt(close),
        "v": rng.choice([0.0, -0.0, 0, 3, rng.expovariate(0.1)]),
        "q": j,
    }
    if rng.random() < 0.5:
        doc["ln"] = j + 2
    if rng.random() < 0.2:
        doc["extra"] = rng.choice([None, True, "x", 1.5, -7])
    items = list(doc.items())
    if rng.random() < 0.3:
        rng.shuffle(items)
    text = orjson.dumps(dict(items))
    if rng.random() < 0.2:
        text = text.replace(b",", b" ,\n\t").replace(b":", b" : ")
    if rng.random() < 0.1:
        text = b" " + text + b"\r\n"
    return text


BREAKAGES: list[Callable[[bytes], bytes]] = [
    lambda m: m.replace(b'"sv":1', b'"sv":2'),  # another schema version
    lambda m: m.replace(b'"sv":1', b'"sv":true'),  # Python counts True == 1
    lambda m: m.replace(b'"sv":1', b'"sv":1.0'),  # ... and 1.0
    lambda m: m.replace(b'"q":', b'"q":true,"qq":', 1),
    lambda m: m.replace(b'"q":', b'"q":18446744073709551615,"qq":', 1),  # u64: Python's int
    lambda m: m.replace(b'"q":', b'"q":1e3,"qq":', 1),
    lambda m: m.replace(b'"s":"', b'"s":"\\u0041', 1),  # an escape
    lambda m: m.replace(b'"s":"', b'"s":"\\"', 1),
    lambda m: m.replace(b'"h":', b'"h":NaN,"hh":', 1),
    lambda m: m.replace(b'"h":', b'"h":1e400,"hh":', 1),
    lambda m: m.replace(b'"h":', b'"h":-1,"hh":', 1),  # an invalid bar
    lambda m: m.replace(b'"v":', b'"v":-1,"vv":', 1),
    lambda m: m.replace(b'"h":', b'"h":"1","hh":', 1),
    lambda m: m.replace(b'"h":', b'"h":01,"hh":', 1),  # not JSON
    lambda m: m.replace(b'"h":', b'"h":1.,"hh":', 1),
    lambda m: m.replace(b'"h":', b'"h":.5,"hh":', 1),
    lambda m: m.replace(b'"h":', b'"h":+1,"hh":', 1),
    lambda m: m.replace(b'"h":', b'"x":{"a":1},"h":', 1),  # nested
    lambda m: m.replace(b'"h":', b'"x":[1],"h":', 1),
    lambda m: m.replace(b'"q":', b'"t":1,"q":', 1),  # a repeated key
    lambda m: m.replace(b'"t":', b'"t":-9223372036854775808,"tt":', 1),  # pandas' NaT
    lambda m: m.replace(b'"s":"', b'"s":"\xff', 1),  # not UTF-8
    lambda m: m.replace(b'"s":"', b'"s":"\x01', 1),  # a raw control character
    lambda m: m.replace(b'"ln":', b'"ln":null,"lnx":', 1),
    lambda m: m + b"x",
    lambda m: m[:-1],
    lambda m: b"[" + m + b"]",
    lambda m: m.replace(b'"s":', b'"S":', 1),  # a missing key
    lambda m: b"",
    lambda m: b"\xef\xbb\xbf" + m,  # a byte order mark
]


def same_columns(a: Any, b: Any) -> bool:
    """Equal columns, floats by their bits, ints and strings by type and value (a column
    that is None, as ``trade`` of bars only, equal to None)."""

    def typed(columns: Any) -> list[Any]:
        return [
            None if c is None else [(type(x), bits([x]) if isinstance(x, float) else x) for x in c]
            for c in columns
        ]

    return typed(a) == typed(b)


def test_decoding_plain_bars_matches_the_python_codec() -> None:
    rng = random.Random(41)
    values = [bar_message(rng, j) for j in range(20_000)]
    assert decode_bars(values, 1) is not None, "the compiled reader refused plain bars"
    for lo, hi in random_cuts(rng, len(values), 3_000):
        batch = values[lo:hi]
        want = codec.decode_bars_lenient(batch, compiled=False)
        got = codec.decode_bars_lenient(batch, compiled=True)
        assert got[1] == want[1] == []
        assert same_columns(got[0], want[0]), f"values {lo}..{hi}"


def test_decoding_anything_unusual_matches_the_python_codec() -> None:
    rng = random.Random(42)
    for k, breakage in enumerate(BREAKAGES):
        batch = [bar_message(rng, j) for j in range(20)]
        batch[rng.randrange(20)] = breakage(batch[0])
        want = codec.decode_bars_lenient(batch, compiled=False)
        got = codec.decode_bars_lenient(batch, compiled=True)
        assert got[1] == want[1], f"breakage {k}"
        assert same_columns(got[0], want[0]), f"breakage {k}"


def test_numbers_are_read_as_orjson_reads_them() -> None:
    # Long and short decimal spellings, near halfway points too: correctly rounded both.
    rng = random.Random(43)
    texts = []
    for _ in range(30_000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30)))
        point = rng.randint(0, len(digits))
        text = (digits[:point] or "0").lstrip("0") or "0"
        text = f"{text}.{digits[point:] or '0'}"
        if rng.random() < 0.3:
            text += f"e{rng.randint(-30, 30)}"
        texts.append(text)
    texts += [repr(x) for x in (0.1, 1 / 3, 2.0**-1074, 1.7976931348623157e308)]
    texts += ["9007199254740993", "9007199254740993.0", "2.2250738585072011e-308"]
    for text in texts:
        message = b'{"sv":1,"s":"X","t":%d,"o":1.0,"h":1e300,"l":1e-300,"c":1.0,"v":%b,"q":1}' % (
            T0,
            text.encode(),
        )
        got = decode_bars([message], 1)
        want = float(orjson.loads(message)["v"])
        assert got is not None, text
        assert bits(got[6]) == bits([want]), f"{text}: compiled {got[6][0]!r}, orjson {want!r}"


# -- the producer's messages, written by the compiled core ------------------------------


def core_records(batch: BarBatch, kind: str | None) -> list[bytes] | None:
    """``hftpipe_core.encode_records`` of a whole batch, called directly (no fallback)."""
    return encode_records(codec.SCHEMA_VERSION, kind, *batch.columns())


def python_records(batch: BarBatch, *, trade: bool) -> list[bytes]:
    """The reference: ``codec.encode_bar`` of each bar, or ``codec.encode_trade`` of the
    trade each row is (its price the close, its size the volume), as the producer wrote
    them bar by bar."""
    if not trade:
        return [codec.encode_bar(bar) for bar in batch.bars()]
    return [
        codec.encode_trade(Trade(b.symbol, b.ts_ns, b.close, b.volume, b.seq, b.line))
        for b in batch.bars()
    ]


def assert_records_match(batch: BarBatch, where: str) -> None:
    for trade in (False, True):
        want = python_records(batch, trade=trade)
        got = core_records(batch, codec.TRADE if trade else None)
        assert got is not None, f"{where}: the core declined a plain batch"
        wrong = [(j, w, g) for j, (w, g) in enumerate(zip(want, got, strict=True)) if w != g]
        assert not wrong, f"{where} (trade={trade}): {len(wrong)} differ, e.g. {wrong[:2]}"
        assert codec.encode_records(batch, trade=trade) == want


def test_producer_records_of_the_shared_btc_file_byte_for_byte() -> None:
    if not SAMPLE.is_file():
        pytest.fail(f"the shared BTC sample is missing: expected {SAMPLE}")
    with gzip.open(SAMPLE, "rb") as f:
        batches = [ch.bars for ch in BarReader(f, symbol="BTCUSDT", block_bytes=1 << 18)]
    assert sum(map(len, batches)) > 10_000
    assert len(batches) > 1
    for k, batch in enumerate(batches):
        assert_records_match(batch, f"block {k}")


_EDGE_INTS: Final = (0, 1, -1, 9, 10, -10, 2**53 + 1, 2**63 - 1, -(2**63), -(2**63) + 1)
_EDGE_FLOATS: Final = (
    0.0, -0.0, 1e-5, 9.999999999999999e-6, 1e16, 9999999999999998.0, 5e-324, -5e-324,
    2.2250738585072014e-308, 2.225073858507201e-308, 1.7976931348623157e308, -1e300, 0.1,
    1e-7, 123456789012345.6, 47.181009, math.nan, math.inf, -math.inf,
)  # fmt: skip
_SYMBOLS: Final = (
    "BTCUSDT", "", "é", "€uro", "😀", 'quo"te', "back\\slash", "tab\tnew\nline", "\x00\x01\x1f",
    "\x7f\u0080\u2028\u2029", "/slash", "日本",
)  # fmt: skip


def random_float(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(_EDGE_FLOATS)
    if pick < 0.6:  # any bits: subnormals, NaNs with payloads, every exponent
        x: float = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        return x
    if pick < 0.8:
        return round(rng.uniform(-1e6, 1e6), rng.randint(0, 12))
    return rng.choice((1.0, -1.0)) * math.pow(10.0, rng.uniform(-330, 308))


def random_int(rng: random.Random) -> int:
    return rng.choice(_EDGE_INTS) if rng.random() < 0.3 else rng.randrange(-(2**63), 2**63)


def random_records(rng: random.Random, n: int) -> BarBatch:
    names = rng.sample(_SYMBOLS, rng.randint(1, 4))
    bars = []
    for _ in range(n):
        # Each a str object of its own, or one object repeated (as a reader gives).
        symbol = "".join(list(rng.choice(names))) if rng.random() < 0.5 else names[0]
        ts = random_int(rng)
        o, h, lo, c, v = (random_float(rng) for _ in range(5))
        bars.append(Bar(symbol, ts, o, h, lo, c, v, random_int(rng), random_int(rng)))
    return BarBatch.from_bars(bars)


@pytest.mark.parametrize("seed", range(6))
def test_producer_records_of_random_bars_byte_for_byte(seed: int) -> None:
    rng = random.Random(900 + seed)
    for n in (0, 1, 2, 17, 3_000):
        batch = random_records(rng, n)
        assert_records_match(batch, f"seed {seed}, {n} bars")
        # A view of every other row (strided buffers), and a masked copy.
        assert_records_match(batch.take(np.arange(0, n, 2)), f"seed {seed}, even rows")
        if n:
            strided = BarBatch(*(getattr(batch, f)[::3] for f in BarBatch.__dataclass_fields__))
            assert_records_match(strided, f"seed {seed}, every third row (a view)")


def test_producer_records_the_core_is_not_sure_of_are_pythons() -> None:
    good = BarBatch.from_bars([Bar("A", 1, 1.0, 2.0, 0.5, 1.5, 3.0, 0, 2)] * 3)
    # A lone surrogate is no UTF-8: the core declines, and orjson refuses it as before.
    odd = good.take(np.arange(3))
    odd.symbol[1] = "bad\udc80"
    assert core_records(odd, None) is None
    for compiled in (True, False):
        with pytest.raises(orjson.JSONEncodeError, match="surrogates"):
            codec.encode_records(odd, compiled=compiled)
    # A symbol that is not a str: the core declines, orjson writes what it is.
    for other in (None, 7):
        odd.symbol[1] = other
        assert core_records(odd, None) is None
        assert codec.encode_records(odd) == codec.encode_records(odd, compiled=False)
        assert codec.encode_records(odd)[1].startswith(b'{"sv":1,"s":%s,' % orjson.dumps(other))
    # A column of another type (an int volume is written 3, not 3.0): Python's bytes.
    ints = replace(good, volume=good.volume.astype(np.int64))
    with pytest.raises((TypeError, BufferError)):
        core_records(ints, None)
    assert codec.encode_records(ints) == codec.encode_records(ints, compiled=False)
    assert b'"v":3,' in codec.encode_records(ints)[0]
    short = replace(good, seq=good.seq[:2])
    with pytest.raises(ValueError, match="different lengths: symbol 3, seq 2"):
        core_records(short, None)


def test_the_engine_choice_is_one_for_every_worker() -> None:
    assert compiled_chosen("auto") is compiled_chosen("compiled") is True
    assert compiled_chosen("python") is False
    with pytest.raises(ValueError, match="unknown engine 'rust'"):
        compiled_chosen("rust")
    assert ProduceSettings(source=["x"]).engine == ProcessSettings().engine == "auto"
