"""The benchmark's pure parts: parsing Kafka's tools, percentiles, targets, the results table.

Nothing here touches a server or a clock, so ``tests/unit/test_bench.py`` covers it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

README_START: Final = "<!-- bench:results:start -->"
README_END: Final = "<!-- bench:results:end -->"

# ProducerPerformance's summary line (Kafka 4.1):
# "500000 records sent, 468164.8 records/sec (49.11 MB/sec), 27.69 ms avg latency,
#  222.00 ms max latency, 11 ms 50th, 129 ms 95th, 153 ms 99th, 158 ms 99.9th."
_PRODUCER_PERF_RE: Final = re.compile(
    r"(?P<records>\d+) records sent, (?P<rps>[\d.]+) records/sec \((?P<mbps>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency, (?P<p50>\d+) ms 50th, "
    r"(?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th, (?P<p999>\d+) ms 99.9th"
)


class ToolOutputError(ValueError):
    """Output of a Kafka tool that does not hold the expected summary."""


def parse_producer_performance(output: str) -> dict[str, float]:
    """The final summary of ``ProducerPerformance`` (not its periodic progress lines)."""
    matches = list(_PRODUCER_PERF_RE.finditer(output))
    if not matches:
        raise ToolOutputError(
            "no 'N records sent, X records/sec ...' summary in ProducerPerformance's output: "
            + output[-500:]
        )
    m = matches[-1]
    return {
        "records": int(m["records"]),
        "records_per_second": float(m["rps"]),
        "mb_per_second": float(m["mbps"]),
        "latency_avg_ms": float(m["avg"]),
        "latency_max_ms": float(m["max"]),
        "latency_p50_ms": float(m["p50"]),
        "latency_p95_ms": float(m["p95"]),
        "latency_p99_ms": float(m["p99"]),
        "latency_p999_ms": float(m["p999"]),
    }


def parse_consumer_performance(output: str) -> dict[str, float | str]:
    """The header and data line of ``ConsumerPerformance``, numbers as floats.

    ``nMsg.sec`` counts the consumer group's join (``rebalance.time.ms``);
    ``fetch.nMsg.sec`` does not.
    """
    lines = [line.strip() for line in output.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("start.time,") and i + 1 < len(lines):
            keys = [k.strip() for k in line.split(",")]
            values = [v.strip() for v in lines[i + 1].split(",")]
            if len(values) != len(keys):
                break
            parsed: dict[str, float | str] = {}
            for key, value in zip(keys, values, strict=True):
                try:
                    parsed[key] = float(value)
                except ValueError:
                    parsed[key] = value
            return parsed
    raise ToolOutputError(
        "no 'start.time, end.time, ...' header and data line in ConsumerPerformance's "
        "output: " + output[-500:]
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linear interpolation.

    The same definition as numpy's default, without needing numpy in the probe.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    pos = (len(sorted_values) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def latency_summary(seconds: Iterable[float]) -> dict[str, float]:
    """Count, mean, p50/p90/p99/p99.9 and max of latencies given in seconds, in ms."""
    values = sorted(x * 1000.0 for x in seconds)
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean_ms": sum(values) / len(values),
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "p999_ms": percentile(values, 99.9),
        "max_ms": values[-1],
    }


def batch_summary(batches: Sequence[tuple[int, float, float]]) -> dict[str, Any]:
    """Batch sizes and timing from ``(bars, seconds waiting before, seconds processing)``.

    The wait of the first batch (consumer start-up) is left out.
    """
    if not batches:
        return {"count": 0}
    bars = sum(b[0] for b in batches)
    processing = sum(b[2] for b in batches)
    waits = sorted(b[1] * 1000 for b in batches[1:])
    per_batch = sorted(b[2] * 1000 for b in batches)
    return {
        "count": len(batches),
        "mean_bars": bars / len(batches),
        "mean_wait_ms": sum(waits) / len(waits) if waits else None,
        "mean_processing_ms": processing * 1000 / len(batches),
        "p99_processing_ms": percentile(per_batch, 99),
        "processing_us_per_bar": processing * 1e6 / bars if bars else None,
    }


def rss_flatness(
    samples: Sequence[tuple[int, int]], *, tolerance_mb: float = 10.0
) -> dict[str, Any]:
    """Whether RSS stays flat over a run, from ``(bars_done, rss_kb)`` samples.

    Flat means: from the first sample at or after a quarter of the bars (start-up
    and the first windows filling are over by then) to the end, RSS grew by at
    most ``tolerance_mb`` or 5 %, whichever is larger.
    """
    if not samples:
        return {"flat": None, "reason": "no samples"}
    total = samples[-1][0]
    after_warmup = [s for s in samples if s[0] >= total / 4] or [samples[-1]]
    start_mb = after_warmup[0][1] / 1024
    end_mb = samples[-1][1] / 1024
    peak_mb = max(s[1] for s in samples) / 1024
    growth = end_mb - start_mb
    allowed = max(tolerance_mb, 0.05 * start_mb)
    return {
        "flat": growth <= allowed,
        "rss_at_quarter_mb": round(start_mb, 1),
        "rss_end_mb": round(end_mb, 1),
        "rss_peak_sampled_mb": round(peak_mb, 1),
        "growth_after_quarter_mb": round(growth, 1),
        "allowed_growth_mb": round(allowed, 1),
    }


def thin(samples: Sequence[Any], keep: int = 60) -> list[Any]:
    """At most ``keep`` evenly spaced samples, always keeping the first and the last."""
    if len(samples) <= keep:
        return list(samples)
    step = (len(samples) - 1) / (keep - 1)
    return [samples[round(i * step)] for i in range(keep)]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Target:
    """A goal the benchmark checks: ``met`` is None when the figure is missing."""

    name: str
    goal: str
    value: str
    met: bool | None


def evaluate_targets(results: Mapping[str, Any]) -> list[Target]:
    """The brief's four targets and issue 12's ratios, judged on the numbers of one run.
    (Issue 12's target against Quix Streams is :func:`quix_target`.)"""

    def get(*path: str) -> Any:
        node: Any = results
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        return node

    def judge(value: Any, check: Callable[[Any], bool]) -> bool | None:
        return None if value is None else check(value)

    e2e = get("end_to_end", "bars_per_second")
    share = get("ratios", "processor_over_consumer_performance")
    p99 = get("latency", "event_to_redis", "p99_ms")
    # The brief's latency target is at 10,000 bars/s: the floor run when the paced rate
    # was higher (see suite.run), else the paced run itself.
    at_floor = "latency_floor" if get("latency_floor") is not None else "latency"
    floor_p99 = get(at_floor, "event_to_redis", "p99_ms")
    floor_rate = get(at_floor, "rate")
    rate = get("latency", "rate")
    hwm = get("processor_alone", "rss", "vm_hwm_mb")
    flat = get("processor_alone", "rss", "flatness", "flat")
    rss_met = None if hwm is None else hwm < 150 and bool(flat)
    e2e_share = get("ratios", "end_to_end_over_producer_performance")
    loader_share = get("ratios", "loader_over_duckdb_arrow_ingest")
    broker_p99 = get("broker_latency", "latency_p99_ms")
    # ProducerPerformance reports whole milliseconds, so "0" means under 1 ms: the bound
    # is then 2 ms, the least that resolution can say.
    p99_bound = None if broker_p99 is None else 2 * max(float(broker_p99), 1.0)
    return [
        Target(
            "end-to-end rate",
            ">= 200,000 bars/s",
            _num(e2e, " bars/s"),
            judge(e2e, lambda v: v >= 200_000),
        ),
        Target(
            "processor vs ConsumerPerformance",
            ">= 50 %",
            _pct(share),
            judge(share, lambda v: v >= 0.5),
        ),
        Target(
            f"p99 event-to-Redis at {_num(floor_rate, '')} bars/s",
            "< 5 ms",
            _num(floor_p99, " ms", 2),
            judge(floor_p99, lambda v: v < 5.0),
        ),
        Target(
            "processor peak RSS, flat",
            "< 150 MB and flat",
            f"{_num(hwm, ' MB', 1)}, {'flat' if flat else 'growing' if flat is False else 'n/a'}",
            rss_met,
        ),
        Target(
            "end to end vs ProducerPerformance",
            ">= 50 %",
            _pct(e2e_share),
            judge(e2e_share, lambda v: v >= 0.5),
        ),
        Target(
            "loader vs DuckDB's own Arrow ingest",
            ">= 50 %",
            _pct(loader_share),
            judge(loader_share, lambda v: v >= 0.5),
        ),
        Target(
            "p99 event-to-Redis vs the broker's send -> ack p99, same rate",
            "<= 2x",
            f"{_num(p99, ' ms', 1)} vs {_whole_ms(broker_p99)} at {_num(rate, '')} bars/s",
            None if p99 is None or p99_bound is None else p99 <= p99_bound,
        ),
    ]


def quix_target(results: Mapping[str, Any]) -> Target:
    """Issue 12's target against Quix Streams: our processor >= 10x its sliding-window job
    (the same windows and outputs), judged only when Quix's outputs agreed with ours."""
    ratio_ = (results.get("ratios") or {}).get("processor_over_quix_sliding")
    quix = (results.get("quix") or {}).get("sliding") or {}
    agreed = (quix.get("agreement") or {}).get("ok")
    value = _x(ratio_) if agreed is not False else f"{_x(ratio_)} (outputs differ)"
    met = None if ratio_ is None or agreed is not True else ratio_ >= 10
    return Target("processor vs Quix Streams, sliding windows", ">= 10x", value, met)


def merge_target(results: Mapping[str, Any]) -> Target:
    """Issue 11's target for many files as one feed: the merge takes at most 20 % more
    time than reading the same rows from one file."""
    ratio_ = (results.get("ratios") or {}).get("merge_over_one_file")
    met = None if ratio_ is None else ratio_ <= 1.2
    return Target("merge of many files vs one file (time)", "<= 1.20x", _x(ratio_), met)


def _quix_row(
    quix: Mapping[str, Any] | None, ratio_: float | None, mode: str
) -> tuple[str, str, str, str]:
    """A table row for one Quix Streams run: its rate, and whether its outputs agreed."""
    quix = quix or {}
    agreement = quix.get("agreement") or {}
    checked = sum(
        int((agreement.get(k) or {}).get("compared", 0)) for k in ("samples", "redis_latest")
    )
    ok = agreement.get("ok")
    verdict = None if ok is None else "agree with ours" if ok else "**differ from ours**"
    agreed = f"; outputs {verdict} ({checked:,} checked)" if verdict else ""
    windows = "sliding, `.current()`" if mode == "sliding" else "hopping 1 min, `.final()`"
    name = (
        f"Quix Streams {quix.get('quixstreams', '')} ({windows}; "
        f"{_num(quix.get('bars'), '')} bars, its Redis sink{agreed})"
    )
    return (
        name,
        _num(quix.get("bars_per_second"), " bars/s", 1),
        "our processor / Quix",
        _x(ratio_),
    )


def _num(value: float | None, unit: str, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def _whole_ms(value: float | None) -> str:
    """ProducerPerformance reports whole milliseconds: 0 means under one."""
    return "< 1 ms" if value == 0 else _num(value, " ms")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}x"


def _met(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "n/a"}[met]


def _per_bar_us(rate: float | None) -> float | None:
    return 1e6 / rate if rate else None


def cpu_per_bar(phase: Mapping[str, Any] | None) -> tuple[float | None, ...]:
    """CPU microseconds per bar of a processor run: its Python thread (which runs the
    compiled core too), librdkafka's threads (``rdk:*``: compression, the broker
    connections), then the broker and Redis over the same phase. None where unknown."""
    if not phase or not phase.get("bars"):
        return (None, None, None, None)
    bars = phase["bars"]
    threads: Mapping[str, float] = phase.get("thread_cpu_seconds") or {}
    rdk = sum(v for name, v in threads.items() if name.startswith("rdk:"))
    ours = sum(v for name, v in threads.items() if not name.startswith("rdk:"))
    servers: Mapping[str, float] = (phase.get("phase") or {}).get("cpu_seconds") or {}

    def us(seconds: float | None) -> float | None:
        return None if seconds is None else seconds * 1e6 / bars

    return (
        us(ours) if threads else None,
        us(rdk) if threads else None,
        us(servers.get("kafka")),
        us(servers.get("redis")),
    )


def results_table(doc: Mapping[str, Any]) -> str:
    """The markdown table of one results document (what ``bench/README.md`` shows)."""
    r = doc["results"]

    def g(*path: str) -> Any:
        node: Any = r
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        return node

    rows: list[tuple[str, str, str, str]] = [
        (
            "Broker limit: ProducerPerformance "
            f"({_num(g('producer_performance', 'record_size'), ' B')} records, lz4, acks=all)",
            _num(g("producer_performance", "records_per_second"), " rec/s"),
            "-",
            "-",
        ),
        (
            "Broker limit: ProducerPerformance at a metrics record's size "
            f"({_num(g('metrics_producer_performance', 'record_size'), ' B')}, the same settings)",
            _num(g("metrics_producer_performance", "records_per_second"), " rec/s"),
            "-",
            "-",
        ),
        (
            "Broker limit: ConsumerPerformance (our bars topic, excl. group join)",
            _num(g("consumer_performance", "fetch_records_per_second"), " rec/s"),
            "-",
            "-",
        ),
        (
            "Producer, throughput profile, `--speed max`",
            _num(g("producer", "throughput", "rows_per_second"), " rows/s"),
            "ProducerPerformance",
            _x(g("ratios", "producer_over_producer_performance")),
        ),
        (
            "Producer, latency profile, `--speed max`",
            _num(g("producer", "latency", "rows_per_second"), " rows/s"),
            "ProducerPerformance",
            _x(g("ratios", "producer_latency_over_producer_performance")),
        ),
        (
            "Processor alone (topic pre-filled)",
            _num(g("processor_alone", "bars_per_second"), " bars/s"),
            "ConsumerPerformance",
            _x(g("ratios", "processor_over_consumer_performance")),
        ),
        (
            "... the same processor (a metrics record out per bar in)",
            _num(g("processor_alone", "bars_per_second"), " bars/s"),
            "ProducerPerformance at a metrics record's size",
            _x(g("ratios", "processor_over_metrics_producer_performance")),
        ),
        (
            "... its CPU per bar: Python thread (with the compiled core) / librdkafka's "
            "threads / broker / Redis",
            " / ".join(_num(v, " us", 1) for v in cpu_per_bar(g("processor_alone"))),
            "wall time per bar",
            _num(_per_bar_us(g("processor_alone", "bars_per_second")), " us", 1),
        ),
        (
            "End to end (producer start -> processor caught up)",
            _num(g("end_to_end", "bars_per_second"), " bars/s"),
            "processor alone",
            _x(g("ratios", "end_to_end_over_processor_alone")),
        ),
        (
            "... the same end to end",
            _num(g("end_to_end", "bars_per_second"), " bars/s"),
            "ProducerPerformance",
            _x(g("ratios", "end_to_end_over_producer_performance")),
        ),
        (
            f"Event -> Redis latency at {_num(g('latency', 'rate'), '')} bars/s "
            "(latency profile), p50 / p99",
            f"{_num(g('latency', 'event_to_redis', 'p50_ms'), ' ms', 1)} / "
            f"{_num(g('latency', 'event_to_redis', 'p99_ms'), ' ms', 1)}",
            "broker send -> ack at the same rate (ProducerPerformance), p50 / p99",
            f"{_whole_ms(g('broker_latency', 'latency_p50_ms'))} / "
            f"{_whole_ms(g('broker_latency', 'latency_p99_ms'))}",
        ),
        (
            "... of which queued before its batch started, p50 / p99",
            f"{_num(g('latency', 'queued_before_batch_start', 'p50_ms'), ' ms', 1)} / "
            f"{_num(g('latency', 'queued_before_batch_start', 'p99_ms'), ' ms', 1)}",
            "processor batches in that run: mean size / mean time",
            f"{_num(g('latency', 'processor', 'batches', 'mean_bars'), ' bars')} / "
            f"{_num(g('latency', 'processor', 'batches', 'mean_processing_ms'), ' ms')}",
        ),
        *(
            [
                (
                    f"Event -> Redis latency at {_num(g('latency_floor', 'rate'), '')} bars/s "
                    "(the brief's rate), p50 / p99",
                    f"{_num(g('latency_floor', 'event_to_redis', 'p50_ms'), ' ms', 1)} / "
                    f"{_num(g('latency_floor', 'event_to_redis', 'p99_ms'), ' ms', 1)}",
                    "broker send -> ack at the same rate, p50 / p99",
                    f"{_whole_ms(g('broker_latency_floor', 'latency_p50_ms'))} / "
                    f"{_whole_ms(g('broker_latency_floor', 'latency_p99_ms'))}",
                )
            ]
            if g("latency_floor") is not None
            else []
        ),
        (
            "Processor peak RSS (VmHWM) / growth after 25 % of the bars",
            f"{_num(g('processor_alone', 'rss', 'vm_hwm_mb'), ' MB', 1)} / "
            f"{_num(g('processor_alone', 'rss', 'flatness', 'growth_after_quarter_mb'), ' MB', 1)}",
            "RSS before any data (imports, connections)",
            _num(g("processor_alone", "rss", "before_data_mb"), " MB", 1),
        ),
        (
            f"Naive pandas per-message processor ({_num(g('naive', 'bars'), '')} bars)",
            _num(g("naive", "bars_per_second"), " bars/s"),
            "our processor / naive",
            _x(g("ratios", "processor_over_naive")),
        ),
        *(_quix_row(g("quix", mode), g("ratios", f"processor_over_quix_{mode}"), mode)
          for mode in ("sliding", "hopping")),
        *(
            (
                f"Reading a {label} file (every row checked, no Kafka)",
                _num(g("reading", key, "rows_per_second"), " rows/s"),
                f"{baseline} of the same rows (whole file, no checks)",
                _x(g("ratios", ratio)),
            )
            for label, key, baseline, ratio in (
                ("CSV", "csv", "pyarrow.csv.read_csv", "csv_reader_over_pyarrow_csv"),
                ("Parquet", "parquet", "pyarrow.parquet.read_table",
                 "parquet_reader_over_pyarrow_parquet"),
            )
        ),
        (
            f"Loader into DuckDB ({_num(g('loader', 'bars'), '')} bars and their metrics rows, "
            "from the topics)",
            _num(g("loader", "rows_per_second"), " rows/s"),
            "DuckDB's own ingest of the same rows (Arrow table, INSERT ... SELECT)",
            f"{_num(g('loader', 'duckdb_arrow_ingest', 'rows_per_s'), ' rows/s')}: "
            f"{_x(g('ratios', 'loader_over_duckdb_arrow_ingest'))}",
        ),
        (
            f"Reading the same rows as {_num(g('reading', 'merge', 'files'), '')} CSV files "
            "merged by event time",
            _num(g("reading", "merge", "rows_per_second"), " rows/s"),
            "our CSV reader of the one file; time ratio",
            _x(g("ratios", "merge_over_one_file")),
        ),
    ]  # fmt: skip
    out = [
        "| Measurement | Result | Baseline (same run) | Ratio / baseline figure |",
        "|---|---:|---|---:|",
    ]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out += ["", "| Target | Goal | Measured | Verdict |", "|---|---|---:|---|"]
    for t in [*evaluate_targets(r), quix_target(r), merge_target(r)]:
        out.append(f"| {t.name} | {t.goal} | {t.value} | {_met(t.met)} |")
    return "\n".join(out) + "\n"


def results_section(doc: Mapping[str, Any], results_file: str) -> str:
    """The README's generated section: what ran where, then the table."""
    m = doc["machine"]
    head = (
        f"Latest run: **{doc['date']}**, mode `{doc['mode']}`, {doc['dataset']['rows']:,} "
        f"generated bars; {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{m['mem_total_mb']:,} MB RAM; load average at start {m['loadavg_start'][0]:.2f}. "
        f"All numbers: [`{results_file}`]({results_file}).\n\n"
    )
    section = head + results_table(doc)
    alone = doc["results"].get("processor_alone") or {}
    if alone.get("sampled_profile"):
        section += "\n" + sample_table(
            alone["sampled_profile"], alone.get("gc_seconds"), float(alone.get("busy_seconds") or 0)
        )
    profile = doc["results"].get("profile") or {}
    if profile.get("breakdown"):
        section += "\n" + profile_table(profile["breakdown"], int(profile.get("bars", 0)))
    return section


def replace_section(text: str, section: str) -> str:
    """``text`` with what lies between the results markers replaced by ``section``."""
    start = text.find(README_START)
    end = text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(
            f"the README has no '{README_START}' ... '{README_END}' markers "
            "to put the results between"
        )
    return text[: start + len(README_START)] + "\n" + section + text[end:]


# -- cProfile --------------------------------------------------------------------

ProfileKey = tuple[str, int, str]
"""``(file, line, function)``, how :mod:`pstats` names a function."""
ProfileRow = tuple[int, int, float, float, Mapping[ProfileKey, Any]]
"""``(primitive calls, calls, own time, cumulative time, callers)`` as in ``Stats.stats``."""

ProfilePart = tuple[str, tuple[tuple[str, str], ...]]
"""``(label, ((file suffix or "~" for C functions, function name or substring), ...))``."""

_PROC = "hftpipe_workers/processor.py"
PROFILE_PARTS: Final[tuple[ProfilePart, ...]] = (
    ("processor loop total (Processor.run)", ((_PROC, "run"),)),
    ("Kafka consume() (waits for fetches, builds messages)", (("~", "'consume' of"),)),
    (
        "decode bars (codec.decode_bars_lenient: compiled, or orjson + validation)",
        (
            ("hftpipe_workers/codec.py", "decode_bar"),
            ("hftpipe_workers/codec.py", "decode_bars"),
            # The processor's call (bad records set aside, not raised).
            ("hftpipe_workers/codec.py", "decode_bars_lenient"),
        ),
    ),
    (
        "rolling metrics (MetricsEngine.update_columns; compiled: and messages, update_encoded)",
        (
            ("hftpipe_workers/metrics.py", "update"),
            ("hftpipe_workers/metrics.py", "update_columns"),
            ("hftpipe_workers/metrics.py", "update_encoded"),
        ),
    ),
    (
        "metrics messages (codec.encode_metrics_columns)",
        (
            (_PROC, "metrics_document"),
            ("hftpipe_workers/codec.py", "encode_bar_metrics"),
            ("hftpipe_workers/codec.py", "encode_metrics_columns"),
        ),
    ),
    (
        "Redis transaction (_transaction, _commit_to_redis: build, send, read the previous reply)",
        ((_PROC, "_commit_to_redis"), (_PROC, "_transaction")),
    ),
    (
        "... of which engine snapshot (MetricsEngine.snapshot)",
        (("hftpipe_workers/metrics.py", "snapshot"),),
    ),
    (
        "Redis replies, all (redis-py read_response: waiting for Redis + parsing)",
        (("redis/client.py", "execute"), ("redis/connection.py", "read_response")),
    ),
    ("publish metrics topic (_publish)", ((_PROC, "_publish"),)),
    ("wait for the broker's acks of them (_flush_metrics)", ((_PROC, "_flush_metrics"),)),
    (
        "latency histogram observe (prometheus_client)",
        (("prometheus_client/metrics.py", "observe"), (_PROC, "_observe_many")),
    ),
)
"""The parts of the processor's time the report names, matched on cProfile's rows; a part
lists every name its code has had, so the report survives the processor's refactorings."""


def _matches(key: ProfileKey, file_suffix: str, function: str) -> bool:
    file, _, name = key
    if file_suffix == "~":
        return file == "~" and function in name
    return file.endswith(file_suffix) and name == function


def profile_breakdown(
    rows: Mapping[ProfileKey, ProfileRow], parts: Sequence[ProfilePart] = PROFILE_PARTS
) -> list[dict[str, Any]]:
    """Cumulative seconds of each named part and its share of the first part (the total).

    A part whose functions do not appear (renamed, removed) reports ``seconds`` None.
    Cumulative times of a function that calls itself would count twice; none of the
    parts named here recurse.
    """
    seconds: list[tuple[str, float | None]] = []
    for label, matchers in parts:
        found = [
            row[3] for key, row in rows.items() if any(_matches(key, f, n) for f, n in matchers)
        ]
        seconds.append((label, sum(found) if found else None))
    whole = seconds[0][1] if seconds else None
    return [
        {
            "part": label,
            "seconds": None if s is None else round(s, 3),
            "share": round(s / whole, 4) if s is not None and whole else None,
        }
        for label, s in seconds
    ]


def top_functions(rows: Mapping[ProfileKey, ProfileRow], n: int = 15) -> list[dict[str, Any]]:
    """The ``n`` functions with the most own time (excluding what they call)."""
    ranked = sorted(rows.items(), key=lambda item: item[1][2], reverse=True)[:n]
    return [
        {
            "function": f"{_short(file)}:{line}({name})" if file != "~" else name,
            "calls": row[1],
            "own_seconds": round(row[2], 3),
            "cumulative_seconds": round(row[3], 3),
        }
        for (file, line, name), row in ranked
    ]


def _short(file: str) -> str:
    for marker in ("site-packages/", "/src/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


SAMPLE_RULES: Final[tuple[tuple[str, str, str], ...]] = (
    # (file path substring, function name substring or "", part), checked innermost frame first
    # The probe's frame is where control lands right after the processor's _process
    # returns: freeing the batch's objects, and the GC collections that run there, show up
    # here (seen: ~13 % with GC on, ~4 % with GC off); the probe's own timing is tiny.
    ("bench/probe.py", "", "after each batch: freeing it, GC landing there, bench timing"),
    ("hftpipe_workers/metrics.py", "snapshot", "Redis transaction (building it)"),
    ("hftpipe_workers/metrics.py", "_b64", "Redis transaction (building it)"),
    # The compiled engine's one call per symbol and slice: its windows and its messages.
    (
        "hftpipe_workers/metrics.py",
        "update_encoded",
        "rolling metrics and metrics messages (compiled core)",
    ),
    ("hftpipe_workers/metrics.py", "", "rolling metrics (MetricsEngine.update_columns)"),
    ("hftpipe_workers/codec.py", "encode", "encode metrics messages (orjson)"),
    ("hftpipe_workers/codec.py", "", "decode bars (orjson + validation)"),
    ("hftpipe_workers/bars.py", "", "decode bars (orjson + validation)"),
    ("prometheus_client/", "", "Prometheus metrics (labels, observe)"),
    ("hftpipe_workers/processor.py", "_observe_many", "Prometheus metrics (labels, observe)"),
    ("/redis/", "", "Redis client (redis-py: send, wait for and parse replies)"),
    ("hftpipe_workers/processor.py", "latest", "Redis transaction (building it)"),
    ("hftpipe_workers/processor.py", "_command", "Redis transaction (building it)"),
    ("hftpipe_workers/processor.py", "_commit_to_redis", "Redis transaction (building it)"),
    ("hftpipe_workers/processor.py", "_transaction", "Redis transaction (building it)"),
    (
        "hftpipe_workers/processor.py",
        "_flush_metrics",
        "publish: waiting for the broker's acks of the metrics records",
    ),
    ("hftpipe_workers/processor.py", "_confirm_commit", "after a commit: latencies, Kafka commit"),
    ("hftpipe_workers/processor.py", "_publish", "publish to the metrics topic"),
    ("hftpipe_workers/processor.py", "_process", "_process loop (per-message accessors, lists)"),
    (
        "hftpipe_workers/processor.py",
        "_rows_by_symbol",
        "_process loop (per-message accessors, lists)",
    ),
    ("hftpipe_workers/processor.py", "_pick", "_process loop (per-message accessors, lists)"),
    ("hftpipe_workers/processor.py", "_next_batch", "consume() and the poll loop"),
    ("hftpipe_workers/processor.py", "run", "consume() and the poll loop"),
    ("/confluent_kafka/", "", "consume() and the poll loop"),
)
"""How a sampled stack is attributed to a part: the innermost frame that matches a rule."""


def classify_stack(
    stack: Sequence[tuple[str, str]], rules: Sequence[tuple[str, str, str]] = SAMPLE_RULES
) -> str:
    """The part a sampled stack (innermost frame first, ``(file, function)``) belongs to."""
    for file, function in stack:
        normalized = file.replace("\\", "/")
        for path_part, name_part, part in rules:
            if path_part in normalized and name_part in function:
                return part
    return "other"


def sample_table(samples: Mapping[str, int], gc_seconds: float | None, busy: float) -> str:
    """Markdown table of sampled parts (largest first), and the share of cyclic GC."""
    total = sum(samples.values())
    out = [
        f"Where the processor's time goes, sampled ({total:,} stack samples of the processor "
        "alone, phase 5; a C call counts for the Python function that made it):",
        "",
        "| Part | Share |",
        "|---|---:|",
    ]
    for part, count in sorted(samples.items(), key=lambda kv: -kv[1]):
        out.append(f"| {part} | {count / total:.1%} |" if total else f"| {part} | n/a |")
    if gc_seconds is not None and busy > 0:
        out.append(
            f"| *(spread over the parts above: Python's cyclic GC, timed exactly)* "
            f"| *{gc_seconds / busy:.1%}* |"
        )
    return "\n".join(out) + "\n"


def profile_table(breakdown: Sequence[Mapping[str, Any]], bars: int) -> str:
    """Markdown table of :func:`profile_breakdown` output."""
    out = [
        f"Where the processor's time goes (cProfile, {bars:,} bars; cProfile slows Python "
        "code down, so read the shares, not the seconds):",
        "",
        "| Part | Seconds | Share |",
        "|---|---:|---:|",
    ]
    for row in breakdown:
        if row["seconds"] is None:
            out.append(f"| {row['part']} | not called | - |")
            continue
        share = "n/a" if row["share"] is None else f"{row['share']:.1%}"
        out.append(f"| {row['part']} | {row['seconds']:.2f} | {share} |")
    return "\n".join(out) + "\n"
