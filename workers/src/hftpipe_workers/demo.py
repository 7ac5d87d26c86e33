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

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, cast

SAMPLE = "btcusdt_1h_binance.csv.gz"
DEMO_WINDOWS = ("4h", "1d", "7d", "30d")


def sample_path() -> Path:
    """The shipped BTC/USDT hourly bars (see ``sample_data/README.md``)."""
    return Path(str(resources.files("hftpipe_workers") / "sample_data" / SAMPLE))


def _lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Records of ``topics`` not yet committed by ``group`` (what the operator reads)."""
    from confluent_kafka import Consumer, TopicPartition  # noqa: PLC0415

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        tps = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            tps += [TopicPartition(topic, p) for p in meta.partitions]
        lag = 0
        for tp in consumer.committed(tps, timeout=10):
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def _last_json(output: str) -> dict[str, Any]:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    return {}


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
    bootstrap = kafka.bootstrap_servers
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        lags = (
            _lag(bootstrap, groups.processor, [topics.bars]),
            _lag(bootstrap, groups.loader, [topics.bars, topics.metrics]),
        )
        dead = [n for n, p in workers.items() if p.poll() is not None]
        if dead:
            print(f"worker(s) {dead} exited early", file=sys.stderr)
            return 1
        print(f"[demo] lag: processor {lags[0]:,}, loader {lags[1]:,}", file=sys.stderr)
        if lags == (0, 0):
            break
        time.sleep(1)
    elapsed = time.monotonic() - t0
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
        elapsed=elapsed,
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
    elapsed: float,
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
    print(f"producer rate       {produced.get('rows_per_second', 0):,} rows/s")
    print(
        f"end to end          {produced.get('produced', 0) / elapsed:,.0f} bars/s "
        f"({elapsed:.1f} s, producer start to loader caught up)"
    )
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
