"""The production ACLs on a broker that enforces them (issue 10, point 12).

The producer's resume consumer group (``hftpipe-producer-resume``) lay outside the
``hftpipe.`` prefix that ``values-production.yaml``'s KafkaUser grants: on a cluster
with ACLs the producer could not read where it stopped. No test could see it, because
the local broker let everyone do everything. This module starts its own broker with
SASL/SCRAM-SHA-512 and KRaft's StandardAuthorizer (``allow.everyone.if.no.acl.found``
false), creates the user that the stack chart renders with the production values and
applies the ACLs of that very manifest (nothing copied by hand), then runs a job from
CSV to DuckDB and Redis as that user, the producer twice, and reads the job's offsets as
the operator does.
"""

from __future__ import annotations

import gzip
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from unittest import mock

import duckdb
import pytest
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from hftpipe_devstack import kafkauser
from hftpipe_devstack.components import scram_env
from hftpipe_devstack.stack import Stack, ephemeral_stack
from hftpipe_devstack.testing import produce, run_worker, wait_for
from hftpipe_operator.kafka_facts import read_offsets
from hftpipe_workers.contract import RedisKeys, Topics, job_id
from hftpipe_workers.producer import iter_dead_letters
from hftpipe_workers.settings import KafkaSettings

SHARED_BTC: Final = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "btcusdt_1h_binance.csv.gz"
)
BARS: Final = 3_000
"""Rows of the job (one symbol): a few seconds of work for each worker."""
UNSTORABLE_LINE: Final = 1_501
"""The line of the one bar the warehouse cannot store (see :func:`job_file`)."""
WINDOWS: Final = ("1h", "1d")
NAMESPACE: Final = "trading"
"""Workers of a ReplayJob name everything by ``<namespace>.<job>``: the prefix must
cover that, not only hand-run jobs."""
PRODUCTION: Final = kafkauser.STACK_CHART / "values-production.yaml"


@pytest.fixture(scope="module")
def scram_stack() -> Iterator[Stack]:
    """Kafka with SASL/SCRAM and ACLs enforced, and Redis: this module's own stack."""
    with ephemeral_stack(("kafka", "redis"), kafka_scram=True) as running:
        yield running


def settings_of(env: dict[str, str]) -> KafkaSettings:
    """The Kafka settings a worker started with ``env`` reads."""
    with mock.patch.dict(os.environ, env):
        return KafkaSettings()


@pytest.fixture(scope="module")
def workers_user(scram_stack: Stack) -> dict[str, Any]:
    """The production values' KafkaUser, created on the broker with its chart ACLs."""
    user = kafkauser.rendered_user([PRODUCTION])
    password = secrets.token_urlsafe(18)
    admin = settings_of(scram_stack.env).common()
    kafkauser.apply(admin, user, password)
    user_env = scram_env({"sasl.username": user["metadata"]["name"], "sasl.password": password})
    config = settings_of({**scram_stack.env, **user_env}).common()
    # SCRAM credentials reach the broker through the metadata log: wait until they do.
    wait_for(lambda: _authenticates(config), timeout=30, what="the new SCRAM user to authenticate")
    return {"manifest": user, "env": user_env, "config": config}


def _authenticates(config: dict[str, str | int | float | bool]) -> bool:
    try:
        AdminClient({**config, "log_level": 0}).list_topics(timeout=3)
    except KafkaException:
        return False
    return True


@pytest.fixture
def worker_env(scram_stack: Stack, workers_user: dict[str, Any]) -> dict[str, str]:
    """What a worker pod of a ReplayJob in ``NAMESPACE`` gets: the user's credentials."""
    return {
        **os.environ,
        **scram_stack.env,
        **workers_user["env"],
        "HFTPIPE_NAMESPACE": NAMESPACE,
    }


def _code(error: Any) -> int:
    if isinstance(error, KafkaException):
        error = error.args[0]
    assert isinstance(error, KafkaError), error
    return int(error.code())


def test_the_workers_user_is_refused_outside_its_acls(
    scram_stack: Stack, workers_user: dict[str, Any]
) -> None:
    user = workers_user["config"]
    admin = AdminClient(settings_of(scram_stack.env).common())
    for future in admin.create_topics([NewTopic("other.x", 1, 1)]).values():
        future.result(30)

    failures: list[KafkaError | None] = []
    producer = Producer({**user, "message.timeout.ms": 10_000})
    producer.produce("other.x", b"x", on_delivery=lambda err, _msg: failures.append(err))
    producer.flush(15)
    assert [e and e.code() for e in failures] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]

    as_user = AdminClient(user)  # kept: a collected client drops its pending requests
    with pytest.raises(KafkaException) as created:
        as_user.create_topics([NewTopic("other.y", 1, 1)])["other.y"].result(30)
    assert _code(created.value) == KafkaError.TOPIC_AUTHORIZATION_FAILED

    # A reader in a group outside `hftpipe.`, as the producer's resume was (it assigns, but
    # librdkafka looks up the group's coordinator all the same): refused.
    for future in admin.create_topics([NewTopic("hftpipe.probe.bars", 1, 1)]).values():
        future.result(30)
    for group in ("hftpipe-producer-resume", "other"):
        assert _group_errors(user, group, "hftpipe.probe.bars") == {
            KafkaError.GROUP_AUTHORIZATION_FAILED
        }, group


def _group_errors(
    config: dict[str, str | int | float | bool], group: str, topic: str, timeout: float = 20
) -> set[int]:
    """The error codes a consumer in ``group`` that reads ``topic`` by assignment gets,
    until the first one (or ``timeout``)."""
    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            error = msg.error() if msg is not None else None
            if error is not None:
                return {int(error.code())}
        return set()
    finally:
        consumer.close()


def job_file(path: Path) -> Path:
    """The first ``BARS`` hourly BTC bars, one of them at a time the warehouse cannot
    store (a nanosecond part): the loader sets that bar aside as a dead letter, so when
    the producer restarts, a consumer's letter is the last on the dead-letter topic and
    the producer's resume reads the dead letters too (issue 10, point 3)."""
    with gzip.open(SHARED_BTC, "rt") as full:
        lines = [line for _, line in zip(range(BARS + 1), full, strict=False)]
    date, rest = lines[UNSTORABLE_LINE - 1].split(",", 1)
    lines[UNSTORABLE_LINE - 1] = f"{date}.000000001,{rest}"
    path.write_text("".join(lines))
    return path


def test_a_job_runs_end_to_end_as_the_production_kafka_user(
    scram_stack: Stack, workers_user: dict[str, Any], worker_env: dict[str, str], tmp_path: Path
) -> None:
    source = job_file(tmp_path / "btc.csv")
    job = f"acl-{secrets.token_hex(4)}"
    jid = job_id(job, NAMESPACE)

    first = produce(worker_env, job, source, "--symbol", "BTCUSDT", "--speed", "max")
    assert first["produced"] == BARS, first
    db = tmp_path / "wh.duckdb"
    for command, args in (
        ("process", ("--windows", ",".join(WINDOWS))),
        ("load", ("--warehouse", f"duckdb:///{db}")),
    ):
        done = run_worker(worker_env, command, job, *args, "--until-caught-up")
        assert done.returncode == 0, (command, done.stderr[-3000:])
    # Restarted on the same job: it reads where it stopped and adds nothing.
    again = produce(worker_env, job, source, "--symbol", "BTCUSDT", "--speed", "max")
    assert again["skipped_already_in_kafka"] == BARS, again
    assert again["produced"] == 0, again

    stored = BARS - 1  # every bar once, but the one set aside
    with duckdb.connect(str(db), read_only=True) as con:
        rows, keys = con.execute(
            "SELECT count(*), count(DISTINCT (symbol, bar_time)) FROM bars WHERE job = ?", [jid]
        ).fetchone() or (0, 0)
        per_window = dict(
            con.execute(
                'SELECT "window", count(DISTINCT (symbol, bar_time)) FROM bar_metrics '
                'WHERE job = ? GROUP BY "window"',
                [jid],
            ).fetchall()
        )
    assert rows == keys == stored
    assert per_window == dict.fromkeys(WINDOWS, stored)
    admin = settings_of(scram_stack.env)
    letters = list(iter_dead_letters(admin, Topics.for_job(jid).deadletter))
    assert [(d["worker"], d["kind"]) for d in letters] == [("loader", "time_precision")] * 2

    client = redis.Redis.from_url(scram_stack.env["REDIS_URL"])
    latest = client.hgetall(RedisKeys(jid).latest("BTCUSDT"))
    client.close()
    assert int(latest[b"seq"]) == BARS - 1

    # The operator reads the job's offsets with the same user (its status).
    facts = read_offsets(workers_user["config"], jid, timeout=10)
    assert facts.rows_produced == facts.rows_processed == facts.rows_loaded == BARS
    assert sum(facts.metrics_end.values()) == BARS
    assert facts.lag == 0
    assert facts.producer_progress is not None, Topics.for_job(jid).progress
