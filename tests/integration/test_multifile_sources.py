"""Many files as one feed, replayed for real into the real broker (issue 11, point 5).

A directory of three symbol files (the symbol in each file's name) is replayed as one
stream: the bars on the topic, read in seq order, must be the files' rows merged by event
time, ties broken by symbol, then file order, record by record. Killed with SIGKILL twice
mid-replay and run again, the producer leaves every row on the topic exactly once, and
every bad row in the dead-letter topic exactly once.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from faults import assert_every_bar_once, committed_bars, kill_mid_replay, topic_bars

from hftpipe_devstack.testing import CLI, produce, run_produce
from hftpipe_workers.contract import Topics
from hftpipe_workers.producer import iter_dead_letters
from hftpipe_workers.settings import KafkaSettings

NS = 1_000_000_000
MINUTE = 60 * NS
T0 = 1_704_067_200 * NS  # 2024-01-01
ROWS = 3_000
PATTERN = "*-{symbol}-1m.csv"
# File order (by name) is not symbol order, so that the tie-break shows which one rules.
FILES = (("a-SOL-1m.csv", "SOL", 3), ("b-BTC-1m.csv", "BTC", 1), ("c-ETH-1m.csv", "ETH", 2))
"""(file name, symbol, minutes between its bars): every 6th minute all three tie."""
BAD = {"a-SOL-1m.csv": 1_998, "b-BTC-1m.csv": 100}
"""A row of each of these files (0-based) has no open price: set aside. The merge sets
them aside in file order (line 2,000, then line 102): resuming by the last dead letter's
line, as for one file, would send the first one again."""

Merged = tuple[str, int, float]
"""(symbol, time in ns, close)."""


def close_of(file_index: int, i: int) -> float:
    return 100.0 * (file_index + 1) + i / 4


def write_files(folder: Path) -> tuple[list[Merged], int]:
    """The three files; their good rows merged by time, symbol, file order; the bad rows."""
    folder.mkdir()
    keyed = []
    for f, (name, symbol, step) in enumerate(FILES):
        lines = ["timestamp,open,high,low,close,volume"]
        for i in range(ROWS):
            ts, close = T0 + step * i * MINUTE, close_of(f, i)
            open_ = "" if BAD.get(name) == i else repr(close - 0.5)
            lines.append(f"{ts // 1_000_000},{open_},{close + 1!r},{close - 1!r},{close!r},2.5")
            if BAD.get(name) != i:
                keyed.append((ts, symbol, f, i, close))
        (folder / name).write_text("\n".join(lines) + "\n")
    keyed.sort()
    return [(symbol, ts, close) for ts, symbol, _, _, close in keyed], len(BAD)


def test_a_directory_of_symbol_files_merged_by_event_time_and_resumed_after_sigkill(
    tmp_path: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    folder = tmp_path / "dumps"
    expected, bad = write_files(folder)
    job = f"multi-{uuid.uuid4().hex[:8]}"
    topics = Topics.for_job(job)
    cmd = [
        *CLI,
        "produce",
        str(folder),
        "--symbol-from-filename",
        PATTERN,
        "--job",
        job,
        "--rate",
        "1500",
        "--metrics-port",
        "-1",
    ]
    kill_mid_replay(cmd, subprocess_env, kafka_bootstrap, topics.bars)
    report = produce(subprocess_env, job, folder, "--symbol-from-filename", PATTERN)
    assert report["skipped_already_in_kafka"] > 0, "the kills must land mid-replay"
    assert report["produced"] + report["skipped_already_in_kafka"] == len(expected), report
    assert_every_bar_once(committed_bars(kafka_bootstrap, topics.bars), len(expected))
    bars = topic_bars(kafka_bootstrap, job)
    assert [(b.symbol, b.ts_ns, b.close) for b in bars] == expected
    assert [b.seq for b in bars] == list(range(len(expected)))
    dead = list(
        iter_dead_letters(KafkaSettings(bootstrap_servers=kafka_bootstrap), topics.deadletter)
    )
    where = sorted((Path(d["source"]).name, d["line"]) for d in dead)
    assert where == sorted((name, i + 2) for name, i in BAD.items())  # each once
    assert len(dead) == bad


def test_a_list_of_files_with_a_symbol_column_and_the_errors_that_name_files(
    tmp_path: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    """Two files given one after the other, each with several symbols, the same symbol in
    both: merged by time; one bar at the same time and symbol as one of the first file is
    set aside (a dead letter naming both files)."""
    day1, day2 = tmp_path / "day1.csv", tmp_path / "day2.csv"
    header = "timestamp,open,high,low,close,volume,symbol\n"
    rows1 = [(T0 + MINUTE * i, s, 10.0 + i) for i in range(0, 40) for s in ("B", "A")]
    rows2 = [(T0 + MINUTE * i, "A", 50.0 + i) for i in range(39, 80)]
    for path, rows in ((day1, rows1), (day2, rows2)):
        path.write_text(
            header
            + "".join(f"{t // 1_000_000},{c},{c + 1},{c - 1},{c},1.0,{s}\n" for t, s, c in rows)
        )
    job = f"multi-list-{uuid.uuid4().hex[:8]}"
    done = run_produce(subprocess_env, job, day1, str(day2))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert (report["produced"], report["dead_lettered"]) == (80 + 40, 1), report
    assert "files: 2, merged by event time, then symbol, then file order" in done.stderr
    keyed = sorted([(t, s, 0, c) for t, s, c in rows1] + [(t, s, 1, c) for t, s, c in rows2])
    expected = [(s, t, c) for t, s, f, c in keyed if not (f == 1 and t == T0 + 39 * MINUTE)]
    bars = topic_bars(kafka_bootstrap, job)
    assert [(b.symbol, b.ts_ns, b.close) for b in bars] == expected
    [dead] = iter_dead_letters(
        KafkaSettings(bootstrap_servers=kafka_bootstrap), Topics.for_job(job).deadletter
    )
    assert (dead["source"], dead["line"], dead["kind"]) == (str(day2), 2, "duplicate_time")
    assert f"{day1} line 81 (earlier in file order)" in dead["reason"]

    # What no file matches, and a name the pattern does not fit: named, nothing produced.
    none = run_produce(subprocess_env, f"{job}-none", f"{tmp_path}/*.parquet")
    assert none.returncode == 2
    assert f"{tmp_path}/*.parquet: no file matches the pattern" in none.stderr
    odd = run_produce(
        subprocess_env, f"{job}-odd", str(tmp_path), "--symbol-from-filename", "{symbol}-1m.csv"
    )
    assert odd.returncode == 2
    assert (
        f"{day1}: the file name 'day1.csv' does not match --symbol-from-filename "
        "'{symbol}-1m.csv'" in odd.stderr
    )
    assert "Traceback" not in none.stderr + odd.stderr
