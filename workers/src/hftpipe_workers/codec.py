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

Trade message, schema 1 (issue 11, point 6): the record kind ``k`` says it is a
trade; a message without ``k`` is a bar, so every bar message ever written still
decodes, byte for byte the same::

    {"sv":1,"k":"t","s":"BTCUSDT","t":1502942400000000000,"p":4261.48,"v":0.012,
     "q":0,"ln":2}

    k   record kind: "t" for a trade (absent: a bar)
    t   trade time, ns since the epoch, UTC (trades of a symbol may share it)
    p   price          v  size (quantity traded)
    q, ln  as for bars

A reader from before trades sees a trade message as a bar without ``o``: it sets it
aside as a bad message (field 'o' is missing) rather than misreading it.

Metrics message, schema 1: one per bar, every window; it is both the value on
the metrics topic and the member of the Redis history sorted set::

    {"sv":1,"s":"BTCUSDT","t":...,"q":17,"c":4308.83,"bv":47.18,
     "w":{"5m":{"n":5,"v":120.5,"vw":4301.2,"ma":4300.9,"sd":3.1,"rsd":0.0007},
          "session":{...}}}

    t, q  time and seq of the bar   c  its close   bv  its volume
    k     "t" when the record was a trade (c its price, bv its size; n counts
          trades); absent for a bar
    w     window label ("5m", "session"...) -> metrics:
          n  bars in the window   v  window volume   vw  VWAP (null: zero volume)
          ma SMA of close   sd  stdev of close (null: < 2 bars)
          rsd  stdev of log returns (null: < 2 returns)

Floats are written in their shortest exact form, so decoding gives back the
very same float.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter, methodcaller
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import orjson

from hftpipe_workers.bars import (
    MAX_TS_NS,
    MIN_TS_NS,
    OK,
    Bar,
    Trade,
    reason_codes,
    validate_bar,
    validate_trade,
)
from hftpipe_workers.metrics import WindowColumns, WindowMetrics

_core_decode_bars: Callable[[Sequence[bytes], int], tuple[Any, ...] | None] | None
try:  # the compiled core (hftpipe-core), when installed: see _decode_bars_compiled
    from hftpipe_core import decode_bars as _core_decode_bars
except ImportError:
    _core_decode_bars = None
_core_encode_records: Callable[..., list[bytes] | None] | None
try:  # see encode_records; a core built before it lacks it
    from hftpipe_core import encode_records as _core_encode_records
except ImportError:
    _core_encode_records = None
_core_decode_metrics: Callable[[Sequence[bytes], int], tuple[Any, ...] | None] | None
_core_decode_metrics_arrays: Callable[[Sequence[bytes], int], tuple[Any, ...] | None] | None
try:  # see _decode_metrics_compiled; a core built before them lacks them
    from hftpipe_core import decode_metrics as _core_decode_metrics
    from hftpipe_core import decode_metrics_arrays as _core_decode_metrics_arrays
except ImportError:
    _core_decode_metrics = _core_decode_metrics_arrays = None

if TYPE_CHECKING:  # csvformat imports pandas, which the processor does not need
    from hftpipe_workers.csvformat import BarBatch

SCHEMA_VERSION: Final = 1
TRADE: Final = "t"
"""The ``k`` (record kind) of a trade message and of a trade's metrics message."""


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


def encode_trade_row(row: Bar) -> bytes:
    """The Kafka value of a trade that a reader gave as a bar of one price (its close) and
    a size (its volume): how a source of trades is read."""
    return encode_trade(Trade(row[0], row[1], row[5], row[6], row[7], row[8]))


_INT: Final = np.dtype(np.int64)
_FLOAT: Final = np.dtype(np.float64)


def encode_records(batch: BarBatch, *, trade: bool = False, compiled: bool = True) -> list[bytes]:
    """The Kafka values of a batch's records, in order: :func:`encode_bar` of each bar,
    or (``trade``) :func:`encode_trade_row` of each, byte for byte.

    ``compiled``: by the compiled core (``hftpipe_core.encode_records``, one call for the
    batch: the producer's hot path) when it is installed and the batch is its kind of
    columns (int64 and float64 arrays, str symbols); otherwise, and for any batch it is
    not sure of, bar by bar here (the reference)."""
    if compiled and _core_encode_records is not None and _plain_columns(batch):
        values = _core_encode_records(SCHEMA_VERSION, TRADE if trade else None, *batch.columns())
        if values is not None:
            return values
    encode = encode_trade_row if trade else encode_bar
    return [encode(bar) for bar in batch.bars()]


def _plain_columns(batch: BarBatch) -> bool:
    """Whether the numeric columns are int64 and float64 arrays, as the readers make them
    (a column of another type, whose values Python would write otherwise, e.g. an int
    volume as 5 rather than 5.0, stays with the Python codec)."""
    ints = (batch.ts_ns, batch.seq, batch.line)
    floats = (batch.open, batch.high, batch.low, batch.close, batch.volume)
    return all(c.dtype == _INT for c in ints) and all(c.dtype == _FLOAT for c in floats)


def encode_trade(trade: Trade) -> bytes:
    """The Kafka value of one trade."""
    return orjson.dumps(
        {
            "sv": SCHEMA_VERSION,
            "k": TRADE,
            "s": trade.symbol,
            "t": trade.ts_ns,
            "p": trade.price,
            "v": trade.size,
            "q": trade.seq,
            "ln": trade.line,
        }
    )


def decode_trade(data: bytes) -> Trade:
    """A trade from its Kafka value; CodecError says what is wrong with a bad one."""
    return _decode_careful(data, "trade", Trade, _TRADE_FLOATS, validate_trade, _not_a_trade)


def _not_a_trade(msg: dict[str, Any]) -> str | None:
    kind = msg.get("k")
    return None if kind == TRADE else f"record kind (k) is {kind!r}, expected {TRADE!r}"


def decode_record(data: bytes) -> Bar | Trade:
    """A bar or a trade, as the message's kind (``k``) says; CodecError for a bad one."""
    if b'"k":' in data:
        try:
            kind = orjson.loads(data).get("k")
        except (orjson.JSONDecodeError, AttributeError):
            kind = None
        if kind is not None:
            if kind != TRADE:
                raise CodecError(
                    f"bad message: unknown record kind (k) {kind!r}: this reader knows "
                    f"{TRADE!r} (a trade) and none (a bar); upgrade the reader or check "
                    f"the producer; message: {_preview(data)}"
                )
            return decode_trade(data)
    return decode_bar(data)


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
    return _decode_careful(data, "bar", Bar, _BAR_FLOATS, validate_bar, _not_a_bar)


def _not_a_bar(msg: dict[str, Any]) -> str | None:
    if "k" not in msg:
        return None
    return (
        f"it is a record of kind (k) {msg['k']!r} (a trade is 't'), not a bar: "
        "read it with decode_record"
    )


_R = TypeVar("_R", Bar, Trade)
_BAR_FLOATS: Final = ("o", "h", "l", "c", "v")
_TRADE_FLOATS: Final = ("p", "v")


def _decode_careful(
    data: bytes,
    kind: str,
    record: Callable[..., _R],
    floats: Sequence[str],
    validate: Callable[[_R], str | None],
    wrong_kind: Callable[[dict[str, Any]], str | None],
) -> _R:
    """One record, field by field, naming what is wrong with a bad one: the careful
    path of :func:`decode_bar` and :func:`decode_trade`, which differ only in the kind,
    the number fields between time and seq (*floats*, in the record's order), the rules
    (*validate*) and what a message of another kind is told (*wrong_kind*)."""
    msg = _load(data, kind)
    wrong = wrong_kind(msg)
    if wrong is not None:
        raise CodecError(f"bad {kind} message: {wrong}; message: {_preview(data)}")
    try:
        decoded = record(
            _str(msg, "s"),
            _int(msg, "t"),
            *[_float(msg, key) for key in floats],
            _int(msg, "q"),
            _int(msg, "ln") if "ln" in msg else 0,
        )
    except _FieldError as exc:
        raise CodecError(f"bad {kind} message: {exc}; message: {_preview(data)}") from None
    problem = validate(decoded)
    if problem is not None:
        raise CodecError(f"bad {kind} message: {problem}; message: {_preview(data)}")
    return decoded


class BarColumns(NamedTuple):
    """Decoded bars as columns (lists of equal length), in message order.

    Trades are given as bars of one price (open = high = low = close = the price,
    volume = the size), flagged in ``trade``: None when every record is a bar.
    """

    symbol: list[str]
    ts_ns: list[int]
    open: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    volume: list[float]
    seq: list[int]
    line: list[int]
    trade: list[bool] | None = None


_BAR_KEYS: Final = ("s", "t", "o", "h", "l", "c", "v", "q")
_GET_LINE: Final = methodcaller("get", "ln", 0)
_GET_VERSION: Final = methodcaller("get", "sv")
_GET_KIND: Final = methodcaller("get", "k")
_TRADE_KEYS: Final = ("s", "t", "p", "v", "q")


def decode_bars(values: Sequence[bytes], *, compiled: bool = True) -> BarColumns:
    """Many bar messages at once, as columns; CodecError for the first bad one.

    The same result as :func:`decode_bar` on each value (a test holds them
    equal), but checked a column at a time: types with one ``set(map(type,
    ...))`` per field and the bar rules with numpy (:func:`~.bars.reason_codes`)
    instead of Python code per bar. Anything unusual goes through
    :func:`decode_bar` message by message, which says what is wrong. With ``compiled``
    (and the compiled core installed), a batch of plain valid messages is read by it, the
    same columns (a test holds them equal).
    """
    fast = _decode_bars_compiled(values) if compiled else None
    if fast is None:
        fast = _decode_bars_fast(values)
    if fast is not None:
        return fast
    return _columns([decode_record(v) for v in values])  # raises on the first bad message


def _columns(records: Sequence[Bar | Trade]) -> BarColumns:
    """Records as :class:`BarColumns` (a trade as a bar of one price, flagged)."""
    if not records:
        return BarColumns([], [], [], [], [], [], [], [], [])
    if all(type(r) is Bar for r in records):
        return BarColumns(*(list(column) for column in zip(*records, strict=True)))
    rows = [
        r if isinstance(r, Bar) else Bar(r.symbol, r.ts_ns, *(r.price,) * 4, r.size, r.seq, r.line)
        for r in records
    ]
    trade = [type(r) is Trade for r in records]
    s, t, o, h, lo, c, v, q, ln = (list(column) for column in zip(*rows, strict=True))
    return BarColumns(s, t, o, h, lo, c, v, q, ln, trade)


def decode_bars_lenient(
    values: Sequence[bytes], *, compiled: bool = True
) -> tuple[BarColumns, list[tuple[int, str]]]:
    """:func:`decode_bars` of the good values, and (index, reason) of each bad one.

    For a consumer that must go past a bad record rather than stop at it: as fast as
    :func:`decode_bars` while every value is good."""
    fast = _decode_bars_compiled(values) if compiled else None
    if fast is None:
        fast = _decode_bars_fast(values)
    if fast is not None:
        return fast, []
    records: list[Bar | Trade] = []
    bad: list[tuple[int, str]] = []
    for i, value in enumerate(values):
        try:
            records.append(decode_record(value))
        except CodecError as exc:
            bad.append((i, str(exc)))
    return _columns(records), bad


_FLOAT_TYPES: Final = frozenset((int, float))


def _decode_bars_compiled(values: Sequence[bytes]) -> BarColumns | None:
    """The columns if the compiled core is installed and sure of every value (flat JSON
    objects of plain values, every bar valid); None leaves the batch to the Python path."""
    if _core_decode_bars is None:
        return None
    try:
        columns = _core_decode_bars(values, SCHEMA_VERSION)
    except TypeError:  # a value that is not bytes
        return None
    return None if columns is None else BarColumns(*columns)


def _decode_bars_fast(values: Sequence[bytes]) -> BarColumns | None:
    """The columns if every value is a well-formed, valid bar message, or every value a
    well-formed, valid trade message; None otherwise."""
    try:
        docs = list(map(orjson.loads, values))
        if docs and type(docs[0]) is dict and "k" in docs[0]:
            return _decode_trades_fast(docs)
        symbol, ts, o, h, lo, c, v, seq = (list(map(itemgetter(k), docs)) for k in _BAR_KEYS)
        line = list(map(_GET_LINE, docs))
        version = list(map(_GET_VERSION, docs))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    if not docs:
        return BarColumns([], [], [], [], [], [], [], [], [])
    floats = [_as_floats(column) for column in (o, h, lo, c, v)]
    if not _valid_columns(version, symbol, ts, seq, line, floats):
        return None
    o, h, lo, c, v = floats  # type: ignore[assignment]  # none is None: checked
    return BarColumns(symbol, ts, o, h, lo, c, v, seq, line)


def _decode_trades_fast(docs: list[Any]) -> BarColumns | None:
    """:func:`_decode_bars_fast` for a batch of trade messages (already parsed)."""
    try:
        symbol, ts, price, size, seq = (list(map(itemgetter(k), docs)) for k in _TRADE_KEYS)
        line = list(map(_GET_LINE, docs))
        version = list(map(_GET_VERSION, docs))
        kinds = list(map(_GET_KIND, docs))
    except (KeyError, TypeError, AttributeError):
        return None
    if kinds.count(TRADE) != len(kinds):
        return None
    p, v = _as_floats(price), _as_floats(size)
    if p is None or not _valid_columns(version, symbol, ts, seq, line, [p, p, p, p, v]):
        return None
    assert v is not None  # checked by _valid_columns
    return BarColumns(symbol, ts, p, p, p, p, v, seq, line, [True] * len(docs))


def _as_floats(column: list[Any]) -> list[float] | None:
    """The column as floats if it holds numbers only (JSON integers too), else None."""
    types = set(map(type, column))
    if types == {float}:
        return column
    return list(map(float, column)) if types <= _FLOAT_TYPES else None


def _keys_typed(version: list[Any], symbol: list[Any], ts: list[Any], seq: list[Any]) -> bool:
    """Whether every record of a batch has this schema's version and the key fields'
    types (symbol text, times and sequence numbers integers): what the bars' and the
    metrics' batch decoders both require before taking a batch as columns."""
    return (
        version.count(SCHEMA_VERSION) == len(version)
        and set(map(type, symbol)) == {str}
        and set(map(type, ts)) == {int}
        and set(map(type, seq)) == {int}
    )


def _valid_columns(
    version: list[Any],
    symbol: list[Any],
    ts: list[Any],
    seq: list[Any],
    line: list[Any],
    floats: list[list[float] | None],
) -> bool:
    """Whether every row passes what :func:`_decode_bar_fast` checks (types, version, rules)."""
    if (
        not _keys_typed(version, symbol, ts, seq)
        or set(map(type, line)) != {int}
        or "" in symbol
        or min(ts) < MIN_TS_NS
        or max(ts) > MAX_TS_NS
        or any(column is None for column in floats)
    ):
        return False
    try:
        arrays = [np.array(column, dtype=np.float64) for column in floats]
    except OverflowError:  # an integer too large for a float
        return False
    return not (reason_codes(*arrays) != OK).any()


class BarMetrics(NamedTuple):
    """The metrics of one bar: the bar's close and volume and every window's metrics."""

    symbol: str
    ts_ns: int
    seq: int
    close: float
    bar_volume: float
    windows: tuple[WindowMetrics, ...]
    trade: bool = False
    """The record was a trade: ``close`` is its price, ``bar_volume`` its size."""

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
        or "k" in m
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


def encode_bar_metrics(bar: Bar, windows: Sequence[WindowMetrics], *, trade: bool = False) -> bytes:
    """The metrics message of one bar (all windows): Kafka value and Redis history member.

    ``trade``: the record was a trade (given as a bar of its price and size)."""
    kind = {"k": TRADE} if trade else {}
    return orjson.dumps(
        {
            "sv": SCHEMA_VERSION,
            **kind,
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


def encode_metrics_columns(
    symbol: str,
    ts_ns: Sequence[int],
    seq: Sequence[int],
    close: Sequence[float],
    bar_volume: Sequence[float],
    windows: Sequence[WindowColumns],
    *,
    trade: bool = False,
) -> list[bytes]:
    """The metrics messages of a run of bars of one symbol, from columns (``trade``: a
    run of trades, whose messages carry ``"k":"t"``).

    Byte for byte what :func:`encode_bar_metrics` gives for each bar (a test
    holds them equal), at a fraction of the cost: orjson writes each column of
    numbers in one call (the same number formatting), the column is split
    into its numbers, and the messages are interleaved with the constant JSON
    around them by list slicing and one ``join``, all in C.
    """
    n = len(ts_ns)
    if not n:
        return []
    kind = b',"k":"%b"' % TRADE.encode() if trade else b""
    head = b'{"sv":%d%b,"s":%b,"t":' % (SCHEMA_VERSION, kind, orjson.dumps(symbol))
    literals = [head, b',"q":']
    literals += [b',"c":', b',"bv":']
    columns: list[Sequence[Any]] = [ts_ns, seq, close, bar_volume]
    opening = b',"w":{'
    for w in windows:
        literals.append(opening + orjson.dumps(w.window) + b':{"n":')
        literals += [b',"v":', b',"vw":', b',"ma":', b',"sd":', b',"rsd":']
        columns += [w.n_bars, w.volume, w.vwap, w.sma, w.std, w.ret_std]
        opening = b"},"
    # Messages are separated by a newline, which compact JSON never contains
    # outside a string, and orjson escapes it inside one.
    literals.append(b"}}}\n" if windows else b',"w":{}}\n')
    for k, column in enumerate(columns):
        if len(column) != n:
            raise ValueError(f"column {k} has {len(column)} values, not {n}")
    stride = len(literals) + len(columns)
    messages: list[bytes] = []
    # A few hundred bars at a time: what is written stays in the CPU's caches while
    # each column is put into the pieces with a stride (twice as fast as 4,096).
    for at in range(0, n, _ENCODE_CHUNK):
        size = min(_ENCODE_CHUNK, n - at)
        pieces: list[bytes] = [b""] * (size * stride)
        for k, literal in enumerate(literals):
            pieces[2 * k :: stride] = [literal] * size
        for k, column in enumerate(columns):
            pieces[2 * k + 1 :: stride] = orjson.dumps(column[at : at + size])[1:-1].split(b",")
        chunk = b"".join(pieces).split(b"\n")
        chunk.pop()  # after the last newline
        messages += chunk
    return messages


_ENCODE_CHUNK: Final = 256


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
            trade=_kind(msg),
        )
    except (_FieldError, TypeError, AttributeError) as exc:
        raise CodecError(f"bad metrics message: {exc}; message: {_preview(data)}") from None


class MetricsColumns(NamedTuple):
    """Decoded metrics messages as columns (lists of equal length), in message order."""

    symbol: list[str]
    ts_ns: list[int]
    seq: list[int]
    close: list[float]
    bar_volume: list[float]
    windows: tuple[WindowColumns, ...]
    trade: list[bool] | None = None
    """Which messages were of trades; None when none was."""


_METRICS_KEYS: Final = ("s", "t", "q", "c", "bv", "w")
_WINDOW_KEYS: Final = ("n", "v", "vw", "ma", "sd", "rsd")
_OPT_FLOAT_TYPES: Final = frozenset((int, float, type(None)))


def decode_metrics_columns(
    values: Sequence[bytes], *, compiled: bool = True
) -> MetricsColumns | None:
    """Many metrics messages at once, as columns; None unless every value is a
    well-formed message and all of them carry the same windows in the same order.

    The same values as :func:`decode_bar_metrics` on each message (a test holds them
    equal), checked a column at a time, as :func:`decode_bars` does for bars: the
    loader decodes every metrics message, and one at a time it spent half its time
    here (issue 12). A None sends the caller to :func:`decode_bar_metrics`, message
    by message, which says what is wrong with a bad one. With ``compiled`` (and the
    compiled core installed), a batch of plain messages is read by it, the same
    columns (tests/unit/test_compiled_metrics_decode.py holds them equal).
    """
    fast = _decode_metrics_compiled(values) if compiled else None
    return fast if fast is not None else _decode_metrics_fast(values)


def _decode_metrics_fast(values: Sequence[bytes]) -> MetricsColumns | None:
    """:func:`decode_metrics_columns` in Python: orjson, then a column at a time."""
    try:
        docs = list(map(orjson.loads, values))
        version = list(map(_GET_VERSION, docs))
        kinds = list(map(_GET_KIND, docs))
        symbol, ts, seq, close, volume, windows = (
            list(map(itemgetter(k), docs)) for k in _METRICS_KEYS
        )
        if not docs:
            return MetricsColumns([], [], [], [], [], ())
        if set(map(type, windows)) != {dict}:
            return None
        labels = tuple(windows[0])
        if set(map(tuple, windows)) != {labels}:
            return None
        columns = [_window_columns(label, windows) for label in labels]
        plain = [_as_floats(close), _as_floats(volume)]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, OverflowError):
        return None
    if (
        not _keys_typed(version, symbol, ts, seq)
        or plain[0] is None
        or plain[1] is None
        or any(column is None for column in columns)
        or not set(kinds) <= {None, TRADE}
    ):
        return None
    trade = [k == TRADE for k in kinds] if TRADE in kinds else None
    return MetricsColumns(symbol, ts, seq, plain[0], plain[1], tuple(filter(None, columns)), trade)


class WindowArrays(NamedTuple):
    """:class:`~.metrics.WindowColumns` as numpy arrays; NaN for an undefined value."""

    window: str
    n_bars: npt.NDArray[np.int64]
    volume: npt.NDArray[np.float64]
    vwap: npt.NDArray[np.float64]
    sma: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]
    ret_std: npt.NDArray[np.float64]


class MetricsArrays(NamedTuple):
    """:class:`MetricsColumns` as numpy arrays (symbols as a list), for the loader."""

    symbol: list[str]
    ts_ns: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]
    close: npt.NDArray[np.float64]
    bar_volume: npt.NDArray[np.float64]
    windows: tuple[WindowArrays, ...]
    trade: npt.NDArray[np.bool_] | None = None


def decode_metrics_arrays(values: Sequence[bytes]) -> MetricsArrays | None:
    """:func:`decode_metrics_columns` as numpy arrays, read by the compiled core without
    a Python object per value (a null is NaN: JSON has no NaN, so it means null only);
    None when the core is not installed or not sure (then decode_metrics_columns)."""
    if _core_decode_metrics_arrays is None:
        return None
    try:
        columns = _core_decode_metrics_arrays(values, SCHEMA_VERSION)
    except TypeError:  # a value that is not bytes
        return None
    if columns is None:
        return None
    symbol, ts, seq, close, volume, windows, trade = columns
    return MetricsArrays(
        symbol,
        np.frombuffer(ts, np.int64),
        np.frombuffer(seq, np.int64),
        np.frombuffer(close, np.float64),
        np.frombuffer(volume, np.float64),
        tuple(
            WindowArrays(
                label,
                np.frombuffer(n, np.int64),
                *(np.frombuffer(x, np.float64) for x in floats),
            )
            for label, n, *floats in windows
        ),
        None if trade is None else np.frombuffer(trade, np.uint8).astype(np.bool_),
    )


def _decode_metrics_compiled(values: Sequence[bytes]) -> MetricsColumns | None:
    """The columns if the compiled core is installed and sure of every value; None
    leaves the batch to the Python path (as :func:`_decode_bars_compiled`)."""
    if _core_decode_metrics is None:
        return None
    try:
        columns = _core_decode_metrics(values, SCHEMA_VERSION)
    except TypeError:  # a value that is not bytes
        return None
    if columns is None:
        return None
    symbol, ts, seq, close, volume, windows, trade = columns
    return MetricsColumns(
        symbol, ts, seq, close, volume, tuple(WindowColumns(*w) for w in windows), trade
    )


def _window_columns(label: str, windows: list[dict[str, Any]]) -> WindowColumns | None:
    """One window's columns from every message's ``w``; None if a value has a wrong type.
    Raises KeyError or TypeError for a window or field that is missing."""
    docs = list(map(itemgetter(label), windows))
    if set(map(type, docs)) != {dict}:
        return None
    n, v, vw, ma, sd, rsd = (list(map(itemgetter(k), docs)) for k in _WINDOW_KEYS)
    volume, sma = _as_floats(v), _as_floats(ma)
    vwap, std, ret_std = _as_opt_floats(vw), _as_opt_floats(sd), _as_opt_floats(rsd)
    if (
        set(map(type, n)) != {int}
        or volume is None
        or sma is None
        or vwap is None
        or std is None
        or ret_std is None
    ):
        return None
    return WindowColumns(label, n, volume, vwap, sma, std, ret_std)


def _as_opt_floats(column: list[Any]) -> list[float | None] | None:
    """The column as floats and Nones if it holds numbers and nulls only, else None."""
    types = set(map(type, column))
    if types <= {float, type(None)}:
        return column
    if types <= _OPT_FLOAT_TYPES:
        return [None if x is None else float(x) for x in column]
    return None


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


def _kind(msg: dict[str, Any]) -> bool:
    """Whether a metrics message is of a trade (``k``); a kind this reader does not know
    is a :class:`_FieldError`."""
    kind = msg.get("k")
    if kind is not None and kind != TRADE:
        raise _FieldError(f"unknown record kind (k) {kind!r}: expected {TRADE!r} or none")
    return kind == TRADE


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
