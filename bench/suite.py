"""The benchmark suite behind ``make bench``: every figure and its baseline, one broker, one run.

Phases, in order, against one ephemeral stack (a real Kafka broker and Redis on
loopback, removed afterwards):

1. broker limit, produce: Kafka's own ``ProducerPerformance``;
2. our producer, ``--speed max``, throughput profile (fills the topic the next
   phases read);
3. our producer, latency profile;
4. broker limit, consume: Kafka's own ``ConsumerPerformance`` on our bars topic;
5. our processor alone on that pre-filled topic (rate, RSS);
6. the same processor under cProfile for a slice (where the time goes);
7. the naive per-message pandas processor on the first bars of that topic;
8. Quix Streams, the same job with its sliding windows, on the first bars of that topic;
9. the same with its hopping windows;
10. end to end: the processor waits, the producer starts, stop when caught up;
11. broker limit, latency: ``ProducerPerformance`` paced at that rate;
12. event-to-Redis latency at a paced rate;
13. reading speed: our CSV and Parquet readers against pyarrow's own of the same
    rows, and the same rows as 4 files merged by event time against the one file (no
    broker; :mod:`bench.reading`);
14. the loader into DuckDB against DuckDB's own Arrow ingest of the same rows
    (:mod:`bench.loader`).

See ``bench/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import pstats
import resource
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Final

from . import datagen, stats

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"
README = BENCH_DIR / "README.md"
PARTITIONS = 3
"""Partitions of every bars topic, the producer's default (one symbol uses one of them)."""
QUIX_WINDOWS = ("5m", "15m", "1h", "1d")
"""The processor's windows in the bench (``bench.probe``'s default; ``session`` comes too)."""


@dataclass(frozen=True)
class Config:
    """What one run measures and how much of it."""

    mode: str
    rows: int
    naive_bars: int
    quix_bars: int
    profile_bars: int
    latency_rate: int | None
    """Bars/s of the paced latency run; None: the higher of 10,000 and 10 % of
    ConsumerPerformance's rate in the same run (issue 12), set once that is measured."""
    latency_seconds: int
    loader_bars: int
    write_readme: bool
    results_dir: Path
    render: Path | None = None

    @property
    def latency_bars(self) -> int:
        """Bars the paced latency run sends."""
        return self.rate * self.latency_seconds

    @property
    def rate(self) -> int:
        """The paced rate, once known."""
        if self.latency_rate is None:
            raise ValueError("the latency rate is set after ConsumerPerformance has run")
        return self.latency_rate


LATENCY_FLOOR: Final = 10_000
"""The paced latency run's least rate, bars/s."""
LATENCY_SHARE: Final = 0.1
"""... or this share of ConsumerPerformance's rate, when higher."""


def paced_rate(consumer_performance: Mapping[str, Any] | None) -> int:
    """The latency run's rate: 10,000 bars/s or 10 % of ConsumerPerformance's fetch rate,
    whichever is higher (rounded down to a thousand)."""
    fetch = (consumer_performance or {}).get("fetch_records_per_second")
    share = int(float(fetch) * LATENCY_SHARE) // 1000 * 1000 if fetch else 0
    return max(LATENCY_FLOOR, share)


def parse_args(argv: list[str] | None) -> Config:
    """The command line of ``bench/run.py``."""
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="hftpipe benchmark: producer, processor, end to end, latency, memory, "
        "each against a baseline measured in the same run (see bench/README.md).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="500k bars, shorter latency and baseline runs (a few minutes); "
        "results go to <date>-quick.json and the README is left alone",
    )
    parser.add_argument("--rows", type=int, help="generated minute bars (default 4,000,000)")
    parser.add_argument("--naive-bars", type=int, help="bars for the pandas baseline")
    parser.add_argument(
        "--quix-bars", type=int, help="bars for each Quix Streams baseline (0: skip them)"
    )
    parser.add_argument("--profile-bars", type=int, help="bars for the cProfile run")
    parser.add_argument(
        "--latency-rate",
        type=int,
        help="bars/s of the paced latency run (default: 10,000 or 10 %% of "
        "ConsumerPerformance's rate in the same run, whichever is higher)",
    )
    parser.add_argument("--latency-seconds", type=int, help="length of the paced run")
    parser.add_argument(
        "--loader-bars", type=int, help="bars for the loader vs DuckDB ingest phase (0: skip it)"
    )
    parser.add_argument(
        "--no-readme", action="store_true", help="do not rewrite bench/README.md's table"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: rewrite bench/README.md's table from an existing results file",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    return Config(
        mode="quick" if quick else "full",
        rows=args.rows or (500_000 if quick else 4_000_000),
        naive_bars=args.naive_bars or (5_000 if quick else 20_000),
        quix_bars=(3_000 if quick else 6_000) if args.quix_bars is None else args.quix_bars,
        profile_bars=args.profile_bars or (100_000 if quick else 300_000),
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds or (10 if quick else 25),
        loader_bars=(50_000 if quick else 200_000)
        if args.loader_bars is None
        else args.loader_bars,
        write_readme=not quick and not args.no_readme,
        results_dir=args.results_dir,
        render=args.render,
    )


# -- machine ---------------------------------------------------------------------------


def log(message: str) -> None:
    """A progress line (stdout, flushed: ``make`` shows it as it happens)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class CpuMeter:
    """Share of the machine's CPU time spent busy (by anyone) between start and stop."""

    def __init__(self) -> None:
        self._busy, self._total = _cpu_times()

    def busy(self) -> float:
        """Busy share since construction, 0..1."""
        busy, total = _cpu_times()
        return (busy - self._busy) / max(1, total - self._total)


def _proc_ticks() -> dict[int, tuple[str, int]]:
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            raw = (entry / "stat").read_text()
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            rest = raw[raw.rindex(")") + 2 :].split()
            ticks[int(entry.name)] = (name, int(rest[11]) + int(rest[12]))
    return ticks


def _pid_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


class CpuByProcess:
    """CPU seconds spent during a phase by the broker, Redis, the bench's own children
    (producers, processors, JVM tools: counted once waited for, so every child must have
    exited when :meth:`seconds` is called), the bench itself (the naive baseline runs in it)
    and everything else on the machine."""

    def __init__(self, servers: dict[str, int]) -> None:
        self.servers = servers
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = resource.getrusage(resource.RUSAGE_SELF)
        now = {
            "bench_children": children.ru_utime + children.ru_stime,
            "bench_driver": own.ru_utime + own.ru_stime,
            "machine": _cpu_times()[0] / os.sysconf("SC_CLK_TCK"),
        }
        for name, pid in self.servers.items():
            now[name] = _pid_cpu_seconds(pid) or 0.0
        return now

    def seconds(self) -> dict[str, float]:
        """CPU seconds per process group since construction; ``other`` is what the rest of
        the machine used (other work running at the same time)."""
        end = self._now()
        spent = {k: end[k] - self._start.get(k, 0.0) for k in end}
        machine = spent.pop("machine")
        spent["other"] = max(0.0, machine - sum(spent.values()))
        return {k: round(v, 1) for k, v in spent.items()}


def busy_processes(seconds: float = 2.0, threshold: float = 0.1) -> list[dict[str, Any]]:
    """Processes using more than ``threshold`` of a CPU over ``seconds`` (other work running)."""
    hz = os.sysconf("SC_CLK_TCK")
    before = _proc_ticks()
    time.sleep(seconds)
    after = _proc_ticks()
    busy = []
    for pid, (name, ticks) in after.items():
        if pid in before and pid != os.getpid():
            share = (ticks - before[pid][1]) / hz / seconds
            if share >= threshold:
                busy.append({"pid": pid, "name": name, "cpu": round(share, 2)})
    return sorted(busy, key=lambda p: -float(p["cpu"]))


def _meminfo_mb(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    """The checked-out commit, read from .git (no git command: the bench must not need one)."""
    with contextlib.suppress(OSError):
        head = (REPO / ".git" / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        loose = REPO / ".git" / ref
        if loose.exists():
            return loose.read_text().strip()
        for line in (REPO / ".git" / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return None


def source_digest(root: Path = REPO / "workers" / "src") -> str:
    """sha256 over the workers' Python sources: names the code measured even when the
    working tree differs from the commit."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def machine_info() -> dict[str, Any]:
    """CPU, memory, kernel, and what else is keeping the CPUs busy right now."""
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "mem_total_mb": _meminfo_mb("MemTotal"),
        "mem_available_mb_start": _meminfo_mb("MemAvailable"),
        "kernel": platform.release(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "busy_processes_start": busy_processes(),
    }


def versions(env: dict[str, str]) -> dict[str, Any]:
    """Versions of everything measured (and the commit, when the tree is a git checkout)."""
    import confluent_kafka  # noqa: PLC0415
    import redis  # noqa: PLC0415

    from hftpipe_devstack import install  # noqa: PLC0415
    from hftpipe_devstack import versions as pinned  # noqa: PLC0415

    java = subprocess.run(
        [install.java(), "-version"], capture_output=True, text=True, check=False
    ).stderr.splitlines()
    client = redis.Redis.from_url(env["REDIS_URL"])
    try:
        redis_version = str(client.info("server")["redis_version"])
    finally:
        client.close()
    packages = {}
    for name in ("hftpipe-workers", "confluent-kafka", "redis", "orjson", "pandas", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    return {
        "commit": _git_commit(),
        "workers_source_sha256": source_digest(),
        "python": platform.python_version(),
        "kafka": pinned.KAFKA,
        "java": java[0] if java else None,
        "redis_server": redis_version,
        "librdkafka": confluent_kafka.libversion()[0],
        "packages": packages,
    }


# -- processes -------------------------------------------------------------------------


class Bench:
    """The phases, sharing one stack's environment and a scratch directory."""

    def __init__(self, config: Config, env: dict[str, str], scratch: Path) -> None:
        self.config = config
        self.env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        self.bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
        self.scratch = scratch
        self._children: list[subprocess.Popen[str]] = []

    # ---- helpers

    def _popen(self, cmd: list[str], *, stdout: int | IO[str] | None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=stdout, text=True)
        self._children.append(proc)
        return proc

    def stop_children(self) -> None:
        """Stop every process this bench started that still runs (after a failed phase)."""
        for proc in self._children:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._children.clear()

    def _java_tool(self, cls: str, args: list[str], label: str) -> str:
        """Run one of Kafka's tool classes, echo its output as progress, return it."""
        from hftpipe_devstack import install  # noqa: PLC0415

        cmd = [install.java(), "-cp", f"{self.env['KAFKA_LIBS']}/*", cls, *args]
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._children.append(proc)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            print(f"  [{label}] {line.rstrip()}", flush=True)
        if proc.wait() != 0:
            raise RuntimeError(f"{cls} exited with {proc.returncode}: {''.join(lines)[-800:]}")
        return "".join(lines)

    def ensure_topics(self, topics: dict[str, int]) -> None:
        """Create topics (``name -> partitions``) like the producer would."""
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        from hftpipe_workers.kafka_admin import ensure_topics  # noqa: PLC0415

        ensure_topics(AdminClient({"bootstrap.servers": self.bootstrap}), topics, 1)

    def job_topics(self, job: str) -> None:
        """The bars and dead-letter topics of a job, created before its processor starts."""
        from hftpipe_workers.contract import Topics  # noqa: PLC0415

        topics = Topics.for_job(job)
        self.ensure_topics({topics.bars: PARTITIONS, topics.deadletter: 1})

    def wipe_redis(self, job: str) -> int:
        """Delete every Redis key of a job, so its processor starts from offset 0 again."""
        import redis  # noqa: PLC0415

        from hftpipe_workers.contract import RedisKeys  # noqa: PLC0415

        client = redis.Redis.from_url(self.env["REDIS_URL"])
        try:
            keys = list(client.scan_iter(match=RedisKeys(job).pattern, count=1000))
            return int(client.delete(*keys)) if keys else 0
        finally:
            client.close()

    def produce(
        self, job: str, source: Path, *, profile: str, rate: int | None = None
    ) -> dict[str, Any]:
        """Run ``hftpipe produce`` to the end; its JSON report plus the wall time."""
        # Created here, not by the producer: a producer that creates its topics and at
        # once asks for their watermarks can hit NOT_LEADER_FOR_PARTITION (seen here,
        # intermittently); topic creation is not part of what is measured anyway.
        self.job_topics(job)
        started = time.time()
        proc = self.start_producer(job, source, profile=profile, rate=rate)
        return self.finish_producer(proc, started)

    def start_producer(
        self, job: str, source: Path, *, profile: str, rate: int | None = None
    ) -> subprocess.Popen[str]:
        """Start ``hftpipe produce`` (progress on stderr, report on stdout)."""
        pace = ["--rate", str(rate)] if rate else ["--speed", "max"]
        cmd = [sys.executable, "-m", "hftpipe_workers", "produce", str(source), "--job", job]
        cmd += [*pace, "--symbol", datagen.SYMBOL, "--profile", profile, "--metrics-port", "-1"]
        return self._popen(cmd, stdout=subprocess.PIPE)

    def finish_producer(self, proc: subprocess.Popen[str], started: float) -> dict[str, Any]:
        """Wait for a producer; its report, with ``wall_seconds`` from ``started``."""
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the producer exited with {proc.returncode}")
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        report["wall_seconds"] = round(time.time() - started, 3)
        return report

    def start_probe(
        self,
        job: str,
        expect: int,
        *,
        profile: str = "throughput",
        latency: bool = False,
        cprofile: Path | None = None,
        sample_ms: float = 0,
    ) -> tuple[subprocess.Popen[str], Path]:
        """Start the instrumented processor (``bench.probe``) and wait until it owns the bars."""
        result = self.scratch / f"probe-{job}-{time.monotonic_ns()}.json"
        cmd = [sys.executable, "-m", "bench.probe", "--job", job, "--expect-bars", str(expect)]
        cmd += ["--profile", profile, "--result", str(result)]
        if latency:
            cmd.append("--latency")
        if cprofile is not None:
            cmd += ["--cprofile", str(cprofile)]
        if sample_ms:
            cmd += ["--sample-ms", str(sample_ms)]
        proc = self._popen(cmd, stdout=subprocess.PIPE)
        self._wait_assigned(proc, timeout=60)
        return proc, result

    @staticmethod
    def _wait_assigned(proc: subprocess.Popen[str], timeout: float) -> None:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    break
                if '"assigned"' in line:
                    return
            elif proc.poll() is not None:
                break
        raise RuntimeError(
            f"the processor did not get its partitions within {timeout:.0f} s "
            f"(exit code {proc.poll()}); see its log above"
        )

    @staticmethod
    def finish_probe(
        proc: subprocess.Popen[str], result: Path, timeout: float, what: str = "the processor"
    ) -> dict[str, Any]:
        """Wait for a measured process (the probe, Quix's job) to exit; the results it
        wrote to ``result``."""
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{what} did not finish within {timeout:.0f} s") from exc
        if proc.returncode != 0:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        data: dict[str, Any] = json.loads(result.read_text())
        return data

    def _processor_timeout(self, bars: int) -> float:
        # Generous: 2,000 bars/s would be ten times slower than anything seen.
        return 120 + bars / 2_000

    # ---- phases

    def producer_performance(
        self, record_size: int, topic: str = "bench.producer-performance"
    ) -> dict[str, Any]:
        """Phase 1: ``ProducerPerformance`` with our producer's throughput settings (also
        phase 1b, with the size of a metrics record: the processor's own output)."""
        # One partition: a one-symbol replay writes all its bars to one partition.
        self.ensure_topics({topic: 1})
        props = [
            f"bootstrap.servers={self.bootstrap}",
            "acks=all",
            "linger.ms=20",
            "batch.size=1000000",
            "compression.type=lz4",
        ]
        args = ["--topic", topic, "--num-records", str(self.config.rows)]
        args += [
            "--record-size",
            str(record_size),
            "--throughput",
            "-1",
            "--producer-props",
            *props,
        ]
        output = self._java_tool("org.apache.kafka.tools.ProducerPerformance", args, "perf-produce")
        parsed: dict[str, Any] = dict(stats.parse_producer_performance(output))
        parsed.update(record_size=record_size, topic=topic, partitions=1, props=props)
        return parsed

    def broker_latency(self, record_size: int, rate: int) -> dict[str, Any]:
        """Phase 11: ``ProducerPerformance`` paced at the latency run's rate, with our latency
        profile's settings: the broker's own send -> ack latency, the floor under ours."""
        cfg = self.config
        topic = f"bench.latency-baseline-{rate}"
        self.ensure_topics({topic: 1})
        props = [  # the latency profile of workers/src/hftpipe_workers/settings.py
            f"bootstrap.servers={self.bootstrap}",
            "acks=all",
            "linger.ms=1",
            "batch.size=65536",
            "compression.type=none",
        ]
        args = ["--topic", topic, "--num-records", str(rate * cfg.latency_seconds)]
        args += ["--record-size", str(record_size), "--throughput", str(rate)]
        args += ["--producer-props", *props]
        output = self._java_tool("org.apache.kafka.tools.ProducerPerformance", args, "perf-paced")
        parsed: dict[str, Any] = dict(stats.parse_producer_performance(output))
        parsed.update(record_size=record_size, topic=topic, rate=rate, props=props)
        return parsed

    def consumer_performance(self, topic: str, records: int) -> dict[str, Any]:
        """Phase 4: ``ConsumerPerformance`` reading our bars topic from the start."""
        args = ["--bootstrap-server", self.bootstrap, "--topic", topic, "--messages", str(records)]
        output = self._java_tool("org.apache.kafka.tools.ConsumerPerformance", args, "perf-consume")
        raw = stats.parse_consumer_performance(output)
        return {
            "topic": topic,
            "records": raw.get("data.consumed.in.nMsg"),
            "records_per_second": raw.get("nMsg.sec"),
            "fetch_records_per_second": raw.get("fetch.nMsg.sec"),
            "mb_per_second": raw.get("MB.sec"),
            "rebalance_ms": raw.get("rebalance.time.ms"),
            "fetch_ms": raw.get("fetch.time.ms"),
            "raw": raw,
        }

    def processor_alone(self, job: str, bars: int) -> dict[str, Any]:
        """Phase 5: the processor on a pre-filled topic, rate and memory."""
        proc, result = self.start_probe(job, bars, sample_ms=10)
        data = self.finish_probe(proc, result, self._processor_timeout(bars))
        summary = _processor_summary(data)
        summary["sampled_profile"] = data.get("sampled_profile")
        summary["sample_interval_ms"] = 10
        return summary

    def processor_profile(self, job: str, bars: int) -> dict[str, Any]:
        """Phase 6: the processor under cProfile for ``bars`` bars of the same topic."""
        wiped = self.wipe_redis(job)
        prof = self.scratch / "processor.prof"
        proc, result = self.start_probe(job, bars, cprofile=prof)
        data = self.finish_probe(proc, result, self._processor_timeout(bars) * 3)
        rows: Any = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
        return {
            "bars": data["bars_in"],
            "redis_keys_wiped_before": wiped,
            "bars_per_second_under_cprofile": data["bars_per_second"],
            "breakdown": stats.profile_breakdown(rows),
            "top_own_time": stats.top_functions(rows),
        }

    def quix(self, mode: str, topic: str, bars: int) -> dict[str, Any]:
        """Phases 8 and 9: Quix Streams' job (``bench/quix_vwap.py``, in the bench's own
        venv) on the first ``bars`` bars of the topic; its outputs checked against ours."""
        import redis  # noqa: PLC0415

        from . import quix, quixenv  # noqa: PLC0415

        py = quixenv.ensure_venv(log)
        job = f"bench-quix-{mode}"
        result = self.scratch / f"quix-{mode}.json"
        cmd = [str(py), str(BENCH_DIR / "quix_vwap.py"), "--mode", mode]
        cmd += ["--bootstrap", self.bootstrap, "--topic", topic, "--redis-url"]
        cmd += [self.env["REDIS_URL"], "--bars", str(bars), "--windows", ",".join(QUIX_WINDOWS)]
        cmd += ["--job", job, "--group", f"{job}-{time.time_ns()}", "--result", str(result)]
        cmd += ["--state-dir", str(self.scratch / f"quix-state-{mode}")]
        cmd += ["--sample-every", str(max(1, bars // 50))]  # ~50 bars per window checked
        proc = self._popen(cmd, stdout=None)
        timeout = 300 + bars / 2  # ~25 bars/s was measured: 2 is ten times slower
        report = self.finish_probe(proc, result, timeout, "Quix Streams (bench/quix_vwap.py)")
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        try:
            labels = [*QUIX_WINDOWS, "session"]
            keys = [f"{job}:latest:{datagen.SYMBOL}:{w}" for w in labels]
            values: list[bytes | None] = client.mget(keys)  # type: ignore[assignment]
        finally:
            client.close()
        bars_read = quix.read_bars(self.bootstrap, topic, bars)
        agreement = quix.check(
            report, dict(zip(labels, values, strict=True)), bars_read, QUIX_WINDOWS
        )
        summary = {k: v for k, v in report.items() if k not in ("samples", "last")}
        summary.update(
            agreement=agreement,
            venv=str(py.parent.parent),
            packages=(py.parent.parent / ".installed").read_text().split(),
        )
        if report["bars"] != bars:
            summary["error_after_measuring"] = f"Quix processed {report['bars']} of {bars} bars"
        elif not agreement["ok"]:
            summary["error_after_measuring"] = (
                "Quix Streams' outputs do not agree with ours: "
                + json.dumps({k: agreement[k] for k in ("samples", "redis_latest")})[:1500]
            )
        return summary

    def end_to_end(self, job: str, source: Path, bars: int) -> dict[str, Any]:
        """Phase 10: processor waiting, then the producer; producer start -> processor caught up."""
        self.job_topics(job)
        proc, result = self.start_probe(job, bars)
        started = time.time()
        producer = self.start_producer(job, source, profile="throughput")
        produced = self.finish_producer(producer, started)
        data = self.finish_probe(proc, result, self._processor_timeout(bars))
        seconds = data["last_batch_end"] - started
        return {
            "bars": data["bars_in"],
            "seconds": round(seconds, 3),
            "bars_per_second": data["bars_in"] / seconds,
            "producer": produced,
            "processor": _processor_summary(data),
        }

    def latency(self, job: str, source: Path, rate: int) -> dict[str, Any]:
        """Phase 12: paced producer (latency profile) -> processor (latency profile), every bar."""
        cfg = self.config
        bars = rate * cfg.latency_seconds
        self.job_topics(job)
        proc, result = self.start_probe(job, bars, profile="latency", latency=True)
        started = time.time()
        producer = self.start_producer(job, source, profile="latency", rate=rate)
        produced = self.finish_producer(producer, started)
        data = self.finish_probe(proc, result, self._processor_timeout(bars))
        return {
            "rate": rate,
            "bars": data["bars_in"],
            "seconds": cfg.latency_seconds,
            "warmup_excluded_seconds": 1.0,
            "event_to_redis": data["latency"],
            "queued_before_batch_start": data["queued_before_batch"],
            "producer": produced,
            "processor": _processor_summary(data),
        }


def _processor_summary(data: dict[str, Any]) -> dict[str, Any]:
    hwm = data.get("vm_hwm_kb")
    samples = [(int(b), int(kb)) for b, kb in data.get("rss_samples", [])]
    at_assign = data.get("rss_at_assign_kb")
    return {
        "bars": data["bars_in"],
        "busy_seconds": round(data["busy_seconds"], 3),
        "bars_per_second": data["bars_per_second"],
        "wall_seconds_incl_startup": round(data["wall_seconds"], 3),
        "cpu_seconds": data.get("cpu_seconds"),
        "thread_cpu_seconds": data.get("thread_cpu_seconds"),
        "gc_seconds": data.get("gc_seconds"),
        "gc_collections": data.get("gc_collections"),
        "batches": data.get("batches"),
        "rss": {
            "vm_hwm_mb": round(hwm / 1024, 1) if hwm else None,
            "before_data_mb": round(at_assign / 1024, 1) if at_assign else None,
            "flatness": stats.rss_flatness(samples),
            "samples_bars_kb": stats.thin(samples),
        },
    }


def mean_metrics_size(source: Path, sample: int = 10_000) -> int:
    """Mean size in bytes of the metrics record the processor writes for one bar (its
    default windows), from the first ``sample`` bars of ``source``."""
    from hftpipe_workers import codec  # noqa: PLC0415
    from hftpipe_workers.csvformat import BarReader  # noqa: PLC0415
    from hftpipe_workers.metrics import DEFAULT_WINDOWS, MetricsEngine  # noqa: PLC0415

    engine = MetricsEngine(DEFAULT_WINDOWS)
    sizes: list[int] = []
    with source.open("rb") as stream:
        for chunk in BarReader(stream, source=str(source), symbol=datagen.SYMBOL):
            b, n = chunk.bars, sample - len(sizes)
            ts, seq = b.ts_ns[:n].tolist(), b.seq[:n].tolist()
            close, volume = b.close[:n].tolist(), b.volume[:n].tolist()
            high, low = b.high[:n].tolist(), b.low[:n].tolist()
            done, windows = engine.update_columns(datagen.SYMBOL, ts, high, low, close, volume)
            ts, seq, close, volume = ([c[i] for i in done] for c in (ts, seq, close, volume))
            messages = codec.encode_metrics_columns(datagen.SYMBOL, ts, seq, close, volume, windows)
            sizes += map(len, messages)
            if len(sizes) >= sample:
                break
    return round(sum(sizes) / max(1, len(sizes)))


def mean_encoded_size(source: Path, sample: int = 10_000) -> int:
    """Mean size in bytes of one bar as our producer encodes it (for ProducerPerformance)."""
    from hftpipe_workers import codec  # noqa: PLC0415
    from hftpipe_workers.csvformat import BarReader  # noqa: PLC0415

    sizes: list[int] = []
    with source.open("rb") as stream:
        for chunk in BarReader(stream, source=str(source), symbol=datagen.SYMBOL):
            for bar in chunk.bars.bars():
                sizes.append(len(codec.encode_bar(bar)))
                if len(sizes) >= sample:
                    return round(sum(sizes) / len(sizes))
    return round(sum(sizes) / max(1, len(sizes)))


# -- the run ---------------------------------------------------------------------------


class Phases:
    """Runs the phases in order: progress, timing and machine load around each; a failed
    phase is recorded and the run goes on (a 15-minute bench should not lose every figure
    to one failure)."""

    def __init__(
        self,
        results: dict[str, Any],
        cleanup: Callable[[], None],
        servers: dict[str, int],
        total: int = 17,
    ) -> None:
        self.results, self.cleanup, self.total = results, cleanup, total
        self.servers = servers
        self.number = 0
        self.errors: list[str] = []

    def run(
        self,
        title: str,
        key: str,
        measure: Callable[[], dict[str, Any]],
        *,
        into: dict[str, Any] | None = None,
    ) -> None:
        """Measure one phase and store its figures under ``key`` (of ``into``, default the
        results)."""
        self.number += 1
        target = self.results if into is None else into
        log(f"phase {self.number}/{self.total}: {title}")
        meter = CpuMeter()
        by_process = CpuByProcess(self.servers)
        load = os.getloadavg()[0]
        started = time.monotonic()
        try:
            target[key] = measure()
            failed = target[key].get("error_after_measuring")
            if failed:  # measured, kept, and the run fails all the same
                self.errors.append(f"phase {self.number} ({title}): {failed}")
                log(f"phase {self.number} FAILED: {failed}")
        except Exception as exc:  # noqa: BLE001 - one failed phase must not lose the others
            self.errors.append(f"phase {self.number} ({title}): {type(exc).__name__}: {exc}")
            log(f"phase {self.number} FAILED: {type(exc).__name__}: {exc}")
            target[key] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            self.cleanup()
        seconds = time.monotonic() - started
        target[key]["phase"] = {
            "seconds": round(seconds, 1),
            "loadavg_1m_at_start": round(load, 2),
            "machine_cpu_busy": round(meter.busy(), 3),
            "cpu_seconds": by_process.seconds(),
        }
        log(f"phase {self.number} done in {seconds:,.0f} s")


def ratios(r: dict[str, Any]) -> dict[str, float | None]:
    """Every ratio of a figure to its baseline (None where a phase failed)."""

    def g(*path: str) -> float | None:
        node: Any = r
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, int | float) else None

    return {
        "producer_over_producer_performance": stats.ratio(
            g("producer", "throughput", "rows_per_second"),
            g("producer_performance", "records_per_second"),
        ),
        "producer_latency_over_producer_performance": stats.ratio(
            g("producer", "latency", "rows_per_second"),
            g("producer_performance", "records_per_second"),
        ),
        "processor_over_consumer_performance": stats.ratio(
            g("processor_alone", "bars_per_second"),
            g("consumer_performance", "fetch_records_per_second"),
        ),
        # Every bar in is a metrics record out: the broker's produce rate at that record
        # size bounds the processor as much as the consume rate does.
        "processor_over_metrics_producer_performance": stats.ratio(
            g("processor_alone", "bars_per_second"),
            g("metrics_producer_performance", "records_per_second"),
        ),
        "processor_over_consumer_performance_incl_join": stats.ratio(
            g("processor_alone", "bars_per_second"),
            g("consumer_performance", "records_per_second"),
        ),
        "end_to_end_over_processor_alone": stats.ratio(
            g("end_to_end", "bars_per_second"), g("processor_alone", "bars_per_second")
        ),
        "processor_over_naive": stats.ratio(
            g("processor_alone", "bars_per_second"), g("naive", "bars_per_second")
        ),
        "processor_over_quix_sliding": stats.ratio(
            g("processor_alone", "bars_per_second"), g("quix", "sliding", "bars_per_second")
        ),
        "processor_over_quix_hopping": stats.ratio(
            g("processor_alone", "bars_per_second"), g("quix", "hopping", "bars_per_second")
        ),
        "csv_reader_over_pyarrow_csv": stats.ratio(
            g("reading", "csv", "rows_per_second"),
            g("reading", "csv", "pyarrow_rows_per_second"),
        ),
        "parquet_reader_over_pyarrow_parquet": stats.ratio(
            g("reading", "parquet", "rows_per_second"),
            g("reading", "parquet", "pyarrow_rows_per_second"),
        ),
        "end_to_end_over_producer_performance": stats.ratio(
            g("end_to_end", "bars_per_second"), g("producer_performance", "records_per_second")
        ),
        "loader_over_duckdb_arrow_ingest": stats.ratio(
            g("loader", "rows_per_second"), g("loader", "duckdb_arrow_ingest", "rows_per_s")
        ),
        "latency_p99_over_broker_p99": stats.ratio(
            g("latency", "event_to_redis", "p99_ms"), g("broker_latency", "latency_p99_ms")
        ),
        "latency_floor_p99_over_broker_p99": stats.ratio(
            g("latency_floor", "event_to_redis", "p99_ms"),
            g("broker_latency_floor", "latency_p99_ms"),
        ),
        # Time of the merge over the time of the one file (rows/s the other way round).
        "merge_over_one_file": stats.ratio(
            g("reading", "merge", "one_file_rows_per_second"),
            g("reading", "merge", "rows_per_second"),
        ),
    }


def _with_paced_rate(config: Config, results: Mapping[str, Any]) -> Config:
    """``config`` with its latency rate set, from ConsumerPerformance's when not given."""
    if config.latency_rate is not None:
        return config
    config = replace(config, latency_rate=paced_rate(results.get("consumer_performance")))
    log(f"paced latency rate: {config.rate:,} bars/s (10,000 or 10 % of the fetch rate)")
    return config


def _latency_phases(phases: Phases, bench: Bench, record_size: int) -> None:
    """The broker's and our latency at the paced rate, and at the floor too when that is
    lower: how the processor does where it keeps up, beside where it may not."""
    runs = (("", bench.config.rate), ("_floor", LATENCY_FLOOR))
    for suffix, rate in runs[: 2 if bench.config.rate > LATENCY_FLOOR else 1]:
        # A file of as many bars as the run sends: the producer of the 10,000 bars/s
        # run once went on through the paced run's 3.4M bars, 5 minutes at that rate.
        source = datagen.ensure_dataset(rate * bench.config.latency_seconds)
        phases.run(
            f"broker send -> ack latency at {rate:,} records/s",
            f"broker_latency{suffix}",
            lambda rate=rate: bench.broker_latency(record_size, rate),  # type: ignore[misc]
        )
        phases.run(
            f"latency at {rate:,} bars/s",
            f"latency{suffix}",
            lambda rate=rate, suffix=suffix, source=source: bench.latency(  # type: ignore[misc]
                "bench-latency" + suffix.replace("_", "-"), source, rate
            ),
        )


def run(config: Config) -> int:
    """Run every phase, write the results (and the README table); 1 if a phase failed."""
    from hftpipe_devstack.stack import ephemeral_stack  # noqa: PLC0415
    from hftpipe_workers.contract import Topics  # noqa: PLC0415

    from .loader import loader_speed  # noqa: PLC0415
    from .naive import run_naive  # noqa: PLC0415
    from .reading import reading_speed  # noqa: PLC0415

    started = time.monotonic()
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    log(f"hftpipe bench, {config.mode} mode: {config.rows:,} generated bars")
    log("sampling what else keeps the CPUs busy (2 s)...")
    machine = machine_info()
    if machine["busy_processes_start"]:
        log(f"other work is running: {machine['busy_processes_start'][:5]}")
    dataset = datagen.ensure_dataset(config.rows)
    loader_source = datagen.ensure_dataset(config.loader_bars) if config.loader_bars else None
    record_size, metrics_size = mean_encoded_size(dataset), mean_metrics_size(dataset)
    results: dict[str, Any] = {"producer": {}, "quix": {}}
    tp_job = "bench-produce-tp"
    log("starting an ephemeral stack (Kafka, Redis)...")
    with ephemeral_stack(("kafka", "redis")) as stack, tempfile.TemporaryDirectory() as scratch:
        bench = Bench(config, stack.env, Path(scratch))
        servers = {r.name: r.pid for r in stack.table().records()}
        phases = Phases(results, bench.stop_children, servers)
        bars_topic = Topics.for_job(tp_job).bars
        machine["versions"] = versions(stack.env)
        phases.run(
            "ProducerPerformance (broker limit)",
            "producer_performance",
            lambda: bench.producer_performance(record_size),
        )
        phases.run(
            "ProducerPerformance, metrics-sized records (the processor's output)",
            "metrics_producer_performance",
            lambda: bench.producer_performance(metrics_size, "bench.metrics-performance"),
        )
        phases.run(
            "producer, throughput profile",
            "throughput",
            lambda: bench.produce(tp_job, dataset, profile="throughput"),
            into=results["producer"],
        )
        phases.run(
            "producer, latency profile",
            "latency",
            lambda: bench.produce("bench-produce-lat", dataset, profile="latency"),
            into=results["producer"],
        )
        phases.run(
            "ConsumerPerformance (broker limit)",
            "consumer_performance",
            lambda: bench.consumer_performance(bars_topic, config.rows),
        )
        config = bench.config = _with_paced_rate(config, results)
        latency_source = datagen.ensure_dataset(config.latency_bars)
        phases.run(
            "processor alone, pre-filled topic",
            "processor_alone",
            lambda: bench.processor_alone(tp_job, config.rows),
        )
        phases.run(
            "processor under cProfile",
            "profile",
            lambda: bench.processor_profile(tp_job, min(config.profile_bars, config.rows)),
        )
        phases.run(
            "naive pandas baseline",
            "naive",
            lambda: run_naive(
                bootstrap=bench.bootstrap,
                topic=bars_topic,
                redis_url=stack.env["REDIS_URL"],
                bars=min(config.naive_bars, config.rows),
            ),
        )
        quix_bars = min(config.quix_bars, config.rows)
        for mode in ("sliding", "hopping"):
            if not quix_bars:
                log(f"Quix Streams baseline, {mode} windows: skipped (--quix-bars 0)")
                continue
            phases.run(
                f"Quix Streams baseline, {mode} windows",
                mode,
                lambda mode=mode: bench.quix(mode, bars_topic, quix_bars),  # type: ignore[misc]
                into=results["quix"],
            )
        phases.run(
            "end to end", "end_to_end", lambda: bench.end_to_end("bench-e2e", dataset, config.rows)
        )
        _latency_phases(phases, bench, record_size)
        phases.run(
            "reading speed, CSV and Parquet, against pyarrow",
            "reading",
            lambda: reading_speed(dataset),
        )
        if loader_source is not None:
            phases.run(
                "loader into DuckDB, against DuckDB's own Arrow ingest",
                "loader",
                lambda: loader_speed(dict(stack.env), loader_source, Path(scratch)),
            )
    errors = phases.errors
    results["ratios"] = ratios(results)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {
        "date": date,
        "mode": config.mode,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_seconds": round(time.monotonic() - started, 1),
        "dataset": {
            "file": str(dataset),
            "rows": config.rows,
            "generated": True,
            "note": "GENERATED minute bars in the Kaggle BTC layout (not market data); "
            "see bench/datagen.py",
            "latency_file": str(latency_source),
            "mean_encoded_bar_bytes": record_size,
            "mean_metrics_record_bytes": metrics_size,
        },
        "machine": machine,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(config).items()},
        "results": results,
        "targets": [vars(t) for t in stats.evaluate_targets(results)],
        "errors": errors,
        "notes": _notes(machine),
    }
    return _write(doc, config, errors)


def _notes(machine: dict[str, Any]) -> list[str]:
    notes = [
        f"{machine['nproc']} CPUs shared by the broker, Redis, the workers and the JVM tools: "
        "every figure is for this machine, with everything on it at once.",
        "Kafka record timestamps have 1 ms resolution, so each latency carries up to 1 ms "
        "of truncation (0.5 ms on average, upwards).",
    ]
    if machine.get("busy_processes_start"):
        notes.append(
            "Other work was running when the bench started (busy_processes_start); "
            "figures may be lower than on an idle machine."
        )
    return notes


def _write(doc: dict[str, Any], config: Config, errors: list[str]) -> int:
    config.results_dir.mkdir(parents=True, exist_ok=True)
    name = f"{doc['date']}{'' if config.mode == 'full' else '-' + config.mode}.json"
    path = config.results_dir / name
    path.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"results written to {path}")
    try:
        shown = path.relative_to(BENCH_DIR)
    except ValueError:
        shown = path
    section = stats.results_section(doc, str(shown))
    print("\n" + section, flush=True)
    if config.write_readme and README.exists():
        README.write_text(stats.replace_section(README.read_text(), section))
        log(f"table updated in {README}")
    for error in errors:
        log(f"error: {error}")
    return 1 if errors else 0


def render(path: Path) -> int:
    """Rewrite the README's results section from a results file (after a change of format)."""
    doc = json.loads(path.read_text())
    section = stats.results_section(doc, str(path.resolve().relative_to(BENCH_DIR)))
    README.write_text(stats.replace_section(README.read_text(), section))
    log(f"table in {README} rewritten from {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bench/run.py``."""
    config = parse_args(argv)
    return render(config.render) if config.render else run(config)
