"""The benchmark's pure parts: generated data, Kafka tool parsing, statistics, the table."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hftpipe_workers.bars import NS_PER_SECOND, OK, reason_codes
from hftpipe_workers.csvformat import BarReader

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # bench/ is a directory of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from bench import datagen, stats, suite  # noqa: E402 - importable once the repo root is on sys.path

PRODUCER_PERF_OUTPUT = """\
1614721 records sent, 322944.2 records/sec (38.80 MB/sec), 60.3 ms avg latency, 250.0 ms max \
latency.
4000000 records sent, 346530.4 records/sec (41.64 MB/sec), 57.12 ms avg latency, 301.00 ms max \
latency, 41 ms 50th, 160 ms 95th, 210 ms 99th, 290 ms 99.9th.
"""

CONSUMER_PERF_OUTPUT = """\
start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, \
rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
2026-11-24 20:02:44:316, 2026-11-24 20:02:44:985, 64.7678, 96.8128, 500000, 747384.1555, \
227, 442, 146.5334, 1131221.7195
"""


# -- generated data ----------------------------------------------------------------


def test_generated_rows_are_valid_minute_bars() -> None:
    block, last = datagen.chunk_rows(0, 5_000, datagen.START_PRICE)
    ts, o, h, lo, c, v = block.T
    assert (np.diff(ts) == 60).all()
    assert ts[0] == datagen.FIRST_TIMESTAMP
    assert (reason_codes(o, h, lo, c, v) == OK).all()
    assert last == c[-1]
    assert 0 < (v == 0).mean() < 0.2  # some quiet minutes, as in the real file


def test_generated_file_is_read_as_the_kaggle_layout(tmp_path: Path) -> None:
    path = datagen.ensure_dataset(3_000, tmp_path, log=False)
    assert "generated" in path.name
    assert path.read_text().splitlines()[1].startswith(f"{datagen.FIRST_TIMESTAMP}.0,")
    with path.open("rb") as stream:
        reader = BarReader(stream, source=str(path), symbol=datagen.SYMBOL)
        chunks = list(reader)
    assert reader.layout.name == "kaggle-btc"
    assert sum(len(c.bars) for c in chunks) == 3_000
    assert not any(c.rejected for c in chunks)
    assert chunks[0].bars.ts_ns[0] == datagen.FIRST_TIMESTAMP * NS_PER_SECOND


def test_a_smaller_data_set_is_a_prefix_of_a_larger_one(tmp_path: Path) -> None:
    small = datagen.ensure_dataset(1_234, tmp_path, log=False).read_text().splitlines()
    large = datagen.ensure_dataset(4_321, tmp_path, log=False).read_text().splitlines()
    assert large[: len(small)] == small


def test_the_data_set_is_generated_once_and_reused(tmp_path: Path) -> None:
    path = datagen.ensure_dataset(500, tmp_path, log=False)
    path.write_text(datagen.KAGGLE_HEADER + "\n")  # a marker: regenerating would overwrite it
    assert datagen.ensure_dataset(500, tmp_path, log=False).read_text().count("\n") == 1
    assert not list(tmp_path.glob("*.tmp*"))


# -- Kafka's tools -------------------------------------------------------------------


def test_producer_performance_summary_is_the_last_full_line() -> None:
    parsed = stats.parse_producer_performance(PRODUCER_PERF_OUTPUT)
    assert parsed["records"] == 4_000_000
    assert parsed["records_per_second"] == 346530.4
    assert parsed["latency_p99_ms"] == 210


def test_tool_output_without_a_summary_is_an_error() -> None:
    with pytest.raises(stats.ToolOutputError, match="ProducerPerformance"):
        stats.parse_producer_performance("Exception in thread main\n")
    with pytest.raises(stats.ToolOutputError, match="ConsumerPerformance"):
        stats.parse_consumer_performance("WARN no records\n")


def test_consumer_performance_header_and_values() -> None:
    parsed = stats.parse_consumer_performance(CONSUMER_PERF_OUTPUT)
    assert parsed["data.consumed.in.nMsg"] == 500_000
    assert parsed["fetch.nMsg.sec"] == pytest.approx(1131221.7195)
    assert parsed["start.time"] == "2026-11-24 20:02:44:316"


# -- statistics ----------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 99.9, 100])
def test_percentile_agrees_with_numpy(q: float) -> None:
    values = sorted(np.random.default_rng(1).exponential(size=1_001).tolist())
    assert stats.percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_latency_summary_is_in_milliseconds() -> None:
    summary = stats.latency_summary([0.001, 0.002, 0.003])
    assert summary["count"] == 3
    assert summary["p50_ms"] == pytest.approx(2.0)
    assert summary["max_ms"] == pytest.approx(3.0)
    assert stats.latency_summary([]) == {"count": 0}


def test_batch_summary_leaves_out_the_first_wait() -> None:
    summary = stats.batch_summary([(100, 9.0, 0.010), (300, 0.050, 0.030)])
    assert summary["mean_bars"] == 200
    assert summary["mean_wait_ms"] == pytest.approx(50)
    assert summary["processing_us_per_bar"] == pytest.approx(100)


def test_rss_that_levels_off_is_flat_and_rss_that_keeps_growing_is_not() -> None:
    levels = [(i * 1000, 100_000 + (50_000 if i > 2 else i * 20_000)) for i in range(1, 41)]
    assert stats.rss_flatness(levels)["flat"] is True
    growing = [(i * 1000, 100_000 + i * 5_000) for i in range(1, 41)]
    verdict = stats.rss_flatness(growing)
    assert verdict["flat"] is False
    assert verdict["growth_after_quarter_mb"] > verdict["allowed_growth_mb"]


def test_thin_keeps_the_ends() -> None:
    thinned = stats.thin(list(range(1000)), keep=10)
    assert len(thinned) == 10
    assert (thinned[0], thinned[-1]) == (0, 999)


def _results(**overrides: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "end_to_end": {"bars_per_second": 250_000.0},
        "ratios": {"processor_over_consumer_performance": 0.4},
        "latency": {"rate": 10_000, "event_to_redis": {"p50_ms": 1.0, "p99_ms": 4.0}},
        "processor_alone": {"rss": {"vm_hwm_mb": 120.0, "flatness": {"flat": False}}},
    }
    results.update(overrides)
    return results


def test_targets_are_judged_and_missing_figures_are_not_judged() -> None:
    verdicts = {t.name: t.met for t in stats.evaluate_targets(_results())}
    assert verdicts == {
        "end-to-end rate": True,
        "processor vs ConsumerPerformance": False,
        "p99 event-to-Redis at 10,000 bars/s": True,
        "processor peak RSS, flat": False,  # under 150 MB but growing
        "end to end vs ProducerPerformance": None,  # not measured: not judged
        "loader vs DuckDB's own Arrow ingest": None,
        "p99 event-to-Redis vs the broker's send -> ack p99, same rate": None,
    }
    assert all(t.met is None for t in stats.evaluate_targets({}))


def test_issue_12s_ratios_are_judged_against_their_same_run_baselines() -> None:
    results = _results(
        ratios={
            "end_to_end_over_producer_performance": 0.5,
            "loader_over_duckdb_arrow_ingest": 0.166,
        },
        broker_latency={"latency_p99_ms": 3},
    )
    verdicts = {t.name: t.met for t in stats.evaluate_targets(results)}
    assert verdicts["end to end vs ProducerPerformance"] is True
    assert verdicts["loader vs DuckDB's own Arrow ingest"] is False
    # 4.0 ms against the broker's 3 ms: within 2x.
    assert verdicts["p99 event-to-Redis vs the broker's send -> ack p99, same rate"] is True
    # A broker p99 under its 1 ms resolution ("0") bounds ours at 2 ms, not at 0.
    below = stats.evaluate_targets(_results(broker_latency={"latency_p99_ms": 0}))
    p99 = {t.name: t for t in below}[
        "p99 event-to-Redis vs the broker's send -> ack p99, same rate"
    ]
    assert (p99.met, p99.value) == (False, "4.0 ms vs < 1 ms at 10,000 bars/s")


def test_the_brief_latency_target_is_judged_at_10000_when_the_paced_rate_is_higher() -> None:
    """A paced run above 10,000 bars/s (10 % of ConsumerPerformance) comes with a second run
    at 10,000: the brief's < 5 ms is judged on that one, issue 12's 2x on the paced one."""
    results = _results(
        latency={"rate": 165_000, "event_to_redis": {"p50_ms": 900.0, "p99_ms": 16_900.0}},
        broker_latency={"latency_p99_ms": 5},
        latency_floor={"rate": 10_000, "event_to_redis": {"p50_ms": 1.0, "p99_ms": 3.5}},
        broker_latency_floor={"latency_p99_ms": 2},
    )
    targets = {t.name: t for t in stats.evaluate_targets(results)}
    assert targets["p99 event-to-Redis at 10,000 bars/s"].met is True
    paced = targets["p99 event-to-Redis vs the broker's send -> ack p99, same rate"]
    assert (paced.met, paced.value) == (False, "16,900.0 ms vs 5 ms at 165,000 bars/s")
    table = stats.results_table({"results": results})
    assert "3.5 ms" in table
    assert "at 10,000 bars/s (the brief's rate)" in table


def test_the_paced_rate_is_10000_or_a_tenth_of_consumer_performance() -> None:
    assert suite.paced_rate(None) == 10_000
    assert suite.paced_rate({"fetch_records_per_second": 40_000.0}) == 10_000
    assert suite.paced_rate({"fetch_records_per_second": 291_715.4}) == 29_000


def test_the_table_renders_even_when_phases_failed() -> None:
    doc = {"results": {"end_to_end": {"error": "boom"}, "ratios": {}}}
    table = stats.results_table(doc)
    assert "| End to end (producer start -> processor caught up) | n/a |" in table
    assert table.count("| n/a |") >= 4


def test_the_readme_section_is_replaced_between_the_markers() -> None:
    text = f"intro\n{stats.README_START}\nold table\n{stats.README_END}\noutro\n"
    replaced = stats.replace_section(text, "new table\n")
    assert replaced == f"intro\n{stats.README_START}\nnew table\n{stats.README_END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        stats.replace_section("no markers", "x")


def test_profile_breakdown_shares_of_the_total_and_renamed_functions() -> None:
    def row(cumulative: float) -> stats.ProfileRow:
        return (1, 1, 0.0, cumulative, {})

    rows: dict[stats.ProfileKey, stats.ProfileRow] = {
        ("/x/hftpipe_workers/processor.py", 10, "run"): row(10.0),
        ("/x/hftpipe_workers/metrics.py", 20, "update"): row(4.0),
        ("~", 0, "<method 'consume' of 'cimpl.Consumer' objects>"): row(1.0),
    }
    parts: list[stats.ProfilePart] = [
        ("total", (("hftpipe_workers/processor.py", "run"),)),
        ("metrics", (("hftpipe_workers/metrics.py", "update"),)),
        ("consume", (("~", "'consume' of"),)),
        ("gone", (("hftpipe_workers/processor.py", "renamed_away"),)),
    ]
    shares = {p["part"]: p["share"] for p in stats.profile_breakdown(rows, parts)}
    assert shares == {"total": 1.0, "metrics": 0.4, "consume": 0.1, "gone": None}
    assert "not called" in stats.profile_table(stats.profile_breakdown(rows, parts), 10)


def test_the_processor_s_own_calls_are_in_the_cprofile_parts() -> None:
    """The processor decodes with decode_bars_lenient and updates with update_encoded:
    the default parts must find them (the 2026-12-07 table said 'not called')."""
    rows: dict[stats.ProfileKey, stats.ProfileRow] = {
        ("/x/hftpipe_workers/processor.py", 10, "run"): (1, 1, 0.0, 10.0, {}),
        ("/x/hftpipe_workers/codec.py", 20, "decode_bars_lenient"): (1, 1, 0.0, 1.0, {}),
        ("/x/hftpipe_workers/metrics.py", 30, "update_encoded"): (1, 1, 0.0, 3.0, {}),
    }
    shares = {p["part"]: p["share"] for p in stats.profile_breakdown(rows)}
    assert [v for k, v in shares.items() if k.startswith("decode bars")] == [0.1]
    assert [v for k, v in shares.items() if k.startswith("rolling metrics")] == [0.3]


def test_a_sampled_stack_counts_for_its_innermost_known_frame() -> None:
    stack = [
        ("/usr/lib/python3.11/json/decoder.py", "decode"),
        ("/x/hftpipe_workers/codec.py", "_float"),
        ("/x/hftpipe_workers/codec.py", "decode_bar"),
        ("/x/hftpipe_workers/processor.py", "_process"),
        ("/x/hftpipe_workers/processor.py", "run"),
    ]
    assert stats.classify_stack(stack).startswith("decode bars")
    assert stats.classify_stack(stack[3:]).startswith("_process loop")
    assert stats.classify_stack([("/x/hftpipe_workers/codec.py", "encode_bar_metrics")]).startswith(
        "encode metrics"
    )
    assert stats.classify_stack([("/elsewhere.py", "f")]) == "other"
    # The compiled core's calls count for the Python function that makes them.
    compiled = [
        ("/x/hftpipe_workers/metrics.py", "update_encoded"),
        ("/x/hftpipe_workers/processor.py", "_update_and_encode"),
        ("/x/hftpipe_workers/processor.py", "_process_slice"),
    ]
    assert "compiled core" in stats.classify_stack(compiled)
    waiting = [("/x/hftpipe_workers/processor.py", "_flush_metrics"), *compiled[2:]]
    assert "acks" in stats.classify_stack(waiting)


# -- reading speed (issue 11) ----------------------------------------------------------


def test_reading_speed_reads_both_formats_and_the_table_shows_them(tmp_path: Path) -> None:
    from bench import reading, suite  # noqa: PLC0415

    csv_path = datagen.ensure_dataset(20_000, tmp_path, log=False)
    figures = reading.reading_speed(csv_path, repeat=1)
    assert reading.parquet_of(csv_path).exists()
    for kind in ("csv", "parquet"):
        assert figures[kind]["rows"] == 20_000
        assert figures[kind]["rows_per_second"] > 0
        assert figures[kind]["over_pyarrow"] > 0
    ratios = suite.ratios({"reading": figures})
    assert ratios["parquet_reader_over_pyarrow_parquet"] == pytest.approx(
        figures["parquet"]["over_pyarrow"], rel=1e-3
    )
    table = stats.results_table({"results": {"reading": figures, "ratios": ratios}})
    assert "| Reading a Parquet file (every row checked, no Kafka) |" in table
    assert "pyarrow.csv.read_csv of the same rows" in table
    # Point 5: the same rows dealt into 4 files, merged: the ratio of times, and its target.
    merge = figures["merge"]
    assert (merge["files"], merge["rows"]) == (4, 20_000)
    assert ratios["merge_over_one_file"] == pytest.approx(merge["merge_over_one_file"], rel=1e-2)
    assert "| Reading the same rows as 4 CSV files merged by event time |" in table
    assert "| merge of many files vs one file (time) | <= 1.20x |" in table


# -- where the processor's CPU goes, by thread -------------------------------------------


def test_a_thread_s_name_and_ticks_come_from_its_stat_line_whatever_its_name() -> None:
    from bench.probe import parse_task_stat  # noqa: PLC0415

    # Fields of stat(5): pid (comm) state ppid ... utime (14) stime (15) ...
    tail = "S 1 1 1 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 9 0 100 0 0"
    assert parse_task_stat(f"42 (rdk:broker1) {tail}") == ("rdk:broker1", 1290)
    assert parse_task_stat(f"42 (a (b) c) {tail}") == ("a (b) c", 1290)


def test_this_process_s_threads_are_counted_by_name() -> None:
    from bench.probe import thread_cpu_seconds  # noqa: PLC0415

    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # some CPU on this (the main) thread
        pass
    threads = thread_cpu_seconds()
    assert sum(threads.values()) >= 0.25
    assert all(not name.startswith("rdk:") for name in threads)


def test_cpu_per_bar_splits_the_processor_from_its_kafka_client_and_the_servers() -> None:
    phase = {
        "bars": 1_000_000,
        "thread_cpu_seconds": {"python": 8.0, "rdk:main": 0.5, "rdk:broker1": 1.5},
        "phase": {"cpu_seconds": {"kafka": 3.0, "redis": 4.0, "other": 9.0}},
    }
    assert stats.cpu_per_bar(phase) == (8.0, 2.0, 3.0, 4.0)
    # An older results file, without threads: the servers are still known.
    assert stats.cpu_per_bar({**phase, "thread_cpu_seconds": None}) == (None, None, 3.0, 4.0)
    assert stats.cpu_per_bar(None) == (None, None, None, None)
    table = stats.results_table({"results": {"processor_alone": {**phase, "bars_per_second": 1e5}}})
    assert "8.0 us / 2.0 us / 3.0 us / 4.0 us" in table
    assert "| 10.0 us |" in table


def test_each_latency_run_sends_a_file_of_its_own_rate_times_its_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 10,000 bars/s run once sent the paced run's whole file (3.4M bars, 5 minutes
    at that rate) though it measures 25 seconds of it."""
    from types import SimpleNamespace  # noqa: PLC0415

    monkeypatch.setattr(datagen, "ensure_dataset", lambda rows: Path(f"/bars/{rows}"))
    sent: list[tuple[str, Path, int]] = []
    phases_run: list[str] = []

    def latency(job: str, source: Path, rate: int) -> dict[str, Any]:
        sent.append((job, source, rate))
        return {}

    bench: Any = SimpleNamespace(
        config=SimpleNamespace(rate=136_000, latency_seconds=25),
        latency=latency,
        broker_latency=lambda size, rate: {},
    )

    class Phases:
        def run(self, label: str, key: str, call: Any) -> None:
            phases_run.append(key)
            call()

    suite._latency_phases(Phases(), bench, 126)  # type: ignore[arg-type]
    assert phases_run == ["broker_latency", "latency", "broker_latency_floor", "latency_floor"]
    assert sent == [
        ("bench-latency", Path("/bars/3400000"), 136_000),
        ("bench-latency-floor", Path("/bars/250000"), 10_000),
    ]
