"""Files in the shapes the common market-data sources publish (issue 11, points 1-3).

Headerless exchange dumps, other delimiters, date and time in two columns, day-first
times, time zones, and a file whose times cannot be read failing fast instead of
dead-lettering every row. The real broker sees the same files in
``tests/integration/test_source_formats.py``.
"""

from __future__ import annotations

import io

import pytest

from hftpipe_workers.bars import Bar, parse_utc
from hftpipe_workers.csvformat import (
    BINANCE_KLINE_COLUMNS,
    BarReader,
    ColumnMapping,
    RejectedRow,
    SourceError,
)


def read(text: str, **kwargs: object) -> tuple[BarReader, list[Bar], list[RejectedRow]]:
    reader = BarReader(io.BytesIO(text.encode()), source="test.csv", symbol="X", **kwargs)  # type: ignore[arg-type]
    chunks = list(reader)
    bars = [b for ch in chunks for b in ch.bars.bars()]
    return reader, bars, [r for ch in chunks for r in ch.rejected]


def ns(iso: str) -> int:
    return parse_utc(iso)


# Binance's public archive (data.binance.vision): no header, 12 fields, open time in
# milliseconds; spot files from 2025 on in microseconds.
BINANCE_MS = (
    "1704067200000,42283.58,42298.62,42283.57,42298.61,35.30,1704067259999,1492580.89,1427,"
    "20.56,869393.06,0\n"
    "1704067260000,42298.62,42320.00,42298.61,42319.99,21.77,1704067319999,920980.36,1046,"
    "12.35,522617.21,0\n"
)
BINANCE_US = (
    "1735689600000000,93576.00,93610.93,93537.50,93610.93,8.21,1735689659999999,768446.04,1685,"
    "3.70,346473.45,0\n"
    "1735689660000000,93610.93,93652.00,93606.98,93652.00,2.44,1735689719999999,228504.42,917,"
    "1.40,131104.85,0\n"
)


@pytest.mark.parametrize(
    ("text", "first", "second"),
    [
        (BINANCE_MS, "2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z"),
        (BINANCE_US, "2025-01-01T00:00:00Z", "2025-01-01T00:01:00Z"),
    ],
    ids=["ms", "us"],
)
def test_a_headerless_binance_kline_dump_is_read_as_it_is(
    text: str, first: str, second: str
) -> None:
    reader, bars, rejected = read(text)
    assert rejected == []
    assert reader.layout.name == "binance-kline"
    assert [(b.ts_ns, b.open, b.close, b.line) for b in bars] == [
        (ns(first), float(text.split(",")[1]), float(text.split(",")[4]), 1),
        (ns(second), float(text.splitlines()[1].split(",")[1]), bars[1].close, 2),
    ]


SEMICOLON_DATE_TIME = (
    "Date;Time;Open;High;Low;Close;Volume\n"
    "2017.01.02;00:00;1.05165;1.05197;1.05149;1.05189;125\n"
    "2017.01.02;00:01;1.05189;1.05200;1.05180;1.05195;88\n"
)


def test_a_semicolon_file_with_date_and_time_columns() -> None:
    reader, bars, rejected = read(SEMICOLON_DATE_TIME)
    assert rejected == []
    # Year first is year-month-day; pandas' ISO parser would take it too, but it is no ISO.
    assert (reader.delimiter, reader.layout.time) == (";", "Date+Time")
    assert reader.layout.time_format == "%Y.%m.%d %H:%M"
    assert [(b.ts_ns, b.open, b.volume) for b in bars] == [
        (ns("2017-01-02T00:00:00Z"), 1.05165, 125.0),
        (ns("2017-01-02T00:01:00Z"), 1.05189, 88.0),
    ]


DUKASCOPY = (
    "{time},Open,High,Low,Close,Volume\n"
    "13.01.2017 22:00:00.000,1.06152,1.06170,1.06130,1.06160,1024.5\n"
    "13.01.2017 23:00:00.000,1.06160,1.06200,1.06150,1.06190,980.1\n"
)


@pytest.mark.parametrize("time_column", ["Time", "Gmt time"])
def test_a_day_first_dukascopy_export(time_column: str) -> None:
    _, bars, rejected = read(DUKASCOPY.format(time=time_column))
    assert rejected == []
    assert [b.ts_ns for b in bars] == [ns("2017-01-13T22:00:00Z"), ns("2017-01-13T23:00:00Z")]


DAY_FIRST_ROWS = "".join(
    f"01.01.2017 {h:02d}:{m:02d}:00.000,1,2,0.5,1.5,10\n" for h in range(3) for m in range(50)
)


def test_day_first_or_month_first_is_asked_for_by_name() -> None:
    """No day above 12 in the first rows: the reader does not guess, it asks."""
    with pytest.raises(SourceError) as err:
        read("Time,Open,High,Low,Close,Volume\n" + DAY_FIRST_ROWS)
    message = str(err.value)
    assert message.startswith("test.csv: the times of column 'Time' ('01.01.2017 00:00:00.000'")
    assert "--time-format '%d.%m.%Y %H:%M:%S.%f' (day first)" in message
    assert "--time-format '%m.%d.%Y %H:%M:%S.%f' (month first)" in message
    _, bars, _ = read(
        "Time,Open,High,Low,Close,Volume\n" + DAY_FIRST_ROWS, time_format="%d.%m.%Y %H:%M:%S.%f"
    )
    assert len(bars) == 150


def test_a_file_whose_times_cannot_be_read_fails_within_100_rows() -> None:
    with pytest.raises(SourceError) as err:
        read(
            "Time,Open,High,Low,Close,Volume\n" + DAY_FIRST_ROWS,
            mapping=ColumnMapping.parse(
                "time=Time:iso,open=Open,high=High,low=Low,close=Close,volume=Volume"
            ),
        )
    message = str(err.value)
    assert message.startswith("test.csv: the first 100 rows were set aside for the same reason")
    assert "line 2: time '01.01.2017 00:00:00.000' is not a valid ISO-8601" in message
    assert "Column 'Time' holds '01.01.2017 00:00:00.000'" in message  # column, sample
    assert "--time-format '%d.%m.%Y %H:%M:%S.%f'" in message  # the option that would read it
    assert "--mapping 'time=Time:FORMAT,...'" in message


def test_a_handful_of_bad_rows_are_still_set_aside_one_by_one() -> None:
    good = "".join(f"2024-01-01T00:{m:02d}:00Z,1,2,0.5,1.5,10\n" for m in range(1, 60))
    bad = "".join(f"not a time {i},1,2,0.5,1.5,10\n" for i in range(99))
    _, bars, rejected = read("time,open,high,low,close,volume\n" + bad + good)
    assert (len(bars), len(rejected)) == (59, 99)
    assert {r.kind for r in rejected} == {"time"}


def test_rows_rejected_for_different_reasons_are_no_unreadable_file() -> None:
    rows = "".join(f"2024-01-01T00:{m:02d}:00Z,1,2,0.5,1.5,-1\n" for m in range(60))
    rows += "".join(f"bad {m},1,2,0.5,1.5,10\n" for m in range(60))
    _, bars, rejected = read("time,open,high,low,close,volume\n" + rows)
    assert (len(bars), len(rejected)) == (0, 120)


def test_a_wrong_delimiter_fails_fast_and_names_the_right_one() -> None:
    rows = "".join(f"{1704067200 + 60 * i};1;2;0.5;1.5;10\n" for i in range(120))
    with pytest.raises(SourceError, match="--delimiter ';'"):
        read("timestamp,open,high,low,close,volume\n" + rows, delimiter=",")


@pytest.mark.parametrize(
    ("value", "unit"),
    [
        ("1704067200", "unix_s"),
        ("1704067200.5", "unix_s"),
        ("1704067200000", "unix_ms"),
        ("1704067200000000", "unix_us"),
        ("1704067200000000000", "unix_ns"),
    ],
)
def test_unix_times_take_their_unit_from_the_magnitude(value: str, unit: str) -> None:
    mapping = ColumnMapping.parse("time=ts:unix,open=o,high=h,low=l,close=c,volume=v")
    reader, bars, _ = read(f"ts,o,h,l,c,v\n{value},1,2,0.5,1.5,10\n", mapping=mapping)
    assert reader.layout.time_format == unit
    assert "unit from the magnitude" in reader.layout.describe()
    assert bars[0].ts_ns == ns("2024-01-01T00:00:00Z") + (500_000_000 if "." in value else 0)
    generic = read(f"time,open,high,low,close,volume\n{value},1,2,0.5,1.5,10\n")[0]
    assert generic.layout.time_format == unit


def test_unix_microseconds_and_nanoseconds_are_exact() -> None:
    mapping = ColumnMapping.parse("time=ts:unix_ns,open=o,high=h,low=l,close=c,volume=v")
    _, bars, _ = read("ts,o,h,l,c,v\n1704067200123456789,1,2,0.5,1.5,10\n", mapping=mapping)
    assert bars[0].ts_ns == 1704067200123456789
    mapping = ColumnMapping.parse("time=ts:unix_us,open=o,high=h,low=l,close=c,volume=v")
    rows = "".join(f"{1704067200123457 + i},1,2,0.5,1.5,10\n" for i in range(3))
    _, bars, _ = read("ts,o,h,l,c,v\n" + rows, mapping=mapping)
    assert [b.ts_ns for b in bars] == [1704067200123457000 + 1000 * i for i in range(3)]


def test_a_strftime_pattern_and_two_columns_in_a_mapping() -> None:
    mapping = ColumnMapping.parse(
        "time=Time:%d.%m.%Y %H:%M:%S.%f,open=Open,high=High,low=Low,close=Close,volume=Volume"
    )
    reader, bars, _ = read(DUKASCOPY.format(time="Time"), mapping=mapping)
    assert reader.layout.time_format == "%d.%m.%Y %H:%M:%S.%f"
    assert bars[0].ts_ns == ns("2017-01-13T22:00:00Z")
    mapping = ColumnMapping.parse(
        "time=Date+Time:%Y.%m.%d %H:%M,open=Open,high=High,low=Low,close=Close,volume=Volume"
    )
    reader, bars, _ = read(SEMICOLON_DATE_TIME, mapping=mapping)
    assert reader.layout.time_columns == ("Date", "Time")
    assert [b.ts_ns for b in bars] == [ns("2017-01-02T00:00:00Z"), ns("2017-01-02T00:01:00Z")]


def test_naive_times_in_a_time_zone_across_both_dst_changes() -> None:
    """New York: 2024-03-10 02:00 does not exist, 2024-11-03 01:00-02:00 happens twice."""
    local = [
        "2024-03-10 01:30",  # EST, -05:00
        "2024-03-10 03:00",  # EDT, -04:00
        "2024-11-03 00:30",  # EDT
        "2024-11-03 01:30",  # EDT (the first 01:30)
        "2024-11-03 01:30",  # EST (the second)
        "2024-11-03 02:30",  # EST
    ]
    utc = [
        "2024-03-10T06:30:00Z",
        "2024-03-10T07:00:00Z",
        "2024-11-03T04:30:00Z",
        "2024-11-03T05:30:00Z",
        "2024-11-03T06:30:00Z",
        "2024-11-03T07:30:00Z",
    ]
    text = "time,open,high,low,close,volume\n" + "".join(f"{t},1,2,0.5,1.5,10\n" for t in local)
    _, bars, rejected = read(text, timezone="America/New_York")
    assert rejected == []
    assert [b.ts_ns for b in bars] == [ns(t) for t in utc]
    dotted = text.replace("-", ".")
    _, bars, _ = read(dotted, timezone="America/New_York", time_format="%Y.%m.%d %H:%M")
    assert [b.ts_ns for b in bars] == [ns(t) for t in utc]
    # An offset in the text wins over the zone; a time in the gap is set aside, named.
    gap = "time,open,high,low,close,volume\n" + "".join(
        f"{t},1,2,0.5,1.5,10\n"
        for t in ("2024-03-10 02:30", "2024-03-10T03:00:00+00:00", "2024-03-10 04:00")
    )
    _, bars, rejected = read(gap, timezone="America/New_York")
    assert [b.ts_ns for b in bars] == [ns("2024-03-10T03:00:00Z"), ns("2024-03-10T08:00:00Z")]
    assert [(r.line, r.kind) for r in rejected] == [(2, "time")]
    assert "does not exist in time zone America/New_York (skipped when" in rejected[0].reason


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        read(
            "time,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,10\n", timezone="Mars/Olympus"
        )


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_every_delimiter_is_sniffed_or_named(delimiter: str) -> None:
    text = "timestamp,open,high,low,close,volume\n1704067200,1,2,0.5,1.5,10\n"
    text = (text + "1704067260,1,2,0.5,1.5,10\n").replace(",", delimiter)
    for named in (None, {"\t": "tab", "|": "pipe"}.get(delimiter, delimiter)):
        reader, bars, rejected = read(text, delimiter=named)
        assert reader.delimiter == delimiter
        assert (len(bars), rejected) == (2, [])


def test_a_headerless_file_takes_a_column_list() -> None:
    text = "\ufeff1704067200,1,2,0.5,1.5,10\r\n1704067260,1,2,0.5,1.5,10\n1704067320,1,2,0.5,1.5,10"
    reader, bars, rejected = read(
        text, columns=["timestamp", "open", "high", "low", "close", "volume"]
    )
    assert reader.layout.headerless
    assert rejected == []
    assert [(b.ts_ns, b.line) for b in bars] == [
        (ns("2024-01-01T00:00:00Z") + 60_000_000_000 * i, i + 1) for i in range(3)
    ]


def test_a_headerless_file_of_other_numbers_asks_for_its_columns() -> None:
    with pytest.raises(SourceError, match=r"give its columns, e\.g\. hftpipe produce --columns"):
        read("1704067200,1,2,0.5,1.5,10\n")


def test_a_binance_kline_file_with_its_header_and_the_named_layout() -> None:
    header = ",".join(BINANCE_KLINE_COLUMNS) + "\n"
    reader, bars, _ = read(header + BINANCE_MS)
    assert (reader.layout.name, reader.layout.headerless, len(bars)) == ("binance-kline", False, 2)
    reader, bars, _ = read(BINANCE_US, layout="binance-kline")
    assert (reader.layout.time_format, bars[0].ts_ns) == ("unix_us", ns("2025-01-01T00:00:00Z"))


def test_utf8_bom_utf16_and_mixed_line_endings() -> None:
    text = "time,open,high,low,close,volume\r\n2024-01-01T00:00:00Z,1,2,0.5,1.5,10\n"
    text += "2024-01-01T00:01:00Z,1,2,0.5,1.5,10\r\n"
    for data in (("\ufeff" + text).encode(), text.encode("utf-16")):
        reader = BarReader(io.BytesIO(data), source="test.csv", symbol="X")
        bars = [b for ch in reader for b in ch.bars.bars()]
        assert [b.line for b in bars] == [2, 3]


def test_day_first_is_seen_in_the_first_1000_rows_of_an_hourly_file() -> None:
    """Hourly from January 1st: the first day above 12 is on row 289."""
    from datetime import datetime, timedelta  # noqa: PLC0415

    first = datetime(2017, 1, 1)
    rows = "".join(
        f"{first + timedelta(hours=i):%d.%m.%Y %H:%M:%S}.000,1,2,0.5,1.5,10\n" for i in range(400)
    )
    reader, bars, rejected = read("Gmt time,Open,High,Low,Close,Volume\n" + rows)
    assert reader.layout.time_format == "%d.%m.%Y %H:%M:%S.%f"
    assert (len(bars), rejected) == (400, [])
    assert bars[24].ts_ns == ns("2017-01-02T00:00:00Z")


def test_a_huge_line_among_the_first_rows_is_read_ahead_once() -> None:
    huge = "9" * 3_000_000
    rows = "".join(f"{1704067200 + 60 * i},1,2,0.5,1.5,10\n" for i in range(10))
    rows += f"{huge},1,2,0.5,1.5,10\n" + "".join(
        f"{1704067800 + 60 * i},1,2,0.5,1.5,10\n" for i in range(2_000)
    )
    reader, bars, rejected = read("timestamp,open,high,low,close,volume\n" + rows)
    assert (reader.delimiter, len(bars), [r.line for r in rejected]) == (",", 2_010, [12])


HISTDATA = (
    "20170102 000000;1.05155;1.05197;1.05155;1.05190;0\n"
    "20170102 000100;1.05189;1.052;1.0518;1.05195;0\n"
)
"""HistData's ASCII M1 export: no header, ';', date and time in one field without separators."""


def test_a_headerless_histdata_file_takes_its_columns_and_says_so_without_them() -> None:
    with pytest.raises(SourceError) as err:
        read(HISTDATA)
    assert "Line 1 holds mostly numbers: if the file has no header, name its columns" in str(
        err.value
    )
    reader, bars, rejected = read(
        HISTDATA, columns=["time", "open", "high", "low", "close", "volume"]
    )
    assert (reader.layout.time_format, rejected) == ("%Y%m%d %H%M%S", [])
    assert [(b.ts_ns, b.close, b.line) for b in bars] == [
        (ns("2017-01-02T00:00:00Z"), 1.0519, 1),
        (ns("2017-01-02T00:01:00Z"), 1.05195, 2),
    ]


NY_FALL_BACK = [  # local New York times of 2024-11-03, every 15 min, and the UTC meant
    ("2024-11-03 00:45", "2024-11-03T04:45:00Z"),
    ("2024-11-03 01:00", "2024-11-03T05:00:00Z"),  # EDT
    ("2024-11-03 01:15", "2024-11-03T05:15:00Z"),
    ("2024-11-03 01:30", "2024-11-03T05:30:00Z"),
    ("2024-11-03 01:45", "2024-11-03T05:45:00Z"),
    ("2024-11-03 01:00", "2024-11-03T06:00:00Z"),  # EST: the hour again
    ("2024-11-03 01:15", "2024-11-03T06:15:00Z"),
    ("2024-11-03 01:30", "2024-11-03T06:30:00Z"),
    ("2024-11-03 01:45", "2024-11-03T06:45:00Z"),
    ("2024-11-03 02:00", "2024-11-03T07:00:00Z"),
]


@pytest.mark.parametrize(
    "block_bytes",
    [2000, 2485, 2873, 4 << 20],
)
def test_the_repeated_hour_across_block_boundaries(block_bytes: int) -> None:
    """Three days of New York minutes up to 02:30 on 2024-11-03 (150 KB: past what the
    reader reads ahead); the smaller blocks end inside the repeated hour."""
    from datetime import UTC, datetime, timedelta  # noqa: PLC0415
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    zone = ZoneInfo("America/New_York")
    first = datetime(2024, 10, 31, tzinfo=UTC)
    instants = [first + timedelta(minutes=i) for i in range(3 * 1440 + 7 * 60 + 30)]
    lines = [f"{t.astimezone(zone):%Y-%m-%d %H:%M},1,2,0.5,1.5,10\n" for t in instants]
    assert sum(line.startswith("2024-11-03 01:") for line in lines) == 120
    text = "time,open,high,low,close,volume\n" + "".join(lines)
    _, bars, rejected = read(text, timezone="America/New_York", block_bytes=block_bytes)
    assert rejected == []
    assert [b.ts_ns for b in bars] == [int(t.timestamp()) * 10**9 for t in instants]


def test_the_repeated_hour_with_symbols_interleaved() -> None:
    lines = [
        f"{local},{sym},1,2,0.5,1.5,10\n" for local, _ in NY_FALL_BACK for sym in ("AAA", "BBB")
    ]
    text = "time,symbol,open,high,low,close,volume\n" + "".join(lines)
    _, bars, rejected = read(text, timezone="America/New_York")
    assert rejected == []
    for sym in ("AAA", "BBB"):
        times = [b.ts_ns for b in bars if b.symbol == sym]
        assert times == [ns(utc) for _, utc in NY_FALL_BACK]
