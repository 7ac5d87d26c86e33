"""The OHLCV bar record, its validation rules, and UTC time helpers.

Time unit: every event time in hftpipe is an ``int`` of **nanoseconds since the
Unix epoch, UTC** (``ts_ns``). Nanoseconds are what pandas and numpy use
natively (``datetime64[ns]``), so converting never rounds, and they leave room
for sub-millisecond feeds. The range is 1677-09-21 .. 2262-04-11.

The validation rules live here once and are used twice: per bar by
:func:`validate_bar` (bars that arrive one by one, e.g. decoded from Kafka) and
per column by :func:`reason_codes` (the CSV parser validates a whole chunk with
numpy). Both map a failure to the same numbered reason and the same message, and
a unit test checks they agree.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

NS_PER_SECOND: Final = 1_000_000_000
NS_PER_DAY: Final = 86_400 * NS_PER_SECOND
MIN_TS_NS: Final = -(2**63) + 1  # the int64 minimum itself is pandas' NaT marker
MAX_TS_NS: Final = 2**63 - 1

FloatArray = npt.NDArray[np.float64]


class Bar(NamedTuple):
    """One OHLCV bar of one symbol.

    A NamedTuple rather than a frozen dataclass: it is just as immutable, but
    builds about four times faster (frozen dataclasses pay for
    ``object.__setattr__`` per field), and the producer builds millions.
    """

    symbol: str
    ts_ns: int
    """Bar open time, nanoseconds since the epoch, UTC."""
    open: float
    high: float
    low: float
    close: float
    volume: float
    seq: int
    """Position of the bar among the bars accepted from its source, from 0."""
    line: int = 0
    """Line of the source file the bar came from (the header is line 1); 0 if unknown."""


class Trade(NamedTuple):
    """One trade (tick) of one symbol: a price and a size at a time (issue 11, point 6).

    Valid under the rules of a bar whose open, high, low and close are the price: a
    finite positive price and a finite size >= 0 (:func:`validate_trade`).
    """

    symbol: str
    ts_ns: int
    """Trade time, nanoseconds since the epoch, UTC. Trades of a symbol may share it."""
    price: float
    size: float
    seq: int
    """Position of the trade among the records accepted from its source, from 0."""
    line: int = 0
    """Line of the source file the trade came from (the header is line 1); 0 if unknown."""


# Reason codes, in the order they are checked: a bar gets the first that applies.
OK: Final = 0
_FIELDS: Final = ("open", "high", "low", "close", "volume")
NOT_FINITE: Final = (1, 2, 3, 4, 5)  # one per field, in _FIELDS order
NOT_POSITIVE: Final = (6, 7, 8, 9)  # open, high, low, close
NEGATIVE_VOLUME: Final = 10
HIGH_BELOW_LOW: Final = 11
OPEN_OUTSIDE_RANGE: Final = 12
CLOSE_OUTSIDE_RANGE: Final = 13


_KINDS: Final = {
    NEGATIVE_VOLUME: "negative_volume",
    HIGH_BELOW_LOW: "high_below_low",
    OPEN_OUTSIDE_RANGE: "open_outside_range",
    CLOSE_OUTSIDE_RANGE: "close_outside_range",
}
REASON_KINDS: Final = ("not_finite", "not_positive", *_KINDS.values())
"""Every value :func:`reason_kind` returns."""


def reason_kind(code: int) -> str:
    """A short, stable name for a reason code, fit for a metric label."""
    if code in NOT_FINITE:
        return "not_finite"
    if code in NOT_POSITIVE:
        return "not_positive"
    return _KINDS[code]


def reason_code(o: float, h: float, lo: float, c: float, v: float) -> int:  # noqa: PLR0911
    """The reason code of one bar's values: ``OK`` (0) when they are valid."""
    for code, x in zip(NOT_FINITE, (o, h, lo, c, v), strict=True):
        if not math.isfinite(x):
            return code
    # Prices must be strictly positive, not just non-negative: a log return
    # needs both closes > 0, and a zero price in a trade feed is a feed error.
    for code, x in zip(NOT_POSITIVE, (o, h, lo, c), strict=True):
        if x <= 0.0:
            return code
    if v < 0.0:
        return NEGATIVE_VOLUME
    if h < lo:
        return HIGH_BELOW_LOW
    if not lo <= o <= h:
        return OPEN_OUTSIDE_RANGE
    if not lo <= c <= h:
        return CLOSE_OUTSIDE_RANGE
    return OK


def reason_codes(
    o: FloatArray, h: FloatArray, lo: FloatArray, c: FloatArray, v: FloatArray
) -> npt.NDArray[np.uint8]:
    """Vectorised :func:`reason_code`: one code per row, the same rules and order."""
    codes = np.zeros(len(o), dtype=np.uint8)
    checks: list[tuple[int, npt.NDArray[np.bool_]]] = []
    with np.errstate(invalid="ignore"):
        checks += [(k, ~np.isfinite(x)) for k, x in zip(NOT_FINITE, (o, h, lo, c, v), strict=True)]
        checks += [(k, ~(x > 0.0)) for k, x in zip(NOT_POSITIVE, (o, h, lo, c), strict=True)]
        checks.append((NEGATIVE_VOLUME, v < 0.0))
        checks.append((HIGH_BELOW_LOW, h < lo))
        checks.append((OPEN_OUTSIDE_RANGE, (o < lo) | (o > h)))
        checks.append((CLOSE_OUTSIDE_RANGE, (c < lo) | (c > h)))
    # Walk the checks backwards so that the first failing check wins.
    for code, failed in reversed(checks):
        codes[failed] = code
    return codes


def describe_reason(
    code: int,
    values: tuple[float, float, float, float, float],
    raw: tuple[str, str, str, str, str] | None = None,
) -> str:
    """The user-facing message for a reason code.

    ``values`` are open, high, low, close, volume; ``raw`` the same fields as
    text, when known, to show what the file really holds.
    """
    o, h, lo, c, v = values
    if code in NOT_FINITE:
        i = NOT_FINITE.index(code)
        shown = repr(raw[i]) if raw is not None else repr(values[i])
        return f"{_FIELDS[i]} is not a finite number (got {shown})"
    if code in NOT_POSITIVE:
        i = NOT_POSITIVE.index(code)
        return f"{_FIELDS[i]} {values[i]!r} is not a positive price"
    if code == NEGATIVE_VOLUME:
        return f"volume {v!r} is negative"
    if code == HIGH_BELOW_LOW:
        return f"high {h!r} is below low {lo!r}"
    if code == OPEN_OUTSIDE_RANGE:
        return f"open {o!r} is outside [low {lo!r}, high {h!r}]"
    if code == CLOSE_OUTSIDE_RANGE:
        return f"close {c!r} is outside [low {lo!r}, high {h!r}]"
    raise ValueError(f"unknown bar reason code {code}")


def validate_values(o: float, h: float, lo: float, c: float, v: float) -> str | None:
    """Why these OHLCV values are not a valid bar, or None when they are."""
    code = reason_code(o, h, lo, c, v)
    return None if code == OK else describe_reason(code, (o, h, lo, c, v))


def validate_bar(bar: Bar) -> str | None:
    """Why ``bar`` is not valid, or None when it is."""
    if not bar.symbol:
        return "symbol is empty"
    if not MIN_TS_NS <= bar.ts_ns <= MAX_TS_NS:
        return f"time {bar.ts_ns} ns is outside the representable range"
    return validate_values(bar.open, bar.high, bar.low, bar.close, bar.volume)


def validate_trade(trade: Trade) -> str | None:
    """Why ``trade`` is not valid, or None when it is (the messages say price and size)."""
    if not trade.symbol:
        return "symbol is empty"
    if not MIN_TS_NS <= trade.ts_ns <= MAX_TS_NS:
        return f"time {trade.ts_ns} ns is outside the representable range"
    p, q = trade.price, trade.size
    code = reason_code(p, p, p, p, q)
    return None if code == OK else describe_trade_reason(code, p, q)


def describe_trade_reason(
    code: int, price: float, size: float, raw: tuple[str, str] | None = None
) -> str:
    """:func:`describe_reason` for a trade (a bar of one price): says price and size.

    Only the checks of open and volume can fail for a trade (high, low and close are
    the same price), so only those names are replaced."""
    fields = raw and (raw[0], raw[0], raw[0], raw[0], raw[1])
    text = describe_reason(code, (price, price, price, price, size), fields)
    return text.replace("open", "price", 1).replace("volume", "size", 1)


def format_utc(ts_ns: int) -> str:
    """``ts_ns`` as ISO-8601 UTC text for messages, e.g. ``2024-01-01T00:00:00Z``."""
    seconds, frac = divmod(ts_ns, NS_PER_SECOND)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += f".{frac:09d}".rstrip("0")
    return text + "Z"


def parse_utc(text: str) -> int:
    """ISO-8601 text to ``ts_ns``; a time without an offset is taken as UTC.

    Raises ValueError with the expected form when ``text`` is not a time.
    """
    # Imported here: the processor imports this module and has no other use for
    # pandas, which is ~80 MB of RSS and ~0.2 s of start-up.
    import pandas as pd  # type: ignore[import-untyped]  # noqa: PLC0415 - pandas-stubs not in the lock

    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"bad time {text!r}: expected ISO-8601 such as 2024-01-01T00:00:00Z "
            "or 2024-01-01 00:00:00 (no offset means UTC)"
        ) from exc
    if stamp is pd.NaT:
        raise ValueError(f"bad time {text!r}: expected ISO-8601, got an empty time")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.value)


def day_start_ns(ts_ns: int) -> int:
    """Midnight UTC at or before ``ts_ns``."""
    return ts_ns - ts_ns % NS_PER_DAY
