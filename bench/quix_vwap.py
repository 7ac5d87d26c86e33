"""The Quix Streams baseline: our VWAP job written with Quix Streams, run in the bench's venv.

Run by ``bench/suite.py`` with the Python of the bench's own Quix Streams venv
(``bench/quixenv.py``: the pinned version, never the product's environment), as
``python bench/quix_vwap.py --mode sliding|hopping ...``. It imports nothing of hftpipe:
the bars topic holds JSON (``hftpipe_workers.codec``, schema 1), which Quix's own
``json`` deserializer reads; the bar time ``t`` (ns) becomes the Quix timestamp (ms).

The job, per symbol (the Kafka key) and per window, for every bar, the same outputs as
our processor (``hftpipe_workers.metrics``): bars, volume, VWAP of the typical price,
SMA and sample stdev of close, sample stdev of the log returns whose two bars are both
in the window. One ``reduce`` per window (an in-order fold: Welford for the two
stdevs), the previous close kept in Quix state by a stateful ``apply``; every output
goes to Redis with Quix's ``RedisSink`` (``SET <job>:latest:<symbol>:<window>``,
flushed at each checkpoint in one MULTI/EXEC).

Windows:

- ``sliding``: ``sliding_window(W - 1 ms)``. Quix's sliding windows hold
  ``[t - duration, t]``, both ends included; ours hold ``(t - W, t]``. With
  timestamps in whole milliseconds, a duration of ``W - 1 ms`` is the same set of
  bars. ``.current()``: one output per bar and window, as ours.
- ``hopping``: ``hopping_window(W, step)`` with the step of the bars (60 s), so that
  the window ``[t - W + step, t + step)`` holds the same bars as ours at ``t``.
  ``.final()``: each window is emitted once, when the next bar closes it (so one bar
  later than ours, and the newest window is never emitted).
- ``session`` (both modes): ``tumbling_window(1 day).current()``: Quix's tumbling
  windows are aligned to the epoch, so this is "since 00:00 UTC", as ours.

Default settings otherwise (at-least-once, state in RocksDB with changelog topics,
5 s commit interval). The rate is bars / (end of the last Redis write - start of the
first bar), as for our processor: start-up and shutdown do not count. The script
stops after ``--bars`` bars and writes a JSON report: the rate, outputs per window,
and a sample of its outputs, which the bench checks against our metrics engine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

MINUTE_MS = 60_000
DAY_MS = 86_400_000
UNIT_MS = {"s": 1_000, "m": MINUTE_MS, "h": 3_600_000, "d": DAY_MS}

# The fold of one window, a list (Quix keeps it in its state store as JSON); LAST is
# the time (ns) of the newest bar in it, the bar our processor reports the same set at.
N, VOL, PV, CMEAN, CM2, RN, RMEAN, RM2, LAST = range(9)


def window_ms(label: str) -> int:
    """``"5m"`` -> 300000 (the labels our processor takes; ``session`` is not one)."""
    return int(label[:-1]) * UNIT_MS[label[-1]]


def bar_time_ms(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    """Quix's timestamp of a bar: its own time (``t``, ns), not the record's."""
    return int(value["t"]) // 1_000_000


def initializer(bar: dict[str, Any]) -> list[float]:
    """The fold of a window that starts with ``bar``: its return is not in the window
    (the bar before it is not)."""
    c = bar["c"]
    v = bar["v"]
    return [1, v, (bar["h"] + bar["l"] + c) / 3.0 * v, c, 0.0, 0, 0.0, 0.0, bar["t"]]


def reducer(acc: list[float], bar: dict[str, Any]) -> list[float]:
    """Add the next bar of the window (and its return: the bar before it is in the window)."""
    c = bar["c"]
    v = bar["v"]
    n = acc[N] + 1
    delta = c - acc[CMEAN]
    mean = acc[CMEAN] + delta / n
    m2 = acc[CM2] + delta * (c - mean)
    r = bar["r"]
    rn = acc[RN] + 1
    rdelta = r - acc[RMEAN]
    rmean = acc[RMEAN] + rdelta / rn
    rm2 = acc[RM2] + rdelta * (r - rmean)
    pv = acc[PV] + (bar["h"] + bar["l"] + c) / 3.0 * v
    return [n, acc[VOL] + v, pv, mean, m2, rn, rmean, rm2, bar["t"]]


def metrics(acc: list[float]) -> dict[str, Any]:
    """The window's outputs, named as in our metrics messages (``t n v vw ma sd rsd``)."""
    n = int(acc[N])
    rn = int(acc[RN])
    vol = acc[VOL]
    return {
        "t": int(acc[LAST]),
        "n": n,
        "v": vol,
        "vw": acc[PV] / vol if vol > 0.0 else None,
        "ma": acc[CMEAN],
        "sd": math.sqrt(acc[CM2] / (n - 1)) if n >= 2 else None,
        "rsd": math.sqrt(acc[RM2] / (rn - 1)) if rn >= 2 else None,
    }


class _Report:
    """What the run measured, filled in as it goes."""

    def __init__(self, bars: int, sample_every: int) -> None:
        self.bars = bars
        self.sample_every = sample_every
        self.seen = 0
        self.first: float | None = None
        self.last_bar: float | None = None
        self.last_write: float | None = None
        self.writes = 0
        self.outputs: dict[str, int] = {}
        self.samples: list[dict[str, Any]] = []
        self.last: dict[str, dict[str, Any]] = {}


def build(args: argparse.Namespace, report: _Report) -> Any:
    """The Quix application: source topic, the windows, the Redis sink."""
    from quixstreams import Application  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    from quixstreams.sinks.community.redis import (  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
        RedisSink,
    )

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, value_deserializer="json", timestamp_extractor=bar_time_ms)
    redis_url = urlparse(args.redis_url)

    class TimedRedisSink(RedisSink):  # type: ignore[misc, unused-ignore]
        """Quix's Redis sink, noting when its last write (a checkpoint's flush) ended."""

        def write(self, batch: Any) -> None:
            super().write(batch)
            report.writes += 1
            report.last_write = time.perf_counter()

    def serialize(value: dict[str, Any]) -> str:
        # Called for every output as the sink flushes it: keep a sample for the bench.
        label = value["w"]
        report.outputs[label] = report.outputs.get(label, 0) + 1
        report.last[label] = value
        if (value["t"] // (MINUTE_MS * 1_000_000)) % report.sample_every == 0:
            report.samples.append(value)
        return json.dumps(value)

    def redis_key(key: Any, value: dict[str, Any]) -> str:
        symbol = key.decode() if isinstance(key, bytes) else str(key)
        return f"{args.job}:latest:{symbol}:{value['w']}"

    credentials = {"username": redis_url.username} if redis_url.username else {}
    sink = TimedRedisSink(
        host=redis_url.hostname or "127.0.0.1",
        port=redis_url.port or 6379,
        db=int((redis_url.path or "/0").lstrip("/") or 0),
        password=redis_url.password,
        value_serializer=serialize,
        key_serializer=redis_key,
        **credentials,
    )

    def count(bar: dict[str, Any]) -> None:
        now = time.perf_counter()
        if report.first is None:
            report.first = now
        report.seen += 1
        if report.seen == report.bars:
            report.last_bar = now
            app.stop()

    def with_return(bar: dict[str, Any], state: Any) -> dict[str, Any]:
        # The log return from the symbol's previous bar, as our engine computes it.
        prev = state.get("close")
        c = bar["c"]
        bar["r"] = math.log1p((c - prev) / prev) if prev is not None else 0.0
        state.set("close", c)
        return bar

    sdf = app.dataframe(topic)
    sdf = sdf.update(count)
    sdf = sdf.apply(with_return, stateful=True)

    def finish(label: str) -> Any:
        def out(window: dict[str, Any]) -> dict[str, Any]:
            return {"w": label, **metrics(window["value"])}

        return out

    for label in args.windows:
        w = window_ms(label)
        if args.mode == "sliding":
            branch = sdf.sliding_window(duration_ms=w - 1, name=f"sliding-{label}")
            out = branch.reduce(reducer, initializer).current()
            out = out.apply(finish(label))
        else:
            branch = sdf.hopping_window(duration_ms=w, step_ms=args.step_ms, name=f"hop-{label}")
            out = branch.reduce(reducer, initializer).final()
            out = out.apply(finish(label))
        out.sink(sink)
    session = sdf.tumbling_window(duration_ms=DAY_MS, name="session")
    out = session.reduce(reducer, initializer).current()
    out = out.apply(finish("session"))
    out.sink(sink)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the job over ``--bars`` bars of ``--topic``; write the report to ``--result``."""
    parser = argparse.ArgumentParser(prog="bench/quix_vwap.py")
    parser.add_argument("--mode", choices=("sliding", "hopping"), required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--bars", type=int, required=True)
    parser.add_argument("--windows", default="5m,15m,1h,1d")
    parser.add_argument("--step-ms", type=int, default=MINUTE_MS)
    parser.add_argument("--job", required=True, help="Redis key prefix")
    parser.add_argument("--group", required=True, help="consumer group (a new one per run)")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--sample-every", type=int, default=97, help="sample 1 bar in N")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    args.windows = [w.strip() for w in args.windows.split(",") if w.strip()]

    import quixstreams  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

    report = _Report(args.bars, args.sample_every)
    started = time.perf_counter()
    app = build(args, report)
    print(json.dumps({"event": "starting", "quixstreams": quixstreams.__version__}), flush=True)
    app.run()
    wall = time.perf_counter() - started
    first, end = report.first, report.last_write
    seconds = end - first if first is not None and end is not None else None
    result = {
        "mode": args.mode,
        "quixstreams": quixstreams.__version__,
        "python": sys.version.split()[0],
        "bars": report.seen,
        "bars_expected": args.bars,
        "seconds": seconds,
        "bars_per_second": report.seen / seconds if seconds else None,
        "seconds_to_last_bar": (
            report.last_bar - first if report.last_bar is not None and first is not None else None
        ),
        "wall_seconds_incl_startup": wall,
        "sink_writes": report.writes,
        "outputs": report.outputs,
        "windows": args.windows,
        "step_ms": args.step_ms if args.mode == "hopping" else None,
        "last": report.last,
        "samples": report.samples,
    }
    args.result.write_text(json.dumps(result))
    print(json.dumps({"event": "done", "bars": report.seen, "seconds": seconds}), flush=True)
    return 0 if report.seen == args.bars else 1


if __name__ == "__main__":
    raise SystemExit(main())
