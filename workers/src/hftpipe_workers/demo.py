"""``hftpipe demo``: the whole pipeline on a laptop, against the local stack.

It runs the three workers as separate processes with the same CLI a pod runs
(``hftpipe produce``, ``process``, ``load``), waits for the replay to finish and
for processor and loader to catch up (read from Kafka's committed offsets, as
the operator does), stops them with SIGTERM, and prints a report.
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


def _stack_env(stack_dir: Path) -> tuple[dict[str, str], bool]:
    """Env of a running stack in ``stack_dir``, starting Kafka and Redis if none runs."""
    try:
        from hftpipe_devstack.stack import Stack  # noqa: PLC0415
    except ImportError:
        print("the demo needs the development environment: run 'make demo'", file=sys.stderr)
        raise
    # Kafka and Redis are all the pipeline needs; the Kubernetes API is for the operator.
    stack = Stack(stack_dir.resolve(), ("kafka", "redis"))
    if stack.running() and stack.env_file.exists():
        env = {}
        for line in stack.env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip("'")
        print(f"using the local stack already running from {stack_dir}", file=sys.stderr)
        return env, False
    print("starting the local stack (Kafka, Redis)...", file=sys.stderr)
    return stack.up(), True


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


def run_demo(
    *, source: str | None, stack_dir: Path, keep_stack: bool, symbol: str = "BTCUSDT"
) -> int:
    """Run the demo; returns an exit code."""
    from .contract import Groups, Topics  # noqa: PLC0415

    env_stack, started = _stack_env(stack_dir)
    job = "demo-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    warehouse = stack_dir.resolve() / "demo.duckdb"
    env = {**os.environ, **env_stack, "HFTPIPE_JOB": job}
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
    bootstrap = env_stack["KAFKA_BOOTSTRAP_SERVERS"]
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
        redis_url=env_stack["REDIS_URL"],
        warehouse=warehouse,
        produced=produced,
        outputs=outputs,
        elapsed=elapsed,
    )
    if keep_stack or not started:
        print(
            f"\nThe local stack keeps running (state in {stack_dir}); "
            "stop it with 'make stack-down'."
        )
    else:
        from hftpipe_devstack.stack import Stack  # noqa: PLC0415

        Stack(stack_dir.resolve()).down()
        print("\nThe local stack was stopped.")
    return 0


def _report(
    *,
    job: str,
    symbol: str,
    redis_url: str,
    warehouse: Path,
    produced: dict[str, Any],
    outputs: dict[str, dict[str, Any]],
    elapsed: float,
) -> None:
    """Print the demo's report: counts, rates, latest VWAPs (Redis), volatile days (DuckDB)."""
    import duckdb  # noqa: PLC0415
    import redis  # noqa: PLC0415

    from .contract import RedisKeys  # noqa: PLC0415
    from .warehouse.queries import most_volatile_days  # noqa: PLC0415

    client = redis.Redis.from_url(redis_url, decode_responses=True)
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
    for seen in sorted(cast("set[str]", client.smembers(keys.symbols))):
        latest = cast("dict[str, str]", client.hgetall(keys.latest(seen)))
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
