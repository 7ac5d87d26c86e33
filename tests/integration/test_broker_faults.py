"""The whole pipeline through broker faults: the topic, Redis and the warehouse end as
after an uninterrupted run (issue 10, "fault tests to keep in the suite").

Producer, processor and loader run as the processes a pod runs, each restarted when it
exits with an error, as the kubelet would. The broker is SIGKILLed mid-replay and comes
back after a short outage, or after one longer than the delivery timeout (set to 3 s
here, so the test need not wait out the defaults).
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from compare import bar_rows, metric_differences, metric_rows, redis_snapshot
from confluent_kafka import Consumer, TopicPartition
from faults import (
    assert_every_bar_once,
    committed_bars,
    record_count,
    restart_killed,
    stop_restarted,
)
from generated import generated_minute_file

from hftpipe_devstack.stack import Stack, ephemeral_stack
from hftpipe_devstack.testing import CLI, wait_for
from hftpipe_workers.contract import Groups, RedisKeys, Topics
from hftpipe_workers.kafka_admin import reader
from hftpipe_workers.settings import KafkaSettings
from hftpipe_workers.warehouse import open_sink

SYMBOLS, BARS = 4, 4_000
ROWS = SYMBOLS * BARS
WINDOWS = 3  # the processor's default windows, loaded per bar (session included)


@pytest.fixture
def own_stack() -> Iterator[Stack]:
    """Kafka and Redis of the test's own: it kills and restarts the broker."""
    with ephemeral_stack(("kafka", "redis")) as stack:
        yield stack
        stop_restarted()


class Supervised:
    """A worker process, started again whenever it exits with an error."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.cmd, self.env, self.log = name, cmd, env, log
        self.restarts = 0
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open(self.log, "ab") as out:
            while not self._stop.is_set():
                self._proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=out)
                if self._proc.wait() == 0:
                    self.finished.set()
                    return
                if self._stop.is_set():
                    return
                self.restarts += 1
                time.sleep(1)  # the kubelet backs off too

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        self._thread.join(60)


def _run_job(stack: Stack, job: str, source: Path, tmp_path: Path, outage: float | None) -> int:
    """Replay ``source`` through producer, processor and loader; with ``outage``, the
    broker is killed once a part is through and back ``outage`` seconds later. The
    workers' restarts, summed."""
    env = {**os.environ, **stack.env, "HFTPIPE_KAFKA_DELIVERY_TIMEOUT_MS": "3000"}
    kafka = KafkaSettings(bootstrap_servers=stack.env["KAFKA_BOOTSTRAP_SERVERS"])
    db = f"duckdb:///{tmp_path / 'wh.duckdb'}"  # the runs take turns: one file
    common = ["--job", job, "--metrics-port", "-1"]
    workers = [
        Supervised(
            "producer",
            [*CLI, "produce", str(source), *common, "--rate", "1500"],
            env,
            tmp_path / f"{job}-producer.log",
        ),
        Supervised("processor", [*CLI, "process", *common], env, tmp_path / f"{job}-proc.log"),
        Supervised(
            "loader", [*CLI, "load", *common, "--warehouse", db], env, tmp_path / f"{job}-load.log"
        ),
    ]
    bootstrap = stack.env["KAFKA_BOOTSTRAP_SERVERS"]
    topics = Topics.for_job(job)
    try:
        if outage is not None:
            wait_for(
                lambda: record_count(bootstrap, topics.bars) > ROWS // 4, 120, "a quarter through"
            )
            restart_killed(stack, down_for=outage)
        assert workers[0].finished.wait(600), workers[0].log.read_text()[-3000:]
        wait_for(lambda: _drained(kafka, job), 300, "the processor and loader to drain")
    finally:
        for worker in workers:
            worker.stop()
    return sum(w.restarts for w in workers)


def _drained(kafka: KafkaSettings, job: str) -> bool:
    """Both groups committed every partition's end, on the bars and metrics topics."""
    topics, groups = Topics.for_job(job), Groups.for_job(job)
    consumer = reader(kafka.common(), groups.reader)
    try:
        for topic, group_list in ((topics.bars, (groups.processor, groups.loader)),
                                  (topics.metrics, (groups.loader,))):  # fmt: skip
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                return False
            tps = [TopicPartition(topic, p) for p in meta.partitions]
            ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
            for group in group_list:
                watcher = Consumer({**kafka.common(), "group.id": group})
                try:
                    done = [tp.offset for tp in watcher.committed(tps, timeout=10)]
                finally:
                    watcher.close()
                if done != ends:
                    return False
        return True
    except Exception:  # noqa: BLE001 - the broker is away: not drained yet
        return False
    finally:
        consumer.close()


@pytest.mark.parametrize("outage", [2.0, 10.0], ids=["short-outage", "outage-over-timeout"])
def test_a_broker_killed_mid_replay_leaves_topic_redis_and_warehouse_as_a_clean_run(
    own_stack: Stack, tmp_path: Path, outage: float
) -> None:
    source = generated_minute_file(tmp_path / "bars.csv", symbols=SYMBOLS, bars=BARS, seed=5)
    tag = random.randrange(10**6)
    clean, faulty = f"clean-{tag}", f"faulty-{tag}"
    assert _run_job(own_stack, clean, source, tmp_path, None) == 0
    restarts = _run_job(own_stack, faulty, source, tmp_path, outage)
    bootstrap = own_stack.env["KAFKA_BOOTSTRAP_SERVERS"]
    assert_every_bar_once(committed_bars(bootstrap, Topics.for_job(faulty).bars), ROWS)
    client = redis.Redis.from_url(own_stack.env["REDIS_URL"])
    assert redis_snapshot(client, faulty) == redis_snapshot(client, clean)
    assert client.exists(RedisKeys(faulty).symbols)
    with open_sink(f"duckdb:///{tmp_path / 'wh.duckdb'}") as sink:
        assert bar_rows(sink, faulty) == bar_rows(sink, clean) == (ROWS, ROWS)
        assert metric_rows(sink, faulty) == metric_rows(sink, clean)
        assert metric_rows(sink, faulty)[0] == metric_rows(sink, faulty)[1] >= ROWS * WINDOWS
        assert metric_differences(sink, clean, faulty) == 0
    print(f"outage {outage} s: {restarts} worker restart(s)")
