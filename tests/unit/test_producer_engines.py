"""The producer's two ways of sending a batch, the same: bar by bar in Python (the
reference, and every paced replay) and, unpaced with the compiled core, on the columns
(``Replay._send_columns``). Same records (topic, key, partition, value, in order), same
counts, the same progress after every slice, with bars already in Kafka skipped and a
local queue that is sometimes full. With a fake in place of Kafka."""

from __future__ import annotations

import random
import time
from typing import Any, cast

import numpy as np
import pytest
from confluent_kafka import Producer

from hftpipe_workers import producer as producer_module
from hftpipe_workers.bars import Bar
from hftpipe_workers.csvformat import BarBatch
from hftpipe_workers.pacing import Pacer, Pacing
from hftpipe_workers.producer import SLICE_BARS, Replay, ReplayReport, ResumePoint
from hftpipe_workers.settings import KafkaSettings

PARTITIONS = 3
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", 'Ünï"code')


class RecordingProducer:
    """Records what is produced, in transactions; every ``full_every``-th call finds the
    local queue full (BufferError) until the next poll, as librdkafka's does."""

    def __init__(self, full_every: int = 0) -> None:
        self.records: list[tuple[str, bytes | None, bytes, int]] = []
        self.open = False
        self.calls = 0
        self.full = False
        self.full_every = full_every

    def begin_transaction(self) -> None:
        assert not self.open
        self.open = True

    def commit_transaction(self, _timeout: float | None = None) -> None:
        assert self.open
        self.open = False

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int = -1
    ) -> None:
        # Positional or keywords, as confluent-kafka's produce takes them.
        assert self.open, f"a record to {topic} outside a transaction"
        self.calls += 1
        if self.full_every and self.calls % self.full_every == 0:
            self.full = True
        if self.full:
            raise BufferError("Local: Queue full")
        self.records.append((topic, key, value, partition))

    def poll(self, _timeout: float = 0) -> int:
        self.full = False
        return 0


def _batch(rng: random.Random, n: int, symbols: int) -> BarBatch:
    t0, minute = 1_700_000_000_000_000_000, 60_000_000_000
    bars = []
    for i in range(n):
        price = rng.uniform(1, 1e5)
        bars.append(
            Bar(
                SYMBOLS[rng.randrange(symbols)],
                t0 + i * minute,
                price,
                price * 1.01,
                price * 0.99,
                price,
                rng.choice([0.0, rng.uniform(0, 1e3)]),
                i,
                i + 2,
            )
        )
    return BarBatch.from_bars(bars)


def _send(
    batch: BarBatch,
    resume: ResumePoint,
    *,
    compiled: bool,
    trade: bool,
    rows: bool,
    full_every: int,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[Any], tuple[int, ...], list[tuple[int, ...]]]:
    """What one engine sends of ``batch``: the records, the totals, and the counts at
    every metrics update."""
    replay = Replay(
        job="engines",
        source="unused.csv",
        bars_topic="engines.bars",
        dead_topic="engines.deadletter",
        kafka=KafkaSettings(),
        pacing=Pacing("max"),
        progress=False,
        engine="compiled" if compiled else "python",
    )
    assert replay.compiled is compiled
    fake = RecordingProducer(full_every)
    seen: list[tuple[int, ...]] = []

    def spy(self: Replay, _producer: Producer, report: ReplayReport, *, done: bool = False) -> None:
        seen.append((report.produced, report.skipped_already_in_kafka, report.rows_read))
        seen.append((self._live_state.bytes, int(done)))

    monkeypatch.setattr(Replay, "_live", spy)
    report = ReplayReport()
    pacer = Pacer(Pacing("max"))
    replay._send(
        cast(Producer, fake),
        batch,
        PARTITIONS,
        resume,
        pacer,
        time.monotonic(),
        report,
        trade=trade,
        rows=rows,
    )
    totals = (report.produced, report.skipped_already_in_kafka, report.rows_read)
    return fake.records, (*totals, replay._live_state.bytes), seen


@pytest.mark.parametrize(
    ("seed", "n", "symbols", "trade", "rows", "full_every"),
    [
        (0, 2 * SLICE_BARS + 100, 1, False, True, 0),
        (1, 2 * SLICE_BARS + 100, 5, False, True, 997),
        (2, SLICE_BARS, 3, True, True, 0),
        (3, 3 * SLICE_BARS - 1, 4, False, False, 5_000),
        (4, 0, 1, False, True, 0),
        (5, 7, 5, True, True, 2),
    ],
)
def test_both_engines_send_the_same_records_and_counts(
    seed: int,
    n: int,
    symbols: int,
    trade: bool,
    rows: bool,
    full_every: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(seed)
    batch = _batch(rng, n, symbols)
    # Resuming: some partitions hold bars up to a seq inside a slice, one none.
    parts = {producer_module.partition_for(s, PARTITIONS) for s in SYMBOLS[:symbols]}
    resume = ResumePoint(last_seq={p: rng.randrange(-1, max(n, 1)) for p in sorted(parts)[:2]})
    want = _send(
        batch,
        resume,
        compiled=False,
        trade=trade,
        rows=rows,
        full_every=full_every,
        monkeypatch=monkeypatch,
    )
    got = _send(
        batch,
        resume,
        compiled=True,
        trade=trade,
        rows=rows,
        full_every=full_every,
        monkeypatch=monkeypatch,
    )
    assert got[0] == want[0], "records differ"
    assert got[1] == want[1], "totals differ"
    assert got[2] == want[2], "counts at the metrics updates differ"
    skipped = sum(
        1
        for symbol, seq in zip(batch.symbol.tolist(), batch.seq.tolist(), strict=True)
        if resume.bar_done(producer_module.partition_for(symbol, PARTITIONS), seq)
    )
    assert want[1][:2] == (n - skipped, skipped)
    assert len(want[0]) == n - skipped


def test_bars_done_is_bar_done_for_every_bar() -> None:
    """The columnar resume check is the per-bar rule, bar for bar (partitions without a
    committed bar included)."""
    rng = np.random.default_rng(7)
    resume = ResumePoint(last_seq={0: 50, 2: 10})
    partition = rng.integers(0, 4, 500).astype(np.int64)
    seq = rng.integers(-1, 100, 500).astype(np.int64)
    expected = [resume.bar_done(int(p), int(s)) for p, s in zip(partition, seq, strict=True)]
    assert resume.bars_done(partition, seq, 4).tolist() == expected
