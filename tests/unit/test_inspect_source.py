"""``hftpipe inspect``: what a source holds, read as the producer reads it, nothing produced
(issue 11, point 7). The producer logs the same lines (tests/integration/test_source_formats.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from typer.testing import CliRunner

from hftpipe_workers import cli
from hftpipe_workers.arrowformat import open_reader
from hftpipe_workers.settings import SOURCE_OPTIONS, ProduceSettings
from hftpipe_workers.sourceinfo import describe_reading, summarize

DUKASCOPY = (
    "Gmt time;Open;High;Low;Close;Volume\n"
    "13.01.2017 22:00:00.000;1.0612;1.0615;1.0610;1.0613;120\n"
    "13.01.2017 22:01:00.000;1.0613;1.0616;1.0611;1.0614;80\n"
    "\n"
    "13.01.2017 22:01:00.000;1.0613;1.0616;1.0611;1.0614;80\n"
    "13.01.2017 22:02:00.000;nan;1.0616;1.0611;1.0614;80\n"
    "13.01.2017 22:03:00.000;1.0614;1.0617;1.0612;1.0615;95\n"
)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args))


def test_inspect_prints_how_a_csv_is_read_and_what_came_of_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "EURUSD.csv"
    path.write_text(DUKASCOPY)
    result = invoke("inspect", str(path), "--symbol", "EURUSD", "--timezone", "Europe/Zurich")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"source: {path}",
        "format: CSV text (UTF-8), semicolon-separated, a header line",
        "layout: generic (time=Gmt time as %d.%m.%Y %H:%M:%S.%f (recognised from "
        "'13.01.2017 22:00:00.000'), open=Open, high=High, low=Low, close=Close, "
        "volume=Volume, semicolon-separated)",
        "time: column Gmt time as %d.%m.%Y %H:%M:%S.%f (recognised from '13.01.2017 22:00:00.000')",
        "time zone: Europe/Zurich (times without an offset are its wall-clock times)",
        "first event: 2017-01-13T21:00:00Z",  # 22:00 in Zurich, winter time
        "last event: 2017-01-13T21:03:00Z",
        "rows: 5 read: 3 bars, 2 set aside (duplicate_time 1, not_finite 1), 0 outside "
        "--start/--end, 1 blank lines skipped",
        "symbols: 1 (EURUSD 3)",
    ]


def test_inspect_of_parquet_says_its_row_groups_and_its_typed_times(tmp_path: Path) -> None:
    n = 1_000
    times = pa.array([1_704_067_200_000 + 60_000 * i for i in range(n)], pa.timestamp("ms", "UTC"))
    table = pa.table(
        {
            "timestamp": times,
            **{k: [1.0 + i for i in range(n)] for k in ("open", "high", "close")},
            "low": [0.5 + i for i in range(n)],
            "volume": [10.0] * n,
            "symbol": ["BTC", "ETH"] * (n // 2),
        }
    )
    path = tmp_path / "bars.parquet"
    pq.write_table(table, path, row_group_size=300)
    result = invoke("inspect", str(path), "--start", "2024-01-01T01:00:00Z")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1] == "format: Parquet, 1,000 rows in 4 row groups"
    assert (
        lines[4] == "time zone: the column's own (its type has a zone): --timezone does not apply"
    )
    assert lines[5:] == [
        "first event: 2024-01-01T01:00:00Z",
        "last event: 2024-01-01T16:39:00Z",
        "rows: 1,000 read: 940 bars, 0 set aside, 60 outside --start/--end",
        "symbols: 2 (BTC 470, ETH 470)",
    ]


def test_inspect_of_a_file_it_cannot_read_fails_as_produce_would(tmp_path: Path) -> None:
    path = tmp_path / "unreadable.csv"
    path.write_text(
        "time,open,high,low,close,volume\n"
        + "".join(f"day {i} at noon,1,2,0.5,1.5,3\n" for i in range(150))
    )
    result = invoke("inspect", str(path), "--symbol", "X")
    assert result.exit_code == 2
    assert f"error: {path}: the first 100 rows were set aside" in result.output
    result = invoke("inspect", str(tmp_path / "missing.parquet"))
    assert result.exit_code == 2
    assert "no such file" in result.output


def test_inspect_takes_exactly_the_source_options_of_produce() -> None:
    command = getattr(typer_command(), "commands")["inspect"]  # noqa: B009
    assert {p.name for p in command.params} == set(SOURCE_OPTIONS)
    assert set(SOURCE_OPTIONS) <= set(ProduceSettings.model_fields)


def typer_command() -> Any:
    import typer  # noqa: PLC0415

    return typer.main.get_command(cli.app)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_the_summary_counts_what_the_reader_yields(kind: str) -> None:
    rows = [(1_700_000_000 + 60 * i, "A" if i % 3 else "B") for i in range(50)]
    if kind == "csv":
        text = "timestamp,open,high,low,close,volume,symbol\n" + "".join(
            f"{t},1,2,0.5,1.5,3,{s}\n" for t, s in rows
        )
        stream: Any = io.BytesIO(text.encode())
    else:
        stream = io.BytesIO()
        table = pa.table(
            {
                "timestamp": [t for t, _ in rows],
                "open": [1.0] * 50,
                "high": [2.0] * 50,
                "low": [0.5] * 50,
                "close": [1.5] * 50,
                "volume": [3.0] * 50,
                "symbol": [s for _, s in rows],
            }
        )
        pq.write_table(table, stream, row_group_size=7)
        stream.seek(0)
    reader = open_reader(stream, source=f"x.{kind}")
    assert describe_reading(reader)[1].startswith("layout: generic-unix-s (time=timestamp")
    summary = summarize(reader)
    assert summary.as_dict() == {
        "source": f"x.{kind}",
        "kind": "bar",
        "rows": 50,
        "bars": 50,
        "set_aside": {},
        "out_of_range": 0,
        "blank_lines": 0,
        "first_event": "2023-11-14T22:13:20Z",
        "last_event": "2023-11-14T23:02:20Z",
        "symbols": {"A": 33, "B": 17},
    }
