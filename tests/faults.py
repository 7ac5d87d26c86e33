"""Faults for the tests: a broker killed and restarted, a producer killed mid-replay, and
what the topic holds after."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from hftpipe_devstack.stack import Stack
from hftpipe_devstack.testing import wait_for
from hftpipe_workers import codec
from hftpipe_workers.bars import Bar, Trade
from hftpipe_workers.contract import Topics
from hftpipe_workers.kafka_admin import read_to_end, reader


def committed_bars(bootstrap: str, topic: str) -> dict[int, list[int]]:
    """Partition -> the seqs of its bars in offset order, as a ``read_committed``
    consumer sees them (records of aborted transactions left out). Read to each
    partition's end (the end-of-partition event): the last offsets may be transaction
    markers, which no consumer is given."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "test-committed-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    out: dict[int, list[int]] = {}
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        for p in sorted(meta.partitions):
            seqs = out.setdefault(p, [])
            consumer.assign([TopicPartition(topic, p, 0)])
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, f"reading {topic}[{p}] stalled"
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        break
                    raise KafkaException(err)
                seqs.append(codec.decode_record(msg.value() or b"").seq)
            consumer.unassign()
    finally:
        consumer.close()
    return out


def topic_records(bootstrap: str, job: str) -> list[Bar | Trade]:
    """Every committed record (bar or trade) of the job's bars topic, by seq."""
    topic = Topics.for_job(job).bars
    consumer = reader({"bootstrap.servers": bootstrap}, f"{topic}.test")
    records: list[Bar | Trade] = []
    try:
        for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                records += [
                    codec.decode_record(m.value() or b"")
                    for m in read_to_end(consumer, topic, p, low, high)
                ]
    finally:
        consumer.close()
    return sorted(records, key=lambda r: r.seq)


def topic_bars(bootstrap: str, job: str) -> list[Bar]:
    """Every committed bar of the job's bars topic, by seq: :func:`topic_records` of a
    topic of bars only."""
    records = topic_records(bootstrap, job)
    bars = [r for r in records if isinstance(r, Bar)]
    assert len(bars) == len(records), f"{len(records) - len(bars)} trade(s) among the bars"
    return bars


def kill_mid_replay(
    cmd: Sequence[str],
    env: dict[str, str],
    bootstrap: str,
    topic: str,
    more: Sequence[int] = (1_200, 2_500),
) -> None:
    """Run the producer ``cmd`` once per entry of ``more``, each time SIGKILLing it once
    that many more records are in ``topic`` than before it started."""
    seen = 0
    for count in more:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def added(target: int = seen + count, proc: subprocess.Popen[bytes] = proc) -> int | None:
            assert proc.poll() is None, "the producer ended before it was killed"
            now = record_count(bootstrap, topic)
            return now if now >= target else None

        wait_for(added, 90, f"{seen + count} records in {topic}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen = record_count(bootstrap, topic)


def record_count(bootstrap: str, topic: str) -> int:
    """Records in the topic, roughly (transaction markers count too): to see progress."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-count"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        )
    except KafkaException:
        return 0  # the broker is away, or the topic's leaders are being elected
    finally:
        consumer.close()


def assert_every_bar_once(by_partition: dict[int, list[int]], rows: int) -> None:
    """Every seq of the file exactly once in the topic, in order within a partition."""
    every = sorted(s for seqs in by_partition.values() for s in seqs)
    missing = sorted(set(range(rows)) - set(every))
    duplicated = len(every) - len(set(every))
    assert not missing, f"{len(missing)} bar(s) missing (first {missing[:5]})"
    assert not duplicated, f"{duplicated} bar(s) duplicated"
    for p, seqs in by_partition.items():
        assert seqs == sorted(seqs), f"partition {p} out of order"


def kafka_pid(stack: Stack) -> int:
    [record] = [r for r in stack.table().records() if r.name == "kafka"]
    return record.pid


def restart_killed(stack: Stack, down_for: float = 0.0) -> None:
    """SIGKILL the broker and start it again on the same data after ``down_for``
    seconds (as a pod restart does)."""
    pid = RESTARTED[-1].pid if RESTARTED else kafka_pid(stack)
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    env = dict(
        line.split(b"=", 1)
        for line in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if b"=" in line
    )
    cwd = os.readlink(f"/proc/{pid}/cwd")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 30, "the broker gone")
    time.sleep(down_for)
    log = open(stack.state_dir / "logs" / "kafka-restarted.log", "ab")  # noqa: SIM115
    restarted = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=log)
    RESTARTED.append(restarted)
    bootstrap = stack.env["KAFKA_BOOTSTRAP_SERVERS"]

    def serves() -> bool:
        assert restarted.poll() is None, f"the restarted broker exited: see {log.name}"
        try:
            return _serves(bootstrap)
        except KafkaException:
            return False

    wait_for(serves, 90, "the restarted broker to serve")


def _serves(bootstrap: str) -> bool:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return bool(admin.list_topics(timeout=5).brokers)


RESTARTED: list[subprocess.Popen[bytes]] = []
"""Brokers restarted by :func:`restart_killed`: the test's fixture stops them."""


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def stop_restarted() -> None:
    """Stop the brokers :func:`restart_killed` started (a test's teardown)."""
    while RESTARTED:
        proc = RESTARTED.pop()
        proc.kill()
        proc.wait()
