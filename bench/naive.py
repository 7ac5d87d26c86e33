"""The naive baseline: what a first, per-message pandas processor would look like.

For every Kafka message: decode it, append it to a DataFrame (``pd.concat``),
drop rows older than the longest window, then for each window select its rows
and compute VWAP, SMA and the standard deviation of close with pandas, and
write the latest values to Redis with one ``HSET``. It does less than our
processor (no history sorted set, no return volatility, no session window, no
exactly-once transaction, no metrics topic), so the ratio to it is, if anything,
flattering to the baseline.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs is not in the lock
import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition

from hftpipe_workers import codec
from hftpipe_workers.contract import RedisKeys
from hftpipe_workers.metrics import parse_window

_COLUMNS = ("ts", "high", "low", "close", "volume")


def _first_nonempty_partition(consumer: Consumer, topic: str) -> TopicPartition:
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    for partition in sorted(metadata.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if high > low:
            return TopicPartition(topic, partition, low)
    raise RuntimeError(f"topic {topic} holds no records: produce the bars first")


def run_naive(
    *,
    bootstrap: str,
    topic: str,
    redis_url: str,
    bars: int,
    windows: tuple[str, ...] = ("5m", "15m", "1h", "1d"),
    job: str = "bench-naive",
) -> dict[str, Any]:
    """Process the first ``bars`` bars of ``topic`` the naive way; rate excludes start-up."""
    parsed = [parse_window(w) for w in windows]
    longest = max(w.ns for w in parsed)
    keys = RedisKeys(job)
    client = redis.Redis.from_url(redis_url)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": job, "enable.auto.commit": False}
    )
    frame = pd.DataFrame(
        {c: pd.Series(dtype="int64" if c == "ts" else "float64") for c in _COLUMNS}
    )
    done = 0
    first: float | None = None
    try:
        consumer.assign([_first_nonempty_partition(consumer, topic)])
        while done < bars:
            msg = consumer.poll(10)
            if msg is None:
                raise TimeoutError(f"no message from {topic} for 10 s after {done} bars")
            if msg.error() is not None:
                raise KafkaException(msg.error())
            if first is None:
                first = time.perf_counter()
            bar = codec.decode_bar(msg.value() or b"")
            row = pd.DataFrame(
                {
                    "ts": [bar.ts_ns],
                    "high": [bar.high],
                    "low": [bar.low],
                    "close": [bar.close],
                    "volume": [bar.volume],
                }
            )
            # An empty frame is replaced, not concatenated (pandas warns about the latter).
            frame = row if frame.empty else pd.concat([frame, row], ignore_index=True)
            frame = frame[frame["ts"] > bar.ts_ns - longest]
            latest: dict[str, str] = {"ts_ns": str(bar.ts_ns), "close": repr(bar.close)}
            for window in parsed:
                rows = frame[frame["ts"] > bar.ts_ns - window.ns]
                volume = rows["volume"].sum()
                typical = (rows["high"] + rows["low"] + rows["close"]) / 3
                vwap = (typical * rows["volume"]).sum() / volume if volume > 0 else None
                std = rows["close"].std()
                latest[f"{window.label}:vwap"] = "" if vwap is None else repr(float(vwap))
                latest[f"{window.label}:sma"] = repr(float(rows["close"].mean()))
                latest[f"{window.label}:std"] = "" if pd.isna(std) else repr(float(std))
            client.hset(keys.latest(bar.symbol), mapping=latest)  # type: ignore[arg-type]
            done += 1
        elapsed = time.perf_counter() - (first or time.perf_counter())
    finally:
        consumer.close()
        client.close()
    return {
        "bars": done,
        "seconds": elapsed,
        "bars_per_second": done / elapsed if elapsed > 0 else None,
        "windows": list(windows),
        "what": "poll 1 msg, decode, pd.concat, trim, per window VWAP/SMA/std, HSET",
    }
