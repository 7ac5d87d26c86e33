"""Parquet and Arrow IPC sources (issue 11, point 4): the reader core, without a broker.

The same layouts, column mappings and time formats as CSV, times read by the column's
type, bad rows set aside with their row number, a file whose first rows are all bad
refused, and memory bounded by a row group, not the file. The real broker sees a
Parquet file in ``tests/integration/test_source_formats.py``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from pyarrow import ipc

from hftpipe_workers.arrowformat import ArrowBarReader, open_reader, source_format
from hftpipe_workers.bars import Bar, parse_utc
from hftpipe_workers.csvformat import (
    BarReader,
    ColumnMapping,
    RejectedRow,
    SourceError,
    UnreadableSource,
)
from hftpipe_workers.producer import count_rows

NS = 1_000_000_000
START = parse_utc("2024-01-01T00:00:00Z")


def prices(n: int, offset: int = 0) -> dict[str, Any]:
    i = np.arange(offset, offset + n, dtype=np.float64)
    base = 40_000 + i * 0.25
    return {
        "open": base,
        "high": base + 1.5,
        "low": base - 1.25,
        "close": base + 0.5,
        "volume": 1.0 + i / 8,
    }


def parquet(table: pa.Table, **kwargs: Any) -> io.BytesIO:
    out = io.BytesIO()
    pq.write_table(table, out, **kwargs)
    out.seek(0)
    return out


def read_all(
    stream: Any, source: str = "bars.parquet", **kwargs: Any
) -> tuple[BarReader, list[Bar], list[RejectedRow]]:
    reader = open_reader(stream, source=source, **kwargs)
    chunks = list(reader)
    return (
        reader,
        [b for ch in chunks for b in ch.bars.bars()],
        [r for ch in chunks for r in ch.rejected],
    )


def minute_table(n: int, *, tz: str | None = "UTC", unit: str = "ns") -> pa.Table:
    per = {"s": NS, "ms": 1_000_000, "us": 1_000, "ns": 1}[unit]
    times = (START + np.arange(n, dtype=np.int64) * 60 * NS) // per
    return pa.table(
        {
            "timestamp": pa.array(times, type=pa.timestamp(unit, tz=tz)),
            **prices(n),
            "symbol": pa.array(["BTC", "ETH"] * (n // 2) + ["BTC"] * (n % 2)).dictionary_encode(),
        }
    )


# ------------------------------------------------------------ row groups, typed times


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_a_parquet_file_of_several_row_groups_gives_its_rows_as_bars(unit: str) -> None:
    table = minute_table(2_500, unit=unit)
    stream = parquet(table, row_group_size=600)
    assert pq.ParquetFile(stream).metadata.num_row_groups == 5
    stream.seek(0)
    reader, bars, rejected = read_all(stream, batch_rows=256)
    assert rejected == []
    assert isinstance(reader, ArrowBarReader)
    assert reader.layout.name == "generic-timestamp"
    stored = "ms" if unit == "s" else unit  # Parquet has no timestamp in seconds
    assert f"as timestamp[{stored}, tz=UTC]" in reader.layout.describe()
    assert "Parquet" in reader.layout.describe()
    expected = table.to_pydict()
    assert [b.ts_ns for b in bars] == [START + i * 60 * NS for i in range(2_500)]
    assert [b.open for b in bars] == expected["open"]
    assert [b.volume for b in bars] == expected["volume"]
    assert [b.symbol for b in bars] == expected["symbol"]
    assert [b.line for b in bars] == list(range(1, 2_501))  # the row number
    assert [b.seq for b in bars] == list(range(2_500))
    assert reader.stats.lines == reader.stats.accepted == 2_500


def test_an_arrow_ipc_file_and_stream_give_the_same_bars_as_parquet() -> None:
    table = minute_table(1_000)
    _, from_parquet, _ = read_all(parquet(table, row_group_size=300))
    for name, writer in (("bars.arrow", ipc.new_file), ("bars.arrows", ipc.new_stream)):
        out = io.BytesIO()
        with writer(out, table.schema) as write:
            for batch in table.to_batches(max_chunksize=170):
                write.write_batch(batch)
        out.seek(0)
        reader, bars, rejected = read_all(out, source=name)
        assert (bars, rejected) == (from_parquet, []), name
        assert reader.layout.file_format.startswith("Arrow IPC")


def test_a_format_named_for_a_timestamp_column_is_said_not_to_apply() -> None:
    reader, bars, _ = read_all(parquet(minute_table(10)), time_format="unix_ms")
    assert reader.layout.note == (
        "the column's own type; the format named, unix_ms, does not apply"
    )
    assert bars[0].ts_ns == START


def test_naive_timestamps_are_utc_or_wall_times_of_the_zone_daylight_saving_included() -> None:
    # New York, the night clocks went back (2024-11-03): 01:00-02:00 happens twice.
    zone = ZoneInfo("America/New_York")
    first = datetime(2024, 11, 3, 0, 0)
    utc = [
        datetime(2024, 11, 3, 4, 0, tzinfo=ZoneInfo("UTC")) + timedelta(minutes=15 * i)
        for i in range(16)
    ]
    walls = [t.astimezone(zone).replace(tzinfo=None) for t in utc]
    assert walls[4] == walls[8] == first + timedelta(hours=1)  # the repeated hour
    n = len(walls)
    table = pa.table({"time": pa.array(walls, type=pa.timestamp("us")), **prices(n)})
    _, bars, rejected = read_all(
        parquet(table, row_group_size=5), symbol="X", timezone="America/New_York"
    )
    assert rejected == []
    assert [b.ts_ns for b in bars] == [int(t.timestamp()) * NS for t in utc]
    _, bars, _ = read_all(parquet(table), symbol="X")
    assert bars[0].ts_ns == parse_utc("2024-11-03T00:00:00Z")  # no zone: UTC


# ------------------------------------------------------- CSV's layouts and formats


def test_binance_kline_columns_with_integer_open_times_in_ms_or_us() -> None:
    for per, unit in ((1_000_000, "ms"), (1_000, "us")):
        n = 100
        open_ns = START + np.arange(n, dtype=np.int64) * 60 * NS
        p = prices(n)
        table = pa.table(
            {
                "open_time": open_ns // per,
                **p,
                "close_time": (open_ns + 60 * NS) // per - 1,
                "quote_volume": p["volume"] * p["close"],
                "count": np.arange(n),
                "taker_buy_volume": p["volume"] / 2,
                "taker_buy_quote_volume": p["volume"] * p["close"] / 2,
                "ignore": np.zeros(n, dtype=np.int64),
            }
        )
        reader, bars, rejected = read_all(parquet(table), symbol="BTCUSDT")
        assert rejected == []
        assert reader.layout.name == "binance-kline"
        assert reader.layout.time_format == f"unix_{unit}"
        assert [b.ts_ns for b in bars] == open_ns.tolist()


def test_float_unix_seconds_are_read_exactly_as_their_text() -> None:
    # Kaggle's column names; 1700000000.123 as a double is 93 ns early if multiplied out.
    times = [1_700_000_000.0, 1_700_000_060.123, 1_700_000_120.5]
    table = pa.table({"Timestamp": times, **{k.title(): v for k, v in prices(3).items()}})
    reader, bars, _ = read_all(parquet(table), symbol="X")
    assert reader.layout.name == "kaggle-btc"
    assert [b.ts_ns for b in bars] == [
        1_700_000_000 * NS,
        1_700_000_060 * NS + 123_000_000,
        1_700_000_120 * NS + 500_000_000,
    ]


def test_a_string_time_column_is_read_as_csv_reads_it_day_first_included() -> None:
    walls = [datetime(2017, 1, 13) + timedelta(hours=i) for i in range(30)]
    table = pa.table({"Gmt time": [f"{t:%d.%m.%Y %H:%M:%S}.000" for t in walls], **prices(30)})
    reader, bars, rejected = read_all(parquet(table), symbol="EURUSD")
    assert rejected == []
    assert reader.layout.time_format == "%d.%m.%Y %H:%M:%S.%f"
    assert [b.ts_ns for b in bars] == [
        int(t.replace(tzinfo=ZoneInfo("UTC")).timestamp()) * NS for t in walls
    ]


def test_a_column_mapping_and_an_integer_date_read_with_a_pattern() -> None:
    table = pa.table(
        {
            "d": [20170102, 20170103],
            "o": [1.0, 2.0],
            "h": [2.0, 3.0],
            "l": [0.5, 1.5],
            "c": [1.5, 2.5],
            "v": [10, 20],
            "sym": ["EURUSD", "EURUSD"],
        }
    )
    mapping = "time=d:%Y%m%d,open=o,high=h,low=l,close=c,volume=v,symbol=sym"

    _, bars, rejected = read_all(parquet(table), mapping=ColumnMapping.parse(mapping))
    assert rejected == []
    assert [(b.symbol, b.ts_ns, b.volume) for b in bars] == [
        ("EURUSD", parse_utc("2017-01-02"), 10.0),
        ("EURUSD", parse_utc("2017-01-03"), 20.0),
    ]


# ------------------------------------------------------------------------- bad rows


def test_bad_rows_are_set_aside_with_their_row_number_and_values() -> None:
    n = 300
    table = minute_table(n).to_pydict()
    table["open"][10] = float("nan")
    table["timestamp"][20] = None
    table["timestamp"][30] = table["timestamp"][28]  # BTC's time of row 29 again
    table["symbol"][40] = None
    stream = parquet(pa.table(table), row_group_size=100)
    reader, bars, rejected = read_all(stream)
    assert [(r.line, r.kind) for r in rejected] == [
        (11, "not_finite"),
        (21, "time"),
        (31, "duplicate_time"),
        (41, "symbol"),
    ]
    assert rejected[0].text.startswith("2024-01-01T00:10:00+00:00,nan,")
    assert rejected[0].source == "bars.parquet"
    assert len(bars) == n - 4
    assert reader.stats.rejected == 4
    assert [b.seq for b in bars] == list(range(n - 4))


def test_a_null_time_and_one_beyond_2262_say_what_is_wrong() -> None:
    ms = START // 1_000_000
    times = [ms, None, 32_503_680_000_000, ms + 60_000]  # the third: 3000-01-01
    table = pa.table({"time": pa.array(times, pa.timestamp("ms", "UTC")), **prices(4)})
    _, bars, rejected = read_all(parquet(table), symbol="X")
    assert len(bars) == 2
    assert [(r.line, r.reason) for r in rejected] == [
        (
            2,
            "no time: the time field is empty (expected a time between 1677 and 2262 "
            "(nanoseconds since 1970 in 64 bits))",
        ),
        (
            3,
            "time '3000-01-01T00:00:00+00:00' is not a valid time between 1677 and 2262 "
            "(nanoseconds since 1970 in 64 bits)",
        ),
    ]


def test_a_time_beyond_pythons_datetimes_among_the_first_rows_is_a_bad_row() -> None:
    """Year 50,000 in ms: pyarrow cannot make it a datetime; the layout is still told from
    the other rows, and the row is set aside, its value as Arrow prints it."""
    ms = START // 1_000_000
    times = [ms, 1_515_674_880_000_000, ms + 60_000]
    table = pa.table({"time": pa.array(times, pa.timestamp("ms", "UTC")), **prices(3)})
    reader, bars, rejected = read_all(parquet(table), symbol="X")
    assert reader.layout.name == "generic-timestamp"
    assert [b.ts_ns for b in bars] == [START, START + 60 * NS]
    assert [(r.line, r.kind) for r in rejected] == [(2, "time")]
    assert rejected[0].reason.startswith(
        "time '1515674880000000 (timestamp[ms, tz=UTC])' is not a valid time between 1677"
    )


def test_start_and_end_select_a_range_across_row_groups() -> None:
    stream = parquet(minute_table(1_000), row_group_size=128)
    reader = open_reader(
        stream, source="bars.parquet", start_ns=START + 100 * 60 * NS, end_ns=START + 700 * 60 * NS
    )
    chunks = list(reader)
    assert sum(len(ch.bars) for ch in chunks) == 600
    assert sum(ch.out_of_range for ch in chunks) == 400


def test_a_file_whose_first_rows_are_all_bad_is_refused_naming_the_column() -> None:
    table = pa.table({"time": ["yesterday"] * 150, **prices(150)})
    reader = open_reader(parquet(table), source="bad.parquet", symbol="X")
    refused = r"bad\.parquet: the first 100 rows .* replayed: row 1: .* Column 'time' holds"
    with pytest.raises(UnreadableSource, match=refused):
        reader.check_start()


# --------------------------------------------------------------- telling formats apart


def test_the_format_is_told_by_its_first_bytes_then_by_the_name() -> None:
    assert source_format("x.csv", b"PAR1\x15\x04") == "parquet"
    assert source_format("data", b"ARROW1\x00\x00") == "arrow"
    assert source_format("data", b"\xff\xff\xff\xff") == "arrow-stream"
    assert source_format("x.csv", b"time,open") == "csv"
    with pytest.raises(SourceError, match=r"the name says Parquet, but the file does not start"):
        source_format("s3://b/x.parquet?v=1", b"time,open")
    with pytest.raises(SourceError, match="Feather version 1"):
        source_format("x.feather", b"FEA1")


def test_csv_only_options_are_refused_for_parquet_and_csv_still_reads() -> None:
    with pytest.raises(ValueError, match="--delimiter and --columns apply to CSV text"):
        open_reader(parquet(minute_table(4)), source="x.parquet", delimiter=";")
    csv = io.BytesIO(b"timestamp,open,high,low,close,volume\n1700000000,1,2,0.5,1.5,3\n")
    reader, bars, _ = read_all(csv, source="x.csv", symbol="X")
    assert type(reader) is BarReader
    assert len(bars) == 1


def test_the_producer_counts_the_rows_of_parquet_and_arrow_from_their_metadata(
    tmp_path: Path,
) -> None:
    table = minute_table(1_000)
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=300)
    with ipc.new_file(tmp_path / "a.feather", table.schema) as write:
        write.write_table(table, max_chunksize=128)
    with ipc.new_stream(tmp_path / "a.arrows", table.schema) as write:
        write.write_table(table, max_chunksize=128)
    for name in ("a.parquet", "a.feather", "a.arrows"):
        assert count_rows(str(tmp_path / name)) == 1_000, name


def test_a_truncated_parquet_file_is_a_source_error() -> None:
    data = parquet(minute_table(100)).getvalue()
    with pytest.raises(SourceError, match=r"x\.parquet: not a readable Parquet file"):
        open_reader(io.BytesIO(data[: len(data) // 2]), source="x.parquet")


# -------------------------------------------------------------------------- memory

_PEAK_PROBE = """
import json, sys, tracemalloc
import pyarrow as pa
from hftpipe_workers.arrowformat import open_reader
pool = pa.default_memory_pool()
tracemalloc.start()
rows = 0
with open(sys.argv[1], "rb") as f:
    for chunk in open_reader(f, source=sys.argv[1]):
        rows += len(chunk.bars)
print(json.dumps({"rows": rows, "python_peak": tracemalloc.get_traced_memory()[1],
                  "arrow_peak": pool.max_memory()}))
"""


def _peaks(path: Path) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    peaks: dict[str, int] = json.loads(done.stdout)
    return peaks


@pytest.mark.slow
def test_memory_stays_bounded_by_a_row_group_not_the_file(tmp_path: Path) -> None:
    """Files of 300,000 and 1,200,000 rows (15.6 and 62.4 MB as Arrow columns) in row
    groups of 50,000: what is held at once (numpy and pandas through tracemalloc, Arrow's
    memory pool at its peak) is the same for both, a fraction of the larger file. (Left to
    itself, pyarrow's iter_batches read 33 MB of a 46 MB file ahead to give its first
    rows: the reader asks for one row group at a time.)"""
    peaks = []
    for n in (300_000, 1_200_000):
        table = minute_table(n)
        path = tmp_path / f"bars-{n}.parquet"
        pq.write_table(table, path, row_group_size=50_000)
        peak = _peaks(path)
        assert peak["rows"] == n
        peaks.append(peak)
    small, large = peaks
    for kind in ("python_peak", "arrow_peak"):
        assert large[kind] < small[kind] * 1.1 + (1 << 20), (small, large)
    assert large["python_peak"] + large["arrow_peak"] < table.nbytes / 2, (large, table.nbytes)
