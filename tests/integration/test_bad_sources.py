"""Bad sources, replayed for real by ``hftpipe produce`` against the real broker (issue 10).

Every source that cannot be replayed ends in one line on stderr that names the file (or
URL), the line where it applies and the cause, with a non-zero exit, no traceback and
no hang; and no topic of the job is left behind, because topics are created only after
the source opened and its header was understood (and, for a compressed file, after it
was read to its end to count the rows). Sources that can be replayed despite a flaw (a
20 MB line, ``\\r\\r\\n`` line ends, UTF-16 text, values that are not prices) are: the
flawed rows become dead letters with a bounded excerpt, a rerun resumes.

Only 127.0.0.1 is contacted: HTTP from a local ``http.server``, S3 from moto's server
(``hftpipe_devstack.testing.s3_endpoint``), with the SDK's instance-metadata lookup off.
"""

from __future__ import annotations

import gzip
import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from hftpipe_devstack.procs import free_port
from hftpipe_devstack.testing import http_server, run_produce, s3_endpoint
from hftpipe_workers.contract import Topics
from hftpipe_workers.producer import count_rows, iter_dead_letters
from hftpipe_workers.settings import KafkaSettings

HEADER = "timestamp,open,high,low,close,volume\n"
T0 = 1_704_067_200  # 2024-01-01 00:00:00 UTC
ROWS = 500


def rows(count: int = ROWS, first: int = T0) -> str:
    return "".join(f"{first + 60 * i},100,101,99,100.5,3\n" for i in range(count))


SECONDS = 120
"""Longest a run may take, start-up included (a hang would take the subprocess's 300 s)."""


@dataclass(frozen=True)
class Run:
    job: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    @property
    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.stdout.strip().splitlines()[-1])
        return report


def produce(env: dict[str, str], source: str | Path, *args: str, job: str = "") -> Run:
    job = job or f"bad-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    done = run_produce(env, job, source, "--symbol", "BTCUSDT", *args)
    return Run(job, done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def job_topics(bootstrap: str, job: str) -> list[str]:
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return sorted(t for t in topics if f".{job}." in t)


def assert_refused(run: Run, bootstrap: str, *, names: str, cause: str) -> None:
    """Non-zero exit, no traceback, in bounded time, stderr's last line naming the file
    and the cause, and no topic of the job left behind."""
    tail = run.stderr[-3000:]
    assert run.returncode != 0, tail
    assert "Traceback" not in run.stderr, tail
    assert run.seconds < SECONDS, (run.seconds, tail)
    assert names in run.last_line, tail
    assert cause.lower() in run.last_line.lower(), tail
    assert job_topics(bootstrap, run.job) == [], tail


def assert_replayed(run: Run) -> dict[str, Any]:
    tail = run.stderr[-3000:]
    assert run.returncode == 0, tail
    assert "Traceback" not in run.stderr, tail
    assert run.seconds < SECONDS, (run.seconds, tail)
    return run.report


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-sources")


# ---------------------------------------------------------------- files that are no CSV


def test_an_empty_file(data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str) -> None:
    path = data / "empty.csv"
    path.write_bytes(b"")
    assert_refused(produce(subprocess_env, path), kafka_bootstrap, names=str(path), cause="empty")


def test_a_file_with_a_header_and_no_rows(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    path = data / "header-only.csv"
    path.write_text(HEADER)
    run = produce(subprocess_env, path)
    assert_refused(run, kafka_bootstrap, names=f"{path}:", cause="no data row")
    assert "nan" not in run.stderr.lower()


def test_binary_garbage(data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str) -> None:
    rng = random.Random(20240101)
    garbage = bytearray(rng.randbytes(256 * 1024))
    garbage[10:12] = b"\r\x07"  # a carriage return inside the first "line", as in the probe
    path = data / "garbage.csv"
    path.write_bytes(bytes(garbage))
    run = produce(subprocess_env, path)
    assert_refused(run, kafka_bootstrap, names=f"{path}:1:", cause="not UTF-8 text")


def test_a_utf16_file_is_decoded(data: Path, subprocess_env: dict[str, str]) -> None:
    path = data / "utf16.csv"
    path.write_bytes((HEADER + rows()).encode("utf-16"))  # with a byte-order mark
    assert count_rows(str(path)) == ROWS
    run = produce(subprocess_env, path)
    report = assert_replayed(run)
    assert (report["produced"], report["dead_lettered"]) == (ROWS, 0), run.stderr[-2000:]
    assert "UTF-16" in run.stderr


def test_a_gzip_file_cut_short(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    whole = gzip.compress((HEADER + rows(20_000)).encode())
    path = data / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    run = produce(subprocess_env, path)
    assert_refused(run, kafka_bootstrap, names=f"{path}:", cause="truncated")
    # The line it got to: the rows before it were read (and counted).
    line = int(run.last_line.split(f"{path}:")[1].split(":")[0])
    assert 1_000 < line < 20_000, run.last_line


# ------------------------------------------------------------------ lines that are odd


def test_lines_ending_in_cr_cr_lf_are_read(data: Path, subprocess_env: dict[str, str]) -> None:
    path = data / "crcrlf.csv"
    path.write_bytes((HEADER + rows()).replace("\n", "\r\r\n").encode())
    report = assert_replayed(produce(subprocess_env, path))
    assert (report["produced"], report["dead_lettered"]) == (ROWS, 0), report


def test_a_20_mb_line_is_a_bounded_dead_letter_and_a_rerun_resumes(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    long_line = f"{'9' * 20_000_000},100,101,99,100.5,3"  # a time no clock reaches
    path = data / "long-line.csv"
    path.write_text(HEADER + rows(100) + long_line + "\n" + rows(100, T0 + 60 * 100))
    first = produce(subprocess_env, path, "--dead-letter-excerpt", "80")
    report = assert_replayed(first)
    assert (report["produced"], report["dead_lettered"]) == (200, 1), report
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    (dead,) = iter_dead_letters(kafka, Topics.for_job(first.job).deadletter)
    assert dead["line"] == 102
    assert dead["kind"] == "time"
    assert dead["text"] == f"{'9' * 80}... [{len(long_line) - 80:,} more characters]"
    assert len(dead["reason"]) < 300, dead["reason"]
    again = assert_replayed(produce(subprocess_env, path, job=first.job))
    assert (again["produced"], again["skipped_already_in_kafka"]) == (0, 200), again


def test_values_that_are_no_prices_are_still_dead_lettered(
    data: Path, subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    bad = {3: "NaN,101,99,100,3", 5: "inf,101,99,100,3", 7: "100,101,99,100,-3"}
    lines = rows(10).splitlines()
    for line, values in bad.items():
        lines[line - 2] = f"{T0 + 60 * (line - 2)},{values}"
    path = data / "values.csv"
    path.write_text(HEADER + "\n".join(lines) + "\n")
    run = produce(subprocess_env, path)
    report = assert_replayed(run)
    assert (report["produced"], report["dead_lettered"]) == (7, 3), report
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    dead = iter_dead_letters(kafka, Topics.for_job(run.job).deadletter)
    assert sorted((d["line"], d["kind"]) for d in dead) == [
        (3, "not_finite"),
        (5, "not_finite"),
        (7, "negative_volume"),
    ]


# ----------------------------------------------------------------- remote sources


@pytest.fixture(scope="module")
def http_root(data: Path) -> Iterator[str]:
    with http_server(data) as root:
        yield root


def test_an_http_404(http_root: str, subprocess_env: dict[str, str], kafka_bootstrap: str) -> None:
    url = f"{http_root}/not-there.csv.gz"
    run = produce(subprocess_env, url)
    assert_refused(run, kafka_bootstrap, names=url, cause="HTTP 404")


def test_an_unreachable_host(subprocess_env: dict[str, str], kafka_bootstrap: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/bars.csv"  # nothing listens there
    run = produce(subprocess_env, url)
    assert_refused(run, kafka_bootstrap, names=url, cause="connection refused")


S3_URL = "s3://market-data/bad/bars.csv"


@pytest.fixture(scope="module")
def s3_env(data: Path) -> Iterator[dict[str, str]]:
    path = data / "s3-bars.csv"
    path.write_text(HEADER + rows())
    with s3_endpoint({S3_URL: path}) as env:
        yield env


def s3_env_without(base: dict[str, str], s3_env: dict[str, str], *names: str) -> dict[str, str]:
    """The endpoint without the named variables, and no other way to credentials: no
    shared files, no instance metadata (which would be a call to 169.254.169.254)."""
    env = {**base, **s3_env}
    for name in (*names, "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        env.pop(name, None)
    env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = "/nonexistent/aws"
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def test_s3_without_credentials(
    s3_env: dict[str, str], subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    env = s3_env_without(subprocess_env, s3_env, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    run = produce(env, S3_URL)
    assert_refused(run, kafka_bootstrap, names=S3_URL, cause="AWS_ACCESS_KEY_ID")
    assert "AWS_SECRET_ACCESS_KEY" in run.last_line


def test_s3_without_the_secret_key(
    s3_env: dict[str, str], subprocess_env: dict[str, str], kafka_bootstrap: str
) -> None:
    env = s3_env_without(subprocess_env, s3_env, "AWS_SECRET_ACCESS_KEY")
    run = produce(env, S3_URL)
    assert_refused(run, kafka_bootstrap, names=S3_URL, cause="AWS_SECRET_ACCESS_KEY is missing")
