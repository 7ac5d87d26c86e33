"""Many files as one feed (issue 11, point 5): the files of a source, symbols from file
names, and the merge by event time (order, ties, many files, one chunk per file held)."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hftpipe_workers import cli
from hftpipe_workers.bars import Bar
from hftpipe_workers.csvformat import BarReader, ParsedChunk, RejectedRow, SourceError
from hftpipe_workers.multifile import FilenameSymbol, MergedReader, expand_sources
from hftpipe_workers.pacing import Pacing
from hftpipe_workers.producer import Replay, ResumePoint
from hftpipe_workers.settings import KafkaSettings, ProduceSettings, check_filename_pattern
from hftpipe_workers.sourceinfo import describe_reading, summarize

MINUTE = 60 * 1_000_000_000
T0 = 1_704_067_200 * 1_000_000_000  # 2024-01-01


def csv_of(rows: Sequence[tuple[int, float, str | None]]) -> str:
    """A generic CSV of (time in ns, close, symbol or None) rows."""
    with_symbol = rows and rows[0][2] is not None
    lines = ["timestamp,open,high,low,close,volume" + (",symbol" if with_symbol else "")]
    for ts, close, sym in rows:
        fields = [str(ts // 1_000_000), repr(close), repr(close + 1), repr(close / 2)]
        fields += [repr(close), "1.5"] + ([sym] if with_symbol else [])  # type: ignore[list-item]
        lines.append(",".join(fields))
    return "\n".join(lines) + "\n"


class Counting(BarReader):
    """A CSV reader that counts the chunks it has given (to check what the merge holds)."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.given = 0
        for chunk in super().__iter__():
            self.given += 1
            yield chunk


def reader(text: str, name: str, symbol: str | None = None, block: int = 1 << 20) -> Counting:
    return Counting(io.BytesIO(text.encode()), source=name, symbol=symbol, block_bytes=block)


def merged(readers: list[Counting]) -> tuple[list[Bar], list[RejectedRow], list[ParsedChunk]]:
    chunks = list(MergedReader(readers))
    bars = [b for c in chunks for b in c.bars.bars()]
    return bars, [r for c in chunks for r in c.rejected], chunks


def test_three_symbol_files_come_out_in_event_time_order_with_the_ties_broken() -> None:
    # Each symbol's minutes, some shared (ties), some its own; file order ETH, BTC, SOL.
    eth = [(T0 + MINUTE * i, 2000.0 + i, None) for i in (0, 1, 3, 4, 7)]
    btc = [(T0 + MINUTE * i, 40000.0 + i, None) for i in (0, 2, 3, 5, 7)]
    sol = [(T0 + MINUTE * i, 90.0 + i, None) for i in (1, 2, 3, 6)]
    files = [("ETH", eth), ("BTC", btc), ("SOL", sol)]
    bars, rejected, _ = merged([reader(csv_of(r), f"{s}.csv", s, block=64) for s, r in files])
    assert not rejected
    expected = sorted(
        ((ts, sym, close) for sym, rows in files for ts, close, _ in rows),
        key=lambda x: (x[0], x[1]),  # time, then symbol (all are distinct per file here)
    )
    assert [(b.ts_ns, b.symbol, b.close) for b in bars] == expected
    assert [b.seq for b in bars] == list(range(len(expected)))


def test_ties_of_one_symbol_in_two_files_keep_the_earlier_file_and_set_the_later_aside() -> None:
    first = [(T0, 1.0, "X"), (T0 + MINUTE, 2.0, "X")]
    second = [(T0 + MINUTE, 20.0, "X"), (T0 + 2 * MINUTE, 30.0, "X")]
    bars, rejected, _ = merged([reader(csv_of(first), "a.csv"), reader(csv_of(second), "b.csv")])
    assert [(b.ts_ns, b.close) for b in bars] == [
        (T0, 1.0),
        (T0 + MINUTE, 2.0),
        (T0 + 2 * MINUTE, 30.0),
    ]
    assert [b.seq for b in bars] == [0, 1, 2]
    [dup] = rejected
    assert (dup.source, dup.line, dup.kind) == ("b.csv", 2, "duplicate_time")
    assert "a.csv line 3" in dup.reason
    assert "2024-01-01T00:01:00Z" in dup.reason


def test_file_order_decides_among_equal_times_and_symbols_across_files() -> None:
    """Two multi-symbol files with the same minute: symbol first, then file order."""
    one = [(T0, 1.0, "B"), (T0, 2.0, "A")]
    two = [(T0, 3.0, "C"), (T0, 4.0, "A2")]
    bars, _, _ = merged([reader(csv_of(one), "one.csv"), reader(csv_of(two), "two.csv")])
    assert [b.symbol for b in bars] == ["A", "A2", "B", "C"]


@pytest.mark.parametrize("block", [64, 300, 1 << 20])
def test_many_files_merge_as_one_sort_would_whatever_the_chunks(block: int) -> None:
    rng = random.Random(7)
    files = []
    for f in range(12):
        minutes = sorted(rng.sample(range(400), 120))
        files.append([(T0 + MINUTE * m, float(f * 1000 + m), f"S{f % 5}") for m in minutes])
    readers = [reader(csv_of(rows), f"f{i}.csv", block=block) for i, rows in enumerate(files)]
    bars, rejected, _ = merged(readers)
    # The oracle: every row keyed by (time, symbol, file order, line), duplicates of a
    # (time, symbol) after the first set aside.
    keyed = sorted(
        (ts, sym, i, line)
        for i, rows in enumerate(files)
        for line, (ts, _, sym) in enumerate(rows, 2)
    )
    kept: list[tuple[int, str, int, int]] = []
    dropped: list[tuple[int, str, int, int]] = []
    seen: set[tuple[int, str]] = set()
    for ts, sym, i, line in keyed:
        (dropped if (ts, sym) in seen else kept).append((ts, sym, i, line))
        seen.add((ts, sym))
    assert [(b.ts_ns, b.symbol, b.line) for b in bars] == [(t, s, ln) for t, s, _, ln in kept]
    assert sorted((r.source, r.line) for r in rejected) == sorted(
        (f"f{i}.csv", ln) for _, _, i, ln in dropped
    )
    assert [b.seq for b in bars] == list(range(len(kept)))


def test_the_merge_holds_one_chunk_per_file() -> None:
    """Constant memory in rows: while the merge yields, no file has been read more than
    one chunk ahead of what was yielded, and no file holds more than a chunk of rows."""
    rows_per_file, files = 3_000, 4
    texts = [
        csv_of([(T0 + MINUTE * (files * i + f), 1.0 + i, None) for i in range(rows_per_file)])
        for f in range(files)
    ]
    readers = [reader(t, f"s{f}.csv", f"S{f}", block=4096) for f, t in enumerate(texts)]
    merge = MergedReader(readers)
    chunk_rows = max(len(c.bars) for c in reader(texts[0], "x", "X", block=4096))
    yielded = 0
    for chunk in merge:
        yielded += len(chunk.bars)
        # Rows read so far are those yielded plus at most one chunk per file.
        read = sum(r.stats.accepted for r in readers)
        assert read - yielded <= files * chunk_rows
    assert yielded == files * rows_per_file
    assert merge.max_held <= chunk_rows + 1
    assert all(r.given > 10 for r in readers)  # many chunks: the bound above meant something


def test_a_file_not_in_time_order_across_its_symbols_is_refused_naming_its_line() -> None:
    by_symbol = [(T0 + MINUTE * i, 1.0, "A") for i in range(3)]
    by_symbol += [(T0 + MINUTE * i, 2.0, "B") for i in range(3)]
    other = [(T0, 1.0, "C")]
    with pytest.raises(SourceError, match=r"bad\.csv:5: time 2024-01-01T00:00:00Z \(B\) is before"):
        merged([reader(csv_of(by_symbol), "bad.csv"), reader(csv_of(other), "c.csv")])


def test_rows_set_aside_by_a_file_pass_through_and_the_totals_add_up() -> None:
    good = csv_of([(T0 + MINUTE * i, 1.0 + i, None) for i in range(4)])
    bad = csv_of([(T0 + MINUTE * i, 5.0 + i, None) for i in range(4)]).replace("6.0,", "nan,", 1)
    merge = MergedReader([reader(good, "g.csv", "G"), reader(bad, "b.csv", "B")])
    summary = summarize(merge)
    assert (summary.rows, summary.bars, dict(summary.set_aside)) == (8, 7, {"not_finite": 1})
    assert merge.stats.rejected == 1


def test_symbols_from_file_names_and_the_patterns_errors() -> None:
    named = FilenameSymbol("{symbol}-1m-*.csv")
    assert named.symbol("/data/BTCUSDT-1m-2024-01.csv") == "BTCUSDT"
    assert named.symbol("s3://bucket/2024/ETH-USD-1m-2024-02.csv") == "ETH-USD"
    with pytest.raises(
        SourceError,
        match=r"/d/BTC_2024\.csv: the file name 'BTC_2024\.csv' does "
        r"not match --symbol-from-filename '\{symbol\}-1m-\*\.csv'",
    ):
        named.symbol("/d/BTC_2024.csv")
    for bad in ("BTC-*.csv", "{symbol}/{symbol}.csv", "dir/{symbol}.csv"):
        with pytest.raises(ValueError, match="pattern"):
            check_filename_pattern(bad)
    with pytest.raises(ValueError, match="not both"):
        ProduceSettings(source=["x"], job="j", symbol="X", symbol_from_filename="{symbol}.csv")


def test_a_directory_a_glob_and_a_list_expand_in_file_order(tmp_path: Path) -> None:
    for name in ("b.csv", "a.csv", ".hidden.csv", "c.txt"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.csv").write_text("x\n")
    folder = str(tmp_path)
    assert expand_sources([folder]) == [f"{folder}/{n}" for n in ("a.csv", "b.csv", "c.txt")]
    assert expand_sources([f"{folder}/*.csv"]) == [f"{folder}/a.csv", f"{folder}/b.csv"]
    assert expand_sources([f"{folder}/c.txt", f"{folder}/[ab].csv"]) == [
        f"{folder}/c.txt",
        f"{folder}/a.csv",
        f"{folder}/b.csv",
    ]
    assert expand_sources([f"file://{folder}/*.csv"]) == [
        f"file://{folder}/a.csv",
        f"file://{folder}/b.csv",
    ]
    # One file is as it was given; an HTTP URL's ? is a query, not a pattern.
    assert expand_sources(["https://h/x.csv?sig=1"]) == ["https://h/x.csv?sig=1"]
    with pytest.raises(SourceError, match=r"/\*\.parquet: no file matches the pattern"):
        expand_sources([f"{folder}/*.parquet"])
    with pytest.raises(SourceError, match="named twice"):
        expand_sources([f"{folder}/a.csv", f"{folder}/*.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty: the directory holds no file"):
        expand_sources([f"{folder}/empty"])


def test_inspect_of_a_directory_says_how_many_files_and_what_each_is(tmp_path: Path) -> None:
    for f, sym in enumerate(("BTC", "ETH")):
        rows = [(T0 + MINUTE * i, 10.0 * (f + 1) + i, None) for i in range(3)]
        (tmp_path / f"{sym}-1m-2024.csv").write_text(csv_of(rows))
    result = CliRunner().invoke(
        cli.app, ["inspect", str(tmp_path), "--symbol-from-filename", "{symbol}-1m-*.csv"]
    )
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    assert out[1] == "files: 2, merged by event time, then symbol, then file order"
    assert out[2] == f"file 1: {tmp_path}/BTC-1m-2024.csv (symbol BTC)"
    assert out[3].startswith("  format: CSV text (UTF-8), comma-separated, a header line")
    assert f"file 2: {tmp_path}/ETH-1m-2024.csv (symbol ETH)" in out
    assert "symbols: 2 (BTC 3, ETH 3)" in out
    assert "rows: 6 read: 6 bars, 0 set aside, 0 outside --start/--end" in out
    bad = CliRunner().invoke(cli.app, ["inspect", f"{tmp_path}/*.pq"])
    assert bad.exit_code == 2
    assert f"{tmp_path}/*.pq: no file matches the pattern" in bad.output


def test_describe_reading_of_one_file_is_unchanged() -> None:
    one = reader(csv_of([(T0, 1.0, None)]), "x.csv", "X")
    assert describe_reading(one)[0] == "format: CSV text (UTF-8), comma-separated, a header line"


def test_dead_letters_of_many_files_resume_by_count_of_one_file_by_line() -> None:
    """The lines of many files' dead letters are of several files, in the merge's order:
    what is committed is a count of them; one file's are in line order."""
    many = ResumePoint(dead_letters=2)
    assert [many.dead_letter_done(line, n) for n, line in enumerate((90, 5, 7), 1)] == [
        True,
        True,
        False,
    ]
    one = ResumePoint(last_dead_line=40)
    assert [one.dead_letter_done(line, 9) for line in (39, 40, 41)] == [True, True, False]
    assert not many.empty
    assert ResumePoint(dead_letters=0).empty


# ------------------------------------------------- many files of trades (issue 11, point 6)


def trades_csv(rows: Sequence[tuple[int, float]]) -> str:
    return "time,price,size\n" + "".join(f"{ts // 1_000_000},{p!r},0.5\n" for ts, p in rows)


def test_trades_of_one_symbol_sharing_a_time_across_files_are_all_kept() -> None:
    """Ticks share times: the merge's same-time duplicate rule is for bars only."""
    a = reader(trades_csv([(T0, 1.0), (T0 + MINUTE, 2.0)]), "a.csv", "X")
    b = reader(trades_csv([(T0, 10.0), (T0 + MINUTE, 20.0)]), "b.csv", "X")
    assert a.layout.kind == b.layout.kind == "trade"
    bars, rejected, _ = merged([a, b])
    assert not rejected
    # Time, then symbol, then file order.
    assert [(t.ts_ns, t.close) for t in bars] == [
        (T0, 1.0),
        (T0, 10.0),
        (T0 + MINUTE, 2.0),
        (T0 + MINUTE, 20.0),
    ]


def test_a_source_of_bars_and_trades_files_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.csv").write_text(csv_of([(T0, 1.0, None)]))
    (tmp_path / "b.csv").write_text(trades_csv([(T0, 1.0)]))
    replay = Replay(
        job="j",
        source=[str(tmp_path / "a.csv"), str(tmp_path / "b.csv")],
        bars_topic="b",
        dead_topic="d",
        kafka=KafkaSettings(),
        pacing=Pacing.parse(None, None),
        symbol="X",
    )
    with pytest.raises(SourceError, match="the files hold different kinds of records") as err:
        replay._check_source()
    assert "a.csv holds bars" in str(err.value)
    assert "b.csv holds trades" in str(err.value)
