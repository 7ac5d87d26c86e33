"""CSV layouts and the chunked bar parser: detection, bad rows, filters, the real sample."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from hftpipe_workers.bars import NS_PER_SECOND, Bar, parse_utc
from hftpipe_workers.csvformat import (
    KNOWN_LAYOUTS,
    BarBatch,
    BarReader,
    ColumnMapping,
    LayoutError,
    LayoutName,
    ParsedChunk,
    RejectedRow,
    detect_layout,
    layout_from_mapping,
    read_bars,
)
from hftpipe_workers.settings import LayoutChoice

SAMPLE = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "btcusdt_1h_binance.csv.gz"
)


def sample_path() -> Path:
    if not SAMPLE.is_file():
        pytest.fail(
            f"the shared BTC sample is missing: expected {SAMPLE} "
            "(see shared/data/README.md for how to recreate it)"
        )
    return SAMPLE


def read_all(reader: BarReader) -> tuple[list[Bar], list[RejectedRow], list[ParsedChunk]]:
    chunks = list(reader)
    bars = [b for ch in chunks for b in ch.bars.bars()]
    rejected = [r for ch in chunks for r in ch.rejected]
    return bars, rejected, chunks


def reader_for(text: str, **kwargs: object) -> BarReader:
    return BarReader(io.BytesIO(text.encode()), source="test.csv", **kwargs)  # type: ignore[arg-type]


T0 = 1_325_317_920  # 2011-12-31 07:52:00 UTC, the first minute of the Kaggle set


# -- layout detection ------------------------------------------------------------


def test_kaggle_layout_current_and_old_headers() -> None:
    new = detect_layout(["Timestamp", "Open", "High", "Low", "Close", "Volume"])
    assert (new.name, new.time, new.time_format, new.volume) == (
        "kaggle-btc",
        "Timestamp",
        "unix_s",
        "Volume",
    )
    old_header = "Timestamp,Open,High,Low,Close,Volume_(BTC),Volume_(Currency),Weighted_Price"
    old = detect_layout(old_header.split(","))
    assert (old.name, old.volume) == ("kaggle-btc", "Volume_(BTC)")
    assert old.describe() == (
        "kaggle-btc (time=Timestamp as unix_s, open=Open, high=High, low=Low, close=Close, "
        "volume=Volume_(BTC))"
    )


def test_binance_layout() -> None:
    header = "date,open,high,low,close,volume,close_time,quote_asset_volume,number_of_trades"
    layout = detect_layout(header.split(","))
    assert (layout.name, layout.time, layout.time_format, layout.symbol) == (
        "binance",
        "date",
        "iso",
        None,
    )


@pytest.mark.parametrize(
    ("header", "first", "name", "time_col"),
    [
        (
            "timestamp,open,high,low,close,volume",
            "2024-01-01T00:00:00Z",
            "generic-iso",
            "timestamp",
        ),
        ("Time,Open,High,Low,Close,Volume,Symbol", "2024-01-01 00:00", "generic-iso", "Time"),
        ("symbol,datetime,open,high,low,close,volume", "2024-01-01", "generic-iso", "datetime"),
        ("timestamp,open,high,low,close,volume", "1704067200", "generic-unix-s", "timestamp"),
        ("timestamp,open,high,low,close,volume", "1704067200000", "generic-unix-ms", "timestamp"),
    ],
)
def test_generic_layouts(header: str, first: str, name: str, time_col: str) -> None:
    cols = header.split(",")
    row = ["1"] * len(cols)
    row[cols.index(time_col)] = first
    layout = detect_layout(cols, first_row=row)
    assert (layout.name, layout.time) == (name, time_col)
    assert layout.symbol == next((c for c in cols if c.lower() == "symbol"), None)


def test_unknown_header_fails_fast_and_says_what_to_do() -> None:
    with pytest.raises(LayoutError) as err:
        reader_for("when,o,h,l,c,v\n1,2,3,4,5,6\n", symbol="X")
    message = str(err.value)
    assert message.startswith("test.csv: the header matches no known CSV layout")
    assert "Columns found: ['when', 'o', 'h', 'l', 'c', 'v']" in message
    for name in ("kaggle-btc", "binance", "generic"):
        assert name in message
    assert (
        "time=COLUMN[+COLUMN]:unix|unix_s|unix_ms|unix_us|unix_ns|iso|STRFTIME,open=COLUMN"
        in message
    )


def test_an_explicit_layout_is_the_only_one_tried() -> None:
    # Kaggle's column names with unix milliseconds: auto picks kaggle-btc (seconds),
    # the generic layout named explicitly sniffs the milliseconds.
    cols = ["Timestamp", "Open", "High", "Low", "Close", "Volume"]
    row = ["1704067200000", "1", "1", "1", "1", "1"]
    assert detect_layout(cols, first_row=row).name == "kaggle-btc"
    assert detect_layout(cols, first_row=row, expect="kaggle-btc").name == "kaggle-btc"
    generic = detect_layout(cols, first_row=row, expect="generic")
    assert (generic.name, generic.time, generic.time_format) == (
        "generic-unix-ms",
        "Timestamp",
        "unix_ms",
    )
    binance = ["date", "open", "high", "low", "close", "volume", "close_time"]
    assert detect_layout(binance, expect="generic").name == "generic-iso"
    assert detect_layout(binance, expect="auto").name == "binance"


def test_a_header_that_does_not_match_the_named_layout_is_a_layout_error() -> None:
    with pytest.raises(LayoutError) as err:
        detect_layout(["time", "open", "high", "low", "close", "volume"], expect="binance")
    message = str(err.value)
    assert "does not match the binance layout that was asked for" in message
    assert "Columns found: ['time', 'open'" in message
    with pytest.raises(LayoutError, match="kaggle-btc layout"):
        reader_for("date,open,high,low,close,volume\n", symbol="X", layout="kaggle-btc")


def test_the_reader_reads_with_the_named_layout() -> None:
    text = "Timestamp,Open,High,Low,Close,Volume\n1704067200000,1,2,0.5,1.5,10\n"
    bars, rejected, _ = read_all(reader_for(text, symbol="X", layout="generic"))
    assert rejected == []
    assert [b.ts_ns for b in bars] == [1_704_067_200 * NS_PER_SECOND]
    assert reader_for(text, symbol="X").layout.name == "kaggle-btc"
    mapping = ColumnMapping.parse("time=Timestamp:unix_ms")
    with pytest.raises(ValueError, match="not both"):
        reader_for(text, symbol="X", mapping=mapping, layout="generic")


def test_the_settings_offer_exactly_the_known_layouts() -> None:
    assert set(get_args(LayoutChoice)) == {"auto", *KNOWN_LAYOUTS}
    assert set(get_args(LayoutName)) == set(KNOWN_LAYOUTS)


def test_duplicate_columns_and_empty_files_are_layout_errors() -> None:
    with pytest.raises(LayoutError, match=r"duplicate column names \['open'\]"):
        detect_layout(["time", "open", "open", "high", "low", "close", "volume"])
    with pytest.raises(LayoutError, match=r"test.csv: the file is empty"):
        reader_for("")


def test_a_file_without_symbols_needs_one_from_the_caller() -> None:
    with pytest.raises(LayoutError, match=r"has no symbol column.*--symbol"):
        reader_for("Timestamp,Open,High,Low,Close,Volume\n")


def test_column_mapping_from_text_and_its_errors() -> None:
    mapping = ColumnMapping.parse("time=ts:unix_ms, open=o,high=h,low=l,close=c,volume=v,symbol=s")
    assert mapping == ColumnMapping("ts", "unix_ms", "o", "h", "l", "c", "v", "s")
    assert ColumnMapping.parse("time=when:iso") == ColumnMapping("when", "iso")
    with pytest.raises(
        ValueError, match="FORMAT one of unix, unix_s, unix_ms, unix_us, unix_ns, iso"
    ):
        ColumnMapping.parse("time=ts:seconds")
    with pytest.raises(ValueError, match=r"unknown keys \['vol'\]"):
        ColumnMapping.parse("time=ts:iso,vol=v")
    mapping = ColumnMapping.parse("time=ts:iso,open=o,high=h,low=l,close=c,volume=v")
    with pytest.raises(LayoutError, match=r"names columns \['v'\] that are not in the header"):
        layout_from_mapping(["ts", "o", "h", "l", "c"], mapping)


def test_explicit_mapping_with_unix_ms_and_symbols() -> None:
    text = "s,ts,o,h,l,c,v\nAAA,1704067200000,1,2,0.5,1.5,10\nBBB,1704067200500,3,4,2.5,3.5,0\n"
    mapping = ColumnMapping.parse("time=ts:unix_ms,open=o,high=h,low=l,close=c,volume=v,symbol=s")
    reader = reader_for(text, mapping=mapping)
    assert reader.layout.name == "mapping"
    bars, rejected, _ = read_all(reader)
    assert rejected == []
    assert bars == [
        Bar("AAA", 1_704_067_200 * NS_PER_SECOND, 1.0, 2.0, 0.5, 1.5, 10.0, 0, 2),
        Bar("BBB", 1_704_067_200_500_000_000, 3.0, 4.0, 2.5, 3.5, 0.0, 1, 3),
    ]


# -- the real sample ---------------------------------------------------------------


def test_real_binance_sample() -> None:
    with gzip.open(sample_path(), "rb") as f:
        reader = BarReader(f, symbol="BTCUSDT")
        assert reader.layout.name == "binance"
        bars, rejected, _ = read_all(reader)
    assert rejected == []
    assert len(bars) == reader.stats.accepted == reader.stats.lines == 55_765
    assert bars[0] == Bar(
        "BTCUSDT",
        parse_utc("2017-08-17 04:00:00"),
        4261.48,
        4313.62,
        4261.32,
        4308.83,
        47.181009,
        seq=0,
        line=2,
    )
    assert bars[-1] == Bar(
        "BTCUSDT",
        parse_utc("2024-01-01 23:00:00"),
        43529.94,
        44184.1,
        43529.93,
        44179.55,
        3475.97051,
        seq=55_764,
        line=55_766,
    )
    ts = np.array([b.ts_ns for b in bars])
    hour = 3600 * NS_PER_SECOND
    # The README's quirks: 127 missing hours in 28 gaps, one bar off the hour.
    assert (ts[-1] - ts[0]) // hour + 1 - len(ts) == 127
    assert int((np.diff(ts) > hour).sum()) == 28
    assert parse_utc("2018-02-09 09:28:14") in set(ts.tolist())
    assert [b.seq for b in bars] == list(range(len(bars)))
    assert all(b.line == b.seq + 2 for b in bars)


# -- bad rows ----------------------------------------------------------------------

KAGGLE_WITH_PROBLEMS = f"""Timestamp,Open,High,Low,Close,Volume
{T0}.0,4.39,4.39,4.39,4.39,0.45558087
{T0 + 60},NaN,NaN,NaN,NaN,NaN

{T0 + 120}.5,4.39,4.3,4.39,4.39,1
{T0 + 180},4.39,4.39,4.39,4.39,1,7
{T0 + 180},4.40,4.41,4.39,4.40,2
{T0 + 180},4.39,4.39,4.39,4.39,1
{T0 + 120},4.39,4.39,4.39,4.39,1
later,4.39,4.39,4.39,4.39,1
{T0 + 240},4.39,4.39,4.39,4.39,-1
{T0 + 300},4.39,4.39,4.39,4.4,1
{T0 + 360},x,4.39,4.39,4.39,1
{T0 + 420},4.39,4.39
{T0 + 480},0,4.39,4.39,4.39,1
{T0 + 540},4.39,4.5,4.39,4.45,2"""

EXPECTED_REJECTS = [
    (3, "not_finite", "open is not a finite number (got 'NaN')"),
    (5, "high_below_low", "high 4.3 is below low 4.39"),
    (6, "fields", "expected 6 comma-separated fields as in the header, found 7"),
    (
        8,
        "duplicate_time",
        "duplicate time 2011-12-31T07:55:00Z for BTCUSD: line 7 already has a bar at that time",
    ),
    (
        9,
        "time_backwards",
        "time 2011-12-31T07:54:00Z for BTCUSD is before 2011-12-31T07:55:00Z "
        "on line 7; times must increase per symbol",
    ),
    (10, "time", "time 'later' is not a valid unix time in seconds"),
    (11, "negative_volume", "volume -1.0 is negative"),
    (12, "close_outside_range", "close 4.4 is outside [low 4.39, high 4.39]"),
    (13, "not_finite", "open is not a finite number (got 'x')"),
    (14, "fields", "expected 6 comma-separated fields as in the header, found 3"),
    (15, "not_positive", "open 0.0 is not a positive price"),
]


@pytest.mark.parametrize("block_bytes", [1 << 20, 7, 64])
def test_bad_rows_have_exact_lines_and_reasons(block_bytes: int) -> None:
    reader = reader_for(KAGGLE_WITH_PROBLEMS, symbol="BTCUSD", block_bytes=block_bytes)
    bars, rejected, _ = read_all(reader)
    assert [(r.line, r.kind, r.reason) for r in rejected] == EXPECTED_REJECTS
    assert rejected[0].source == "test.csv"
    assert rejected[0].text == f"{T0 + 60},NaN,NaN,NaN,NaN,NaN"
    assert str(rejected[1]).startswith("test.csv:5: high 4.3 is below low 4.39 (row: ")
    assert [(b.line, b.seq, b.ts_ns // NS_PER_SECOND) for b in bars] == [
        (2, 0, T0),
        (7, 1, T0 + 180),
        (16, 2, T0 + 540),
    ]
    assert (reader.stats.lines, reader.stats.accepted, reader.stats.rejected) == (14, 3, 11)
    assert reader.stats.blank_lines == 1


def test_fractional_unix_seconds_keep_their_fraction() -> None:
    text = f"Timestamp,Open,High,Low,Close,Volume\n{T0}.25,1,1,1,1,1\n{T0 + 1}.000001,1,1,1,1,1\n"
    bars, _, _ = read_all(reader_for(text, symbol="X"))
    assert bars[0].ts_ns == T0 * NS_PER_SECOND + 250_000_000
    assert bars[1].ts_ns == (T0 + 1) * NS_PER_SECOND + 1000


# Each text, as a double, is off by tens or hundreds of nanoseconds (1700000000.123 is
# 1700000000.1229999065...): times are read from the text, exactly (issue 10, point 3).
UNIX_TEXTS = [
    ("unix_s", "1700000000.123", 1_700_000_000_123_000_000),
    ("unix_s", "1700000060.999", 1_700_000_060_999_000_000),
    ("unix_s", "1700000000.123456789", 1_700_000_000_123_456_789),
    ("unix_s", "1700000000.000000001", 1_700_000_000_000_000_001),
    ("unix_s", "1700000000.1234567895", 1_700_000_000_123_456_790),  # half a ns: away from 0
    ("unix_s", "1700000000.12345678949", 1_700_000_000_123_456_789),
    ("unix_s", "1700000000", 1_700_000_000_000_000_000),
    ("unix_s", "1700000000.", 1_700_000_000_000_000_000),
    ("unix_s", "+1700000000.5", 1_700_000_000_500_000_000),
    ("unix_s", "-1.123456789", -1_123_456_789),
    ("unix_s", ".5", 500_000_000),
    ("unix_s", "1.700000000123e9", 1_700_000_000_123_000_000),
    ("unix_s", "0001700000000.25", 1_700_000_000_250_000_000),
    ("unix_ms", "1700000000123.456789", 1_700_000_000_123_456_789),
    ("unix_ms", "1700000000123", 1_700_000_000_123_000_000),
    ("unix_ms", "1700000000999.9999999", 1_700_000_001_000_000_000),
]


@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted-block"])
def test_unix_times_are_exact_integers_from_their_text(quoted: bool) -> None:
    for fmt in ("unix_s", "unix_ms"):
        cases = [(text, ns) for f, text, ns in UNIX_TEXTS if f == fmt]
        # One row per time, each its own symbol (so order does not matter).
        extra = (",x", ',"a"') if quoted else ("", "")
        lines = [f"t,o,h,l,c,v,sym{extra[0]}"]
        lines += [f"{text},1,1,1,1,1,S{i}{extra[1]}" for i, (text, _) in enumerate(cases)]
        mapping = ColumnMapping.parse(
            f"time=t:{fmt},open=o,high=h,low=l,close=c,volume=v,symbol=sym"
        )
        bars, rejected, _ = read_all(reader_for("\n".join(lines) + "\n", mapping=mapping))
        assert rejected == []
        assert [(b.symbol, b.ts_ns) for b in bars] == [
            (f"S{i}", ns) for i, (_, ns) in enumerate(cases)
        ], fmt


@pytest.mark.parametrize(
    ("fmt", "texts", "expected"),
    [
        ("unix_s", ["1700000000.123", "1700000060.999"], [1_700_000_000_123, 1_700_000_060_999]),
        ("unix_s", ["1700000000", "1700000060"], [1_700_000_000_000, 1_700_000_060_000]),
        ("unix_s", ["1700000000.", "1700000060."], [1_700_000_000_000, 1_700_000_060_000]),
        ("unix_s", ["9200000000.00", "9199999999.99"], [None, 9_199_999_999_990]),
        ("unix_ms", ["1700000000123", "1700000060999"], [1_700_000_000_123, 1_700_000_060_999]),
    ],
)
def test_unix_times_of_one_width_are_exact(
    fmt: str, texts: list[str], expected: list[int | None]
) -> None:
    # Every time with the same width and point: the fast way, which most files take.
    # (expected in milliseconds; None: not a time hftpipe can hold)
    lines = ["t,open,high,low,close,volume", *(f"{t},1,1,1,1,1" for t in texts)]
    mapping = ColumnMapping.parse(f"time=t:{fmt}")
    bars, rejected, _ = read_all(reader_for("\n".join(lines) + "\n", mapping=mapping, symbol="X"))
    assert [b.ts_ns for b in bars] == [e * 1_000_000 for e in expected if e is not None]
    assert [r.kind for r in rejected] == ["time"] * expected.count(None)


def test_unix_times_of_one_width_round_to_the_nearest_nanosecond() -> None:
    text = "t,open,high,low,close,volume\n1700000000.1234567895,1,1,1,1,1\n"
    text += "1700000001.1234567894,1,1,1,1,1\n"
    mapping = ColumnMapping.parse("time=t:unix_s")
    bars, _, _ = read_all(reader_for(text, mapping=mapping, symbol="X"))
    assert [b.ts_ns for b in bars] == [1_700_000_000_123_456_790, 1_700_000_001_123_456_789]


@pytest.mark.parametrize(
    "text",
    ["", "x", "1e", ".", "-", "1.2.3", "1_700_000_000", "inf", "NaN", "9200000000", "0x10", "1 2"],
)
def test_text_that_is_no_unix_time_is_a_bad_row(text: str) -> None:
    csv_text = f"timestamp,open,high,low,close,volume\n{T0},1,1,1,1,1\n{text},1,1,1,1,1\n"
    bars, rejected, _ = read_all(reader_for(csv_text, symbol="X"))
    assert len(bars) == 1
    assert [(r.line, r.kind) for r in rejected] == [(3, "time")]


def test_iso_times_with_nanoseconds_are_exact() -> None:
    text = (
        "timestamp,open,high,low,close,volume\n"
        "2023-11-14T22:13:20.000000001Z,1,1,1,1,1\n"
        "2023-11-14T23:13:20.123456789+01:00,1,1,1,1,1\n"
        "2023-11-14 22:13:21.999999999,1,1,1,1,1\n"
    )
    bars, rejected, _ = read_all(reader_for(text, symbol="X"))
    assert rejected == []
    assert [b.ts_ns for b in bars] == [
        1_700_000_000_000_000_001,
        1_700_000_000_123_456_789,
        1_700_000_001_999_999_999,
    ]


def test_iso_times_with_offsets_and_naive_times_are_utc() -> None:
    text = (
        "timestamp,open,high,low,close,volume\n"
        "2024-01-01T00:00:00+02:00,1,1,1,1,1\n"  # 2023-12-31 22:00 UTC
        "2023-12-31 23:00:00,1,1,1,1,1\n"
        "2024-01-01T00:00:00Z,1,1,1,1,1\n"
        "2024-01-01T00:30:00.123456789-00:30,1,1,1,1,1\n"
        "2024-13-01T00:00:00Z,1,1,1,1,1\n"
        "2024-01-01 02:00:00,1,1,1,1,1\n"  # naive after an offset: still UTC
    )
    reader = reader_for(text, symbol="X")
    assert reader.layout.name == "generic-iso"
    bars, rejected, _ = read_all(reader)
    assert [b.ts_ns for b in bars] == [
        parse_utc("2023-12-31T22:00:00Z"),
        parse_utc("2023-12-31T23:00:00Z"),
        parse_utc("2024-01-01T00:00:00Z"),
        parse_utc("2024-01-01T01:00:00.123456789Z"),
        parse_utc("2024-01-01T02:00:00Z"),
    ]
    assert [(r.line, r.reason) for r in rejected] == [
        (6, "time '2024-13-01T00:00:00Z' is not a valid ISO-8601 time between 1677 and 2262")
    ]


def test_text_streams_crlf_bom_quotes_and_no_final_newline() -> None:
    text = (
        "\ufefftime,open,high,low,close,volume,symbol\r\n"
        '2024-01-01T00:00:00Z,1,2,0.5,1.5,10,"AB,C"\r\n'
        "\r\n"
        "2024-01-01T00:01:00Z,1,2,0.5,1.5,10,NA"
    )
    reader = BarReader(io.StringIO(text), source="mem")
    assert reader.layout.symbol == "symbol"
    bars, rejected, chunks = read_all(reader)
    assert rejected == []
    assert [(b.symbol, b.line) for b in bars] == [("AB,C", 2), ("NA", 4)]
    assert sum(ch.blank_lines for ch in chunks) == 1


def test_empty_symbol_is_a_bad_row() -> None:
    # A good row after it: a file of bad rows only is refused (test_source_formats.py).
    text = "time,symbol,open,high,low,close,volume\n2024-01-01,,1,1,1,1,1\n2024-01-02,X,1,1,1,1,1\n"
    _, rejected, _ = read_all(reader_for(text))
    assert [(r.line, r.kind, r.reason) for r in rejected] == [
        (2, "symbol", "symbol column 'symbol' is empty")
    ]


def test_time_order_is_checked_per_symbol_across_chunks() -> None:
    rows = [
        ("A", 0),
        ("B", 0),
        ("A", 60),
        ("B", 60),
        ("A", 60),
        ("B", 30),
        ("C", 10),
        ("A", 120),
        ("B", 120),
        ("A", 90),
        ("C", 10),
    ]
    text = "symbol,timestamp,open,high,low,close,volume\n" + "".join(
        f"{s},{1704067200 + t},1,1,1,1,1\n" for s, t in rows
    )
    for block_bytes in (1 << 20, 50):
        reader = reader_for(text, block_bytes=block_bytes)
        assert reader.layout.name == "generic-unix-s"
        bars, rejected, _ = read_all(reader)
        assert [(r.line, r.kind) for r in rejected] == [
            (6, "duplicate_time"),
            (7, "time_backwards"),
            (11, "time_backwards"),
            (12, "duplicate_time"),
        ]
        assert "line 5" in rejected[1].reason  # B's last accepted bar
        assert [b.line for b in bars] == [2, 3, 4, 5, 8, 9, 10]
        assert [b.seq for b in bars] == list(range(7))


def test_start_and_end_select_a_time_range() -> None:
    text = "timestamp,open,high,low,close,volume\n" + "".join(
        f"{1704067200 + 60 * i},1,1,1,1,{-1 if i == 1 else 1}\n" for i in range(10)
    )
    text += "soon,1,1,1,1,1\n"
    start = (1704067200 + 60 * 3) * NS_PER_SECOND
    end = (1704067200 + 60 * 7) * NS_PER_SECOND
    reader = reader_for(text, symbol="X", start_ns=start, end_ns=end)
    bars, rejected, chunks = read_all(reader)
    assert [b.ts_ns for b in bars] == [start + 60 * NS_PER_SECOND * k for k in range(4)]
    assert [b.seq for b in bars] == [0, 1, 2, 3]
    # Row 3 (negative volume) is outside the range: skipped, not reported.
    assert [(r.line, r.kind) for r in rejected] == [(12, "time")]
    assert sum(ch.out_of_range for ch in chunks) == reader.stats.out_of_range == 6
    with pytest.raises(ValueError, match="empty time range"):
        reader_for(text, symbol="X", start_ns=end, end_ns=start)


def test_read_bars_and_bar_batches() -> None:
    text = "timestamp,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,10\n2024-01-02,1,2,1,2,0\n"
    chunks = list(read_bars(io.BytesIO(text.encode()), symbol="X"))
    batch = chunks[0].bars
    assert len(batch) == 2
    bars = list(batch.bars())
    again = BarBatch.from_bars(bars)
    assert list(again.bars()) == bars
    assert list(batch.take(np.array([1])).bars()) == bars[1:]
    assert len(BarBatch.from_bars([])) == 0


# -- sources that are no clean UTF-8 CSV (issue 10, point 16) ----------------------

HEADER = "timestamp,open,high,low,close,volume\n"


def rows_text(count: int, first: int = T0) -> str:
    return "".join(f"{first + 60 * i},1,2,0.5,1.5,10\n" for i in range(count))


def read_source(data: bytes, **kwargs: object) -> tuple[BarReader, list[Bar], list[RejectedRow]]:
    reader = BarReader(io.BytesIO(data), source="test.csv", symbol="X", **kwargs)  # type: ignore[arg-type]
    bars, rejected, _ = read_all(reader)
    return reader, bars, rejected


def source_error(data: bytes | io.BufferedIOBase, **kwargs: object) -> str:
    from hftpipe_workers.csvformat import SourceError  # noqa: PLC0415 - new in issue 10

    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    with pytest.raises(SourceError) as err:
        list(BarReader(stream, source="test.csv", symbol="X", **kwargs))  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    return message


def test_layout_errors_are_source_errors() -> None:
    from hftpipe_workers.csvformat import SourceError  # noqa: PLC0415

    assert issubclass(LayoutError, SourceError)
    assert issubclass(SourceError, ValueError)


def test_an_empty_file_is_refused() -> None:
    message = source_error(b"")
    assert message.startswith("test.csv: the file is empty")


@pytest.mark.parametrize("after", ["", "\n\n", "\r\n\r\n"])
def test_a_header_without_rows_is_refused(after: str) -> None:
    message = source_error((HEADER + after).encode())
    assert message.startswith("test.csv:")
    assert "no data row" in message


def test_a_header_without_rows_is_refused_with_a_mapping_too() -> None:
    mapping = ColumnMapping.parse("time=timestamp:unix_s")
    assert "no data row" in source_error(HEADER.encode(), mapping=mapping)


def test_binary_data_is_refused_on_line_1() -> None:
    garbage = random.Random(7).randbytes(4096)
    message = source_error(garbage)
    assert message.startswith("test.csv:1: ")
    assert "not UTF-8 text" in message


def test_a_carriage_return_inside_the_header_is_refused() -> None:
    # The probe's binary file: csv's "new-line character seen in unquoted field" before.
    message = source_error(b"timestamp,open\rhigh,low,close,volume\n1,2,3,4,5,6\n")
    assert message.startswith("test.csv:1: ")
    assert "carriage return" in message


def test_a_header_without_a_line_break_is_refused() -> None:
    message = source_error(b"timestamp" * 200_000)
    assert message.startswith("test.csv:1: ")
    assert "no line break" in message


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (gzip.compress(HEADER.encode()), "gzip"),
        (bz2.compress(HEADER.encode()), "bzip2"),
        (lzma.compress(HEADER.encode()), "xz"),
        (b"PK\x03\x04" + bytes(40), "zip"),
    ],
    ids=["gzip", "bzip2", "xz", "zip"],
)
def test_compressed_data_under_a_plain_name_is_named(data: bytes, kind: str) -> None:
    message = source_error(data)
    assert message.startswith("test.csv:1: ")
    assert kind in message


@pytest.mark.parametrize(
    ("encoding", "name"),
    [
        ("utf-16", "UTF-16LE"),  # with a byte-order mark
        ("utf-16-le", "UTF-16LE"),  # without one
        ("utf-16-be", "UTF-16BE"),
        ("utf-32", "UTF-32LE"),
        ("utf-8-sig", "UTF-8"),
    ],
)
def test_utf16_and_utf32_text_is_decoded(encoding: str, name: str) -> None:
    reader, bars, rejected = read_source((HEADER + rows_text(3)).encode(encoding))
    assert rejected == []
    assert [b.ts_ns // NS_PER_SECOND for b in bars] == [T0, T0 + 60, T0 + 120]
    assert [b.line for b in bars] == [2, 3, 4]
    assert reader.encoding == name


def test_a_gzip_stream_cut_short_names_the_line_and_the_cause() -> None:
    whole = gzip.compress((HEADER + rows_text(50_000)).encode())
    cut = gzip.GzipFile(fileobj=io.BytesIO(whole[: len(whole) // 2]))
    message = source_error(cut, block_bytes=1 << 16)
    line = int(message.split(":")[1])
    assert 2 < line < 50_000
    assert "truncated" in message


def test_lines_ending_in_cr_cr_lf_are_rows() -> None:
    data = (HEADER + rows_text(5)).replace("\n", "\r\r\n").encode()
    for block_bytes in (1 << 20, 40):
        _, bars, rejected = read_source(data, block_bytes=block_bytes)
        assert rejected == []
        assert [b.line for b in bars] == [2, 3, 4, 5, 6]


def test_a_carriage_return_inside_a_line_is_a_bad_row() -> None:
    data = (HEADER + rows_text(3)).encode().replace(b",2,0.5,1.5,10\n", b",2,0.5\r,1.5,10\n", 1)
    _, bars, rejected = read_source(data)
    assert [b.line for b in bars] == [3, 4]
    assert [(r.line, r.kind) for r in rejected] == [(2, "text")]
    assert "carriage return" in rejected[0].reason


def test_nul_bytes_and_bad_utf8_in_a_line_are_bad_rows() -> None:
    lines = (HEADER + rows_text(5)).encode().splitlines(keepends=True)
    lines[2] = lines[2].replace(b",2,", b",2\x003,")  # would parse as 2 otherwise
    lines[4] = lines[4].replace(b",10", b",10\xff")
    _, bars, rejected = read_source(b"".join(lines))
    assert [b.line for b in bars] == [2, 4, 6]
    assert [(r.line, r.kind) for r in rejected] == [(3, "text"), (5, "text")]
    assert "NUL" in rejected[0].reason
    assert "UTF-8" in rejected[1].reason


def test_a_symbol_in_another_encoding_is_a_bad_row_not_a_crash() -> None:
    data = b"timestamp,open,high,low,close,volume,symbol\n" + f"{T0},1,2,0.5,1.5,10,".encode()
    data += "café\n".encode("latin-1") + f"{T0},1,2,0.5,1.5,10,BTC\n".encode()
    reader = BarReader(io.BytesIO(data), source="test.csv")
    bars, rejected, _ = read_all(reader)
    assert [(b.symbol, b.line) for b in bars] == [("BTC", 3)]
    assert [(r.line, r.kind) for r in rejected] == [(2, "text")]


def test_a_field_over_csv_modules_limit_is_a_bad_row() -> None:
    # 20 MB of digits in the time field: csv's "field larger than field limit" before.
    long_line = f"{'9' * 1_000_000},1,2,0.5,1.5,10"
    data = (HEADER + rows_text(2) + long_line + "\n" + rows_text(2, T0 + 600)).encode()
    for block_bytes in (1 << 22, 1 << 16):
        _, bars, rejected = read_source(data, block_bytes=block_bytes)
        assert [b.line for b in bars] == [2, 3, 5, 6]
        assert [(r.line, r.kind, len(r.text)) for r in rejected] == [(4, "time", len(long_line))]


def test_an_unclosed_quote_is_one_bad_row() -> None:
    lines = (HEADER + rows_text(4)).splitlines(keepends=True)
    lines[2] = lines[2].replace(",2,", ',"2,', 1)
    _, bars, rejected = read_source("".join(lines).encode())
    assert [b.line for b in bars] == [2, 4, 5]
    assert [(r.line, r.kind) for r in rejected] == [(3, "fields")]
