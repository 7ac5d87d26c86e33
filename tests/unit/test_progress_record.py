"""The producer's progress record: its topic, its encoding, how the producer keeps it (and its
metrics) current while it sends, and how the operator reads it into the status. Pure or with
fakes in place of Kafka."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from prometheus_client import REGISTRY as OPERATOR_REGISTRY

from hftpipe_operator import builders, kafka_facts, metrics
from hftpipe_operator.spec import ReplayJob, ReplayJobSpec
from hftpipe_operator.status import (
    Observed,
    OffsetFacts,
    ProducerFacts,
    SourceStatus,
    WorkerFacts,
    roll_up,
)
from hftpipe_workers import producer as producer_module
from hftpipe_workers.bars import Bar
from hftpipe_workers.contract import (
    JOB_TOPIC_CONFIG,
    PROGRESS_TOPIC_CONFIG,
    ProducerProgress,
    Topics,
)
from hftpipe_workers.csvformat import BarBatch, ParsedChunk
from hftpipe_workers.deadletters import excerpt
from hftpipe_workers.observability import REGISTRY
from hftpipe_workers.pacing import Pacer, Pacing
from hftpipe_workers.producer import (
    SLICE_BARS,
    Replay,
    ReplayReport,
    ResumePoint,
    _LiveState,
    progress_record,
)
from hftpipe_workers.settings import KafkaSettings
from hftpipe_workers.sourceinfo import Reading, SourceSummary

RECORD = ProducerProgress(
    rows_total=1000,
    rows_read=400,
    produced=390,
    dead_lettered=7,
    out_of_range=3,
    done=False,
    updated_at="2024-05-01T12:00:00.000Z",
)

# ----------------------------------------------------------------- topic and record


def test_the_progress_topic_is_named_like_the_others_and_compacted() -> None:
    topics = Topics.for_job("btc")
    assert topics.progress == "hftpipe.btc.progress"
    assert PROGRESS_TOPIC_CONFIG == {"cleanup.policy": "compact"}


def test_a_record_round_trips_as_small_json() -> None:
    value = RECORD.encode()
    assert json.loads(value) == {
        "rows_total": 1000,
        "rows_read": 400,
        "produced": 390,
        "dead_lettered": 7,
        "out_of_range": 3,
        "done": False,
        "updated_at": "2024-05-01T12:00:00.000Z",
    }
    assert b" " not in value
    assert ProducerProgress.decode(value) == RECORD
    assert ProducerProgress.KEY == b"producer"


def test_decoding_ignores_fields_a_newer_producer_adds() -> None:
    doc = {**json.loads(RECORD.encode()), "bytes": 123}
    assert ProducerProgress.decode(json.dumps(doc).encode()) == RECORD


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps({**json.loads(RECORD.encode()), "rows_read": -1}).encode(),
        json.dumps({**json.loads(RECORD.encode()), "rows_read": True}).encode(),
        json.dumps({**json.loads(RECORD.encode()), "rows_read": 1.5}).encode(),
        json.dumps({**json.loads(RECORD.encode()), "done": 1}).encode(),
        json.dumps({k: v for k, v in json.loads(RECORD.encode()).items() if k != "produced"}),
    ],
)
def test_decoding_refuses_what_is_not_a_progress_record(value: bytes | str | None) -> None:
    raw = value.encode() if isinstance(value, str) else value
    with pytest.raises(ValueError, match="progress record"):
        ProducerProgress.decode(raw)


def test_the_record_of_a_report_counts_the_source_so_far() -> None:
    report = ReplayReport(
        produced=300, skipped_already_in_kafka=90, dead_lettered=2, out_of_range=3, rows_read=400
    )
    record = progress_record(report, rows_total=1000, rejected=7)
    # Bars of the source in the topic: this run's and those an earlier run sent.
    assert replace(record, updated_at="") == replace(RECORD, updated_at="")
    assert record.updated_at.endswith("Z")
    sent_at = datetime.fromisoformat(record.updated_at)
    assert abs((datetime.now(UTC) - sent_at).total_seconds()) < 60
    assert progress_record(report, rows_total=1000, rejected=7, done=True).done


READING = Reading(
    format="CSV text (UTF-8), semicolon-separated, a header line",
    layout="generic (time=Date+Time, open=Open, high=High, low=Low, close=Close)",
    time="column Date+Time as %Y.%m.%d %H:%M",
    time_zone="UTC (times without an offset are UTC)",
)


def _summary(*times_ns: int) -> SourceSummary:
    summary = SourceSummary("eurusd.csv")
    bars = [Bar("EURUSD", t, 1.0, 2.0, 0.5, 1.5, 10.0, i, i + 2) for i, t in enumerate(times_ns)]
    summary.add(ParsedChunk(BarBatch.from_bars(bars), [], 0, 0))
    return summary


def test_the_record_says_how_the_source_is_read_and_the_span_of_its_events() -> None:
    report = ReplayReport(produced=2, rows_read=2)
    first, last = 1_483_315_200_000_000_000, 1_483_315_260_500_000_000
    record = progress_record(
        report, rows_total=2, rejected=0, reading=READING, summary=_summary(last, first)
    )
    assert (record.format, record.layout, record.time, record.time_zone) == tuple(READING)[:4]
    assert (record.first_event, record.last_event) == (
        "2017-01-02T00:00:00Z",
        "2017-01-02T00:01:00.5Z",
    )
    assert ProducerProgress.decode(record.encode()) == record
    # Before any bar is read: how the file is read, no span yet (and none of it encoded).
    early = progress_record(report, rows_total=2, rejected=0, reading=READING, summary=_summary())
    assert (early.first_event, early.last_event) == ("", "")
    assert b"first_event" not in early.encode()


def test_a_record_of_an_older_producer_still_decodes_without_the_source_facts() -> None:
    old = json.loads(RECORD.encode())
    decoded = ProducerProgress.decode(json.dumps(old).encode())
    assert decoded == RECORD
    assert SourceStatus.of(decoded) is None


def _status(record: ProducerProgress | None, previous: Any = None) -> Any:
    job = ReplayJob(
        "eurusd",
        "markets",
        ReplayJobSpec.model_validate(
            {
                "source": {"url": "/data/eurusd.csv"},
                "kafka": {"bootstrapServers": "kafka:9092"},
                "redis": {"url": "redis://redis:6379/0"},
            }
        ),
    )
    offsets = (
        None
        if record is None
        else OffsetFacts(
            bars_end={0: 390},
            metrics_end={0: 390},
            processor={0: 390},
            loader_bars={0: 390},
            loader_metrics={0: 390},
            producer_progress=record,
        )
    )
    ready = WorkerFacts(exists=True, desired=1, ready=1)
    return roll_up(
        job,
        Observed(
            now=datetime(2024, 5, 1, 12, tzinfo=UTC),
            generation=1,
            producer=ProducerFacts.from_job({"status": {"active": 1}}),
            processor=ready,
            loader=ready,
            offsets=offsets,
        ),
        previous,
    )


def test_the_status_shows_the_source_as_read_and_the_rows_set_aside() -> None:
    record = replace(
        RECORD,
        format=READING.format,
        layout=READING.layout,
        time=READING.time,
        time_zone=READING.time_zone,
        first_event="2017-01-02T00:00:00Z",
        last_event="2017-01-02T13:19:00Z",
    )
    status = _status(record)
    patch = status.to_patch()
    assert patch["source"] == {
        "format": READING.format,
        "layout": READING.layout,
        "time": READING.time,
        "timeZone": READING.time_zone,
        "firstEventTime": "2017-01-02T00:00:00Z",
        "lastEventTime": "2017-01-02T13:19:00Z",
    }
    assert (patch["progress"]["rowsSetAside"], patch["progress"]["rowsOutOfRange"]) == (7, 3)
    # Kafka not reachable on the next look: the status keeps what it showed.
    assert _status(None, previous=status).source == status.source


def test_a_producers_odd_source_facts_never_make_the_status_invalid() -> None:
    record = replace(
        RECORD, layout="x" * 5000, first_event="yesterday", last_event="2017-01-02T13:19:00Z"
    )
    source = SourceStatus.of(record)
    assert source is not None
    assert source.layout is not None
    assert len(source.layout) == 512
    assert source.layout.endswith("…")
    assert source.first_event_time is None  # not a time: left out
    assert source.last_event_time == "2017-01-02T13:19:00Z"
    assert _status(record).to_patch()["source"]["layout"] == source.layout


# --------------------------------------------------------- the producer, live


class FakeProducer:
    """Records what is produced; never full. Transactional, as the producer's is: a
    record outside a transaction is refused (librdkafka raises _STATE)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes, dict[str, Any]]] = []
        self.open = False
        self.commits = 0

    def begin_transaction(self) -> None:
        assert not self.open, "a transaction begun inside another"
        self.open = True

    def commit_transaction(self, _timeout: float | None = None) -> None:
        assert self.open, "a commit without a transaction"
        self.open = False
        self.commits += 1

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int = -1,
        **kwargs: Any,
    ) -> None:
        # Positional or keywords, as confluent-kafka's produce takes them.
        assert self.open, f"a record to {topic} outside a transaction"
        self.records.append((topic, key, value, {"partition": partition, **kwargs}))

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def on(self, topic: str) -> list[tuple[bytes | None, bytes, dict[str, Any]]]:
        return [(k, v, kw) for t, k, v, kw in self.records if t == topic]


def _sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _batch(n: int) -> BarBatch:
    start, minute = 1_700_000_000_000_000_000, 60_000_000_000
    return BarBatch.from_bars(
        [Bar("BTCUSDT", start + i * minute, 1.0, 2.0, 0.5, 1.5, 10.0, i, i + 2) for i in range(n)]
    )


def _replay(job: str) -> Replay:
    return Replay(
        job=job,
        source="unused.csv",
        bars_topic=Topics.for_job(job).bars,
        dead_topic=Topics.for_job(job).deadletter,
        kafka=KafkaSettings(),
        pacing=Pacing("max"),
        progress=False,
    )


def test_the_producer_counts_records_out_per_slice_and_writes_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = "live-slices"
    replay = _replay(job)
    replay._live_state = _LiveState(progress=True, rows_total=3 * SLICE_BARS)
    fake = FakeProducer()
    counted: list[tuple[float, float]] = []
    real_live = Replay._live

    def spy(self: Replay, producer: Producer, report: ReplayReport, *, done: bool = False) -> None:
        real_live(self, producer, report, done=done)
        counted.append(
            (
                _sample(
                    "hftpipe_records_out_total",
                    {"worker": "producer", "job": job, "sink": self.bars_topic},
                ),
                _sample("hftpipe_replay_rows_done", {"job": job}),
            )
        )

    monkeypatch.setattr(Replay, "_live", spy)
    report = ReplayReport()
    n = 2 * SLICE_BARS + 5
    replay._send(
        cast(Producer, fake),
        _batch(n),
        3,
        ResumePoint(last_seq={producer_module.partition_for("BTCUSDT", 3): 4}),
        Pacer(Pacing("max")),
        time.monotonic(),
        report,
    )
    # Three slices: the counter and the gauge move after each, not once at the end.
    assert counted == [
        (SLICE_BARS - 5, SLICE_BARS),
        (2 * SLICE_BARS - 5, 2 * SLICE_BARS),
        (n - 5, n),
    ]
    assert (report.produced, report.skipped_already_in_kafka, report.rows_read) == (n - 5, 5, n)
    assert len(fake.on(replay.bars_topic)) == n - 5
    # One progress record in the first second, keyed for compaction, to partition 0.
    (progress,) = fake.on(replay.progress_topic)
    key, value, kwargs = progress
    assert key == ProducerProgress.KEY
    assert kwargs["partition"] == 0
    assert ProducerProgress.decode(value).rows_read == SLICE_BARS
    assert ProducerProgress.decode(value).rows_total == 3 * SLICE_BARS
    bytes_out = _sample(
        "hftpipe_bytes_out_total", {"worker": "producer", "job": job, "sink": replay.bars_topic}
    )
    assert bytes_out > 0

    # The last record says done, even right after another one.
    real_live(replay, cast(Producer, fake), report, done=True)
    last = ProducerProgress.decode(fake.on(replay.progress_topic)[-1][1])
    assert (last.done, last.rows_read, last.produced) == (True, n, n)


def test_no_progress_record_without_the_topic_or_without_change() -> None:
    replay = _replay("live-quiet")
    fake = FakeProducer()
    report = ReplayReport(rows_read=10, produced=10)
    replay._live_state = _LiveState(progress=False)
    replay._live(cast(Producer, fake), report, done=True)
    assert fake.records == []

    replay._live_state = _LiveState(progress=True)
    replay._live(cast(Producer, fake), report)
    replay._live_state.record_at = float("-inf")  # a second later...
    replay._live(cast(Producer, fake), report)  # ...but nothing changed: no record
    assert len(fake.records) == 1


# -------------------------------------------------------------- the operator side


class FakeConsumer:
    """Serves one partition's last record and then its end, as the operator's reader
    would read it (a commit marker after it is never delivered)."""

    def __init__(self, watermarks: tuple[int, int], value: bytes | None) -> None:
        self.watermarks, self.value = watermarks, value
        self.assigned: list[TopicPartition] = []
        self.unassigned = False

    def get_watermark_offsets(
        self, _tp: TopicPartition, timeout: float, cached: bool = False
    ) -> tuple[int, int]:
        return self.watermarks

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions
        self.served = False

    def unassign(self) -> None:
        self.unassigned = True

    def poll(self, _timeout: float) -> Any:
        if self.value is None:
            return None
        value, topic = self.value, self.assigned[0].topic
        offset = self.watermarks[1] - 2  # the last record; a commit marker after it
        end, self.served = self.served, True

        class Message:
            def error(self) -> KafkaError | None:
                return KafkaError(KafkaError._PARTITION_EOF) if end else None

            def topic(self) -> str:
                return topic

            def offset(self) -> int:
                return offset

            def value(self) -> bytes:
                return value

        return Message()


def test_the_operator_reads_the_last_record_of_partition_0() -> None:
    fake = FakeConsumer((0, 42), RECORD.encode())
    topic = Topics.for_job("btc").progress
    got = kafka_facts.last_progress(cast(Consumer, fake), topic, [0], timeout=1)
    assert got == RECORD
    (tp,) = fake.assigned
    # Read from a little before the end, to the end: offset 41 is a commit marker.
    assert (tp.topic, tp.partition, tp.offset) == (topic, 0, 0)
    assert fake.unassigned


@pytest.mark.parametrize(
    ("partitions", "watermarks", "value"),
    [
        ([], (0, 5), RECORD.encode()),  # no progress topic
        ([0], (0, 0), RECORD.encode()),  # no record yet
        ([0], (7, 7), RECORD.encode()),  # none left
        ([0], (0, 5), b"garbage"),  # not a progress record
        ([0], (0, 5), None),  # nothing arrives within the timeout
    ],
)
def test_the_operator_gets_none_without_a_readable_record(
    partitions: list[int], watermarks: tuple[int, int], value: bytes | None
) -> None:
    fake = FakeConsumer(watermarks, value)
    topic = Topics.for_job("btc").progress
    assert kafka_facts.last_progress(cast(Consumer, fake), topic, partitions, timeout=0.2) is None


def test_deleting_a_jobs_topics_includes_its_progress_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []

    class Admin:
        def __init__(self, _config: Any) -> None: ...

        def delete_topics(self, names: list[str], **_: Any) -> dict[str, Any]:
            asked.extend(names)

            class Done:
                def result(self, timeout: float) -> None:
                    return None

            return {name: Done() for name in names}

    monkeypatch.setattr(kafka_facts, "AdminClient", Admin)
    deleted = kafka_facts.delete_topics({}, "btc", 1)
    topics = Topics.for_job("btc")
    assert deleted == asked == [topics.bars, topics.metrics, topics.deadletter, topics.progress]


def test_the_strimzi_progress_topic_is_a_compacted_kafkatopic() -> None:
    job = ReplayJob(
        "btc",
        "markets",
        ReplayJobSpec.model_validate(
            {
                "source": {"url": "/data/btc.csv"},
                "kafka": {"strimziCluster": {"name": "events"}},
                "redis": {"url": "redis://redis:6379/0"},
            }
        ),
    )
    by_name = {t["metadata"]["name"]: t for t in builders.build_topic_kafkatopics(job)}
    progress = by_name[Topics.for_job(job.job_id).progress]
    assert progress["spec"] == {
        "partitions": 1,
        "config": {**JOB_TOPIC_CONFIG, **PROGRESS_TOPIC_CONFIG},
    }
    assert by_name[Topics.for_job(job.job_id).bars]["spec"]["config"] == JOB_TOPIC_CONFIG


def test_the_status_shows_rows_in_the_source_and_rows_read_from_the_record() -> None:
    job = ReplayJob(
        "btc",
        "markets",
        ReplayJobSpec.model_validate(
            {
                "source": {"url": "/data/btc.csv"},
                "kafka": {"bootstrapServers": "kafka:9092"},
                "redis": {"url": "redis://redis:6379/0"},
            }
        ),
    )
    offsets = OffsetFacts(
        bars_end={0: 390},
        metrics_end={0: 195},
        processor={0: 195},
        loader_bars={0: 195},
        loader_metrics={0: 195},
        producer_progress=RECORD,
    )
    progress = offsets.producer_progress
    assert progress is not None
    producer = ProducerFacts.from_job(
        {"status": {"active": 1}}, rows_total=progress.rows_total, rows_read=progress.rows_read
    )
    ready = WorkerFacts(exists=True, desired=1, ready=1)
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    status = roll_up(
        job,
        Observed(
            now=now, generation=1, producer=producer, processor=ready, loader=ready, offsets=offsets
        ),
    )
    assert status.progress is not None
    assert (status.progress.rows_total, status.progress.rows_read) == (1000, 400)
    # 40% read, half of it through the pipeline.
    assert status.progress.percent == "20.0%"
    dumped = status.to_patch()["progress"]
    assert (dumped["rowsTotal"], dumped["rowsRead"]) == (1000, 400)


# ------------------------------------------------------------------ phase metric


def _phase(namespace: str, job: str, phase: str) -> float | None:
    return OPERATOR_REGISTRY.get_sample_value(
        "hftpipe_operator_job_phase", {"namespace": namespace, "job": job, "phase": phase}
    )


def test_the_phase_of_each_job_is_one_for_its_phase_and_gone_with_the_job() -> None:
    book = metrics.PhaseBook()
    book.set("phase-ns", "a", "Running")
    book.set("phase-ns", "b", "Failed")
    book.export()
    assert _phase("phase-ns", "a", "Running") == 1
    assert _phase("phase-ns", "a", "Pending") == 0
    assert _phase("phase-ns", "b", "Failed") == 1
    assert {p: _phase("phase-ns", "a", p) for p in metrics.PHASES} == {
        "Pending": 0, "Running": 1, "Succeeded": 0, "Failed": 0, "Suspended": 0
    }  # fmt: skip
    book.set("phase-ns", "a", "Succeeded")
    book.forget("phase-ns", "b")
    book.export()
    assert (_phase("phase-ns", "a", "Running"), _phase("phase-ns", "a", "Succeeded")) == (0, 1)
    assert all(_phase("phase-ns", "b", p) is None for p in metrics.PHASES)


def test_a_dead_letter_excerpt_is_bounded_and_says_what_was_cut() -> None:
    assert excerpt("short", 10) == "short"
    assert excerpt("x" * 25, 10) == "x" * 10 + "... [15 more characters]"
    assert excerpt("x" * 2_000_000, 0) == "... [2,000,000 more characters]"


# ------------------------------------------------ a paced replay reads as it goes


@pytest.mark.parametrize("pacing", ["rate", "max"])
def test_a_paced_replay_sets_rows_aside_as_it_reaches_them(pacing: str, tmp_path: Any) -> None:
    """Read ahead by a block of 4 MiB, a paced replay of a small file dead-lettered all its
    bad rows in its first second, a step that the dashboard's rate() over a few seconds
    missed whenever no scrape fell between 0 and the step (the dashboard test failed that
    way on a loaded machine). Paced, it reads 256 KiB at a time."""
    path = tmp_path / "bars.csv"
    start, minute = 1_700_000_000, 60
    lines = ["timestamp,open,high,low,close,volume\n"]
    for i in range(40_000):
        high = "n/a" if i % 4_000 == 3_999 else "2.0"  # a bad row every 4,000
        lines.append(f"{start + i * minute},1.0,{high},0.5,1.5,10.0\n")
    path.write_text("".join(lines))
    assert path.stat().st_size > 4 * producer_module.PACED_BLOCK_BYTES
    replay = Replay(
        job="paced",
        source=str(path),
        bars_topic="b",
        dead_topic="d",
        kafka=KafkaSettings(),
        pacing=Pacing.parse(rate=1000.0) if pacing == "rate" else Pacing("max"),
        symbol="X",
        progress=False,
    )
    replay._check_source()
    with ExitStack() as stack:
        chunks = list(replay._open_readers(stack))
    rejected = [len(c.rejected) for c in chunks]
    assert sum(rejected) == 10
    if pacing == "max":
        assert rejected == [10]  # one block: throughput first
    else:
        assert len(chunks) >= 4
        assert max(rejected) < 10, rejected  # spread over the file, as it is sent
