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
from hftpipe_workers.csvformat import BarReader, RejectedRow, SourceError


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


@pytest.mark.xfail(strict=True, raises=SourceError, reason="issue 11: duplicate column names")
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


@pytest.mark.xfail(strict=True, raises=SourceError, reason="issue 11: ';' read as one column")
def test_a_semicolon_file_with_date_and_time_columns() -> None:
    _, bars, rejected = read(SEMICOLON_DATE_TIME)
    assert rejected == []
    assert [(b.ts_ns, b.open, b.volume) for b in bars] == [
        (ns("2017-01-02T00:00:00Z"), 1.05165, 125.0),
        (ns("2017-01-02T00:01:00Z"), 1.05189, 88.0),
    ]


DUKASCOPY = (
    "{time},Open,High,Low,Close,Volume\n"
    "13.01.2017 22:00:00.000,1.06152,1.06170,1.06130,1.06160,1024.5\n"
    "13.01.2017 23:00:00.000,1.06160,1.06200,1.06150,1.06190,980.1\n"
)


@pytest.mark.xfail(strict=True, reason="issue 11: day-first times read as ISO, all rejected")
@pytest.mark.parametrize("time_column", ["Time", "Gmt time"])
def test_a_day_first_dukascopy_export(time_column: str) -> None:
    _, bars, rejected = read(DUKASCOPY.format(time=time_column))
    assert rejected == []
    assert [b.ts_ns for b in bars] == [ns("2017-01-13T22:00:00Z"), ns("2017-01-13T23:00:00Z")]


@pytest.mark.xfail(strict=True, reason="issue 11: 150 rows dead-lettered one by one")
def test_a_file_whose_times_cannot_be_read_fails_within_100_rows() -> None:
    rows = "".join(
        f"01.01.2017 {h:02d}:{m:02d}:00.000,1,2,0.5,1.5,10\n" for h in range(3) for m in range(50)
    )
    with pytest.raises(SourceError) as err:
        read("Time,Open,High,Low,Close,Volume\n" + rows)
    message = str(err.value)
    assert message.startswith("test.csv: ")
    assert "'Time'" in message  # the column
    assert "'01.01.2017 00:00:00.000'" in message  # a sample value
    assert "%d.%m.%Y %H:%M:%S.%f" in message  # the option that would read it
