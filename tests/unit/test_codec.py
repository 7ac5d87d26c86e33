"""Kafka message values: round trips, the wire form, and errors that say what is wrong."""

from __future__ import annotations

import orjson
import pytest

from hftpipe_workers.bars import Bar
from hftpipe_workers.codec import (
    SCHEMA_VERSION,
    BarColumns,
    CodecError,
    decode_bar,
    decode_bar_metrics,
    decode_bars,
    decode_metrics_columns,
    encode_bar,
    encode_bar_metrics,
    encode_bars,
    encode_metrics_columns,
)
from hftpipe_workers.csvformat import BarBatch
from hftpipe_workers.metrics import WindowColumns, WindowMetrics

BAR = Bar("BTCUSDT", 1_502_942_400_000_000_123, 4261.48, 4313.62, 4261.32, 4308.83, 47.181009, 0, 2)
METRICS = WindowMetrics("BTCUSDT", "5m", BAR.ts_ns, 17, 5, 120.5, 4301.2, 4300.9, 3.1, 0.0007)
SESSION = METRICS._replace(
    window="session", n_bars=1, volume=0.0, vwap=None, std=None, ret_std=None
)
BAR17 = BAR._replace(seq=17)


def test_bar_round_trip_is_exact() -> None:
    awkward = BAR._replace(
        open=0.1 + 0.2,
        high=1e300,
        low=5e-324,
        close=0.30000000000000004,
        volume=0.0,
        seq=2**40,
        line=0,
    )
    for bar in (BAR, awkward):
        assert decode_bar(encode_bar(bar)) == bar


def test_bar_wire_form_is_compact_and_versioned() -> None:
    assert encode_bar(BAR) == (
        b'{"sv":1,"s":"BTCUSDT","t":1502942400000000123,"o":4261.48,"h":4313.62,'
        b'"l":4261.32,"c":4308.83,"v":47.181009,"q":0,"ln":2}'
    )
    assert SCHEMA_VERSION == 1


def test_integers_are_accepted_for_floats_and_line_is_optional() -> None:
    msg = b'{"sv":1,"s":"X","t":1,"o":1,"h":2,"l":1,"c":2,"v":0,"q":3}'
    bar = decode_bar(msg)
    assert bar == Bar("X", 1, 1.0, 2.0, 1.0, 2.0, 0.0, 3, 0)
    assert isinstance(bar.open, float)


def test_bar_metrics_round_trip_with_and_without_undefined_values() -> None:
    message = encode_bar_metrics(BAR17, [METRICS, SESSION])
    decoded = decode_bar_metrics(message)
    assert decoded.windows == (METRICS, SESSION)
    assert (decoded.symbol, decoded.ts_ns, decoded.seq) == ("BTCUSDT", BAR.ts_ns, 17)
    assert (decoded.close, decoded.bar_volume) == (BAR.close, BAR.volume)
    assert decoded.window("session") == SESSION
    with pytest.raises(KeyError, match="1h"):
        decoded.window("1h")
    assert orjson.loads(message) == {
        "sv": 1,
        "s": "BTCUSDT",
        "t": BAR.ts_ns,
        "q": 17,
        "c": BAR.close,
        "bv": BAR.volume,
        "w": {
            "5m": {"n": 5, "v": 120.5, "vw": 4301.2, "ma": 4300.9, "sd": 3.1, "rsd": 0.0007},
            "session": {"n": 1, "v": 0.0, "vw": None, "ma": 4300.9, "sd": None, "rsd": None},
        },
    }


def test_a_batch_encodes_bar_by_bar() -> None:
    other = BAR._replace(symbol="ETHUSDT", seq=1, line=3)
    assert list(encode_bars(BarBatch.from_bars([BAR, other]))) == [
        encode_bar(BAR),
        encode_bar(other),
    ]


BAD_BARS = [
    (b"not json", r"bad bar message: not JSON \(.*\); message: b'not json'"),
    (b"[1, 2]", "bad bar message: expected a JSON object, got list"),
    (b'{"sv":2,"s":"X"}', r"schema version \(sv\) is 2, this reader knows version 1"),
    (b'{"s":"X"}', r"schema version \(sv\) is None"),
    (b'{"sv":1,"s":"X","t":1,"o":1,"h":1,"l":1,"c":1,"q":0}', "field 'v' is missing"),
    (
        b'{"sv":1,"s":7,"t":1,"o":1,"h":1,"l":1,"c":1,"v":1,"q":0}',
        "field 's' must be a string, got 7",
    ),
    (
        b'{"sv":1,"s":"X","t":1.5,"o":1,"h":1,"l":1,"c":1,"v":1,"q":0}',
        "field 't' must be an integer, got 1.5",
    ),
    (
        b'{"sv":1,"s":"X","t":1,"o":1,"h":1,"l":1,"c":1,"v":1,"q":true}',
        "field 'q' must be an integer, got True",
    ),
    (
        b'{"sv":1,"s":"X","t":1,"o":"1","h":1,"l":1,"c":1,"v":1,"q":0}',
        "field 'o' must be a number, got '1'",
    ),
    (
        b'{"sv":1,"s":"X","t":1,"o":1,"h":1,"l":2,"c":1,"v":1,"q":0}',
        r"bad bar message: high 1.0 is below low 2.0; message: b'\{",
    ),
    (b'{"sv":1,"s":"","t":1,"o":1,"h":1,"l":1,"c":1,"v":1,"q":0}', "symbol is empty"),
    (b'{"sv":1,"s":"X","t":1,"o":NaN,"h":1,"l":1,"c":1,"v":1,"q":0}', "not JSON"),
]


@pytest.mark.parametrize(("data", "message"), BAD_BARS)
def test_malformed_bar_messages_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_bar(data)


def test_many_bars_decode_as_one_by_one() -> None:
    bars = [
        BAR,
        BAR._replace(symbol="ETHUSDT", seq=1, line=0, volume=0.0),
        BAR._replace(open=0.1 + 0.2, high=1e300, low=5e-324, close=0.30000000000000004, seq=2),
    ]
    values = [encode_bar(b) for b in bars]
    values.append(b'{"sv":1,"s":"X","t":1,"o":1,"h":2,"l":1,"c":2,"v":0,"q":3}')  # ints, no ln
    want = [decode_bar(v) for v in values]
    got = decode_bars(values)
    assert got == BarColumns(*(list(column) for column in zip(*want, strict=True)))
    assert all(type(x) is float for x in got.open + got.high + got.low + got.close + got.volume)
    assert decode_bars([]) == BarColumns([], [], [], [], [], [], [], [], [])


@pytest.mark.parametrize(("data", "message"), BAD_BARS)
def test_a_bad_message_among_many_says_what_is_wrong(data: bytes, message: str) -> None:
    good = encode_bar(BAR)
    with pytest.raises(CodecError, match=message):
        decode_bars([good, good, data, good])


def test_bars_that_would_pass_joined_are_still_refused() -> None:
    # Each value must be one message: two halves, or two messages in one, are errors.
    good = encode_bar(BAR)
    with pytest.raises(CodecError, match="not JSON"):
        decode_bars([good[:40], good[40:]])
    with pytest.raises(CodecError, match="not JSON"):
        decode_bars([good + b"," + good, good])


def test_metrics_columns_encode_byte_for_byte_as_bar_by_bar() -> None:
    n = 600  # more than one of the encoder's chunks
    symbol = 'BTC"USD\u00e9\n'  # needs escaping in JSON
    rows = [
        (
            1_502_942_400_000_000_000 + i * 60_000_000_000,
            i * 7,
            4000.0 + i / 3,
            0.0 if i % 5 == 0 else 1.0 / (i + 1),
        )
        for i in range(n)
    ]
    ts, seq, close, volume = (list(column) for column in zip(*rows, strict=True))
    windows = [
        WindowColumns(
            label,
            [i % 9 + k for i in range(n)],
            [0.0 if i % 5 == 0 else i * 1e-7 for i in range(n)],
            [None if i % 5 == 0 else 4000.0 + i / 7 for i in range(n)],
            [4000.0 + i * 1e20 for i in range(n)],
            [None if i % 11 == 0 else 1e-300 * i for i in range(n)],
            [None if i < 2 else 0.1 + 0.2 for i in range(n)],
        )
        for k, label in enumerate(("5m", "1h", "session"))
    ]
    want = [
        encode_bar_metrics(
            Bar(symbol, ts[i], close[i], close[i], close[i], close[i], volume[i], seq[i]),
            [
                WindowMetrics(
                    symbol, w.window, ts[i], seq[i], w.n_bars[i], w.volume[i], w.vwap[i],
                    w.sma[i], w.std[i], w.ret_std[i],
                )
                for w in windows
            ],
        )
        for i in range(n)
    ]  # fmt: skip
    assert encode_metrics_columns(symbol, ts, seq, close, volume, windows) == want
    assert decode_bar_metrics(want[17]).window("1h").n_bars == 17 % 9 + 1
    assert encode_metrics_columns(symbol, [], [], [], [], windows[:0]) == []
    one = encode_metrics_columns("X", ts[:1], seq[:1], close[:1], volume[:1], [])
    assert one == [encode_bar_metrics(Bar("X", ts[0], 1.0, 1.0, 1.0, close[0], volume[0], 0), [])]
    with pytest.raises(ValueError, match="column 2 has 1 values, not 2"):
        encode_metrics_columns("X", ts[:2], seq[:2], close[:1], volume[:2], [])


def test_malformed_metrics_messages_say_what_is_wrong() -> None:
    good = orjson.loads(encode_bar_metrics(BAR17, [METRICS]))
    with pytest.raises(CodecError, match="bad metrics message: field 'w' is missing"):
        decode_bar_metrics(orjson.dumps({k: v for k, v in good.items() if k != "w"}))
    bad_vwap = {**good, "w": {"5m": {**good["w"]["5m"], "vw": "x"}}}
    with pytest.raises(CodecError, match="field 'vw' must be a number, got 'x'"):
        decode_bar_metrics(orjson.dumps(bad_vwap))
    long_message = orjson.dumps(
        {**good, "s": "X" * 500, "w": {"5m": {**good["w"]["5m"], "n": None}}}
    )
    with pytest.raises(CodecError, match=r"field 'n' must be an integer.*\(cut\)$"):
        decode_bar_metrics(long_message)


def _metrics_messages(n: int) -> list[bytes]:
    """*n* metrics messages of three windows, with undefined values and integer floats."""
    out = []
    for i in range(n):
        bar = BAR17._replace(ts_ns=BAR.ts_ns + i * 60_000_000_000, seq=i, close=4000.0 + i)
        five = METRICS._replace(
            ts_ns=bar.ts_ns, seq=i, vwap=None if i % 3 == 0 else 4000.0 + i / 7, n_bars=i % 5
        )
        out.append(encode_bar_metrics(bar, [five, five._replace(window="1h", std=None), SESSION]))
    out.append(out[0].replace(b'"c":4000.0', b'"c":4000'))  # a JSON integer for a float
    return out


def test_many_metrics_messages_decode_as_one_by_one() -> None:
    messages = _metrics_messages(50)
    cols = decode_metrics_columns(messages)
    assert cols is not None
    one_by_one = [decode_bar_metrics(m) for m in messages]
    assert cols.symbol == [d.symbol for d in one_by_one]
    assert cols.ts_ns == [d.ts_ns for d in one_by_one]
    assert cols.seq == [d.seq for d in one_by_one]
    assert cols.close == [d.close for d in one_by_one]
    assert all(type(c) is float for c in cols.close)
    assert cols.bar_volume == [d.bar_volume for d in one_by_one]
    assert [w.window for w in cols.windows] == ["5m", "1h", "session"]
    for k, w in enumerate(cols.windows):
        ms = [d.windows[k] for d in one_by_one]
        assert (w.n_bars, w.volume, w.vwap, w.sma, w.std, w.ret_std) == (
            [m.n_bars for m in ms],
            [m.volume for m in ms],
            [m.vwap for m in ms],
            [m.sma for m in ms],
            [m.std for m in ms],
            [m.ret_std for m in ms],
        )
    assert decode_metrics_columns([]) == ([], [], [], [], [], (), None)


def test_metrics_columns_leave_unusual_batches_to_the_careful_decoder() -> None:
    """None (decode one by one, which names the problem) for anything but good
    messages that all carry the same windows."""
    good = _metrics_messages(3)
    doc = orjson.loads(good[1])
    variants = [
        b"not json",
        orjson.dumps([1, 2]),
        orjson.dumps({**doc, "sv": 2}),
        orjson.dumps({**doc, "s": 5}),
        orjson.dumps({**doc, "t": 1.5}),
        orjson.dumps({**doc, "q": True}),
        orjson.dumps({**doc, "c": None}),
        orjson.dumps({**doc, "w": []}),
        orjson.dumps({**doc, "w": {"5m": doc["w"]["5m"]}}),  # other windows
        orjson.dumps({**doc, "w": {k: doc["w"][k] for k in ("1h", "5m", "session")}}),
        orjson.dumps({**doc, "w": {**doc["w"], "5m": {**doc["w"]["5m"], "vw": "x"}}}),
        orjson.dumps({**doc, "w": {**doc["w"], "5m": {**doc["w"]["5m"], "ma": None}}}),
        orjson.dumps({**doc, "w": {**doc["w"], "5m": {**doc["w"]["5m"], "n": 1.0}}}),
        orjson.dumps({**doc, "w": {**doc["w"], "5m": 3}}),
        orjson.dumps({**doc, "w": {**doc["w"], "1h": {"n": 1}}}),
    ]
    for variant in variants:
        assert decode_metrics_columns([*good, variant]) is None, variant
