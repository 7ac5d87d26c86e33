"""CSV layouts and the chunked bar parser: detection, bad rows, filters, the real sample."""

from __future__ import annotations

import gzip
import io
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
    assert "time=COLUMN:unix_s|unix_ms|iso,open=COLUMN" in message


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
    with pytest.raises(ValueError, match="FORMAT one of unix_s, unix_ms, iso"):
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
    # A double resolves ~0.2 us at this magnitude: the nearest ns to the double is kept.
    assert abs(bars[1].ts_ns - ((T0 + 1) * NS_PER_SECOND + 1000)) < 300


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
    text = "time,symbol,open,high,low,close,volume\n2024-01-01,,1,1,1,1,1\n"
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
