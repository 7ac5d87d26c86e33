"""Rolling-window metrics per symbol: VWAP, SMA, standard deviations, bar counts.

Definitions (one per symbol and window; ``t`` is the time of the current bar):

- A rolling window of length ``W`` holds the symbol's bars with time in
  ``(t - W, t]``: the current bar and those less than ``W`` older. The
  ``session`` window holds the bars since 00:00 UTC of ``t``'s day.
- ``vwap``: sum(typical price * volume) / sum(volume), typical price
  ``(high + low + close) / 3``; None when the window's volume is 0.
- ``sma``: mean close. ``std``: sample standard deviation of close (ddof=1);
  None with fewer than 2 bars.
- ``ret_std``: sample standard deviation of the log returns of close, where a
  return belongs to the window when **both of its bars are in the window**. A
  window of ``n`` bars thus has ``n - 1`` returns, and a bar that opens a window
  after a gap does not drag in the jump from a bar outside it. None with fewer
  than 2 returns (3 bars).
- ``n_bars`` and ``volume``: number of bars and their total volume.

Trades (issue 11, point 6; :meth:`MetricsEngine.update_trades`): a trade is a
record of one price and a size, and the same definitions apply with the trade's
price for both the close and the typical price: ``vwap`` = sum(price * size) /
sum(size), ``sma``, ``std`` and ``ret_std`` over the trade prices, ``n_bars`` the
number of trades, ``volume`` their total size.

Every bar yields one :class:`WindowMetrics` per window, in the order of the
engine's windows (the configured ones, then ``session``).

Bars of a symbol must come in increasing time. A bar at or before the last
time seen for its symbol is ignored and counted in :attr:`MetricsEngine.ignored`:
a message delivered twice changes nothing. Trades of a symbol often share a
timestamp, so a trade is ignored only when its (time, seq) is at or before the
symbol's last (time, last trade's seq); a window at a trade holds the trades up to
and including it (a later trade at the same time comes after it).

Two paths compute the same definitions:

- :meth:`MetricsEngine.update` (one bar, pure Python, O(1) amortised): per window,
  Welford means and sums of squared deviations of the closes and of the returns
  (each shifted by a recent value, so that a price of 1e5 moving by cents keeps
  its digits), and double-double running sums of volume and price * volume,
  added to as bars enter and subtracted from as they leave. A window is
  recomputed exactly from its bars (``math.fsum``, two passes) once the updates
  since the last recomputation outnumber four times its bars (plus a constant),
  or once a sum of squares has shrunk to 1e-4 of the terms that went through it
  (a big move has left a now quiet window). Rounding errors thus never build up,
  over any length of stream; the first trigger costs O(1) amortised, the second
  fires only when a large move leaves a window.
  :meth:`MetricsEngine.update_columns` is the same computation for a run of bars
  given as columns, bit for bit, with the loops turned around (per window, a
  tight loop over the bars): what the processor uses. Neither depends on how the
  stream is cut into calls.
- :meth:`MetricsEngine.update_batch` (a :class:`BarBatch`, numpy): prefix sums in
  double-double precision over the retained history plus the batch, window sums
  as differences of prefix sums, and variances formed in double-double too, so
  the subtraction in ``sum(x^2) - sum(x)^2 / n`` loses nothing that matters.

Both agree to about 1e-12 relative (a test holds them to 1e-9 against each
other, against an exact recomputation over a million bars and against pandas).
A window whose closes (or returns) are all equal has a standard deviation of
exactly 0.0, and an SMA equal to that close. The state (retained bars and
running sums, floats stored bit for bit) is written by
:meth:`MetricsEngine.snapshot` and read by :meth:`MetricsEngine.restore`;
continuing from a restored engine gives the same bits as never stopping.
"""

from __future__ import annotations

import base64
import math
import re
import sys
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from math import fsum, sqrt
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Self

import numpy as np
import numpy.typing as npt
import orjson

from hftpipe_workers.bars import NS_PER_DAY, NS_PER_SECOND, Bar, FloatArray

if TYPE_CHECKING:  # csvformat imports pandas, which the processor does not need
    from hftpipe_workers.csvformat import BarBatch, IntArray, ObjectArray

DEFAULT_WINDOWS: Final = ("5m", "15m", "1h", "1d")
SESSION: Final = "session"

_UNIT_NS: Final = {
    "s": NS_PER_SECOND,
    "m": 60 * NS_PER_SECOND,
    "h": 3600 * NS_PER_SECOND,
    "d": NS_PER_DAY,
}
_WINDOW_RE: Final = re.compile(r"(\d+)([smhd])")

# A window is recomputed from its bars when the updates since the last
# recomputation exceed _RECOMPUTE_RATIO times its bar count plus _RECOMPUTE_SLACK;
# the constant keeps small windows from being recomputed all the time. Each
# recomputation costs ~0.25 us per bar of the window: at a ratio of 1 they took a
# quarter of the engine's time (a window of n bars takes 2 updates per bar and was
# recomputed every n / 2 bars); the rounding error they bound stays around 1e-13.
_RECOMPUTE_RATIO: Final = 4
_RECOMPUTE_SLACK: Final = 32
# ... and when a sum of squared deviations has shrunk below this fraction of the
# total of the terms added to and taken from it since (its rounding error is
# about 1e-16 of that total): after a jump leaves a now quiet window, say.
_M2_BUDGET: Final = 1e-4
# Retained bars are moved down in memory once this many have expired, and at
# least half of the retained list has.
_COMPACT_MIN: Final = 1024


@dataclass(frozen=True, slots=True)
class Window:
    """A window: ``label`` as configured (e.g. ``"5m"``) and its length in ns (0 for session)."""

    label: str
    ns: int

    @property
    def is_session(self) -> bool:
        return self.ns == 0


def parse_window(text: str) -> Window:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"1d"``... as a :class:`Window`; ``"session"`` too."""
    label = text.strip()
    if label == SESSION:
        return Window(SESSION, 0)
    match = _WINDOW_RE.fullmatch(label)
    if match is None or int(match[1]) == 0:
        raise ValueError(
            f"bad window {text!r}: expected a positive whole number followed by s, m, h or d "
            "(e.g. 30s, 5m, 1h, 1d), or 'session' for the window since 00:00 UTC"
        )
    return Window(label, int(match[1]) * _UNIT_NS[match[2]])


class WindowColumns(NamedTuple):
    """One window's metrics for a run of bars, as columns: entry ``j`` is the ``j``-th bar's.

    The same values as the :class:`WindowMetrics` of those bars (None: undefined),
    built without one record per bar and window (see
    :meth:`MetricsEngine.update_columns`).
    """

    window: str
    n_bars: list[int]
    volume: list[float]
    vwap: list[float | None]
    sma: list[float]
    std: list[float | None]
    ret_std: list[float | None]


class WindowMetrics(NamedTuple):
    """The metrics of one window after one bar.

    A NamedTuple because one is built per bar and window, and it builds four
    times faster than a frozen dataclass.
    """

    symbol: str
    window: str
    ts_ns: int
    """Time of the bar that closed this computation (ns since the epoch, UTC)."""
    seq: int
    """``seq`` of that bar."""
    n_bars: int
    """Bars in the window (named so because ``count`` is a tuple method)."""
    volume: float
    vwap: float | None
    sma: float
    std: float | None
    ret_std: float | None


# Per-window running state, one list per window, indexed by these positions.
# Closes enter the Welford sums shifted by _SHIFT (a recent close, reset at each
# recomputation): the mean of the shifted closes is small, so its rounding error
# is small next to the spread, even for prices of 1e5 moving by cents. Returns
# are shifted by _RSHIFT for the same reason (a steady trend has a mean return
# far larger than the spread of its returns).
# _EM2 / _ERM2 total the terms added to and taken from _M2 / _RM2 (all >= 0).
(_START, _NV, _VS, _VC, _PS, _PC, _SHIFT, _MEAN, _M2, _EM2, _RSHIFT, _RMEAN, _RM2, _ERM2, _OPS) = (
    range(15)
)
_N_FLOATS: Final = _OPS - _VS
_STALE: Final = -1  # _OPS value: sums are invalid, recompute before use


def _fsum_dd(values: list[float]) -> tuple[float, float]:
    """The exact sum as a double-double: the rounded sum and what rounding left out.

    The remainder matters: when big bars leave a window later, the small sum
    that stays may be smaller than the rounding error of the sum now.
    """
    hi = fsum(values)
    return hi, fsum([*values, -hi])


class _Symbol:
    """The retained bars of one symbol and the running state of its windows.

    Bars are kept in parallel lists (faster to index than a deque, and shared by
    all windows); ``wins[k][_START]`` is the list index of the oldest bar in
    window ``k``. ``ret[i]`` is the log return from bar ``i - 1`` to bar ``i``.
    """

    __slots__ = (
        "cl",
        "has_prev",
        "has_r",
        "last_r",
        "last_seq",
        "last_ts",
        "prev_close",
        "ret",
        "run_c",
        "run_r",
        "tpv",
        "ts",
        "vol",
        "wins",
    )

    def __init__(self, n_windows: int) -> None:
        self.ts: list[int] = []
        self.tpv: list[float] = []
        self.vol: list[float] = []
        self.cl: list[float] = []
        self.ret: list[float] = []
        self.last_ts = -(2**63)
        self.last_seq = -1  # seq of the last trade (trades only: see update_trades)
        self.has_prev = False
        self.prev_close = 0.0
        self.has_r = False
        self.last_r = 0.0
        self.run_c = 0  # how many of the latest closes are equal
        self.run_r = 0  # how many of the latest returns are equal
        self.wins: list[list[Any]] = [[0, 0, *([0.0] * _N_FLOATS), 0] for _ in range(n_windows)]

    def recompute(self, w: list[Any], end: int) -> None:
        """Set window ``w``'s sums exactly from its bars ``w[_START]..end`` (inclusive)."""
        start = w[_START]
        shift = self.cl[end]
        closes = [x - shift for x in self.cl[start : end + 1]]
        n = len(closes)
        mean = fsum(closes) / n
        w[_SHIFT] = shift
        w[_MEAN] = mean
        w[_M2] = fsum([(x - mean) * (x - mean) for x in closes])
        w[_EM2] = 0.0
        rshift = self.ret[end]
        rets = [x - rshift for x in self.ret[start + 1 : end + 1]]
        w[_RSHIFT] = rshift
        if rets:
            rmean = fsum(rets) / len(rets)
            w[_RMEAN] = rmean
            w[_RM2] = fsum([(x - rmean) * (x - rmean) for x in rets])
        else:
            w[_RMEAN] = w[_RM2] = 0.0
        w[_ERM2] = 0.0
        vols = self.vol[start : end + 1]
        w[_NV] = sum(1 for x in vols if x > 0.0)
        w[_VS], w[_VC] = _fsum_dd(vols)
        w[_PS], w[_PC] = _fsum_dd(self.tpv[start : end + 1])
        w[_OPS] = 0

    def compact(self) -> None:
        """Drop bars that no window holds any more, once enough have expired."""
        head = min(w[_START] for w in self.wins)
        if head >= _COMPACT_MIN and 2 * head >= len(self.ts):
            for lst in (self.ts, self.tpv, self.vol, self.cl, self.ret):
                del lst[:head]
            for w in self.wins:
                w[_START] -= head


def _ordered_windows(windows: Sequence[str], *, session: bool) -> tuple[Window, ...]:
    """*windows* parsed and ordered by length, session last (with *session*, or when
    listed); ValueError for none or for the same length twice.

    Ordered: the windows are a set, and an engine built from the same set in another
    order must be the same engine (its snapshot is restored by a processor whose job
    lists them in a new order)."""
    parsed = sorted((parse_window(w) for w in windows if w.strip() != SESSION), key=lambda w: w.ns)
    if session or any(w.strip() == SESSION for w in windows):
        parsed.append(Window(SESSION, 0))
    lengths = [w.ns for w in parsed]
    if len(set(lengths)) != len(lengths):
        raise ValueError(f"windows {list(windows)} contain the same length twice")
    if not parsed:
        raise ValueError("no windows configured: give at least one, e.g. ['5m']")
    return tuple(parsed)


class _Engine(ABC):
    """What both engines share: the windows, and :meth:`update` as a run of one bar."""

    def __init__(self, windows: Sequence[str] = DEFAULT_WINDOWS, *, session: bool = True) -> None:
        self.windows: tuple[Window, ...] = _ordered_windows(windows, session=session)
        self.labels: tuple[str, ...] = tuple(w.label for w in self.windows)
        # -1 marks the session window for the hot loop.
        self._lengths: tuple[int, ...] = tuple(w.ns or -1 for w in self.windows)

    @abstractmethod
    def update_columns(
        self,
        symbol: str,
        ts_ns: Sequence[int],
        high: Sequence[float],
        low: Sequence[float],
        close: Sequence[float],
        volume: Sequence[float],
    ) -> tuple[list[int], list[WindowColumns]]:
        """Update the state with a run of bars of one *symbol* (see the engines)."""

    @abstractmethod
    def snapshot(self) -> bytes:
        """The engine's whole state, for :meth:`restore`."""

    @abstractmethod
    def _restore_symbol(self, state: _SymbolState) -> None:
        """Put one symbol's state from a snapshot into the engine."""

    @classmethod
    def restore(cls, data: bytes, *, expect_windows: Sequence[str] | None = None) -> Self:
        """An engine from :meth:`snapshot` output (of either engine), in exactly the state
        it was taken in.

        With ``expect_windows``, the snapshot must have been taken with those
        windows (plus ``session``), else ValueError says what differs.
        """
        try:
            doc = orjson.loads(data)
            if doc.get("format") != _SNAPSHOT_FORMAT or doc.get("version") != _SNAPSHOT_VERSION:
                raise ValueError(
                    f"not a metrics snapshot of format {_SNAPSHOT_FORMAT!r} "
                    f"version {_SNAPSHOT_VERSION} (got {doc.get('format')!r} "
                    f"version {doc.get('version')!r})"
                )
            labels = doc["windows"]
            engine = cls([w for w in labels if w != SESSION], session=SESSION in labels)
            # The snapshot's k-th window is the engine's at[k] (older snapshots kept the
            # order the windows were configured in).
            at = [engine.labels.index(label) for label in labels]
            if expect_windows is not None:
                wanted = tuple(w.label for w in _ordered_windows(expect_windows, session=True))
                if wanted != engine.labels:
                    raise ValueError(
                        f"the snapshot was taken with windows {list(engine.labels)} but "
                        f"{list(wanted)} are configured; restore with the same windows "
                        "or start over from the beginning of the stream"
                    )
            engine.ignored = int(doc["ignored"])
            n_win = len(engine.windows)
            for name, s in doc["symbols"].items():
                f64 = _unb64(s["win_f64"], "<f8")
                if len(s["win_int"]) != n_win or len(f64) != _N_FLOATS * n_win:
                    raise ValueError(f"symbol {name!r} has state for the wrong number of windows")
                wins: list[tuple[int, int, int, list[float]]] = [(0, 0, 0, [])] * n_win
                for k, (start, nv, ops) in enumerate(s["win_int"]):
                    floats = f64[_N_FLOATS * k : _N_FLOATS * (k + 1)]
                    wins[at[k]] = (int(start), int(nv), int(ops), floats)
                prev_close, last_r = _unb64(s["scalars"], "<f8")
                engine._restore_symbol(
                    _SymbolState(
                        name=name,
                        last_ts=int(s["last_ts"]),
                        # Absent from snapshots taken before trades (bars only).
                        last_seq=int(s.get("last_seq", -1)),
                        has_prev=bool(s["has_prev"]),
                        has_r=bool(s["has_r"]),
                        run_c=int(s["run_c"]),
                        run_r=int(s["run_r"]),
                        prev_close=prev_close,
                        last_r=last_r,
                        ts=_unb64(s["ts"], "<i8"),
                        tpv=_unb64(s["tpv"], "<f8"),
                        vol=_unb64(s["vol"], "<f8"),
                        cl=_unb64(s["cl"], "<f8"),
                        ret=_unb64(s["ret"], "<f8"),
                        wins=wins,
                    )
                )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"cannot restore the metrics state: {exc}") from exc
        return engine

    ignored: int

    def update(self, bar: Bar) -> list[WindowMetrics]:
        """Add one bar; its metrics, one record per window (empty if the bar is ignored).

        A run of one bar through :meth:`update_columns`: one copy of the float
        operations, so bar-by-bar and column-wise results are the same bits.
        """
        rows, columns = self.update_columns(
            bar.symbol, (bar.ts_ns,), (bar.high,), (bar.low,), (bar.close,), (bar.volume,)
        )
        if not rows:
            return []
        return [
            WindowMetrics(
                bar.symbol, col.window, bar.ts_ns, bar.seq, col.n_bars[0], col.volume[0],
                col.vwap[0], col.sma[0], col.std[0], col.ret_std[0],
            )
            for col in columns
        ]  # fmt: skip


class _SymbolState(NamedTuple):
    """One symbol's state as a snapshot holds it, windows in the engine's order:
    (start, bars with volume, updates since the last recomputation, the 12 floats)."""

    name: str
    last_ts: int
    last_seq: int
    has_prev: bool
    has_r: bool
    run_c: int
    run_r: int
    prev_close: float
    last_r: float
    ts: list[int]
    tpv: list[float]
    vol: list[float]
    cl: list[float]
    ret: list[float]
    wins: list[tuple[int, int, int, list[float]]]


class MetricsEngine(_Engine):
    """Rolling metrics for any number of symbols; see the module docstring.

    The reference: :class:`CompiledMetricsEngine` is tested against it bit for bit.
    """

    def __init__(self, windows: Sequence[str] = DEFAULT_WINDOWS, *, session: bool = True) -> None:
        super().__init__(windows, session=session)
        self.ignored = 0
        """Bars ignored because their time was not after their symbol's last bar."""
        self._symbols: dict[str, _Symbol] = {}

    @property
    def symbols(self) -> list[str]:
        return sorted(self._symbols)

    # -- a run of bars, exactly as bar by bar ------------------------------------------

    def update_columns(
        self,
        symbol: str,
        ts_ns: Sequence[int],
        high: Sequence[float],
        low: Sequence[float],
        close: Sequence[float],
        volume: Sequence[float],
    ) -> tuple[list[int], list[WindowColumns]]:
        """Add bars of one symbol, given as columns; the same bits however the run is cut.

        Returns the indices of the bars that were processed (a bar not after
        its symbol's last time is ignored, as by :meth:`update`) and, per
        window, their metrics as columns. Each window runs one fixed sequence of
        float operations per bar on the state carried from the bar before, with
        the loops turned around (per window, one tight loop over the bars, state
        in local variables), so the results (and the :meth:`snapshot` after) do
        not depend on how a stream is cut into calls (:meth:`update` is a run of
        one): the processor's exactly-once resume relies on that.
        """
        return self._update(symbol, ts_ns, None, high, low, close, volume)

    def update_trades(
        self,
        symbol: str,
        ts_ns: Sequence[int],
        seq: Sequence[int],
        price: Sequence[float],
        size: Sequence[float],
    ) -> tuple[list[int], list[WindowColumns]]:
        """Add trades of one symbol, given as columns: :meth:`update_columns` for trades.

        A trade enters as a bar whose close and typical price are its price (its
        price * size is one product, not ``(h + l + c) / 3 * v``), and it is ignored
        only when its (time, seq) is not after the symbol's last (time, last trade's
        seq): trades at equal times are all processed, in order, and a redelivered
        one changes nothing. The same bits however the run is cut.
        """
        return self._update(symbol, ts_ns, seq, None, None, price, size)

    def _update(  # noqa: PLR0915 - the per-record loop, kept in one piece for speed
        self,
        symbol: str,
        ts_ns: Sequence[int],
        seq: Sequence[int] | None,
        high: Sequence[float] | None,
        low: Sequence[float] | None,
        close: Sequence[float],
        volume: Sequence[float],
    ) -> tuple[list[int], list[WindowColumns]]:
        """Bars (``seq`` None: ``high`` and ``low`` given) or trades (``seq`` given)."""
        st = self._symbols.get(symbol)
        if st is None:
            st = self._symbols[symbol] = _Symbol(len(self.windows))
        ts_l, tpv_l, vol_l, cl_l, ret_l = st.ts, st.tpv, st.vol, st.cl, st.ret
        first = len(ts_l)
        rows: list[int] = []
        runs_c: list[int] = []
        runs_r: list[int] = []
        last_ts, has_prev, prev_close = st.last_ts, st.has_prev, st.prev_close
        has_r, last_r, run_c, run_r = st.has_r, st.last_r, st.run_c, st.run_r
        last_seq = st.last_seq
        # Trades have no high and low (never read for them: their seq is given).
        hi, lo = (high, low) if high is not None and low is not None else (close, close)
        log1p = math.log1p
        for j, t in enumerate(ts_ns):
            if seq is None:
                if t <= last_ts:
                    continue
            elif t < last_ts or (t == last_ts and seq[j] <= last_seq):
                continue
            c = close[j]
            v = volume[j]
            if has_prev:
                r = log1p((c - prev_close) / prev_close)
                run_c = run_c + 1 if c == prev_close else 1
                run_r = run_r + 1 if has_r and r == last_r else 1
                has_r = True
                last_r = r
            else:
                r = 0.0  # never used: the first bar has no return
                run_c = 1
            ts_l.append(t)
            if seq is None:
                tpv_l.append((hi[j] + lo[j] + c) / 3.0 * v)
            else:
                tpv_l.append(c * v)
                last_seq = seq[j]
            vol_l.append(v)
            cl_l.append(c)
            ret_l.append(r)
            rows.append(j)
            runs_c.append(run_c)
            runs_r.append(run_r)
            last_ts = t
            has_prev = True
            prev_close = c
        st.last_ts, st.has_prev, st.prev_close = last_ts, has_prev, prev_close
        st.has_r, st.last_r, st.run_c, st.run_r = has_r, last_r, run_c, run_r
        st.last_seq = last_seq
        self.ignored += len(ts_ns) - len(rows)
        if not rows:
            return rows, []
        columns = [
            self._window_columns(st, k, first, runs_c, runs_r) for k in range(len(self.windows))
        ]
        st.compact()
        return rows, columns

    # One long function on purpose: this runs per bar and window, and in CPython
    # every helper call or attribute lookup would cost a noticeable share.
    def _window_columns(  # noqa: PLR0912, PLR0915
        self, st: _Symbol, k: int, first: int, runs_c: list[int], runs_r: list[int]
    ) -> WindowColumns:
        """Window ``k``'s metrics for the bars at list indices ``first`` onwards."""
        length = self._lengths[k]
        w = st.wins[k]
        ts_l, tpv_l, vol_l, cl_l, ret_l = st.ts, st.tpv, st.vol, st.cl, st.ret
        out_n: list[int] = []
        out_volume: list[float] = []
        out_vwap: list[float | None] = []
        out_sma: list[float] = []
        out_std: list[float | None] = []
        out_rstd: list[float | None] = []
        put_n, put_volume, put_vwap = out_n.append, out_volume.append, out_vwap.append
        put_sma, put_std, put_rstd = out_sma.append, out_std.append, out_rstd.append
        start, nv, vs, vc, ps, pc, shift, mean, m2, em2, rshift, rmean, rm2, erm2, ops = w
        prev_t = ts_l[first - 1] if first else 0
        i = first
        for t, c, v, tpv, r, run_c, run_r in zip(
            ts_l[first:], cl_l[first:], vol_l[first:], tpv_l[first:], ret_l[first:],
            runs_c, runs_r, strict=True,
        ):  # fmt: skip
            cutoff = t - length if length > 0 else t - t % NS_PER_DAY - 1
            if i == 0 or prev_t <= cutoff:
                # Every earlier bar has left: the window restarts from this bar.
                start = i
                nv = 1 if v > 0.0 else 0
                vs, vc, ps, pc = v, 0.0, tpv, 0.0
                shift, mean, m2, em2 = c, 0.0, 0.0, 0.0
                rshift, rmean, rm2, erm2 = r, 0.0, 0.0, 0.0
                ops = 0
                n = 1
            else:
                if ops == _STALE:
                    st.recompute(w, i - 1)
                    (
                        start,
                        nv,
                        vs,
                        vc,
                        ps,
                        pc,
                        shift,
                        mean,
                        m2,
                        em2,
                        rshift,
                        rmean,
                        rm2,
                        erm2,
                        ops,
                    ) = w
                n = i - start
                while ts_l[start] <= cutoff:
                    x = cl_l[start] - shift
                    n -= 1
                    d = x - mean
                    mean -= d / n
                    d *= x - mean
                    m2 -= d
                    em2 += d
                    if n == 1:
                        rmean = rm2 = erm2 = 0.0
                    else:
                        x = ret_l[start + 1] - rshift
                        d = x - rmean
                        rmean -= d / (n - 1)
                        d *= x - rmean
                        rm2 -= d
                        erm2 += d
                    x = vol_l[start]
                    if x > 0.0:
                        nv -= 1
                        if nv == 0:
                            vs = vc = ps = pc = 0.0
                        else:
                            s = vs - x
                            b = s - vs
                            e = (vs - (s - b)) - (x + b) + vc
                            vs = s + e
                            vc = e - (vs - s)
                            x = tpv_l[start]
                            s = ps - x
                            b = s - ps
                            e = (ps - (s - b)) - (x + b) + pc
                            ps = s + e
                            pc = e - (ps - s)
                    start += 1
                    ops += 1
                n += 1
                x = c - shift
                d = x - mean
                mean += d / n
                d *= x - mean
                m2 += d
                em2 += d
                x = r - rshift
                if n == 2:
                    rmean, rm2 = x, 0.0
                else:
                    d = x - rmean
                    rmean += d / (n - 1)
                    d *= x - rmean
                    rm2 += d
                    erm2 += d
                if v > 0.0:
                    nv += 1
                    s = vs + v
                    b = s - vs
                    e = (vs - (s - b)) + (v - b) + vc
                    vs = s + e
                    vc = e - (vs - s)
                    s = ps + tpv
                    b = s - ps
                    e = (ps - (s - b)) + (tpv - b) + pc
                    ps = s + e
                    pc = e - (ps - s)
                ops += 1
            if (
                ops > _RECOMPUTE_RATIO * n + _RECOMPUTE_SLACK
                or m2 < em2 * _M2_BUDGET
                or rm2 < erm2 * _M2_BUDGET
            ):
                w[:] = (
                    start,
                    nv,
                    vs,
                    vc,
                    ps,
                    pc,
                    shift,
                    mean,
                    m2,
                    em2,
                    rshift,
                    rmean,
                    rm2,
                    erm2,
                    ops,
                )
                st.recompute(w, i)
                start, nv, vs, vc, ps, pc, shift, mean, m2, em2, rshift, rmean, rm2, erm2, ops = w

            put_n(n)
            if run_c >= n:
                put_sma(c)
                put_std(0.0 if n > 1 else None)
            else:
                put_sma(shift + mean)
                put_std(sqrt(m2 / (n - 1)) if m2 > 0.0 else 0.0)
            if n < 3:
                put_rstd(None)
            elif run_r >= n - 1:
                put_rstd(0.0)
            else:
                put_rstd(sqrt(rm2 / (n - 2)) if rm2 > 0.0 else 0.0)
            if nv:
                volume = vs + vc
                put_volume(volume)
                put_vwap((ps + pc) / volume)
            else:
                put_volume(0.0)
                put_vwap(None)
            prev_t = t
            i += 1
        w[:] = (start, nv, vs, vc, ps, pc, shift, mean, m2, em2, rshift, rmean, rm2, erm2, ops)
        return WindowColumns(
            self.labels[k], out_n, out_volume, out_vwap, out_sma, out_std, out_rstd
        )

    # -- a batch of bars (numpy) ---------------------------------------------------

    def update_batch(self, batch: BarBatch) -> MetricsBatch:
        """Add a batch of bars (any symbols, each symbol's bars in time order).

        The same definitions as :meth:`update`, vectorised: the result holds one
        row per processed bar and one column per window. Ignored bars (not after
        their symbol's last time) get no row.
        """
        n_rows, n_win = len(batch), len(self.windows)
        count = np.zeros((n_rows, n_win), dtype=np.int64)
        floats = np.full((5, n_rows, n_win), np.nan)
        keep = np.zeros(n_rows, dtype=np.bool_)
        for symbol, group in _group_rows(batch.symbol):
            st = self._symbols.get(symbol)
            if st is None:
                st = self._symbols[symbol] = _Symbol(n_win)
            t = batch.ts_ns[group]
            fresh = t > np.maximum.accumulate(np.concatenate(([st.last_ts], t)))[:-1]
            self.ignored += int(len(group) - fresh.sum())
            rows = group[fresh]
            if len(rows):
                keep[rows] = True
                self._batch_symbol(st, batch, rows, count, floats)
        idx = np.flatnonzero(keep)
        return MetricsBatch(
            self.labels,
            row=idx,
            symbol=batch.symbol[idx],
            ts_ns=batch.ts_ns[idx],
            seq=batch.seq[idx],
            n_bars=count[idx],
            volume=floats[0][idx],
            vwap=floats[1][idx],
            sma=floats[2][idx],
            std=floats[3][idx],
            ret_std=floats[4][idx],
        )

    def _batch_symbol(
        self,
        st: _Symbol,
        batch: BarBatch,
        rows: IntArray,
        count: npt.NDArray[np.int64],
        floats: FloatArray,
    ) -> None:
        t = batch.ts_ns[rows]
        c = batch.close[rows]
        v = batch.volume[rows]
        tpv = (batch.high[rows] + batch.low[rows] + c) / 3.0 * v
        prev = np.concatenate(([st.prev_close], c[:-1]))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log1p((c - prev) / prev)
        if not st.has_prev:
            r[0] = 0.0  # the symbol's first bar has no return

        # The retained bars of the oldest window, then the batch: "A" indices.
        head = min(w[_START] for w in st.wins) if st.ts else 0
        n_hist = len(st.ts) - head
        ts_a = np.concatenate((np.array(st.ts[head:], dtype=np.int64), t))
        cl_a = np.concatenate((np.array(st.cl[head:], dtype=np.float64), c))
        vol_a = np.concatenate((np.array(st.vol[head:], dtype=np.float64), v))
        tpv_a = np.concatenate((np.array(st.tpv[head:], dtype=np.float64), tpv))
        ret_a = np.concatenate((np.array(st.ret[head:], dtype=np.float64), r))
        size = len(ts_a)
        pos = np.arange(size)
        j = n_hist + np.arange(len(rows))  # the batch's bars

        # Trailing runs of equal closes / returns (a run cut at A[0] is long enough:
        # no window reaches before A[0]).
        change = np.ones(size, dtype=np.bool_)
        change[1:] = cl_a[1:] != cl_a[:-1]
        run_c = pos - np.maximum.accumulate(np.where(change, pos, 0)) + 1
        change[1:] = ret_a[1:] != ret_a[:-1]
        if not st.has_prev and size > 1:
            change[1] = True  # A[0] is the first bar: ret_a[0] is not a return
        run_r = pos - np.maximum.accumulate(np.where(change, pos, 0)) + 1

        pre = _Prefixes(
            ts=ts_a,
            vol=_prefix(vol_a),
            tpv=_prefix(tpv_a),
            cl=_prefix(cl_a),
            cl2=_prefix_sq(cl_a),
            ret=_prefix(ret_a),
            ret2=_prefix_sq(ret_a),
            nv=np.concatenate(([0], np.cumsum(vol_a > 0.0))),
            run_c=run_c,
            run_r=run_r,
        )
        for k, length in enumerate(self._lengths):
            cutoff = t - length if length > 0 else t - t % NS_PER_DAY - 1
            s, columns = _window_columns(pre, cutoff, j, c)
            count[rows, k] = columns[0]
            for f, column in enumerate(columns[1:]):
                floats[f, rows, k] = column
            w = st.wins[k]
            w[_START] = head + int(s)
            w[_OPS] = _STALE

        st.ts.extend(t.tolist())
        st.tpv.extend(tpv.tolist())
        st.vol.extend(v.tolist())
        st.cl.extend(c.tolist())
        st.ret.extend(r.tolist())
        st.last_ts = int(t[-1])
        st.prev_close = float(c[-1])
        st.run_c = int(run_c[-1])
        if st.has_prev or len(rows) > 1:
            st.has_r = True
            st.last_r = float(r[-1])
            st.run_r = int(run_r[-1])
        st.has_prev = True
        st.compact()

    # -- snapshot ------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as compact JSON bytes, to store next to the consumer offsets.

        ``{"format": "hftpipe.metrics-state", "version": 1, "windows": [...],
        "ignored": n, "symbols": {symbol: {...}}}``; per symbol, the bars still
        inside some window and every running sum, as base64 little-endian
        float64/int64 arrays so that every bit survives. About 40 bytes per
        retained bar: some 70 kB per symbol for a 1d window of minute bars.
        """
        symbols: dict[str, Any] = {}
        for name, st in self._symbols.items():
            head = min(w[_START] for w in st.wins) if st.ts else 0
            symbols[name] = {
                "last_ts": st.last_ts,
                "last_seq": st.last_seq,
                "has_prev": st.has_prev,
                "has_r": st.has_r,
                "run_c": st.run_c,
                "run_r": st.run_r,
                "scalars": _b64([st.prev_close, st.last_r], "<f8"),
                "ts": _b64(st.ts[head:], "<i8"),
                "tpv": _b64(st.tpv[head:], "<f8"),
                "vol": _b64(st.vol[head:], "<f8"),
                "cl": _b64(st.cl[head:], "<f8"),
                "ret": _b64(st.ret[head:], "<f8"),
                "win_int": [[w[_START] - head, w[_NV], w[_OPS]] for w in st.wins],
                "win_f64": _b64([x for w in st.wins for x in w[_VS:_OPS]], "<f8"),
            }
        doc = {
            "format": _SNAPSHOT_FORMAT,
            "version": _SNAPSHOT_VERSION,
            "windows": list(self.labels),
            "ignored": self.ignored,
            "symbols": symbols,
        }
        return orjson.dumps(doc)

    def _restore_symbol(self, state: _SymbolState) -> None:
        st = _Symbol(len(self.windows))
        st.last_ts, st.has_prev, st.has_r = state.last_ts, state.has_prev, state.has_r
        st.last_seq = state.last_seq
        st.run_c, st.run_r = state.run_c, state.run_r
        st.prev_close, st.last_r = state.prev_close, state.last_r
        st.ts, st.tpv, st.vol, st.cl, st.ret = state.ts, state.tpv, state.vol, state.cl, state.ret
        st.wins = [[start, nv, *floats, ops] for start, nv, ops, floats in state.wins]
        self._symbols[state.name] = st


_CoreColumns = tuple[
    list[int], list[float], list[float | None], list[float], list[float | None], list[float | None]
]


class CompiledMetricsEngine(_Engine):
    """:meth:`MetricsEngine.update_columns`, :meth:`~MetricsEngine.snapshot` and
    :meth:`~MetricsEngine.restore` in compiled code (the ``hftpipe-core`` package, Rust):
    the same float operations in the same order, so the same bits, and the same snapshot
    bytes (a snapshot of one engine restores in the other). ImportError if the
    package is not installed; see :func:`engine_class`."""

    def __init__(self, windows: Sequence[str] = DEFAULT_WINDOWS, *, session: bool = True) -> None:
        from hftpipe_core import Engine  # noqa: PLC0415  # optional: see engine_class

        super().__init__(windows, session=session)
        self._core = Engine(self.labels, self._lengths)

    @property
    def ignored(self) -> int:
        """Bars ignored because their time was not after their symbol's last bar."""
        return self._core.ignored

    @ignored.setter
    def ignored(self, value: int) -> None:
        self._core.ignored = value

    @property
    def symbols(self) -> list[str]:
        return sorted(self._core.symbol_names())

    def update_columns(
        self,
        symbol: str,
        ts_ns: Sequence[int],
        high: Sequence[float],
        low: Sequence[float],
        close: Sequence[float],
        volume: Sequence[float],
    ) -> tuple[list[int], list[WindowColumns]]:
        """See :meth:`MetricsEngine.update_columns`."""
        return self._columns(self._core.update_columns(symbol, ts_ns, high, low, close, volume))

    def _columns(
        self, result: tuple[list[int], list[_CoreColumns]]
    ) -> tuple[list[int], list[WindowColumns]]:
        rows, columns = result
        if not columns:  # every record ignored
            return rows, []
        return rows, [
            WindowColumns(label, *column)
            for label, column in zip(self.labels, columns, strict=True)
        ]

    def update_encoded(
        self,
        version: int,
        symbol: str,
        ts_ns: Sequence[int],
        seq: Sequence[int],
        high: Sequence[float],
        low: Sequence[float],
        close: Sequence[float],
        volume: Sequence[float],
    ) -> tuple[list[int], list[WindowColumns], list[bytes]]:
        """:meth:`update_columns`, but of the metrics only the last processed bar's (columns
        of one entry: a Python object per value cost more than computing it), and the
        processed bars' metrics messages, byte for byte what
        ``codec.encode_metrics_columns`` writes (schema ``version``). OverflowError
        (before any change) for a time or seq beyond 64 bits."""
        rows, columns, messages = self._core.update_encoded(
            version, symbol, ts_ns, seq, high, low, close, volume
        )
        return *self._columns((rows, columns)), messages

    def update_trades(
        self,
        symbol: str,
        ts_ns: Sequence[int],
        seq: Sequence[int],
        price: Sequence[float],
        size: Sequence[float],
    ) -> tuple[list[int], list[WindowColumns]]:
        """See :meth:`MetricsEngine.update_trades`."""
        return self._columns(self._core.update_trades(symbol, ts_ns, seq, price, size))

    def snapshot(self) -> bytes:
        """See :meth:`MetricsEngine.snapshot`: the same bytes."""
        return self._core.snapshot()

    def _restore_symbol(self, state: _SymbolState) -> None:
        self._core.restore_symbol(*state)


def compiled_available() -> bool:
    """Whether the compiled engine (the ``hftpipe-core`` package) can be imported."""
    try:
        import hftpipe_core  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


AnyEngine = MetricsEngine | CompiledMetricsEngine


def compiled_chosen(engine: str = "auto") -> bool:
    """Whether to use the compiled core (``HFTPIPE_ENGINE``, for every worker that has
    one: the processor's metrics engine, the producer's encoding): ``"compiled"``,
    ``"python"`` (the reference), or ``"auto"``: compiled when its package is installed.
    A ValueError for an unknown choice, or ``"compiled"`` without the package."""
    if engine == "python":
        return False
    if engine == "compiled" and not compiled_available():
        raise ValueError(
            "the compiled engine was asked for, but the hftpipe-core package is not "
            "installed: install it (uv sync --all-packages builds it with cargo) or choose "
            "the python engine"
        )
    if engine not in ("auto", "compiled"):
        raise ValueError(f"unknown engine {engine!r}: expected auto, compiled or python")
    return compiled_available()


def engine_class(engine: str = "auto") -> type[MetricsEngine] | type[CompiledMetricsEngine]:
    """The metrics engine to use (see :func:`compiled_chosen`)."""
    return CompiledMetricsEngine if compiled_chosen(engine) else MetricsEngine


_SNAPSHOT_FORMAT: Final = "hftpipe.metrics-state"
_SNAPSHOT_VERSION: Final = 1


def _b64(values: Sequence[float] | Sequence[int], dtype: str) -> str:
    if dtype == "<f8" and sys.byteorder == "little":
        raw = array("d", values).tobytes()  # the same bytes, twice as fast from a list
    else:
        raw = np.asarray(values, dtype=dtype).tobytes()
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str, dtype: str) -> list[Any]:
    return np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype).tolist()  # type: ignore[no-any-return]


class _Prefixes(NamedTuple):
    """Prefix sums (double-double) over a symbol's retained bars plus a batch."""

    ts: IntArray
    vol: _Prefix
    tpv: _Prefix
    cl: _Prefix
    cl2: _Prefix
    ret: _Prefix
    ret2: _Prefix
    nv: IntArray
    run_c: IntArray
    run_r: IntArray


def _window_columns(
    pre: _Prefixes, cutoff: IntArray, j: IntArray, close: FloatArray
) -> tuple[int, tuple[IntArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]]:
    """One window's metrics for the bars at indices ``j``; bars at or before ``cutoff`` are out.

    Returns the index of the first bar in the last bar's window, and the columns
    n_bars, volume, vwap, sma, std, ret_std (NaN where undefined).
    """
    s = np.searchsorted(pre.ts, cutoff, side="right")
    end = j + 1
    n = end - s
    has_volume = (pre.nv[end] - pre.nv[s]) > 0
    volume = _sum(_diff_dd(pre.vol, s, end))
    flat = pre.run_c[j] >= n
    s1 = _diff_dd(pre.cl, s, end)
    m2 = _m2_dd(s1, _diff_dd(pre.cl2, s, end), n)
    m = n - 1
    rm2 = _m2_dd(_diff_dd(pre.ret, s + 1, end), _diff_dd(pre.ret2, s + 1, end), m)
    with np.errstate(divide="ignore", invalid="ignore"):
        vwap = np.where(has_volume, _sum(_diff_dd(pre.tpv, s, end)) / volume, np.nan)
        sma = np.where(flat, close, _sum(s1) / n)
        std = np.where(n < 2, np.nan, np.where(flat, 0.0, np.sqrt(m2 / (n - 1))))
        rstd = np.where(pre.run_r[j] >= m, 0.0, np.sqrt(rm2 / (m - 1)))
    rstd = np.where(m < 2, np.nan, rstd)
    volume = np.where(has_volume, volume, 0.0)
    return int(s[-1]), (n, volume, vwap, sma, std, rstd)


@dataclass(frozen=True, slots=True)
class MetricsBatch:
    """Metrics of a batch as arrays: one row per processed bar, one column per window.

    Float arrays hold NaN where a metric is undefined (None in
    :class:`WindowMetrics`): vwap with zero volume, std with fewer than 2 bars,
    ret_std with fewer than 3.
    """

    windows: tuple[str, ...]
    row: IntArray
    """Index of each bar in the input batch."""
    symbol: ObjectArray
    ts_ns: IntArray
    seq: IntArray
    n_bars: npt.NDArray[np.int64]
    volume: FloatArray
    vwap: FloatArray
    sma: FloatArray
    std: FloatArray
    ret_std: FloatArray

    def __len__(self) -> int:
        return len(self.row)

    def records(self) -> Iterator[WindowMetrics]:
        """The metrics as records, bar by bar, windows in order, None for undefined."""
        columns = [
            a.tolist()
            for a in (self.n_bars, self.volume, self.vwap, self.sma, self.std, self.ret_std)
        ]
        heads = zip(self.symbol.tolist(), self.ts_ns.tolist(), self.seq.tolist(), strict=True)
        for b, (symbol, ts, seq) in enumerate(heads):
            cnt, vol, vwap, sma, std, rstd = (col[b] for col in columns)
            for k, label in enumerate(self.windows):
                yield WindowMetrics(
                    symbol,
                    label,
                    ts,
                    seq,
                    cnt[k],
                    vol[k],
                    _none(vwap[k]),
                    sma[k],
                    _none(std[k]),
                    _none(rstd[k]),
                )


def _none(x: float) -> float | None:
    return None if math.isnan(x) else x


def _group_rows(symbols: ObjectArray) -> Iterator[tuple[str, IntArray]]:
    """(symbol, row indices in order) for each symbol of a batch."""
    if len(symbols) == 0:
        return
    first = symbols[0]
    if (symbols == first).all():
        yield str(first), np.arange(len(symbols))
        return
    codes, uniques = _factorize(symbols)
    order = np.argsort(codes, kind="stable")
    for group in np.split(order, np.flatnonzero(np.diff(codes[order])) + 1):
        yield str(uniques[codes[group[0]]]), group


def _factorize(values: ObjectArray) -> tuple[IntArray, ObjectArray]:
    uniques, codes = np.unique(values.astype(str), return_inverse=True)
    return codes.astype(np.int64), uniques.astype(object)


# -- double-double arithmetic (numpy, elementwise) ---------------------------------
# A value is a pair (hi, lo) with hi + lo exact; sums and products carry the
# rounding error of each operation in lo (Dekker / Knuth error-free transforms).

_DD = tuple[FloatArray, FloatArray]
_SPLITTER: Final = 134217729.0  # 2**27 + 1


def _two_sum(a: FloatArray, b: FloatArray) -> _DD:
    s = a + b
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


def _two_prod(a: FloatArray, b: FloatArray) -> _DD:
    p = a * b
    t = _SPLITTER * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLITTER * b
    bh = t - (t - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


# A prefix sum is kept as a few arrays whose elementwise sum is the prefix sum
# to within about 1e-32 of it: the cumsum itself and the cumsum of exactly what
# each of its steps dropped (plus, for squares, of what each product dropped).
_Prefix = tuple[FloatArray, ...]


def _prefix(x: FloatArray) -> _Prefix:
    """Prefix sums of ``x`` (length len(x) + 1, from 0)."""
    hi = np.concatenate(([0.0], np.cumsum(x)))
    # cumsum adds left to right, so hi[i + 1] = fl(hi[i] + x[i]) and TwoSum gives
    # exactly what each step dropped (a unit test guards that order).
    _, err = _two_sum(hi[:-1], x)
    return hi, np.concatenate(([0.0], np.cumsum(err)))


def _prefix_sq(x: FloatArray) -> _Prefix:
    """Prefix sums of ``x**2``, the squares exact (TwoProduct)."""
    sq, sq_err = _two_prod(x, x)
    return (*_prefix(sq), np.concatenate(([0.0], np.cumsum(sq_err))))


def _diff_dd(prefix: _Prefix, s: IntArray, e: IntArray) -> _DD:
    """Sum of elements ``s..e-1``, prefix[e] - prefix[s], as double-double."""
    d, low = _two_sum(prefix[0][e], -prefix[0][s])
    for part in prefix[1:]:
        low = low + (part[e] - part[s])
    # Renormalise (|low| <= half an ulp of the sum): _m2_dd neglects low**2.
    return _two_sum(d, low)


def _sum(x: _DD) -> FloatArray:
    return x[0] + x[1]


def _m2_dd(s1: _DD, s2: _DD, n: IntArray) -> FloatArray:
    """sum((x - mean)**2) = s2 - s1**2 / n, formed in double-double; clipped at 0."""
    nf = np.maximum(n, 1).astype(np.float64)
    sq, sq_err = _two_prod(s1[0], s1[0])
    sq_err = sq_err + 2.0 * s1[0] * s1[1]
    q = sq / nf
    qn, qn_err = _two_prod(q, nf)
    q_lo = ((sq - qn) - qn_err + sq_err) / nf
    d, d_err = _two_sum(s2[0], -q)
    return np.maximum(d + (d_err + s2[1] - q_lo), 0.0)
