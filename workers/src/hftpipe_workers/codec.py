"""Kafka message values: bars and window metrics as compact JSON (orjson).

Field names are short because there is one message per bar (and one per bar
and window): at millions of messages, every byte counts on the wire and in the
log. Every message carries its schema version in ``sv``; a decoder rejects a
version it does not know instead of guessing.

Bar message, schema 1::

    {"sv":1,"s":"BTCUSDT","t":1502942400000000000,"o":4261.48,"h":4313.62,
     "l":4261.32,"c":4308.83,"v":47.181009,"q":0,"ln":2}

    sv  schema version (1)        s  symbol
    t   bar time, ns since the epoch, UTC (an integer; above 2**53, so readers
        that hold JSON numbers as doubles must read it as a 64-bit integer)
    o h l c  open, high, low, close   v  volume
    q   seq (position among the bars accepted from the source)
    ln  source line number (header = line 1; 0 when unknown)

Metrics message, schema 1: one per bar, every window; it is both the value on
the metrics topic and the member of the Redis history sorted set::

    {"sv":1,"s":"BTCUSDT","t":...,"q":17,"c":4308.83,"bv":47.18,
     "w":{"5m":{"n":5,"v":120.5,"vw":4301.2,"ma":4300.9,"sd":3.1,"rsd":0.0007},
          "session":{...}}}

    t, q  time and seq of the bar   c  its close   bv  its volume
    w     window label ("5m", "session"...) -> metrics:
          n  bars in the window   v  window volume   vw  VWAP (null: zero volume)
          ma SMA of close   sd  stdev of close (null: < 2 bars)
          rsd  stdev of log returns (null: < 2 returns)

Floats are written in their shortest exact form, so decoding gives back the
very same float.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final, NamedTuple

import orjson

from hftpipe_workers.bars import Bar, validate_bar
from hftpipe_workers.csvformat import BarBatch
from hftpipe_workers.metrics import WindowMetrics

SCHEMA_VERSION: Final = 1


class CodecError(ValueError):
    """A message value that is not a valid message of a known schema."""


def encode_bar(bar: Bar) -> bytes:
    """The Kafka value of one bar."""
    return orjson.dumps(
        {
            "sv": SCHEMA_VERSION,
            "s": bar.symbol,
            "t": bar.ts_ns,
            "o": bar.open,
            "h": bar.high,
            "l": bar.low,
            "c": bar.close,
            "v": bar.volume,
            "q": bar.seq,
            "ln": bar.line,
        }
    )


def encode_bars(batch: BarBatch) -> Iterator[bytes]:
    """The Kafka values of a batch's bars, in order."""
    for bar in batch.bars():
        yield encode_bar(bar)


def decode_bar(data: bytes) -> Bar:
    """A bar from its Kafka value; CodecError says what is wrong with a bad one.

    The common case, a well-formed message of a valid bar, takes a fast path
    (one dict lookup and one type check per field: the processor decodes every
    bar, and the careful path cost 40% of its time); anything unusual falls
    through to the careful path, which names the problem.

    The bar is also validated (high >= low and so on): a message that decodes
    to an impossible bar is as unusable as one that does not decode.
    """
    fast = _decode_bar_fast(data)
    if fast is not None:
        return fast
    msg = _load(data, "bar")
    try:
        bar = Bar(
            symbol=_str(msg, "s"),
            ts_ns=_int(msg, "t"),
            open=_float(msg, "o"),
            high=_float(msg, "h"),
            low=_float(msg, "l"),
            close=_float(msg, "c"),
            volume=_float(msg, "v"),
            seq=_int(msg, "q"),
            line=_int(msg, "ln") if "ln" in msg else 0,
        )
    except _FieldError as exc:
        raise CodecError(f"bad bar message: {exc}; message: {_preview(data)}") from None
    problem = validate_bar(bar)
    if problem is not None:
        raise CodecError(f"bad bar message: {problem}; message: {_preview(data)}")
    return bar


class BarMetrics(NamedTuple):
    """The metrics of one bar: the bar's close and volume and every window's metrics."""

    symbol: str
    ts_ns: int
    seq: int
    close: float
    bar_volume: float
    windows: tuple[WindowMetrics, ...]

    def window(self, label: str) -> WindowMetrics:
        """The metrics of one window by label (``"5m"``, ``"session"``...)."""
        for m in self.windows:
            if m.window == label:
                return m
        raise KeyError(f"no window {label!r} in {[m.window for m in self.windows]}")


_NUMBER = (int, float)


def _decode_bar_fast(data: bytes) -> Bar | None:
    """The bar if ``data`` is a well-formed, valid bar message; None otherwise."""
    try:
        m = orjson.loads(data)
        s, t, q = m["s"], m["t"], m["q"]
        o, h, lo, c, v = m["o"], m["h"], m["l"], m["c"], m["v"]
        ln = m.get("ln", 0)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if (
        m.get("sv") != SCHEMA_VERSION
        or type(s) is not str
        or type(t) is not int
        or type(q) is not int
        or type(ln) is not int
        or type(o) not in _NUMBER
        or type(h) not in _NUMBER
        or type(lo) not in _NUMBER
        or type(c) not in _NUMBER
        or type(v) not in _NUMBER
    ):
        return None
    bar = Bar(s, t, float(o), float(h), float(lo), float(c), float(v), q, ln)
    return bar if validate_bar(bar) is None else None


def encode_bar_metrics(bar: Bar, windows: Sequence[WindowMetrics]) -> bytes:
    """The metrics message of one bar (all windows): Kafka value and Redis history member."""
    return orjson.dumps(
        {
            "sv": SCHEMA_VERSION,
            "s": bar.symbol,
            "t": bar.ts_ns,
            "q": bar.seq,
            "c": bar.close,
            "bv": bar.volume,
            "w": {
                m.window: {
                    "n": m.n_bars,
                    "v": m.volume,
                    "vw": m.vwap,
                    "ma": m.sma,
                    "sd": m.std,
                    "rsd": m.ret_std,
                }
                for m in windows
            },
        }
    )


def decode_bar_metrics(data: bytes) -> BarMetrics:
    """A bar's metrics from their message; CodecError says what is wrong with a bad one."""
    msg = _load(data, "metrics")
    try:
        symbol, ts_ns, seq = _str(msg, "s"), _int(msg, "t"), _int(msg, "q")
        windows = _get(msg, "w")
        if not isinstance(windows, dict):
            raise _FieldError("'w' must be an object of windows")
        return BarMetrics(
            symbol=symbol,
            ts_ns=ts_ns,
            seq=seq,
            close=_float(msg, "c"),
            bar_volume=_float(msg, "bv"),
            windows=tuple(
                WindowMetrics(
                    symbol=symbol,
                    window=label,
                    ts_ns=ts_ns,
                    seq=seq,
                    n_bars=_int(w, "n"),
                    volume=_float(w, "v"),
                    vwap=_opt_float(w, "vw"),
                    sma=_float(w, "ma"),
                    std=_opt_float(w, "sd"),
                    ret_std=_opt_float(w, "rsd"),
                )
                for label, w in windows.items()
            ),
        )
    except (_FieldError, TypeError, AttributeError) as exc:
        raise CodecError(f"bad metrics message: {exc}; message: {_preview(data)}") from None


# -- helpers ----------------------------------------------------------------------


class _FieldError(Exception):
    pass


def _preview(data: bytes) -> str:
    return repr(data[:200]) + (" (cut)" if len(data) > 200 else "")


def _load(data: bytes, kind: str) -> dict[str, Any]:
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(
            f"bad {kind} message: not JSON ({exc}); message: {_preview(data)}"
        ) from None
    if not isinstance(msg, dict):
        raise CodecError(
            f"bad {kind} message: expected a JSON object, got {type(msg).__name__}; "
            f"message: {_preview(data)}"
        )
    version = msg.get("sv")
    if version != SCHEMA_VERSION:
        raise CodecError(
            f"bad {kind} message: schema version (sv) is {version!r}, this reader knows "
            f"version {SCHEMA_VERSION}; upgrade the reader or check the producer; "
            f"message: {_preview(data)}"
        )
    return msg


def _get(msg: dict[str, Any], key: str) -> Any:
    if key not in msg:
        raise _FieldError(f"field {key!r} is missing")
    return msg[key]


def _str(msg: dict[str, Any], key: str) -> str:
    value = _get(msg, key)
    if not isinstance(value, str):
        raise _FieldError(f"field {key!r} must be a string, got {value!r}")
    return value


def _int(msg: dict[str, Any], key: str) -> int:
    value = _get(msg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(f"field {key!r} must be an integer, got {value!r}")
    return value


def _float(msg: dict[str, Any], key: str) -> float:
    value = _get(msg, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FieldError(f"field {key!r} must be a number, got {value!r}")
    return float(value)


def _opt_float(msg: dict[str, Any], key: str) -> float | None:
    return None if _get(msg, key) is None else _float(msg, key)
