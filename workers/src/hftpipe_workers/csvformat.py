"""CSV layouts of OHLCV files, and a fast chunked parser that sets bad rows aside.

:class:`BarReader` takes an opened file object (binary or text; decompressing is
the caller's job), recognises the layout from the header and yields
:class:`ParsedChunk` objects: a columnar :class:`BarBatch` of the valid bars,
and a :class:`RejectedRow` for every other row, with its line number (the
header is line 1), its text and the reason.

Layouts are recognised from the header (see :data:`KNOWN_LAYOUTS`), or the
caller names the one the file must have (a header that does not match it is a
:class:`LayoutError`, and a header that several layouts match is read the named
way); for any other file the caller passes a :class:`ColumnMapping`.

How it stays fast (the Kaggle minute file has ~4 million rows): the file is read
in blocks of whole lines; numpy finds the line breaks and counts the fields of
every line at once, which ties each parsed row to its file line even when
malformed lines are dropped; pandas' C parser converts the good lines; every
check is an array operation. Python-level work is done only for rejected rows.

Limits: fields are comma-separated and UTF-8; a quoted field may hold commas
but not line breaks (such a row is reported as a field-count error). Numbers
are parsed correctly rounded, so a price equals ``float()`` of its text.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, Protocol, cast, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs is not in the lock

from hftpipe_workers.bars import (
    NS_PER_SECOND,
    OK,
    REASON_KINDS,
    Bar,
    FloatArray,
    describe_reason,
    format_utc,
    reason_codes,
    reason_kind,
)

TimeFormat = Literal["unix_s", "unix_ms", "iso"]
TIME_FORMATS: Final[tuple[str, ...]] = get_args(TimeFormat)

IntArray = npt.NDArray[np.int64]
ObjectArray = npt.NDArray[np.object_]
BoolArray = npt.NDArray[np.bool_]

# Text that means "no value" in a numeric or time column. The symbol column is
# exempt, so that a ticker such as "NA" stays a ticker.
_MISSING_TEXT: Final = [
    *("", "NaN", "nan", "NAN", "-NaN", "-nan", "NA", "N/A", "n/a", "#N/A"),
    *("null", "NULL", "None", "none"),
]

_NAT: Final = np.iinfo(np.int64).min  # how pandas marks a missing datetime64[ns]

# unix_s / unix_ms magnitudes beyond these overflow int64 nanoseconds.
_MAX_ABS_UNIX: Final = {"unix_s": 9.2e9, "unix_ms": 9.2e12}
_NS_PER_UNIT: Final = {"unix_s": NS_PER_SECOND, "unix_ms": 1_000_000}

# A generic time column holding numbers is unix seconds below this, else unix ms
# (1e11 s is the year 5138; 1e11 ms is March 1973).
_UNIX_MS_THRESHOLD: Final = 1e11


class Readable(Protocol):
    """What the parser needs of a file object: binary or text, opened and decompressed."""

    def read(self, size: int, /) -> bytes | str: ...

    def readline(self) -> bytes | str: ...


class LayoutError(ValueError):
    """The header does not match a known layout or the given column mapping."""


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """Which columns hold what, for files that no built-in layout recognises.

    ``time_format`` is ``unix_s`` (seconds, may have a fraction), ``unix_ms``
    (milliseconds) or ``iso`` (ISO-8601 text; no offset means UTC). Without a
    ``symbol`` column the caller names the symbol of the whole file.
    """

    SPEC_HELP: ClassVar[str] = (
        "time=COLUMN:unix_s|unix_ms|iso,open=COLUMN,high=COLUMN,low=COLUMN,"
        "close=COLUMN,volume=COLUMN[,symbol=COLUMN]"
    )

    time: str
    time_format: TimeFormat
    open: str = "open"
    high: str = "high"
    low: str = "low"
    close: str = "close"
    volume: str = "volume"
    symbol: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ColumnMapping:
        """A mapping from text such as ``time=ts:unix_ms,open=o,high=h,low=l,close=c,volume=v``.

        Fields left out default to their lower-case name (``open=open``...).
        """
        items: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not value.strip():
                raise ValueError(
                    f"bad column mapping part {part!r}: expected KEY=COLUMN; "
                    f"full form: {cls.SPEC_HELP}"
                )
            items[key.strip()] = value.strip()
        time_col, _, time_format = items.pop("time", "").rpartition(":")
        if not time_col or time_format not in TIME_FORMATS:
            raise ValueError(
                f"bad column mapping {spec!r}: the time entry must look like "
                f"time=COLUMN:FORMAT with FORMAT one of {', '.join(TIME_FORMATS)}; "
                f"full form: {cls.SPEC_HELP}"
            )
        unknown = sorted(set(items) - {"open", "high", "low", "close", "volume", "symbol"})
        if unknown:
            raise ValueError(
                f"bad column mapping {spec!r}: unknown keys {unknown}; full form: {cls.SPEC_HELP}"
            )
        return cls(
            time=time_col,
            time_format=cast(TimeFormat, time_format),
            open=items.get("open", "open"),
            high=items.get("high", "high"),
            low=items.get("low", "low"),
            close=items.get("close", "close"),
            volume=items.get("volume", "volume"),
            symbol=items.get("symbol"),
        )


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the fields of a bar are in a file; ``name`` is what to log."""

    name: str
    time: str
    time_format: TimeFormat
    open: str
    high: str
    low: str
    close: str
    volume: str
    symbol: str | None
    header: tuple[str, ...]

    @property
    def ohlcv(self) -> tuple[str, str, str, str, str]:
        return (self.open, self.high, self.low, self.close, self.volume)

    def describe(self) -> str:
        """E.g. ``kaggle-btc (time=Timestamp as unix_s, open=Open, ...)``."""
        names = ("open", "high", "low", "close", "volume")
        cols = ", ".join(f"{k}={c}" for k, c in zip(names, self.ohlcv, strict=True))
        sym = f", symbol={self.symbol}" if self.symbol else ""
        return f"{self.name} (time={self.time} as {self.time_format}, {cols}{sym})"


LayoutName = Literal["kaggle-btc", "binance", "generic"]
"""The layouts recognised from a header (``hftpipe produce --layout``; ``auto`` tries them
in this order). ``settings.LayoutChoice`` repeats them for ``--help`` without pandas."""

KNOWN_LAYOUTS: Final[dict[LayoutName, str]] = {
    "kaggle-btc": "Timestamp (unix seconds),Open,High,Low,Close,Volume or Volume_(BTC)",
    "binance": "date (ISO UTC),open,high,low,close,volume,close_time,...",
    "generic": (
        "timestamp|time|datetime|date (ISO-8601, unix s or unix ms),"
        "open,high,low,close,volume[,symbol|ticker], any case"
    ),
}

_GENERIC_TIME: Final = ("timestamp", "time", "datetime", "date")
_GENERIC_SYMBOL: Final = ("symbol", "ticker")
_OHLCV: Final = ("open", "high", "low", "close", "volume")


def _layout_error(source: str, header: Sequence[str], problem: str) -> LayoutError:
    known = "; ".join(f"{name}: {cols}" for name, cols in KNOWN_LAYOUTS.items())
    return LayoutError(
        f"{source}: {problem}. Columns found: {list(header)}. Known layouts: {known}. "
        f"For another layout pass a column mapping ({ColumnMapping.SPEC_HELP})."
    )


def _sniff_numeric_time(value: str | None) -> TimeFormat:
    """``iso`` unless the first time value is a number; then unix s or ms by size."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        number = None
    if number is None:
        return "iso"
    return "unix_ms" if abs(number) >= _UNIX_MS_THRESHOLD else "unix_s"


def _kaggle_btc(cols: tuple[str, ...], _first_row: Sequence[str] | None) -> Layout | None:
    present = set(cols)
    if not {"Timestamp", "Open", "High", "Low", "Close"} <= present:
        return None
    volume = next((v for v in ("Volume", "Volume_(BTC)") if v in present), None)
    if volume is None:
        return None
    return Layout(
        "kaggle-btc", "Timestamp", "unix_s", "Open", "High", "Low", "Close", volume, None, cols
    )


def _binance(cols: tuple[str, ...], _first_row: Sequence[str] | None) -> Layout | None:
    if cols[:6] == ("date", *_OHLCV) and "close_time" in cols:
        return Layout("binance", "date", "iso", *_OHLCV, None, cols)
    return None


def _generic(cols: tuple[str, ...], first_row: Sequence[str] | None) -> Layout | None:
    lower = {c.lower(): c for c in cols}
    time_col = next((lower[t] for t in _GENERIC_TIME if t in lower), None)
    if time_col is None or not all(k in lower for k in _OHLCV):
        return None
    sample = first_row[cols.index(time_col)] if first_row and len(first_row) == len(cols) else None
    fmt = _sniff_numeric_time(sample)
    name = {"iso": "generic-iso", "unix_s": "generic-unix-s", "unix_ms": "generic-unix-ms"}[fmt]
    symbol = next((lower[s] for s in _GENERIC_SYMBOL if s in lower), None)
    o, h, lo, c, v = (lower[k] for k in _OHLCV)
    return Layout(name, time_col, fmt, o, h, lo, c, v, symbol, cols)


_MATCHERS: Final[
    dict[LayoutName, Callable[[tuple[str, ...], Sequence[str] | None], Layout | None]]
] = {"kaggle-btc": _kaggle_btc, "binance": _binance, "generic": _generic}


def detect_layout(
    header: Sequence[str],
    *,
    source: str = "<csv>",
    first_row: Sequence[str] | None = None,
    expect: LayoutName | Literal["auto"] = "auto",
) -> Layout:
    """Recognise the layout from the header.

    ``expect`` names the layout the file must have; ``auto`` (the default) tries
    every one of :data:`KNOWN_LAYOUTS` in turn. ``first_row`` (the first data row,
    if any) only matters for the generic layout, where it tells ISO text from
    unix seconds or milliseconds. Raises LayoutError naming ``source``, the
    columns found and the known layouts.
    """
    cols = tuple(header)
    if len(set(cols)) != len(cols):
        dupes = sorted({c for c in cols if cols.count(c) > 1})
        raise _layout_error(source, cols, f"duplicate column names {dupes}")
    if expect != "auto":
        if expect not in _MATCHERS:
            raise ValueError(
                f"unknown layout {expect!r}: expected auto or one of {', '.join(_MATCHERS)}"
            )
        layout = _MATCHERS[expect](cols, first_row)
        if layout is None:
            raise _layout_error(
                source,
                cols,
                f"the header does not match the {expect} layout that was asked for "
                f"({KNOWN_LAYOUTS[expect]})",
            )
        return layout
    for match in _MATCHERS.values():
        layout = match(cols, first_row)
        if layout is not None:
            return layout
    raise _layout_error(source, cols, "the header matches no known CSV layout")


def layout_from_mapping(
    header: Sequence[str], mapping: ColumnMapping, *, source: str = "<csv>"
) -> Layout:
    """The layout an explicit mapping describes; every mapped column must be in the header."""
    cols = tuple(header)
    wanted = [mapping.time, mapping.open, mapping.high, mapping.low, mapping.close, mapping.volume]
    if mapping.symbol is not None:
        wanted.append(mapping.symbol)
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise _layout_error(
            source, cols, f"the column mapping names columns {missing} that are not in the header"
        )
    return Layout(
        "mapping",
        mapping.time,
        mapping.time_format,
        mapping.open,
        mapping.high,
        mapping.low,
        mapping.close,
        mapping.volume,
        mapping.symbol,
        cols,
    )


REJECT_KINDS: Final = (
    "fields",
    "time",
    "symbol",
    *REASON_KINDS,
    "duplicate_time",
    "time_backwards",
)
"""Every :attr:`RejectedRow.kind` (the dead-letter metric's ``reason`` label values)."""


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A line that was set aside, and why."""

    source: str
    line: int
    """Line number in the file; the header is line 1."""
    text: str
    kind: str
    """A short stable name for the reason (``fields``, ``time``, ``not_finite``,
    ``duplicate_time``...), fit for a metric label."""
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason} (row: {self.text!r})"


@dataclass(frozen=True, slots=True)
class BarBatch:
    """Bars as columns (numpy arrays of equal length), in file order.

    Work on the columns where possible; :meth:`bars` builds :class:`Bar` records
    only for code that needs one object per bar.
    """

    symbol: ObjectArray
    ts_ns: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    seq: IntArray
    line: IntArray

    def __len__(self) -> int:
        return len(self.ts_ns)

    def bars(self) -> Iterator[Bar]:
        """The bars one by one, as plain Python values."""
        columns = (
            self.symbol,
            self.ts_ns,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.seq,
            self.line,
        )
        return map(Bar._make, zip(*(c.tolist() for c in columns), strict=True))

    def take(self, index: IntArray | BoolArray) -> BarBatch:
        """The rows selected by an index or mask array."""
        return BarBatch(
            self.symbol[index],
            self.ts_ns[index],
            self.open[index],
            self.high[index],
            self.low[index],
            self.close[index],
            self.volume[index],
            self.seq[index],
            self.line[index],
        )

    @classmethod
    def from_bars(cls, bars: Sequence[Bar]) -> BarBatch:
        """A batch holding ``bars`` (for tests and for bars that arrive one by one)."""
        cols = list(zip(*bars, strict=True)) if bars else [()] * len(Bar._fields)
        o, h, lo, c, v = (np.array(col, dtype=np.float64) for col in cols[2:7])
        return cls(
            symbol=np.array(cols[0], dtype=object),
            ts_ns=np.array(cols[1], dtype=np.int64),
            open=o,
            high=h,
            low=lo,
            close=c,
            volume=v,
            seq=np.array(cols[7], dtype=np.int64),
            line=np.array(cols[8], dtype=np.int64),
        )


@dataclass(frozen=True, slots=True)
class ParsedChunk:
    """What one block of lines gave: valid bars, and everything set aside, counted."""

    bars: BarBatch
    rejected: list[RejectedRow]
    out_of_range: int
    """Valid-time rows outside the start/end filter (skipped, not checked further)."""
    blank_lines: int


@dataclass(slots=True)
class ReadStats:
    """Running totals over a whole file."""

    lines: int = 0
    """Data lines read (the header and blank lines excluded)."""
    accepted: int = 0
    rejected: int = 0
    out_of_range: int = 0
    blank_lines: int = 0


def _as_float(series: pd.Series) -> FloatArray:
    """A column as float64; text that is not a number becomes NaN (caught later)."""
    if series.dtype.kind not in "fiub":
        series = pd.to_numeric(series, errors="coerce")
    return cast(FloatArray, series.to_numpy(dtype=np.float64, na_value=np.nan))


def _unix_to_ns(series: pd.Series, fmt: str) -> IntArray:
    """Unix seconds or milliseconds (possibly fractional) to int64 ns; bad values to NaT."""
    unit = _NS_PER_UNIT[fmt]
    limit = _MAX_ABS_UNIX[fmt]
    if series.dtype.kind in "iu":
        ints = series.to_numpy(dtype=np.int64)
        ok = np.abs(ints) < limit
        return np.where(ok, ints * unit, _NAT)
    values = _as_float(series)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values) & (np.abs(values) < limit)
    values = np.where(ok, values, 0.0)
    # Split whole units from the fraction so that whole values convert exactly,
    # however large; the fraction is rounded to the nearest nanosecond.
    whole = np.floor(values)
    frac_ns = np.rint((values - whole) * unit).astype(np.int64)
    return np.where(ok, whole.astype(np.int64) * unit + frac_ns, _NAT)


# pandas' ISO8601 parser (2.3) gives a naive time that follows a time with an
# offset that same offset, not UTC ("...+02:00" then "2024-01-01 05:00" parses as
# 03:00 UTC; tests/unit/test_csvformat.py keeps an eye on it). So when a block
# may hold offsets, times with and without one are parsed apart. The block test
# is a cheap over-approximation (any "+", "Z", "z", or "-" right after a time).
_MAYBE_NEGATIVE_OFFSET: Final = (re.compile(rb":\d\d(?:\.\d+)?-\d"), re.compile(rb"T\d\d-\d"))
_HAS_OFFSET: Final = r"[T ]\d\d(?::?\d\d(?::?\d\d(?:[.,]\d+)?)?)?\s*(?:[Zz]|[+-]\d\d(?::?\d\d)?)$"


def _may_hold_offsets(data: bytes) -> bool:
    return (
        b"+" in data
        or b"Z" in data
        or b"z" in data
        or any(p.search(data) for p in _MAYBE_NEGATIVE_OFFSET)
    )


def _iso_to_ns(series: pd.Series, *, may_hold_offsets: bool) -> IntArray:
    """ISO-8601 text to int64 ns UTC; naive times are UTC; bad or out-of-range text to NaT."""
    if may_hold_offsets:
        aware = series.str.contains(_HAS_OFFSET, regex=True, na=False).to_numpy(dtype=np.bool_)
        if aware.any() and not aware.all():
            out = np.empty(len(series), dtype=np.int64)
            out[aware] = _iso_to_ns(series[aware], may_hold_offsets=False)
            out[~aware] = _iso_to_ns(series[~aware], may_hold_offsets=False)
            return out
    parsed = pd.to_datetime(series, utc=True, format="ISO8601", errors="coerce")
    return cast(IntArray, parsed.to_numpy(dtype="datetime64[ns]").view(np.int64))


def _fields_of(text: str) -> list[str]:
    return next(csv.reader([text]), [])


class BarReader:
    """Reads bars from one CSV file object, chunk by chunk.

    The layout is recognised when the reader is built (read :attr:`layout` to
    log it); iterating yields :class:`ParsedChunk` objects. Within a symbol,
    times must strictly increase across the whole file: a row whose time is not
    after the last accepted bar of its symbol is rejected as a duplicate or as
    going backwards. ``start_ns`` (inclusive) and ``end_ns`` (exclusive) select
    a time range; rows outside it are counted in ``out_of_range`` and not checked
    further. ``symbol`` names the symbol of files without a symbol column.
    ``layout`` names the layout the file must have (see :func:`detect_layout`);
    it cannot be combined with a ``mapping``.
    """

    def __init__(
        self,
        stream: Readable,
        *,
        source: str | None = None,
        symbol: str | None = None,
        mapping: ColumnMapping | None = None,
        layout: LayoutName | Literal["auto"] = "auto",
        start_ns: int | None = None,
        end_ns: int | None = None,
        block_bytes: int = 4 << 20,
    ) -> None:
        self.source = source if source is not None else str(getattr(stream, "name", "<stream>"))
        if mapping is not None and layout != "auto":
            raise ValueError(
                f"{self.source}: give a column mapping or a layout ({layout}), not both"
            )
        self._stream = stream
        self._block_bytes = block_bytes
        self._start = start_ns if start_ns is not None else np.iinfo(np.int64).min + 1
        self._end = end_ns if end_ns is not None else np.iinfo(np.int64).max
        if self._start >= self._end:
            raise ValueError(
                f"{self.source}: empty time range: start {format_utc(self._start)} is not "
                f"before end {format_utc(self._end)}"
            )
        self.stats = ReadStats()
        self._seq = 0
        self._last: dict[str, tuple[int, int]] = {}  # symbol -> (ts_ns, line) last accepted

        header_line = self._read_line()
        if not header_line.strip():
            raise LayoutError(
                f"{self.source}: the file is empty or starts with a blank line; "
                "expected a header line naming the columns"
            )
        header = [h.strip() for h in _fields_of(header_line.lstrip("\ufeff").rstrip("\r\n"))]
        self._pending = b""
        if mapping is not None:
            self.layout = layout_from_mapping(header, mapping, source=self.source)
        else:
            # Peek at the first data line; it stays pending for the first block.
            first = self._read_line()
            self._pending = first.encode()
            self.layout = detect_layout(
                header,
                source=self.source,
                first_row=_fields_of(first.rstrip("\r\n")),
                expect=layout,
            )
        if self.layout.symbol is None and not symbol:
            raise LayoutError(
                f"{self.source}: the file has no symbol column (layout {self.layout.name}); "
                "give the symbol of its bars: hftpipe produce --symbol BTCUSD "
                "(HFTPIPE_SYMBOL; a ReplayJob's spec.source.symbol)"
            )
        self._symbol = symbol or ""
        self._ncols = len(header)
        self._usecols = [self.layout.time, *self.layout.ohlcv]
        if self.layout.symbol is not None:
            self._usecols.append(self.layout.symbol)
        self._na_values = {c: _MISSING_TEXT for c in self._usecols if c != self.layout.symbol}
        self._dtypes = {c: str for c in self._usecols if c == self.layout.symbol}
        if self.layout.time_format == "iso":
            self._dtypes[self.layout.time] = str

    def _read_line(self) -> str:
        line = self._stream.readline()
        return line.decode("utf-8", "replace") if isinstance(line, bytes) else line

    def _read_block(self) -> bytes:
        data = self._stream.read(self._block_bytes)
        return data.encode() if isinstance(data, str) else data

    def _blocks(self) -> Iterator[tuple[bytes, int]]:
        """Blocks of whole lines, each with the file line number of its first line."""
        line_no = 2
        pending = self._pending
        while True:
            data = self._read_block()
            if not data:
                if pending:
                    yield pending, line_no
                return
            buf = pending + data
            cut = buf.rfind(b"\n") + 1
            block, pending = buf[:cut], buf[cut:]
            if block:
                yield block, line_no
                line_no += block.count(b"\n")

    def __iter__(self) -> Iterator[ParsedChunk]:
        for block, first_line in self._blocks():
            yield self._parse_block(block, first_line)

    # -- one block ---------------------------------------------------------------

    def _parse_block(self, block: bytes, first_line: int) -> ParsedChunk:
        arr = np.frombuffer(block, dtype=np.uint8)
        breaks = np.flatnonzero(arr == ord("\n"))
        ends = breaks if block.endswith(b"\n") else np.append(breaks, len(arr))
        starts = np.concatenate(([0], breaks + 1))[: len(ends)]
        has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == ord("\r"))
        text_ends = ends - has_cr  # line content without "\r\n"
        line_nos = first_line + np.arange(len(ends), dtype=np.int64)
        blank = text_ends == starts

        if b'"' in block:
            # Quoted fields may hide commas: count fields properly, line by line.
            nfields = np.array(
                [
                    len(_fields_of(block[s:e].decode("utf-8", "replace")))
                    for s, e in zip(starts.tolist(), text_ends.tolist(), strict=True)
                ],
                dtype=np.int64,
            )
        else:
            commas = np.flatnonzero(arr == ord(","))
            nfields = np.searchsorted(commas, text_ends) - np.searchsorted(commas, starts) + 1
        good = ~blank & (nfields == self._ncols)

        def text_of(i: int) -> str:
            return block[starts[i] : text_ends[i]].decode("utf-8", "replace")

        rejected = [
            RejectedRow(
                self.source,
                int(line_nos[i]),
                text_of(i),
                "fields",
                f"expected {self._ncols} comma-separated fields as in the header, "
                f"found {nfields[i]}",
            )
            for i in np.flatnonzero(~blank & ~good).tolist()
        ]
        n_blank = int(blank.sum())
        self.stats.blank_lines += n_blank
        self.stats.lines += len(ends) - n_blank

        good_idx = np.flatnonzero(good)
        if len(good_idx) == len(ends):
            data = block
        else:
            next_starts = np.append(starts[1:], len(arr))
            data = arr[np.repeat(good, next_starts - starts)].tobytes()
        if len(good_idx):
            frame = pd.read_csv(
                io.BytesIO(data),
                header=None,
                names=list(self.layout.header),
                usecols=self._usecols,
                dtype=self._dtypes,
                keep_default_na=False,
                na_values=self._na_values,
                skip_blank_lines=False,
                engine="c",
                # Correctly rounded, so a price equals float() of its text.
                float_precision="round_trip",
            )
            offsets = self.layout.time_format == "iso" and _may_hold_offsets(data)
            chunk = self._check_rows(
                frame, line_nos[good_idx], lambda j: text_of(good_idx[j]), offsets=offsets
            )
        else:
            chunk = ParsedChunk(_empty_batch(), [], 0, 0)
        rejected += chunk.rejected
        rejected.sort(key=lambda r: r.line)
        self.stats.rejected += len(rejected)
        return ParsedChunk(chunk.bars, rejected, chunk.out_of_range, n_blank)

    def _check_rows(
        self, frame: pd.DataFrame, lines: IntArray, text_of: _TextOf, *, offsets: bool
    ) -> ParsedChunk:
        lay = self.layout
        n = len(frame)
        if lay.time_format == "iso":
            ts = _iso_to_ns(frame[lay.time], may_hold_offsets=offsets)
        else:
            ts = _unix_to_ns(frame[lay.time], lay.time_format)
        o, h, lo, c, v = (_as_float(frame[col]) for col in lay.ohlcv)
        if lay.symbol is not None:
            sym = frame[lay.symbol].to_numpy(dtype=object)
            sym_missing = pd.isna(sym) | (sym == "")
        else:
            sym = np.full(n, self._symbol, dtype=object)
            sym_missing = np.zeros(n, dtype=np.bool_)

        time_bad = ts == _NAT
        in_range = ~time_bad & (ts >= self._start) & (ts < self._end)
        out_of_range = int((~time_bad & ~in_range).sum())
        codes = reason_codes(o, h, lo, c, v)
        values_bad = in_range & (codes != OK)
        symbol_bad = in_range & ~values_bad & sym_missing
        candidate = in_range & ~values_bad & ~symbol_bad

        rejected: list[RejectedRow] = []
        time_idx = lay.header.index(lay.time)
        expected = _TIME_HELP[lay.time_format]
        for j in np.flatnonzero(time_bad).tolist():
            text = text_of(j)
            reason = f"time {_field(text, time_idx)!r} is not a valid {expected}"
            rejected.append(RejectedRow(self.source, int(lines[j]), text, "time", reason))
        for j in np.flatnonzero(values_bad).tolist():
            text = text_of(j)
            fields = _fields_of(text)
            ro, rh, rl, rc, rv = (fields[lay.header.index(col)] for col in lay.ohlcv)
            code = int(codes[j])
            values = (float(o[j]), float(h[j]), float(lo[j]), float(c[j]), float(v[j]))
            reason = describe_reason(code, values, raw=(ro, rh, rl, rc, rv))
            rejected.append(
                RejectedRow(self.source, int(lines[j]), text, reason_kind(code), reason)
            )
        for j in np.flatnonzero(symbol_bad).tolist():
            rejected.append(
                RejectedRow(
                    self.source,
                    int(lines[j]),
                    text_of(j),
                    "symbol",
                    f"symbol column {lay.symbol!r} is empty",
                )
            )

        accepted = self._check_order(
            np.flatnonzero(candidate),
            ts=ts,
            sym=sym,
            lines=lines,
            text_of=text_of,
            rejected=rejected,
        )
        k = len(accepted)
        seq = self._seq + np.arange(k, dtype=np.int64)
        self._seq += k
        self.stats.accepted += k
        self.stats.out_of_range += out_of_range
        batch = BarBatch(
            sym[accepted],
            ts[accepted],
            o[accepted],
            h[accepted],
            lo[accepted],
            c[accepted],
            v[accepted],
            seq,
            lines[accepted],
        )
        return ParsedChunk(batch, rejected, out_of_range, 0)

    def _check_order(
        self,
        idx: IntArray,
        *,
        ts: IntArray,
        sym: ObjectArray,
        lines: IntArray,
        text_of: _TextOf,
        rejected: list[RejectedRow],
    ) -> IntArray:
        """Rows of ``idx`` whose time is after the last accepted bar of their symbol.

        Vectorised per symbol: a row is accepted exactly when its time exceeds the
        running maximum of all earlier rows of the symbol, because a rejected row
        never raises that maximum. The running state carries across chunks.
        """
        if len(idx) == 0:
            return idx
        first = sym[idx[0]]
        if (sym[idx] == first).all():
            groups = [(str(first), idx)]
        else:
            codes, uniques = pd.factorize(sym[idx])
            order = np.argsort(codes, kind="stable")
            bounds = np.flatnonzero(np.diff(codes[order])) + 1
            groups = [(str(uniques[codes[g[0]]]), idx[g]) for g in np.split(order, bounds)]
        keep: list[IntArray] = []
        for symbol, rows in groups:
            t = ts[rows]
            last_ts, last_line = self._last.get(symbol, (int(_NAT), 0))
            before = np.maximum.accumulate(np.concatenate(([last_ts], t)))[:-1]
            ok = t > before
            # Line of the last accepted row before each row, for the messages.
            pos = np.maximum.accumulate(np.where(ok, np.arange(len(t)), -1))
            prev_pos = np.concatenate(([-1], pos[:-1]))
            for i in np.flatnonzero(~ok).tolist():
                p = int(prev_pos[i])
                prev_line = int(lines[rows[p]]) if p >= 0 else last_line
                prev = format_utc(int(before[i]))
                row = int(rows[i])
                if t[i] == before[i]:
                    kind = "duplicate_time"
                    reason = (
                        f"duplicate time {prev} for {symbol}: line {prev_line} "
                        "already has a bar at that time"
                    )
                else:
                    kind = "time_backwards"
                    reason = (
                        f"time {format_utc(int(t[i]))} for {symbol} is before {prev} "
                        f"on line {prev_line}; times must increase per symbol"
                    )
                rejected.append(
                    RejectedRow(self.source, int(lines[row]), text_of(row), kind, reason)
                )
            accepted_rows = rows[ok]
            if len(accepted_rows):
                self._last[symbol] = (int(ts[accepted_rows[-1]]), int(lines[accepted_rows[-1]]))
            keep.append(accepted_rows)
        return np.sort(np.concatenate(keep))


_TextOf = Callable[[int], str]

_TIME_HELP: Final = {
    "iso": "ISO-8601 time between 1677 and 2262",
    "unix_s": "unix time in seconds",
    "unix_ms": "unix time in milliseconds",
}


def _field(text: str, index: int) -> str:
    fields = _fields_of(text)
    return fields[index] if index < len(fields) else ""


def _empty_batch() -> BarBatch:
    return BarBatch.from_bars([])


def read_bars(
    stream: Readable,
    *,
    source: str | None = None,
    symbol: str | None = None,
    mapping: ColumnMapping | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
    layout: LayoutName | Literal["auto"] = "auto",
) -> Iterator[ParsedChunk]:
    """Shorthand for iterating a :class:`BarReader` when the layout need not be logged."""
    return iter(
        BarReader(
            stream,
            source=source,
            symbol=symbol,
            mapping=mapping,
            start_ns=start_ns,
            end_ns=end_ns,
            layout=layout,
        )
    )
