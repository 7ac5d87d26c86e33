"""The Quix Streams baseline, the bench's side: our metrics for the same bars, and the check
that Quix's outputs agree with them.

``bench/quix_vwap.py`` runs the job in the bench's Quix Streams venv (``bench/quixenv.py``)
and reports its rate and a sample of its outputs; the values it left in Redis are read
here. This module recomputes the same bars of the same topic with our processor's
engine (:class:`~hftpipe_workers.metrics.MetricsEngine`, whose ``update_columns`` is
what the processor runs, bit for bit however the stream is cut) and compares, window by
window and bar by bar: the bar count exactly, volume, VWAP, SMA and both standard
deviations to :data:`REL_TOL` relative. A mismatch fails the phase, loudly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

REL_TOL: Final = 1e-9
"""Relative tolerance of the agreement check (both sides sum in floating point, in a
different order: ours with double-double sums, Quix's job with a plain fold)."""
ABS_TOL: Final = 1e-12
"""Absolute tolerance, for values that are 0 on one side (a flat window's stdev)."""
FIELDS: Final = ("v", "vw", "ma", "sd", "rsd")
"""The compared outputs, named as in our metrics messages: volume, VWAP, SMA, stdev of
close, stdev of log returns (``n``, the bar count, is compared exactly)."""

Key = tuple[str, int]
"""``(window label, bar time in ns)``."""


def our_metrics(
    bars: Iterable[tuple[str, int, float, float, float, float]],
    windows: Sequence[str],
    wanted: set[Key],
) -> dict[Key, dict[str, Any]]:
    """Our metrics at the wanted (window, bar time) pairs, for bars
    ``(symbol, ts_ns, high, low, close, volume)`` given in stream order."""
    from hftpipe_workers.metrics import MetricsEngine  # noqa: PLC0415

    engine = MetricsEngine(windows)
    times = {t for _, t in wanted}
    found: dict[Key, dict[str, Any]] = {}
    for symbol, ts, high, low, close, volume in bars:
        rows, columns = engine.update_columns(symbol, (ts,), (high,), (low,), (close,), (volume,))
        if not rows or ts not in times:
            continue
        for col in columns:
            if (col.window, ts) in wanted:
                found[(col.window, ts)] = {
                    "n": col.n_bars[0],
                    "v": col.volume[0],
                    "vw": col.vwap[0],
                    "ma": col.sma[0],
                    "sd": col.std[0],
                    "rsd": col.ret_std[0],
                }
    return found


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=ABS_TOL)


def compare(
    theirs: Sequence[Mapping[str, Any]], ours: Mapping[Key, Mapping[str, Any]]
) -> dict[str, Any]:
    """Quix's outputs (``{"w", "t", "n", "v", "vw", "ma", "sd", "rsd"}``) against ours at the
    same window and bar; the worst relative difference per field and the mismatches."""
    worst = dict.fromkeys(FIELDS, 0.0)
    mismatches: list[dict[str, Any]] = []
    missing = 0
    for out in theirs:
        key = (str(out["w"]), int(out["t"]))
        mine = ours.get(key)
        if mine is None:
            missing += 1
            continue
        bad = [] if out["n"] == mine["n"] else ["n"]
        for field in FIELDS:
            a, b = out.get(field), mine[field]
            if not _close(a, b):
                bad.append(field)
            elif a is not None and b is not None and b != 0:
                worst[field] = max(worst[field], abs(float(a) - float(b)) / abs(float(b)))
        if bad:
            mismatches.append({"window": key[0], "ts_ns": key[1], "fields": bad,
                               "quix": dict(out), "ours": dict(mine)})  # fmt: skip
    return {
        "compared": len(theirs) - missing,
        "not_found_in_ours": missing,
        "mismatches": len(mismatches),
        "first_mismatches": mismatches[:5],
        "worst_relative_difference": worst,
        "tolerance": {"relative": REL_TOL, "absolute": ABS_TOL},
        "ok": not mismatches and missing == 0 and len(theirs) > 0,
    }


def read_bars(
    bootstrap: str, topic: str, count: int, timeout: float = 30
) -> list[tuple[str, int, float, float, float, float]]:
    """The first ``count`` bars of the topic's first non-empty partition (a one-symbol
    replay's), decoded with our codec: what the processor and Quix both read."""
    from confluent_kafka import Consumer, KafkaException  # noqa: PLC0415

    from hftpipe_workers import codec  # noqa: PLC0415

    from .naive import _first_nonempty_partition  # noqa: PLC0415

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-quix-check",
            "enable.auto.commit": False,
        }
    )
    out: list[tuple[str, int, float, float, float, float]] = []
    try:
        consumer.assign([_first_nonempty_partition(consumer, topic)])
        while len(out) < count:
            msgs = consumer.consume(min(10_000, count - len(out)), timeout)
            if not msgs:
                raise TimeoutError(f"no message from {topic} for {timeout:.0f} s after {len(out)}")
            for msg in msgs:
                if msg.error() is not None:
                    raise KafkaException(msg.error())
            cols = codec.decode_bars([m.value() or b"" for m in msgs])
            out += zip(cols.symbol, cols.ts_ns, cols.high, cols.low, cols.close, cols.volume,
                       strict=True)  # fmt: skip
    finally:
        consumer.close()
    return out[:count]


def check(
    report: Mapping[str, Any],
    redis_values: Mapping[str, bytes | None],
    bars: Sequence[tuple[str, int, float, float, float, float]],
    windows: Sequence[str],
) -> dict[str, Any]:
    """The agreement of one Quix run with our engine: its sampled outputs, and the values
    its Redis sink left (``window label -> SET value``), each at the same window and bar."""
    in_redis = [{**json.loads(v), "w": w} for w, v in redis_values.items() if v is not None]
    samples = list(report.get("samples", []))
    wanted = {(str(o["w"]), int(o["t"])) for o in [*samples, *in_redis]}
    ours = our_metrics(bars, windows, wanted)
    sampled = compare(samples, ours)
    final = compare(in_redis, ours)
    expected_windows = {*windows, "session"}
    return {
        "samples": sampled,
        "redis_latest": final,
        "redis_windows_missing": sorted(expected_windows - set(redis_values)),
        "ok": bool(sampled["ok"] and final["ok"])
        and all(redis_values.get(w) is not None for w in expected_windows),
    }
