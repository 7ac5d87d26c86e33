"""What two runs of a job are compared on: Redis and the warehouse, key by key."""

from __future__ import annotations

from typing import Any, cast

import redis

from hftpipe_workers.contract import RedisKeys
from hftpipe_workers.warehouse import Sink


def redis_snapshot(client: redis.Redis, job: str) -> dict[str, Any]:
    """Every key of a job, with the job name taken out, as comparable values; but the
    offset keys, which are positions in the bars topic: they count the producer's
    transaction markers, as many as its transactions, which two replays of one file cut
    differently (on time). Everything computed from the bars must be equal."""
    keys = RedisKeys(job)
    out: dict[str, Any] = {}
    for key in client.scan_iter(match=keys.pattern, count=1000):
        name = key.decode().replace(keys.base, "JOB")
        if ":offset:" in name:
            continue
        kind = client.type(key)
        if kind == b"hash":
            out[name] = client.hgetall(key)
        elif kind == b"zset":
            out[name] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            out[name] = sorted(cast("set[bytes]", client.smembers(key)))
        else:
            out[name] = client.get(key)
    return out


def metric_rows(sink: Sink, job: str) -> tuple[int, int]:
    """Rows of ``job`` in the warehouse's bar_metrics table, and distinct keys among them."""
    counts = sink.query(
        "SELECT count(*) AS n, count(DISTINCT symbol || '|' || bar_time || '|' || \"window\") "
        "AS k FROM bar_metrics WHERE job = $job",
        {"job": job},
    )
    return int(counts.iloc[0, 0]), int(counts.iloc[0, 1])


def metric_differences(sink: Sink, a: str, b: str) -> int:
    """Metric rows of job ``a`` with no identical row (every value) in job ``b``, and back."""
    columns = 'symbol, bar_time, "window", vwap, sma_close, std_close, std_log_return, bar_count'
    one_way = (
        f"SELECT count(*) FROM (SELECT {columns} FROM bar_metrics WHERE job = $x "  # noqa: S608 - constant columns
        f"EXCEPT ALL SELECT {columns} FROM bar_metrics WHERE job = $y)"
    )
    return sum(int(sink.query(one_way, {"x": x, "y": y}).iloc[0, 0]) for x, y in ((a, b), (b, a)))


def bar_rows(sink: Sink, job: str) -> tuple[int, int]:
    """Rows of ``job`` in the warehouse's bars table, and distinct keys among them."""
    counts = sink.query(
        "SELECT count(*) AS n, count(DISTINCT symbol || '|' || bar_time) AS k "
        "FROM bars WHERE job = $job",
        {"job": job},
    )
    return int(counts.iloc[0, 0]), int(counts.iloc[0, 1])
