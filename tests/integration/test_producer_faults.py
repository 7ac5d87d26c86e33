"""The producer under faults, against real brokers: nothing lost, nothing twice.

Issue 10, points 2 and 15: a delivery that failed (a broker away for longer than the
delivery timeout) must never leave a gap that a restart then skips, and a second
producer of the same job must be fenced, not add duplicates. Each test reads the
bars topic as a consumer does (``read_committed``) and compares it, bar for bar, with
the file.
"""

from __future__ import annotations

import http.server
import os
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from confluent_kafka import KafkaException
from faults import (
    assert_every_bar_once,
    committed_bars,
    record_count,
    restart_killed,
    stop_restarted,
)
from generated import generated_minute_file

from hftpipe_devstack.procs import free_port
from hftpipe_devstack.stack import Stack, ephemeral_stack
from hftpipe_devstack.testing import CLI, produce, serve_http, wait_for
from hftpipe_workers import settings
from hftpipe_workers.contract import Topics
from hftpipe_workers.pacing import Pacing
from hftpipe_workers.producer import Replay
from hftpipe_workers.settings import KafkaSettings

SYMBOLS = 6
BARS_PER_SYMBOL = 5_000


# ------------------------------------------------------------- two producers at once


def test_a_second_producer_of_the_same_job_is_fenced_not_a_source_of_duplicates(
    subprocess_env: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Point 15. Before: both producers exited 0 and the topic held every bar the two
    sent (94,143 duplicates in the fault probe)."""
    job = f"t-fence-{os.getpid()}-{random.randrange(10**6)}"
    source = generated_minute_file(tmp_path / "bars.csv", symbols=SYMBOLS, bars=BARS_PER_SYMBOL)
    rows = SYMBOLS * BARS_PER_SYMBOL
    topics = Topics.for_job(job)

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*CLI, "produce", str(source), "--job", job, "--rate", "6000", "--metrics-port", "-1"],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = start()

    wait_for(
        lambda: record_count(kafka_bootstrap, topics.bars) > 3_000,
        60,
        "the first producer's bars in the topic",
    )
    second = start()
    outs = [p.communicate(timeout=180) for p in (first, second)]
    codes = [first.returncode, second.returncode]
    # The first producer is fenced by the second: it stops, saying so, and the second
    # finishes the replay from what the first had committed.
    assert_every_bar_once(committed_bars(kafka_bootstrap, topics.bars), rows)
    assert codes[1] == 0, outs[1][1][-2000:]
    assert codes[0] != 0, "the first producer went on after a second one took over"
    assert "fenced" in outs[0][1], outs[0][1][-2000:]
    assert job in outs[0][1], outs[0][1][-2000:]


# --------------------------------------------- deliveries that time out, broker faults


@pytest.fixture
def own_kafka() -> Iterator[Stack]:
    """A broker of the test's own: it kills and restarts it."""
    with ephemeral_stack(("kafka",)) as stack:
        yield stack
        stop_restarted()


def test_deliveries_that_time_out_never_leave_a_gap_behind_a_restart(
    own_kafka: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point 2. The broker is stopped (SIGSTOP) for longer than the delivery timeout
    while a paced replay of 6 symbols over 3 partitions runs: the bars queued then time
    out. The producer is run again after each failure, as Kubernetes restarts a Job's
    pod. Before: the bars sent after the broker came back were delivered behind the
    ones that timed out, and the restart took "seq <= last seq of the partition" as
    delivered, so the timed-out bars were lost for good."""
    bootstrap = own_kafka.env["KAFKA_BOOTSTRAP_SERVERS"]
    # A short delivery timeout, so that the outage need not last the default 5 minutes.
    monkeypatch.setitem(settings._PRODUCER_PROFILES["throughput"], "message.timeout.ms", 3_000)
    job = f"t-gap-{random.randrange(10**6)}"
    source = generated_minute_file(tmp_path / "bars.csv", symbols=SYMBOLS, bars=BARS_PER_SYMBOL)
    rows = SYMBOLS * BARS_PER_SYMBOL
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    topics = Topics.for_job(job)

    def outage() -> None:
        # Once the replay is under way, the broker dies and comes back only after
        # more than the delivery timeout (stopping it is not enough: librdkafka does
        # not time out bars queued behind a request in flight).
        wait_for(
            lambda: record_count(bootstrap, topics.bars) > 2_000 and not finished.is_set(),
            60,
            "bars in the topic",
        )
        outage_at.append(time.monotonic())
        restart_killed(own_kafka, down_for=8.0)
        outage_at.append(time.monotonic())

    outage_at: list[float] = []
    finished = threading.Event()
    stopper = threading.Thread(target=outage, daemon=True)
    stopper.start()
    failures: list[str] = []
    for _attempt in range(6):
        replay = Replay(
            job=job,
            source=str(source),
            bars_topic=topics.bars,
            dead_topic=topics.deadletter,
            kafka=kafka,
            pacing=Pacing.parse(rate=1_000),
            partitions=3,
            count_source_rows=False,
            progress=False,
        )
        try:
            replay.run()
            break
        except KafkaException as exc:  # a restart, as the Job's pod would get
            failures.append(str(exc))
            time.sleep(1)
    else:
        pytest.fail(f"the producer never finished: {failures}")
    done_at = time.monotonic()
    finished.set()
    stopper.join(timeout=120)
    # The outage landed mid-replay: the replay ended after the broker was back.
    assert len(outage_at) == 2, "the broker was not killed while the replay ran"
    assert done_at > outage_at[1], "the replay ended before the broker came back"
    assert_every_bar_once(committed_bars(bootstrap, topics.bars), rows)


def test_producer_killed_at_random_points_and_a_broker_restart_sends_every_bar_once(
    own_kafka: Stack, tmp_path: Path
) -> None:
    """Point 2: resume with several symbols on several partitions, the producer
    SIGKILLed at three random points and the broker SIGKILLed and restarted once."""
    bootstrap = own_kafka.env["KAFKA_BOOTSTRAP_SERVERS"]
    env = {**os.environ, **own_kafka.env}
    job = f"t-kills-{random.randrange(10**6)}"
    source = generated_minute_file(tmp_path / "bars.csv", symbols=SYMBOLS, bars=BARS_PER_SYMBOL)
    rows = SYMBOLS * BARS_PER_SYMBOL
    topics = Topics.for_job(job)
    rng = random.Random(11)
    cmd = [*CLI, "produce", str(source), "--job", job, "--rate", "1000", "--metrics-port", "-1"]
    seen = 0
    for kill in range(4):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Kill it once it has added a random number of bars (it takes a moment to start).
        more = seen + rng.randrange(300, 2_500)

        def added(more: int = more) -> int | None:
            n = record_count(bootstrap, topics.bars)
            return n if n >= more else None

        seen = wait_for(added, 90, f"{more} bars in the topic")
        if kill == 2:
            restart_killed(own_kafka, down_for=rng.uniform(1.0, 5.0))  # mid-replay
            time.sleep(rng.uniform(1.0, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen = record_count(bootstrap, topics.bars)
    report = produce(env, job, source)
    assert report["skipped_already_in_kafka"] > 0, "the kills must land mid-replay"
    assert_every_bar_once(committed_bars(bootstrap, topics.bars), rows)


# ------------------------------------------------------------------- a hung producer


class _StallingSource(http.server.BaseHTTPRequestHandler):
    """Serves the head of a CSV file, says there is more, and then sends nothing."""

    body: ClassVar[bytes] = b""
    release: ClassVar[threading.Event] = threading.Event()

    def _headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()

    def do_HEAD(self) -> None:
        self._headers()

    def do_GET(self) -> None:
        self._headers()
        self.wfile.write(self.body[: len(self.body) // 3])
        self.wfile.flush()
        self.release.wait(120)  # the rest never comes (until the test ends)

    def log_message(self, *_args: object) -> None:
        pass


def test_a_producer_whose_source_stops_sending_fails_liveness(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """Issue 10, point 7: the producer's loop beat no heartbeat, so /healthz said 200
    while it hung on a source that stopped sending (an HTTP or S3 read without end):
    the kubelet never restarted it. Now its liveness fails after --stall-seconds."""
    source = generated_minute_file(tmp_path / "bars.csv", symbols=2, bars=20_000)
    _StallingSource.body = source.read_bytes()
    _StallingSource.release.clear()
    port = free_port()
    job = f"t-hung-{random.randrange(10**6)}"
    with serve_http(_StallingSource) as base:
        proc = subprocess.Popen(
            [*CLI, "produce", f"{base}/bars.csv", "--job", job, "--metrics-port", str(port),
             "--stall-seconds", "3"],
            env=subprocess_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: _health(port) == 200, 60, "the producer's /healthz to answer 200")
            wait_for(lambda: _health(port) == 503, 30, "/healthz to say the producer stalled")
        finally:
            _StallingSource.release.set()
            proc.kill()
            proc.wait()


def _health(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None  # not listening yet
