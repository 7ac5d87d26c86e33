"""OHLCV bars of a chosen interval built from trades (``hftpipe produce --bars 1m``).

Issue 11, point 6. Built in the producer, so that the rest of the pipeline sees bars
as from any bar file. Pure: :class:`BarBuilder` takes the trades a reader yields,
chunk by chunk, and gives the bars they complete.

Definitions, per symbol:

- A bar covers the interval ``[start, start + interval)``, ``start`` a multiple of the
  interval since 1970-01-01 UTC (a 1m bar starts on the minute); its time is that
  **start**. Intervals without trades have no bar.
- open: the interval's first trade price, close its last (file order), high and low the
  extremes; volume the sum of the sizes, correctly rounded (``math.fsum``: the same
  float whatever the order or chunking); ``line`` the line of its first trade.
- A bar is complete when a trade of its symbol falls in a later interval; the bars
  still open at the end of the input (the partial last bars) are emitted then, by
  start time and symbol.
- Bars are emitted in the order of the trades that complete them, and ``seq`` numbers
  them in that order from 0. Every run over the same input gives the same bars in the
  same order with the same seqs, however the input is cut into chunks: the producer's
  resume (skip what each partition already holds, by seq) gives every bar exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from .bars import Bar, FloatArray
from .csvformat import BarBatch, IntArray
from .metrics import SESSION, parse_window
from .metrics import _group_rows as by_symbol

_NO_BARS: Final = BarBatch.from_bars([])


def parse_interval(text: str) -> int:
    """``"1m"``, ``"5s"``, ``"1h"``, ``"1d"``... as nanoseconds; ValueError naming the form."""
    if text.strip() == SESSION:
        raise ValueError("bad bar interval 'session': give a length such as 1m, 5m, 1h or 1d")
    try:
        return parse_window(text).ns
    except ValueError:
        raise ValueError(
            f"bad bar interval {text!r}: expected a positive whole number followed by s, m, "
            "h or d, e.g. 1m, 5m, 1h, 1d"
        ) from None


@dataclass
class _Open:
    """The bar a symbol has open: its interval start, first line, OHLC, sizes so far."""

    start: int
    line: int
    open: float
    high: float
    low: float
    close: float
    sizes: list[FloatArray] = field(default_factory=list)

    def bar(self, symbol: str, seq: int) -> Bar:
        volume = math.fsum(np.concatenate(self.sizes).tolist())
        return Bar(symbol, self.start, self.open, self.high, self.low, self.close, volume, seq,
                   self.line)  # fmt: skip


class BarBuilder:
    """Bars of ``interval_ns`` from trades given as bars of one price (:class:`BarBatch`
    whose close is the price and volume the size, as :mod:`.csvformat` reads trades)."""

    def __init__(self, interval_ns: int) -> None:
        if interval_ns <= 0:
            raise ValueError(f"bar interval must be positive, got {interval_ns} ns")
        self.interval_ns = interval_ns
        self._open: dict[str, _Open] = {}
        self._seq = 0

    def add(self, trades: BarBatch) -> BarBatch:
        """Take a chunk of trades (each symbol's in time order); the bars they complete."""
        if not len(trades):
            return _NO_BARS
        start = trades.ts_ns - trades.ts_ns % self.interval_ns  # floor, negative times too
        done: list[tuple[int, str, _Open]] = []  # (row of the completing trade, symbol, bar)
        for symbol, rows in by_symbol(trades.symbol):
            self._add_symbol(symbol, rows, start[rows], trades, done)
        done.sort(key=lambda d: d[0])
        return self._number([(symbol, bar) for _, symbol, bar in done])

    def finish(self) -> BarBatch:
        """The bars still open (the partial last ones), by start time and symbol."""
        left = sorted(self._open.items(), key=lambda item: (item[1].start, item[0]))
        self._open = {}
        return self._number(left)

    def _add_symbol(
        self,
        symbol: str,
        rows: IntArray,
        start: IntArray,
        trades: BarBatch,
        done: list[tuple[int, str, _Open]],
    ) -> None:
        price, size, line = trades.close[rows], trades.volume[rows], trades.line[rows]
        cuts = (np.flatnonzero(start[1:] != start[:-1]) + 1).tolist()
        for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True):
            segment = price[a:b]
            hi, lo = float(segment.max()), float(segment.min())
            current = self._open.get(symbol)
            if current is not None and current.start == int(start[a]):
                current.high, current.low = max(current.high, hi), min(current.low, lo)
                current.close = float(segment[-1])
                current.sizes.append(size[a:b])
                continue
            if current is not None:
                done.append((int(rows[a]), symbol, current))
            self._open[symbol] = _Open(
                int(start[a]), int(line[a]), float(segment[0]), hi, lo, float(segment[-1]),
                [size[a:b]],
            )  # fmt: skip

    def _number(self, bars: list[tuple[str, _Open]]) -> BarBatch:
        if not bars:
            return _NO_BARS
        out = [bar.bar(symbol, self._seq + k) for k, (symbol, bar) in enumerate(bars)]
        self._seq += len(out)
        return BarBatch.from_bars(out)
