"""Our processor, unchanged, with stopwatches: ``python -m bench.probe`` (started by the suite).

It builds :class:`hftpipe_workers.processor.Processor` exactly as ``hftpipe
process`` does (same settings classes, same defaults, metrics published to the
metrics topic) and runs it in its own process, so its memory is its own. A thin
subclass adds timing only:

- the wall-clock time the first batch starts and the last one ends, so the rate
  excludes start-up, the consumer group's join and the idle wait with which
  ``--until-caught-up`` decides it is done;
- with ``--latency``, for every bar, Redis-commit time minus the bar's Kafka
  record timestamp (the producer's send time), taken the moment the reply of
  the MULTI/EXEC that wrote it is read: the definition of
  ``hftpipe_event_to_redis_seconds``, but every value kept, so p50/p99 are
  exact instead of bucket bounds;
- per batch: its size, the time spent in ``consume()`` before it, and the time
  to process it; with ``--latency`` also, per bar, how long it waited before its
  batch started (so a latency splits into queueing and processing);
- the CPU seconds of each of its threads from the first batch to the last (the
  Python thread, which runs the compiled core too, and librdkafka's: compression,
  the broker connections), so the processor's CPU splits into ours and the client's;
- its own RSS every second (``/proc/self/status``), RSS once the partitions are
  assigned (imports and connections, before any data) and VmHWM at the end;
- the time spent in Python's cyclic garbage collector and, with ``--sample-ms``,
  a sampled profile (which part of the code the processor is in, every N ms).

It prints one JSON line ``{"event": "assigned"}`` once it owns the bars
partitions (the suite starts the producer only then) and writes the results to
``--result``. The subclass hooks ``_on_assign``, ``_process`` (a consumed batch),
``_process_slice`` (the part of it one Redis transaction commits) and
``_confirm_commit`` (that transaction's reply has been read: its bars are in
Redis): if those are renamed, this fails at once rather than measuring
something else.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from hftpipe_workers.processor import Processor, ProcessorReport, _Partition
from hftpipe_workers.settings import KafkaProfile, KafkaSettings, RedisSettings

from .stats import batch_summary, classify_stack, latency_summary


def proc_status_kb(field: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM...), None if absent."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def parse_task_stat(stat: str) -> tuple[str, int]:
    """A thread's name and CPU ticks (user + system) from its ``/proc/.../stat`` line.

    The name is in parentheses and may hold spaces or parentheses itself: the
    fields after it are counted from its last ``)``."""
    head, _, rest = stat.rpartition(")")
    name = head.partition("(")[2]
    fields = rest.split()
    # utime and stime are fields 14 and 15 of stat(5); ``rest`` starts at field 3.
    return name, int(fields[11]) + int(fields[12])


def thread_cpu_seconds(pid: int | str = "self") -> dict[str, float]:
    """CPU seconds per thread name of a process, threads of the same name summed
    (librdkafka names its threads ``rdk:main``, ``rdk:broker1``...; the Python thread
    has the program's name). Threads that have ended are not counted."""
    ticks: Counter[str] = Counter()
    hz = os.sysconf("SC_CLK_TCK")
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                name, used = parse_task_stat(f.read())
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        ticks[name] += used
    return {name: round(n / hz, 2) for name, n in ticks.most_common()}


class StackSampler(threading.Thread):
    """Every ``interval`` seconds, which part of the code the processor's thread is in.

    A statistical profile: unlike cProfile it does not slow every Python call down,
    so its shares are those of the real run (at 10 ms, a few hundred microseconds of
    overhead per second).
    """

    def __init__(self, target: int, interval: float, start_after: threading.Event) -> None:
        super().__init__(name="stack-sampler", daemon=True)
        self.target, self.interval, self.start_after = target, interval, start_after
        self.counts: Counter[str] = Counter()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            if not self.start_after.is_set():
                continue
            frame = sys._current_frames().get(self.target)
            stack = []
            while frame is not None:
                stack.append((frame.f_code.co_filename, frame.f_code.co_name))
                frame = frame.f_back
            self.counts[classify_stack(stack)] += 1


class GcTimer:
    """Total time spent in Python's cyclic garbage collector (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections += 1


class TimedProcessor(Processor):
    """The processor plus stopwatches; see the module docstring."""

    def __init__(
        self,
        *,
        expect_bars: int,
        collect_latency: bool,
        warmup_seconds: float,
        progress_every: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.expect_bars = expect_bars
        self.collect_latency = collect_latency
        self.warmup_seconds = warmup_seconds
        self.progress_every = progress_every
        self.first_start: float | None = None
        self.last_end = 0.0
        self.bars_done = 0
        self.latencies = array("d")
        self.queued = array("d")  # per bar: its send time -> the start of its batch
        self.batches: list[tuple[int, float, float]] = []  # (bars, wait before, processing)
        self.rss_at_assign: int | None = None
        self.first_batch = threading.Event()
        self._batch_start = 0.0
        self.rss: list[tuple[int, int]] = []
        self._slice_started: dict[int, float] = {}  # per slice in flight: its batch's start
        self._first_send_ms: int | None = None
        self._announced = False
        self._next_sample = 0.0
        self._next_progress = 0.0
        self.threads_at_start: dict[str, float] = {}
        self.threads_at_end: dict[str, float] | None = None

    def thread_cpu_seconds(self) -> dict[str, float]:
        """CPU seconds per thread name from the first batch to the last (start-up,
        imports and the group join left out, as from the rate)."""
        end = self.threads_at_end or thread_cpu_seconds()
        start = self.threads_at_start
        return {name: round(cpu - start.get(name, 0.0), 2) for name, cpu in end.items()}

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_assign(consumer, partitions)
        if partitions and not self._announced:
            self._announced = True
            self.rss_at_assign = proc_status_kb("VmRSS")
            print(json.dumps({"event": "assigned", "partitions": len(partitions)}), flush=True)

    def _process(
        self,
        partition: int,
        msgs: list[Message],
        producer: Producer | None,
        report: ProcessorReport,
    ) -> None:
        now = time.time()
        if self.first_start is None:
            self.first_start = now
            self.threads_at_start = thread_cpu_seconds()
            self._next_progress = now + self.progress_every
            self.first_batch.set()
        waited = now - self.last_end if self.last_end else 0.0
        self._batch_start = now
        super()._process(partition, msgs, producer, report)
        self.last_end = time.time()
        self.batches.append((len(msgs), waited, self.last_end - now))
        self.bars_done = report.bars_in
        if self.last_end >= self._next_sample:
            self._next_sample = self.last_end + 1.0
            rss = proc_status_kb("VmRSS")
            if rss is not None:
                self.rss.append((report.bars_in, rss))
        if self.last_end >= self._next_progress:
            self._next_progress = self.last_end + self.progress_every
            elapsed = max(self.last_end - self.first_start, 1e-9)
            rss_mb = self.rss[-1][1] / 1024 if self.rss else float("nan")
            print(
                f"[process] {report.bars_in:,}/{self.expect_bars:,} bars, "
                f"{report.bars_in / elapsed:,.0f} bars/s, RSS {rss_mb:,.0f} MB",
                file=sys.stderr,
                flush=True,
            )
        if report.bars_in >= self.expect_bars:
            # Now, while librdkafka's threads live: they end with the consumer and
            # producer, and an ended thread's CPU is no longer listed.
            self.threads_at_end = thread_cpu_seconds()
            self.stop.set()

    def _process_slice(
        self,
        partition: int,
        part: _Partition,
        msgs: list[Message],
        producer: Producer | None,
        report: ProcessorReport,
    ) -> None:
        self._slice_started[id(msgs)] = self._batch_start
        super()._process_slice(partition, part, msgs, producer, report)

    def _confirm_commit(self) -> None:
        """The moment a transaction's reply is read: its bars are committed."""
        pending = self._pending
        super()._confirm_commit()
        if pending is None:
            return
        committed = time.time()
        self.last_end = max(self.last_end, committed)
        batch_start = self._slice_started.pop(id(pending.msgs), self._batch_start)
        if not self.collect_latency:
            return
        if self._first_send_ms is None:
            self._first_send_ms = pending.msgs[0].timestamp()[1]
        warmup_end_ms = self._first_send_ms + self.warmup_seconds * 1000
        for msg in pending.msgs:
            sent_ms = msg.timestamp()[1]
            if sent_ms >= warmup_end_ms:
                self.latencies.append(committed - sent_ms / 1000)
                self.queued.append(batch_start - sent_ms / 1000)


def main(argv: list[str] | None = None) -> int:
    """Run the processor on one job until ``--expect-bars`` bars are processed."""
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__)
    parser.add_argument("--job", required=True)
    parser.add_argument("--expect-bars", type=int, required=True)
    parser.add_argument("--profile", choices=["throughput", "latency"], default="throughput")
    parser.add_argument("--windows", default="5m,15m,1h,1d")
    parser.add_argument("--batch-max", type=int, default=20_000)
    parser.add_argument("--latency", action="store_true", help="keep every bar's latency")
    parser.add_argument("--warmup-seconds", type=float, default=1.0)
    parser.add_argument("--idle-timeout", type=float, default=60.0)
    parser.add_argument("--cprofile", type=Path, help="write cProfile stats here")
    parser.add_argument(
        "--sample-ms", type=float, default=0, help="sample the stack every N ms (0: off)"
    )
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)

    profile: KafkaProfile = "latency" if args.profile == "latency" else "throughput"
    processor = TimedProcessor(
        expect_bars=args.expect_bars,
        collect_latency=args.latency,
        warmup_seconds=args.warmup_seconds,
        job=args.job,
        kafka=KafkaSettings(profile=profile),
        redis_settings=RedisSettings(),
        windows=[w.strip() for w in args.windows.split(",") if w.strip()],
        batch_max=args.batch_max,
    )
    processor.install_signal_handlers()
    processor.redis.ping()
    processor.ensure_metrics_topic()
    sampler = None
    if args.sample_ms > 0:
        # From the first batch on, not during the consumer's start-up.
        sampler = StackSampler(
            threading.get_ident(), args.sample_ms / 1000, start_after=processor.first_batch
        )
        sampler.start()
    gc_timer = GcTimer()
    started = time.time()
    if args.cprofile:
        import cProfile  # noqa: PLC0415 - only the profiling run pays for it

        profiler = cProfile.Profile()
        report = profiler.runcall(
            processor.run, until_caught_up=True, idle_timeout=args.idle_timeout
        )
        profiler.dump_stats(args.cprofile)
    else:
        report = processor.run(until_caught_up=True, idle_timeout=args.idle_timeout)
    ended = time.time()
    if sampler is not None:
        sampler.done.set()
    busy = (processor.last_end - processor.first_start) if processor.first_start else 0.0
    result: dict[str, Any] = {
        "bars_in": report.bars_in,
        "bars_out": report.bars_out,
        "ignored": report.ignored,
        "started": started,
        "first_batch_start": processor.first_start,
        "last_batch_end": processor.last_end,
        "busy_seconds": busy,
        "bars_per_second": report.bars_in / busy if busy > 0 else None,
        "run_seconds": report.seconds,
        "wall_seconds": ended - started,
        "cpu_seconds": round(time.process_time(), 2),
        "thread_cpu_seconds": processor.thread_cpu_seconds(),
        "vm_hwm_kb": proc_status_kb("VmHWM"),
        "rss_at_assign_kb": processor.rss_at_assign,
        "rss_samples": processor.rss,
        "batches": batch_summary(processor.batches),
        "gc_seconds": round(gc_timer.seconds, 3),
        "gc_collections": gc_timer.collections,
    }
    if sampler is not None:
        result["sampled_profile"] = dict(sampler.counts)
    if args.latency:
        result["latency"] = latency_summary(processor.latencies)
        result["queued_before_batch"] = latency_summary(processor.queued)
    args.result.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
