"""Files in the shapes the common sources publish, replayed for real into the real broker
(issue 11, points 1-3).

Each test writes a small file as the source would publish it, runs ``hftpipe produce``
on it as a user would (no option where the file speaks for itself), and reads the bars
topic back: the bars must equal the rows of the file, at the instants the file means
(in its zone, daylight saving included). A file the producer cannot read fails within
its first 100 rows with one message naming the file, the column, a value and the
option that would read it, exit code 2, and no topic left behind.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from confluent_kafka.admin import AdminClient
from faults import assert_every_bar_once, committed_bars, kill_mid_replay, topic_bars
from pyarrow import feather

from hftpipe_devstack.testing import CLI, produce, run_produce
from hftpipe_operator.kafka_facts import read_offsets
from hftpipe_operator.status import SourceStatus
from hftpipe_workers.bars import format_utc
from hftpipe_workers.contract import Topics

NS = 1_000_000_000
Row = tuple[int, float, float, float, float, float]
"""(UTC ns, open, high, low, close, volume): what a bar of the file means."""


def new_job() -> str:
    return f"fmt-{uuid.uuid4().hex[:8]}"


def job_topics(bootstrap: str, job: str) -> list[str]:
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return sorted(t for t in topics if f".{job}." in t)


def replay(env: dict[str, str], path: Path, *args: str) -> tuple[str, dict[str, Any], str]:
    """``hftpipe produce`` of ``path`` into a new job: the job, its report, its stderr."""
    job = new_job()
    done = run_produce(env, job, path, "--symbol", "X", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return job, json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def assert_topic_holds(bootstrap: str, job: str, rows: list[Row]) -> None:
    bars = topic_bars(bootstrap, job)
    got = [(b.ts_ns, b.open, b.high, b.low, b.close, b.volume) for b in bars]
    assert len(got) == len(rows)
    assert got == rows
    assert [b.seq for b in bars] == list(range(len(rows)))


def prices(i: int) -> tuple[float, float, float, float, float]:
    """Distinct, exactly printable prices for row ``i``."""
    base = 40_000 + i * 0.25
    return (base, base + 1.5, base - 1.25, base + 0.5, 1.0 + i / 8)


def text(value: float) -> str:
    return repr(value)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("source-formats")


# ----------------------------------------------------- Binance's archive, as it is


@pytest.mark.parametrize(("unit", "per_ns"), [("ms", 1_000_000), ("us", 1_000)])
def test_a_headerless_binance_kline_dump_in_both_time_units(
    unit: str, per_ns: int, data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    """data.binance.vision's BTCUSDT-1m-*.csv: no header, 12 fields, the open time in ms
    (µs for spot data since 2025)."""
    start = 1_704_067_200 if unit == "ms" else 1_735_689_600  # 2024-01-01, 2025-01-01
    rows: list[Row] = []
    lines = []
    for i in range(1_500):
        t = (start + 60 * i) * NS
        o, h, lo, c, v = prices(i)
        open_time, close_time = t // per_ns, (t + 60 * NS) // per_ns - 1
        lines.append(
            f"{open_time},{text(o)},{text(h)},{text(lo)},{text(c)},{text(v)},{close_time},"
            f"{text(v * c)},{100 + i},{text(v / 2)},{text(v * c / 2)},0\n"
        )
        rows.append((t, o, h, lo, c, v))
    path = data / f"BTCUSDT-1m-{unit}.csv"
    path.write_text("".join(lines))
    job, report, stderr = replay(subprocess_env, path)
    assert (report["produced"], report["dead_lettered"]) == (1_500, 0), report
    assert f"binance-kline (time=open_time as unix_{unit}" in stderr
    assert "unit from the magnitude" in stderr
    assert_topic_holds(kafka_bootstrap, job, rows)


# -------------------------------------------- MetaTrader / HistData: ';', date + time


def test_a_semicolon_file_with_date_and_time_columns(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    first = datetime(2017, 1, 2, tzinfo=UTC)
    rows: list[Row] = []
    lines = ["Date;Time;Open;High;Low;Close;Volume\n"]
    for i in range(800):
        t = first + timedelta(minutes=i)
        o, h, lo, c, v = prices(i)
        lines.append(f"{t:%Y.%m.%d;%H:%M};{o};{h};{lo};{c};{v}\n")
        rows.append((int(t.timestamp()) * NS, o, h, lo, c, v))
    path = data / "EURUSD_M1.csv"
    path.write_text("".join(lines))
    job, report, stderr = replay(subprocess_env, path)
    assert (report["produced"], report["dead_lettered"]) == (800, 0), report
    assert "time=Date+Time as %Y.%m.%d %H:%M" in stderr
    assert "semicolon-separated" in stderr
    assert_topic_holds(kafka_bootstrap, job, rows)


# ------------------------------------------------------- Dukascopy: day first


def test_a_day_first_file(data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str) -> None:
    """Dukascopy's export: ``Gmt time``, ``13.01.2017 22:00:00.000``. The first rows hold
    a day above 12, so day-first is certain."""
    first = datetime(2017, 1, 13, 22, tzinfo=UTC)
    rows: list[Row] = []
    lines = ["Gmt time,Open,High,Low,Close,Volume\n"]
    for i in range(600):
        t = first + timedelta(hours=i)
        o, h, lo, c, v = prices(i)
        lines.append(f"{t:%d.%m.%Y %H:%M:%S}.000,{o},{h},{lo},{c},{v}\n")
        rows.append((int(t.timestamp()) * NS, o, h, lo, c, v))
    path = data / "EURUSD_Candlestick_1_Hour_BID.csv"
    path.write_text("".join(lines))
    job, report, stderr = replay(subprocess_env, path)
    assert (report["produced"], report["dead_lettered"]) == (600, 0), report
    assert "time=Gmt time as %d.%m.%Y %H:%M:%S.%f" in stderr
    assert_topic_holds(kafka_bootstrap, job, rows)


# ------------------------------------------- local times, across both DST changes


def test_naive_local_times_in_a_zone_with_daylight_saving(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    """A US export in New York time, month first, every 30 minutes across 2024-03-10
    (02:00-03:00 does not exist) and 2024-11-03 (01:00-02:00 happens twice)."""
    zone = ZoneInfo("America/New_York")
    instants = [
        datetime(2024, 3, 9, 12, tzinfo=UTC) + timedelta(minutes=30 * i) for i in range(48)
    ] + [datetime(2024, 11, 2, 16, tzinfo=UTC) + timedelta(minutes=30 * i) for i in range(48)]
    rows: list[Row] = []
    lines = ["DateTime,Open,High,Low,Close,Volume\n"]
    for i, t in enumerate(instants):
        o, h, lo, c, v = prices(i)
        lines.append(f"{t.astimezone(zone):%m/%d/%Y %H:%M},{o},{h},{lo},{c},{v}\n")
        rows.append((int(t.timestamp()) * NS, o, h, lo, c, v))
    local = [line.split(",")[0] for line in lines[1:]]
    assert len(set(local)) == len(local) - 2  # 01:00 and 01:30 on Nov 3 twice
    path = data / "spy-ny.csv"
    path.write_text("".join(lines))
    job, report, stderr = replay(
        subprocess_env,
        path,
        *("--timezone", "America/New_York", "--time-format", "%m/%d/%Y %H:%M"),
    )
    assert (report["produced"], report["dead_lettered"]) == (96, 0), report
    assert "time zone: America/New_York (times without an offset are its wall-clock" in stderr
    assert_topic_holds(kafka_bootstrap, job, rows)

    # What the ReplayJob's status shows, as the operator reads it from the progress topic.
    facts = read_offsets({"bootstrap.servers": kafka_bootstrap}, job, timeout=10)
    source = SourceStatus.of(facts.producer_progress)
    assert source is not None, facts.producer_progress
    assert source.time_zone is not None
    assert source.time_zone.startswith("America/New_York")
    assert source.time == "column DateTime as %m/%d/%Y %H:%M"
    assert source.format == "CSV text (UTF-8), comma-separated, a header line"
    assert (source.first_event_time, source.last_event_time) == (
        format_utc(rows[0][0]),
        format_utc(rows[-1][0]),
    )


# ----------------------------------------------------------------- failing fast


def refused(env: dict[str, str], bootstrap: str, path: Path, *args: str) -> str:
    """Run a producer that must refuse ``path``: its last stderr line."""
    job = new_job()
    done = run_produce(env, job, path, "--symbol", "X", *args)
    tail = done.stderr[-3000:]
    assert done.returncode == 2, tail
    assert "Traceback" not in done.stderr, tail
    assert job_topics(bootstrap, job) == [], tail  # nothing produced, no topic behind
    return done.stderr.strip().splitlines()[-1]


def dukascopy_rows(count: int, first: datetime) -> Iterator[str]:
    for i in range(count):
        o, h, lo, c, v = prices(i)
        yield f"{first + timedelta(hours=i):%d.%m.%Y %H:%M:%S}.000,{o},{h},{lo},{c},{v}\n"


def test_a_file_read_with_the_wrong_time_format_fails_fast(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    """The issue's Dukascopy file, read as ISO (today's behaviour, here by a mapping that
    says so): 500 rows, none of them readable. Refused after the first 100."""
    path = data / "dukascopy-as-iso.csv"
    path.write_text(
        "Gmt time,Open,High,Low,Close,Volume\n"
        + "".join(dukascopy_rows(500, datetime(2017, 1, 13, 22)))
    )
    mapping = "time=Gmt time:iso,open=Open,high=High,low=Low,close=Close,volume=Volume"
    line = refused(subprocess_env, kafka_bootstrap, path, "--mapping", mapping)
    assert line.startswith(f"error: {path}: the first 100 rows were set aside"), line
    assert "line 2: time '13.01.2017 22:00:00.000' is not a valid ISO-8601 time" in line
    assert "Column 'Gmt time' holds '13.01.2017 22:00:00.000'" in line
    assert "--time-format '%d.%m.%Y %H:%M:%S.%f'" in line
    assert "--mapping 'time=Gmt time:FORMAT,...'" in line


def test_times_no_format_reads_fail_fast(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    path = data / "unreadable-times.csv"
    rows = "".join(f"day {i % 28 + 1} of 2017 at {i % 24}h,1,2,0.5,1.5,10\n" for i in range(300))
    path.write_text("time,open,high,low,close,volume\n" + rows)
    line = refused(subprocess_env, kafka_bootstrap, path)
    assert line.startswith(f"error: {path}: the first 100 rows were set aside"), line
    assert "Column 'time' holds 'day 1 of 2017 at 0h'" in line
    assert "give its format" in line


def test_day_or_month_first_unknown_asks_for_the_format_by_name(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    """Hourly rows of January 1st to 3rd: no day above 12 in the whole file."""
    path = data / "ambiguous.csv"
    path.write_text(
        "Gmt time,Open,High,Low,Close,Volume\n" + "".join(dukascopy_rows(60, datetime(2017, 1, 1)))
    )
    line = refused(subprocess_env, kafka_bootstrap, path)
    assert f"error: {path}: the times of column 'Gmt time'" in line, line
    assert "--time-format '%d.%m.%Y %H:%M:%S.%f' (day first)" in line
    assert "--time-format '%m.%d.%Y %H:%M:%S.%f' (month first)" in line


# ------------------------------------------------- Parquet and Arrow IPC (point 4)


def wall_minutes(n: int, zone: ZoneInfo) -> tuple[list[datetime], list[int]]:
    """``n`` minutes of New York's wall clock across the night the clocks went back
    (2024-11-03: 01:00-02:00 twice), and the UTC instants they mean."""
    start = datetime(2024, 11, 3, 4, 0, tzinfo=UTC) - timedelta(minutes=n // 2)
    instants = [start + timedelta(minutes=i) for i in range(n)]
    return [t.astimezone(zone).replace(tzinfo=None) for t in instants], [
        int(t.timestamp()) * NS for t in instants
    ]


@pytest.mark.parametrize("kind", ["parquet", "feather"])
def test_a_parquet_file_of_several_row_groups_in_local_time(
    kind: str, data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    """4,000 minutes in row groups (or IPC batches) of 700, naive wall times of New York
    through the repeated hour, one row with a NaN price: every other row on the topic at
    the instant it means, the bad one dead-lettered."""
    n, bad = 4_000, 1_234
    walls, instants = wall_minutes(n, ZoneInfo("America/New_York"))
    columns: dict[str, list[Any]] = {"time": walls, "open": [], "high": [], "low": []}
    columns |= {"close": [], "volume": []}
    rows: list[Row] = []
    for i in range(n):
        o, h, lo, c, v = prices(i)
        if i == bad:
            o = float("nan")
        for name, value in zip(
            ("open", "high", "low", "close", "volume"), (o, h, lo, c, v), strict=True
        ):
            columns[name].append(value)
        if i != bad:
            rows.append((instants[i], o, h, lo, c, v))
    table = pa.table({**columns, "time": pa.array(walls, type=pa.timestamp("us"))})
    path = data / f"minutes.{kind}"
    if kind == "parquet":
        pq.write_table(table, path, row_group_size=700)
        assert pq.ParquetFile(path).metadata.num_row_groups == 6
    else:
        feather.write_feather(table, path, chunksize=700, compression="uncompressed")
    job, report, stderr = replay(subprocess_env, path, "--timezone", "America/New_York")
    assert (report["produced"], report["dead_lettered"]) == (n - 1, 1), report
    assert "time=time as timestamp[us] (the column's own type)" in stderr
    assert (
        "Parquet, 4,000 rows in 6 row groups" if kind == "parquet" else "6 record batches"
    ) in stderr
    # What was read, as hftpipe inspect says it, logged at the end.
    assert (
        f"first event: {format_utc(instants[0])}; last event: {format_utc(instants[-1])}" in stderr
    )
    assert "rows: 4,000 read: 3,999 bars, 1 set aside (not_finite 1), 0 outside" in stderr
    assert_topic_holds(kafka_bootstrap, job, rows)


def test_a_parquet_replay_killed_mid_way_resumes_with_every_row_once(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    """3 symbols of 3,000 minutes in row groups of 1,000, paced, SIGKILLed twice once bars
    are on the topic: a rerun adds the rest, every row exactly once."""
    per_symbol, symbols = 3_000, ("BTC", "ETH", "SOL")
    n = per_symbol * len(symbols)
    start = 1_704_067_200 * NS
    table = pa.table(
        {
            "timestamp": pa.array(
                [start + 60 * NS * (i // 3) for i in range(n)], type=pa.timestamp("ns", tz="UTC")
            ),
            **{k: [prices(i)[j] for i in range(n)] for j, k in enumerate(("open", "high", "low"))},
            "close": [prices(i)[3] for i in range(n)],
            "volume": [prices(i)[4] for i in range(n)],
            "symbol": [symbols[i % 3] for i in range(n)],
        }
    )
    path = data / "three-symbols.parquet"
    pq.write_table(table, path, row_group_size=1_000)
    job = new_job()
    topic = Topics.for_job(job).bars
    cmd = [*CLI, "produce", str(path), "--job", job, "--rate", "1500", "--metrics-port", "-1"]
    kill_mid_replay(cmd, subprocess_env, kafka_bootstrap, topic)
    report = produce(subprocess_env, job, path)
    assert report["skipped_already_in_kafka"] > 0, "the kills must land mid-replay"
    assert report["produced"] + report["skipped_already_in_kafka"] == n, report
    assert_every_bar_once(committed_bars(kafka_bootstrap, topic), n)
    bars = topic_bars(kafka_bootstrap, job)
    assert [(b.symbol, b.ts_ns, b.close) for b in bars] == [
        (symbols[i % 3], start + 60 * NS * (i // 3), prices(i)[3]) for i in range(n)
    ]


def test_a_parquet_file_whose_times_cannot_be_read_fails_fast(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    """Dukascopy's times as a string column of a Parquet file, read as ISO by a mapping:
    refused after its first 100 rows, naming the row, the column and the format that reads
    it; nothing produced."""
    first = datetime(2017, 1, 13, 22)
    texts = [f"{first + timedelta(hours=i):%d.%m.%Y %H:%M:%S}.000" for i in range(500)]
    columns = zip(*(prices(i) for i in range(500)), strict=True)
    names = ("Open", "High", "Low", "Close", "Volume")
    table = pa.table({"Gmt time": texts, **dict(zip(names, columns, strict=True))})
    path = data / "dukascopy.parquet"
    pq.write_table(table, path, row_group_size=64)
    mapping = "time=Gmt time:iso,open=Open,high=High,low=Low,close=Close,volume=Volume"
    line = refused(subprocess_env, kafka_bootstrap, path, "--mapping", mapping)
    assert line.startswith(f"error: {path}: the first 100 rows were set aside"), line
    assert "row 1: time '13.01.2017 22:00:00.000' is not a valid ISO-8601 time" in line
    assert "--time-format '%d.%m.%Y %H:%M:%S.%f'" in line
