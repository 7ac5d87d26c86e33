"""``hftpipe demo``: the whole pipeline on one machine, against the Kafka and Redis that
the environment names (``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``, or their
``HFTPIPE_*`` forms).

It runs the three workers as separate processes with the same CLI a pod runs
(``hftpipe produce``, ``process``, ``load``), waits for the replay to finish and
for processor and loader to catch up (read from Kafka's committed offsets, as
the operator does), stops them with SIGTERM, and prints a report. ``make demo``
starts a local Kafka and Redis first (``python -m hftpipe_devstack demo``): the
product does not depend on the development stack.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .contract import Groups, Topics

SAMPLE = "btcusdt_1h_binance.csv.gz"
DEMO_WINDOWS = ("4h", "1d", "7d", "30d")
STAGES = ("producer", "processor", "loader")
"""The pipeline's stages in order: each consumes what the one before it wrote."""
POLL_SECONDS = 0.25
"""Pause between two reads of the processor's and the loader's lag."""
SLACK_SECONDS: Mapping[str, float] = {"processor": 2 * POLL_SECONDS, "loader": 1.0 + POLL_SECONDS}
"""A stage done within this long after the stage before it kept pace. Lag is only seen
per poll; the loader merges at least every second (``--batch-seconds``), the processor
commits every batch. (One slack of 1.5 s for both once called a processor that ran at a
third of its speed in a 2.7 s replay "kept pace", and the producer the bound.)"""


def sample_path() -> Path:
    """The shipped BTC/USDT hourly bars (see ``sample_data/README.md``)."""
    return Path(str(resources.files("hftpipe_workers") / "sample_data" / SAMPLE))


class _Lag:
    """Records of ``topics`` not yet committed by ``group`` (what the operator reads), read
    as often as asked through one consumer (a consumer per read costs a connection)."""

    def __init__(self, bootstrap: str, group: str, topics: list[str]) -> None:
        from confluent_kafka import Consumer  # noqa: PLC0415

        self._topics = topics
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )

    def __call__(self) -> int:
        from confluent_kafka import TopicPartition  # noqa: PLC0415

        tps = []
        for topic in self._topics:  # listed each time: the metrics topic may be new
            meta = self._consumer.list_topics(topic, timeout=10).topics[topic]
            tps += [TopicPartition(topic, p) for p in meta.partitions]
        lag = 0
        for tp in self._consumer.committed(tps, timeout=10):
            _, high = self._consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - max(tp.offset, 0)
        return lag

    def close(self) -> None:
        self._consumer.close()


def bounded_by(done: Mapping[str, float], *, slack: Mapping[str, float] = SLACK_SECONDS) -> str:
    """The stage whose speed the end-to-end figure measures.

    ``done`` holds, for each of :data:`STAGES`, the seconds from the start until that
    stage had handled every bar. A stage done within its ``slack`` of the stage before it
    kept pace: it waited for its input, and a faster one would not have ended sooner.
    The bound is the last stage that did not keep pace, or the producer when every
    later one did.
    """
    bound = STAGES[0]
    for upstream, stage in itertools.pairwise(STAGES):
        if done[stage] - done[upstream] > slack[stage]:
            bound = stage
    return bound


def stage_lines(
    produced: Mapping[str, Any],
    outputs: Mapping[str, Mapping[str, Any]],
    done: Mapping[str, float],
    *,
    slack: Mapping[str, float] = SLACK_SECONDS,
) -> list[str]:
    """The report's rates: the end-to-end time split into start-up and the replay, each
    stage's bars/s from the first bar until it was done, whether it kept pace with the
    stage before it, and which stage bounds the replay (:func:`bounded_by`).

    The first bar is when the producer's replay began: its exit less its own replay
    seconds. A stage that kept pace waited for its input, so its rate is only a floor
    (``>=``) of what it could do; the bounding stage's rate is what it did.
    """
    bars = {
        "producer": int(produced.get("produced", 0)),
        "processor": int(outputs["process"].get("bars_in", 0)),
        "loader": int(outputs["load"].get("bars", 0)),
    }
    first_bar = max(done["producer"] - float(produced.get("seconds", 0.0)), 0.0)
    notes = {"producer": "its own replay, from its first bar read to its last committed"}
    kept_pace = {"producer": False}
    for upstream, stage in itertools.pairwise(STAGES):
        behind = done[stage] - done[upstream]
        kept_pace[stage] = behind <= slack[stage]
        notes[stage] = (
            f"{'kept pace' if kept_pace[stage] else 'fell behind'}: "
            f"done {behind:.1f} s after the {upstream}"
        )
    notes["loader"] += f"; and {int(outputs['load'].get('metrics_rows', 0)):,} metric rows"
    lines = ["stage rates (bars / seconds from the first bar until the stage was done):"]
    rates = {}
    for stage in STAGES:
        took = done[stage] - first_bar
        rates[stage] = bars[stage] / took if took > 0 else 0.0
        lines.append(
            f"  {stage:<10} {bars[stage]:>9,} bars in {took:5.1f} s "
            f"{'>=' if kept_pace[stage] else '  '}{rates[stage]:>8,.0f} bars/s  "
            f"({notes[stage]})"
        )
    elapsed = done[STAGES[-1]]
    bound = bounded_by(done, slack=slack)
    lines += [
        f"end to end          {bars['producer'] / elapsed if elapsed > 0 else 0.0:,.0f} bars/s "
        f"({elapsed:.1f} s, producer start to loader caught up) =",
        f"  start-up          {first_bar:5.1f} s (the workers' Python imports, topic "
        "creation, the producer's transactions)",
        f"  + replay          {elapsed - first_bar:5.1f} s from the first bar at "
        f"{rates[STAGES[-1]]:,.0f} bars/s: bounded by the {bound}",
    ]
    return lines


def _last_json(output: str) -> dict[str, Any]:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    return {}


def _await_caught_up(
    bootstrap: str,
    topics: Topics,
    groups: Groups,
    workers: Mapping[str, subprocess.Popen[str]],
    *,
    started: float,
    done: dict[str, float],
) -> str | None:
    """Poll the processor's and the loader's lag until both are 0, noting in ``done`` when
    each first was (seconds since ``started``); the reason if they never got there."""
    lag_of = {
        "processor": _Lag(bootstrap, groups.processor, [topics.bars]),
        "loader": _Lag(bootstrap, groups.loader, [topics.bars, topics.metrics]),
    }
    deadline, shown = time.monotonic() + 600, 0.0
    try:
        while time.monotonic() < deadline:
            lags = {stage: lag() for stage, lag in lag_of.items()}
            now = time.monotonic()
            if lags["processor"] == 0:
                done.setdefault("processor", now - started)
                if lags["loader"] == 0:
                    done["loader"] = now - started
            dead = [n for n, p in workers.items() if p.poll() is not None]
            if dead:
                return f"worker(s) {dead} exited early"
            if now - shown >= 1 or "loader" in done:
                shown = now
                print(
                    f"[demo] lag: processor {lags['processor']:,}, loader {lags['loader']:,}",
                    file=sys.stderr,
                )
            if "loader" in done:
                return None
            time.sleep(POLL_SECONDS)
    finally:
        for lag in lag_of.values():
            lag.close()
    return "processor and loader did not catch up within 600 s"


def run_demo(*, source: str | None, data_dir: Path, symbol: str = "BTCUSDT") -> int:
    """Run the demo; returns an exit code."""
    from .contract import Groups, Topics  # noqa: PLC0415
    from .settings import KafkaSettings, RedisSettings  # noqa: PLC0415

    kafka, redis_settings = KafkaSettings(), RedisSettings()
    job = "demo-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    data_dir.mkdir(parents=True, exist_ok=True)
    warehouse = data_dir.resolve() / "demo.duckdb"
    env = {**os.environ, "HFTPIPE_JOB": job}
    print(
        f"Kafka {kafka.bootstrap_servers}, Redis {redis_settings.url.split('@')[-1]}",
        file=sys.stderr,
    )
    src = source or str(sample_path())
    cli = [sys.executable, "-m", "hftpipe_workers"]
    topics, groups = Topics.for_job(job), Groups.for_job(job)
    print(f"\njob {job}: replaying {src} at max speed\n", file=sys.stderr)

    t0 = time.monotonic()
    workers = {
        # Windows suited to hourly bars (the processor's default is 5m,15m,1h,1d).
        "process": subprocess.Popen(
            [*cli, "process", "--metrics-port", "0", "--windows", ",".join(DEMO_WINDOWS)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        ),
        "load": subprocess.Popen(
            [*cli, "load", "--metrics-port", "0", "--warehouse", f"duckdb:///{warehouse}"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        ),
    }
    produce = subprocess.run(
        [*cli, "produce", src, "--speed", "max", "--metrics-port", "0", "--symbol", symbol],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if produce.returncode != 0:
        for proc in workers.values():
            proc.send_signal(signal.SIGTERM)
        print("the producer failed (see above)", file=sys.stderr)
        return produce.returncode
    produced = _last_json(produce.stdout)
    # Seconds from the start until each stage had every bar: the producer when it
    # exited, processor and loader when their lag was first seen at 0.
    done = {"producer": time.monotonic() - t0}
    failure = _await_caught_up(
        kafka.bootstrap_servers, topics, groups, workers, started=t0, done=done
    )
    if failure:
        print(failure, file=sys.stderr)
        return 1
    outputs = {}
    for name, proc in workers.items():
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        outputs[name] = _last_json(out)
        if proc.returncode != 0:
            print(f"{name} exited with {proc.returncode}", file=sys.stderr)
            return 1

    _report(
        job=job,
        symbol=symbol,
        redis_settings=redis_settings,
        warehouse=warehouse,
        produced=produced,
        outputs=outputs,
        done=done,
    )
    return 0


def _report(
    *,
    job: str,
    symbol: str,
    redis_settings: Any,
    warehouse: Path,
    produced: dict[str, Any],
    outputs: dict[str, dict[str, Any]],
    done: dict[str, float],
) -> None:
    """Print the demo's report: counts, rates, latest VWAPs (Redis), volatile days (DuckDB)."""
    import duckdb  # noqa: PLC0415

    from .contract import RedisKeys  # noqa: PLC0415
    from .processor import redis_client  # noqa: PLC0415
    from .warehouse.queries import most_volatile_days  # noqa: PLC0415

    client = redis_client(redis_settings)
    keys = RedisKeys(job)
    print("\n=== hftpipe demo report ===")
    print(f"job                 {job}")
    print(f"rows read           {produced.get('rows_read', 0):,}")
    print(f"bars produced       {produced.get('produced', 0):,}")
    print(f"dead-lettered       {produced.get('dead_lettered', 0):,}")
    print(f"bars processed      {outputs['process'].get('bars_in', 0):,} -> Redis")
    print(f"bars loaded         {outputs['load'].get('bars', 0):,} -> {warehouse}")
    print(f"metric rows loaded  {outputs['load'].get('metrics_rows', 0):,}")
    print()
    print("\n".join(stage_lines(produced, outputs, done)))
    for seen in sorted(m.decode() for m in cast("set[bytes]", client.smembers(keys.symbols))):
        raw = cast("dict[bytes, bytes]", client.hgetall(keys.latest(seen)))
        latest = {k.decode(): v.decode() for k, v in raw.items()}
        when = datetime.fromtimestamp(int(latest["ts_ns"]) / 1e9, UTC)
        print(
            f"\nlatest metrics for {seen} at {when:%Y-%m-%d %H:%M} UTC "
            f"(HGETALL {keys.latest(seen)})"
        )
        print(f"  close {float(latest['close']):,.2f}")
        for window in (*DEMO_WINDOWS, "session"):
            vwap = latest.get(f"{window}:vwap")
            if vwap is not None:
                shown = f"{float(vwap):,.2f}" if vwap else "null (no volume)"
                print(f"  VWAP {window:<8} {shown}")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        print("\nthe four most volatile days (DuckDB):")
        print(most_volatile_days(con, job, symbol).to_string(index=False))
