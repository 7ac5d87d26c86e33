"""CSV layouts of OHLCV files, and a fast chunked parser that sets bad rows aside.

:class:`BarReader` takes an opened file object (binary or text; decompressing is
the caller's job), recognises the layout from the header (and the first rows) and yields
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

Files in the shapes the common sources publish (issue 11): any of four delimiters,
files without a header (a column list, or Binance's kline dumps as they are), unix
times in any unit, ISO-8601, ``strftime`` patterns, a date and a time column, day-first
dates, local times of a zone; a file whose first rows are all set aside alike is
refused (:class:`UnreadableSource`) rather than dead-lettered row by row. Files of
trades (issue 11, point 6: time, price, size[, side][, symbol]; :attr:`Layout.kind`)
are read as bars of one price (open = high = low = close = the price, volume = the
size), so every check applies to them; ticks of a symbol may share a time.

Limits: fields are separated by ``,`` ``;`` tab or ``|`` (sniffed, or named) in UTF-8
text (UTF-16 and UTF-32, recognised by a byte-order mark or by the zero bytes of
ASCII text, are converted); a quoted field may hold delimiters but not line breaks
(such a row is reported as a field-count error). Lines end in ``\n``, ``\r\n`` or
``\r\r\n``, mixed or not; a line holding a NUL byte, a ``\r`` before its end or bytes
that are not UTF-8 is a bad row (``text``). Numbers are parsed correctly rounded, so
a price equals ``float()`` of its text; unix times are read from their text as exact
integers (never through a double, which is hundreds of nanoseconds off at today's
times).

A source that cannot be read at all (empty, a header and no row, binary data,
compressed data under a plain name, a stream that fails) raises
:class:`SourceError`: one line naming the file, the line, the cause and what to do.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import lzma
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import ClassVar, Final, Literal, Protocol, TypedDict, Unpack, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
    describe_trade_reason,
    format_utc,
    reason_codes,
    reason_kind,
)

TimeFormat = str
"""How a time column is written: one of :data:`TIME_FORMATS`, or a ``strftime`` pattern
(``%d.%m.%Y %H:%M:%S.%f``), read by pandas' ``to_datetime(format=...)``."""
UnixUnit = Literal["unix_s", "unix_ms", "unix_us", "unix_ns"]
UNIX_UNITS: Final[tuple[str, ...]] = get_args(UnixUnit)
TIME_FORMATS: Final[tuple[str, ...]] = ("unix", *UNIX_UNITS, "iso")
"""Named time formats; ``unix`` takes the unit from the magnitude of the first values."""

DELIMITERS: Final = ",;\t|"
"""Field delimiters a file may have; sniffed unless the caller names one."""
DELIMITER_NAMES: Final = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_DELIMITER_OPTION: Final = {",": "','", ";": "';'", "\t": "tab", "|": "pipe"}
"""How ``--delimiter`` names each one."""

FAIL_FAST_ROWS: Final = 100
"""When this many first rows are all set aside for the same reason, the file is refused
(:class:`UnreadableSource`) rather than dead-lettered row by row."""

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

# Unix magnitudes beyond these overflow int64 nanoseconds.
_MAX_ABS_UNIX: Final = {"unix_s": 9.2e9, "unix_ms": 9.2e12, "unix_us": 9.2e15, "unix_ns": 9.2e18}
_NS_PER_UNIT: Final = {
    "unix_s": NS_PER_SECOND,
    "unix_ms": 1_000_000,
    "unix_us": 1_000,
    "unix_ns": 1,
}

# A time column holding numbers is unix seconds below 1e11 (the year 5138), else
# milliseconds below 1e14 (5138 again), microseconds below 1e17, else nanoseconds: the
# unit is read off the magnitude (1e11 ms would be March 1973, 1e14 us May 1973).
_UNIX_UNIT_BOUNDS: Final = ((1e11, "unix_s"), (1e14, "unix_ms"), (1e17, "unix_us"))


class Readable(Protocol):
    """What the parser needs of a file object: binary or text, opened and decompressed."""

    def read(self, size: int, /) -> bytes | str: ...


class ByteReadable(Protocol):
    """A file object read as bytes (:func:`utf8_stream` gives one)."""

    def read(self, size: int, /) -> bytes: ...


class SourceError(ValueError):
    """The source cannot be replayed. The message is one line: the file (and the line,
    where one applies, as ``file:line:``), the cause and what to do."""


class LayoutError(SourceError):
    """The header does not match a known layout or the given column mapping."""


class UnreadableSource(SourceError):
    """The first :data:`FAIL_FAST_ROWS` rows (or every row of a shorter file) were all
    set aside for the same reason: the file is read the wrong way, and the message
    says which option would read it."""


def check_time_format(value: str) -> str:
    """``value`` if it is a named time format or a ``strftime`` pattern; else ValueError."""
    if value in TIME_FORMATS or "%" in value:
        return value
    raise ValueError(
        f"unknown time format {value!r}: expected one of {', '.join(TIME_FORMATS)} or a "
        "strftime pattern such as %d.%m.%Y %H:%M:%S.%f"
    )


def unix_unit(value: float) -> str:
    """The unix time unit a number of this magnitude is in (see :data:`_UNIX_UNIT_BOUNDS`)."""
    return next((unit for bound, unit in _UNIX_UNIT_BOUNDS if abs(value) < bound), "unix_ns")


def check_delimiter(value: str) -> str:
    """One of :data:`DELIMITERS` (``tab`` names the tab); else ValueError."""
    value = {"tab": "\t", "\\t": "\t", "pipe": "|"}.get(value, value)
    if len(value) == 1 and value in DELIMITERS:
        return value
    raise ValueError(f"unknown delimiter {value!r}: expected one of , ; tab pipe")


def one_line(text: object) -> str:
    """``text`` with every run of whitespace, line breaks included, as one space."""
    return " ".join(str(text).split())


_CORRUPT: Final = (zlib.error, lzma.LZMAError, gzip.BadGzipFile)
_CORRUPT_NAMED: Final = ("ZstdError", "BadZipFile")
"""Errors of decompressors not imported here (zstandard, zipfile), by name."""


def read_error(source: str, line: int, exc: BaseException) -> SourceError:
    """The :class:`SourceError` for a stream that failed while line ``line`` was read."""
    if isinstance(exc, SourceError):
        return exc
    detail = one_line(exc) or type(exc).__name__
    if isinstance(exc, EOFError):
        cause = (
            f"the compressed data ends early ({detail}): the file is truncated (a download "
            "or copy cut short?); fetch it again"
        )
    elif isinstance(exc, _CORRUPT) or type(exc).__name__ in _CORRUPT_NAMED:
        cause = (
            f"the compressed data is corrupt ({type(exc).__name__}: {detail}): fetch the "
            "file again, and check that its suffix names its compression"
        )
    else:
        cause = f"reading failed: {type(exc).__name__}: {detail}"
    return SourceError(f"{source}:{line}: {cause}")


# -- text encodings -------------------------------------------------------------------

_BOMS: Final = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32LE"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32BE"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16LE"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16BE"),
)


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, stream: Readable) -> None:
        self._head, self._stream = head, stream

    def read(self, size: int, /) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        return _as_bytes(self._stream.read(size))


class _Decoded:
    """A stream of UTF-16 or UTF-32 text, read as UTF-8 bytes (text that does not
    decode becomes U+FFFD, so its rows are set aside, not the file)."""

    def __init__(self, head: bytes, stream: Readable, codec: str) -> None:
        self._stream = stream
        self._decoder = codecs.getincrementaldecoder(codec)("replace")
        self._head = self._decoder.decode(head).encode()

    def read(self, size: int, /) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        while True:
            raw = _as_bytes(self._stream.read(size))
            text = self._decoder.decode(raw, final=not raw)
            if text or not raw:
                return text.encode()


def utf8_stream(stream: Readable) -> tuple[ByteReadable, str]:
    """``stream`` as UTF-8 bytes, and the name of the encoding it was in.

    UTF-16 and UTF-32 are recognised by their byte-order mark, and UTF-16 without one
    by the zero bytes of its ASCII characters (a CSV header is ASCII), and converted;
    anything else is taken as UTF-8 (its byte-order mark, if any, is left for the
    reader to drop). Reads the first bytes of ``stream``.
    """
    head = b""
    while len(head) < 4:
        data = _as_bytes(stream.read(4 - len(head)))
        if not data:
            break
        head += data
    for bom, codec, name in _BOMS:
        if head.startswith(bom):
            return _Decoded(head[len(bom) :], stream, codec), name
    if len(head) == 4 and head[0] and not head[1] and head[2] and not head[3]:
        return _Decoded(head, stream, "utf-16-le"), "UTF-16LE"
    if len(head) == 4 and not head[0] and head[1] and not head[2] and head[3]:
        return _Decoded(head, stream, "utf-16-be"), "UTF-16BE"
    return _Prefixed(head, stream), "UTF-8"


_COMPRESSED: Final = (
    (b"\x1f\x8b", "gzip", ".gz"),
    (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2", ".bz2"),
    (b"\xfd7zXZ\x00", "xz", ".xz"),
    (b"\x28\xb5\x2f\xfd", "zstd", ".zst"),
    (b"PK\x03\x04", "zip", ".zip"),
)

HEADER_LIMIT: Final = 1 << 20
"""Longest header line read (bytes): a file with no line break that early is no CSV."""


def _header_text(source: str, raw: bytes, *, complete: bool) -> str:
    """Line 1 as text, or a :class:`SourceError` saying why the file is no CSV."""
    where = f"{source}:1"
    if not raw:
        raise LayoutError(
            f"{source}: the file is empty: expected a header line naming the columns, then "
            "rows (a download or export that wrote nothing?)"
        )
    for magic, kind, suffix in _COMPRESSED:
        if magic.match(raw) if isinstance(magic, re.Pattern) else raw.startswith(magic):
            raise SourceError(
                f"{where}: the file holds {kind}-compressed data but its name does not say "
                f"so: name it *{suffix} (the suffix chooses the decompression: .gz, .bz2, "
                ".xz, .zst, .zip)"
            )
    if raw.startswith(b"PAR1"):
        raise SourceError(f"{where}: the file is Parquet, not CSV text: export it as CSV")
    if not complete:
        raise SourceError(
            f"{where}: no line break in the first {HEADER_LIMIT // 1024} KiB: this is no "
            "CSV header (binary data, or compressed data under a plain name?)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
            f"{exc.start + 1}): the file is binary, or text in another encoding (Latin-1, "
            "Windows-1252?); save it as UTF-8"
        ) from None
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise SourceError(
            f"{where}: a NUL byte at column {nul + 1} of the header: the file is binary, "
            "or text in UTF-16/UTF-32 without a byte-order mark; save it as UTF-8"
        )
    text = text.lstrip("\ufeff").rstrip("\r\n")
    cr = text.find("\r")
    if cr >= 0:
        raise SourceError(
            f"{where}: a carriage return (\\r) at column {cr + 1} inside the header: are "
            "the file's lines ended by a bare \\r (classic Mac OS)? convert its line "
            "breaks to \\n or \\r\\n"
        )
    if not text.strip():
        raise LayoutError(
            f"{where}: the file starts with a blank line; expected a header line naming the columns"
        )
    return text


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """Which columns hold what, for files that no built-in layout recognises.

    ``time_format`` is ``unix_s``, ``unix_ms``, ``unix_us`` or ``unix_ns`` (a number
    of seconds... since 1970 UTC, may have a fraction), ``unix`` (the unit read off the
    magnitude), ``iso`` (ISO-8601 text) or a ``strftime`` pattern
    (``%d.%m.%Y %H:%M:%S.%f``). ``time`` may name two columns, ``Date+Time``: their
    texts are joined by a space and read with the format. Times without an offset
    are UTC unless the reader is given a time zone. Without a ``symbol`` column the
    caller names the symbol of the whole file.

    Trades (issue 11, point 6): ``price`` and ``size`` instead of the OHLCV columns
    (``time=ts:unix_ms,price=p,size=q[,side=s][,symbol=x]``) make the file one of
    trades (:attr:`kind`).
    """

    SPEC_HELP: ClassVar[str] = (
        "time=COLUMN[+COLUMN]:unix|unix_s|unix_ms|unix_us|unix_ns|iso|STRFTIME,"
        "open=COLUMN,high=COLUMN,low=COLUMN,close=COLUMN,volume=COLUMN[,symbol=COLUMN] "
        "(trades: time=...,price=COLUMN,size=COLUMN[,side=COLUMN][,symbol=COLUMN])"
    )

    time: str
    time_format: TimeFormat
    open: str = "open"
    high: str = "high"
    low: str = "low"
    close: str = "close"
    volume: str = "volume"
    symbol: str | None = None
    price: str | None = None
    """Trades: the price column (then ``size`` is the size column)."""
    size: str | None = None
    side: str | None = None
    """Trades: a buy/sell column, recognised and not replayed (the metrics do not use it)."""

    @property
    def kind(self) -> RecordKind:
        """``trade`` when the mapping names a price column, else ``bar``."""
        return "trade" if self.price is not None else "bar"

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
        time_entry = items.pop("time", "")
        time_col, _, time_format = time_entry.rpartition(":")
        if time_format not in TIME_FORMATS and "%" in time_entry:
            # A strftime pattern may hold colons (%H:%M): it starts after the first
            # colon that is followed by a pattern.
            cut = time_entry.find(":")
            while cut >= 0 and "%" not in time_entry[cut + 1 :].split(":", 1)[0]:
                cut = time_entry.find(":", cut + 1)
            time_col, time_format = time_entry[:cut], time_entry[cut + 1 :]
        if not time_col.strip() or (time_format not in TIME_FORMATS and "%" not in time_format):
            raise ValueError(
                f"bad column mapping {spec!r}: the time entry must look like "
                f"time=COLUMN:FORMAT with FORMAT one of {', '.join(TIME_FORMATS)} or a "
                f"strftime pattern (time=Time:%d.%m.%Y %H:%M:%S.%f, time=Date+Time:%Y.%m.%d "
                f"%H:%M); full form: {cls.SPEC_HELP}"
            )
        unknown = sorted(set(items) - {*_OHLCV, "symbol", *_TRADE_KEYS})
        if unknown:
            raise ValueError(
                f"bad column mapping {spec!r}: unknown keys {unknown}; full form: {cls.SPEC_HELP}"
            )
        if set(items) & set(_TRADE_KEYS):
            mixed = sorted(set(items) & set(_OHLCV))
            if mixed or "price" not in items or "size" not in items:
                raise ValueError(
                    f"bad column mapping {spec!r}: a mapping of trades names price=COLUMN "
                    "and size=COLUMN (and side=COLUMN, symbol=COLUMN if present), and no "
                    f"bar columns{f' (got {mixed})' if mixed else ''}; full form: "
                    f"{cls.SPEC_HELP}"
                )
            return cls(
                time=time_col.strip(),
                time_format=time_format,
                symbol=items.get("symbol"),
                price=items["price"],
                size=items["size"],
                side=items.get("side"),
            )
        return cls(
            time=time_col.strip(),
            time_format=time_format,
            open=items.get("open", "open"),
            high=items.get("high", "high"),
            low=items.get("low", "low"),
            close=items.get("close", "close"),
            volume=items.get("volume", "volume"),
            symbol=items.get("symbol"),
        )


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the fields of a bar are in a file; ``name`` is what to log.

    ``time`` is a column of ``header``, or two joined by ``+`` (``Date+Time``: see
    :attr:`time_columns`). ``headerless``: ``header`` was given (``--columns``, or a
    built-in layout of files without a header), and line 1 is a row."""

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
    delimiter: str = ","
    headerless: bool = False
    note: str = ""
    """How the time format was chosen, when it was not named (for the log)."""
    file_format: str = ""
    """What a binary source is (``Parquet``, ``Arrow IPC file (Feather v2)``...: see
    :mod:`.arrowformat`), for the log; empty for CSV text."""
    kind: RecordKind = "bar"
    """``trade``: each row is a trade, read as a bar of one price (``open``, ``high``,
    ``low`` and ``close`` all name the price column, ``volume`` the size column)."""
    side: str | None = None
    """Trades: the buy/sell column, if the file has one (not replayed)."""

    @property
    def ohlcv(self) -> tuple[str, str, str, str, str]:
        return (self.open, self.high, self.low, self.close, self.volume)

    @property
    def value_columns(self) -> list[str]:
        """The columns of the values, each once: OHLCV, or a trade's price and size."""
        return list(dict.fromkeys(self.ohlcv))

    @property
    def time_columns(self) -> tuple[str, ...]:
        """The column(s) the time is read from: one, or date and time joined by a space."""
        if self.time in self.header:
            return (self.time,)
        return tuple(c.strip() for c in self.time.split("+"))

    def describe(self) -> str:
        """E.g. ``kaggle-btc (time=Timestamp as unix_s, open=Open, ...)``."""
        if self.kind == "trade":
            cols = f"price={self.close}, size={self.volume}"
            if self.side:
                cols += f", side={self.side} (not replayed)"
        else:
            names = ("open", "high", "low", "close", "volume")
            cols = ", ".join(f"{k}={c}" for k, c in zip(names, self.ohlcv, strict=True))
        sym = f", symbol={self.symbol}" if self.symbol else ""
        note = f" ({self.note})" if self.note else ""
        extra = ""
        if self.delimiter != ",":
            extra += f", {DELIMITER_NAMES[self.delimiter]}-separated"
        if self.headerless:
            extra += ", no header"
        if self.file_format:
            extra += f", {self.file_format}"
        return f"{self.name} (time={self.time} as {self.time_format}{note}, {cols}{sym}{extra})"


LayoutName = Literal["kaggle-btc", "binance", "binance-kline", "generic", "trades"]
"""The layouts recognised from a header (``hftpipe produce --layout``; ``auto`` tries them
in this order). ``settings.LayoutChoice`` repeats them for ``--help`` without pandas."""

KNOWN_LAYOUTS: Final[dict[LayoutName, str]] = {
    "kaggle-btc": "Timestamp (unix seconds),Open,High,Low,Close,Volume or Volume_(BTC)",
    "binance": "date (ISO UTC),open,high,low,close,volume,close_time,...",
    "binance-kline": (
        "Binance's archive dumps: no header (or open_time,open,...), 12 numeric fields, "
        "open time in unix ms or us"
    ),
    "generic": (
        "timestamp|time|datetime|date|gmt time|open_time (ISO-8601, unix s/ms/us/ns, "
        "day-first or other dates), or date and time columns, "
        "open,high,low,close,volume[,symbol|ticker], any case"
    ),
    "trades": (
        "trades: a time column as for generic, price, size|qty|quantity|amount|volume"
        "[,side][,symbol|ticker], any case, no open/high/low/close"
    ),
}

BINANCE_KLINE_COLUMNS: Final = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
"""The fields of Binance's kline files (data.binance.vision), which have no header."""

_GENERIC_TIME: Final = ("timestamp", "time", "datetime", "date", "gmt time", "open_time")
_GENERIC_SYMBOL: Final = ("symbol", "ticker")
_OHLCV: Final = ("open", "high", "low", "close", "volume")
_TRADE_KEYS: Final = ("price", "size", "side")
_TRADE_SIZE: Final = ("size", "qty", "quantity", "amount", "volume")
RecordKind = Literal["bar", "trade"]
"""What each row of a source is: a bar (OHLCV) or a trade (price and size)."""
_CLOCK_TIME: Final = re.compile(r"^\s*\d{1,2}:\d\d(:\d\d([.,]\d+)?)?\s*$")
_ISO_DATE: Final = re.compile(r"^\s*[+-]?\d{4}-\d\d")
_SAMPLE_ROWS: Final = 1_000
"""Data rows read ahead to recognise the layout and the time format (a day above 12
in them makes dates day-first: 1,000 rows reach January 13th in an hourly file)."""
_SAMPLE_BYTES: Final = 1 << 20
"""Read-ahead stops at the first line that ends past this many bytes."""
_SNIFF_LINES: Final = 50
"""Lines (each of at most :data:`_SNIFF_CHARS`) the delimiter is sniffed from."""
_SNIFF_CHARS: Final = 4096


def _layout_error(source: str, header: Sequence[str], problem: str) -> LayoutError:
    known = "; ".join(f"{name}: {cols}" for name, cols in KNOWN_LAYOUTS.items())
    numbers = sum(_number(h) is not None for h in header)
    headerless = (
        " Line 1 holds mostly numbers: if the file has no header, name its columns: "
        "--columns time,open,high,low,close,volume (HFTPIPE_COLUMNS; a ReplayJob's "
        "spec.source.columns)."
        if numbers * 2 > len(header)
        else ""
    )
    return LayoutError(
        f"{source}: {problem}. Columns found: {list(header)}. Known layouts: {known}. "
        f"For another layout pass a column mapping ({ColumnMapping.SPEC_HELP}).{headerless}"
    )


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _time_values(cols: Sequence[str], rows: Sequence[Sequence[str]], time: str) -> list[str]:
    """The time texts of the sample rows (two columns joined by a space for ``A+B``)."""
    names = (time,) if time in cols else tuple(c.strip() for c in time.split("+"))
    if not all(n in cols for n in names):
        return []
    index = [cols.index(n) for n in names]
    return [
        " ".join(row[i].strip() for i in index)
        for row in rows
        if len(row) == len(cols) and all(row[i].strip() for i in index)
    ]


class AmbiguousTimes(LayoutError):
    """Day-first and month-first both read every sample time: the caller must say which."""


def guess_time_formats(value: str) -> list[str]:
    """``strftime`` patterns that read ``value``, month first before day first (pandas'
    ``guess_datetime_format``, which knows far more date spellings than a list here)."""
    import warnings  # noqa: PLC0415

    from pandas.tseries.api import (  # type: ignore[import-untyped]  # noqa: PLC0415
        guess_datetime_format,
    )

    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Parsing dates in %d.%m.%Y format when dayfirst=False"
        for dayfirst in (False, True):
            fmt = guess_datetime_format(value.strip(), dayfirst=dayfirst)
            if fmt is not None and fmt not in found:
                found.append(fmt)
    return found


def _reads_all(values: Sequence[str], fmt: str) -> bool:
    with np.errstate(all="ignore"):
        parsed = pd.to_datetime(pd.Series(values), format=fmt, utc=True, errors="coerce")
    return bool(parsed.notna().all())


def _order(fmt: str) -> str:
    """The order of year, month and day in a pattern: ``dmy``, ``ymd``..."""
    places = sorted((fmt.find(f"%{c}"), c.lower()) for c in "Ymd" if f"%{c}" in fmt)
    return "".join(c for _, c in places)


def detect_time_format(
    values: Sequence[str], *, source: str = "<csv>", column: str = ""
) -> tuple[str, str]:
    """The time format of a column's first values, and how it was chosen (for the log).

    Numbers are unix times, their unit read off the magnitude of the first one;
    text is ISO-8601 if pandas' ISO parser reads every value, else the pattern
    pandas guesses from the values (day-first ``13.01.2017``, ``2017.01.02 00:00``...).
    When both day-first and month-first read every value (no day above 12 in the
    sample), :class:`AmbiguousTimes` asks for the format by name. Nothing readable:
    ``iso`` (the rows are then set aside, and a file of them is refused fast).
    """
    if not values:
        return "iso", ""
    number = _number(values[0])
    if number is not None:
        unit = unix_unit(number)
        return unit, f"unit from the magnitude of {values[0]}"
    # pandas' ISO parser also takes 2017.01.02 or 2017/01/02: only text that starts as
    # ISO-8601 does (2017-01-02) is called ISO; the rest gets its own pattern, logged.
    iso = pd.to_datetime(pd.Series(values), format="ISO8601", utc=True, errors="coerce")
    if all(_ISO_DATE.match(v) for v in values) and bool(iso.notna().all()):
        return "iso", ""
    candidates = [f for f in guess_time_formats(values[0]) if _reads_all(values, f)]
    if any(_order(f) == "ymd" for f in candidates):
        # Year first is year, month, day (ISO's order): year, day, month is no usage.
        candidates = [f for f in candidates if _order(f) != "ydm"]
    if len(candidates) > 1:
        first, second = candidates[:2]
        raise AmbiguousTimes(
            f"{source}: the times of column {column!r} ({values[0]!r}...) read both month "
            f"first and day first in the first {len(values)} rows (no day above 12): name "
            f"the format: --time-format '{second}' (day first) or --time-format '{first}' "
            "(month first) (HFTPIPE_TIME_FORMAT; a ReplayJob's spec.source.timeFormat)"
        )
    if candidates:
        return candidates[0], f"recognised from {values[0]!r}"
    return "iso", ""


def _kaggle_btc(cols: tuple[str, ...], _rows: Sequence[Sequence[str]]) -> Layout | None:
    present = set(cols)
    if not {"Timestamp", "Open", "High", "Low", "Close"} <= present:
        return None
    volume = next((v for v in ("Volume", "Volume_(BTC)") if v in present), None)
    if volume is None:
        return None
    return Layout(
        "kaggle-btc", "Timestamp", "unix_s", "Open", "High", "Low", "Close", volume, None, cols
    )


def _binance(cols: tuple[str, ...], _rows: Sequence[Sequence[str]]) -> Layout | None:
    if cols[:6] == ("date", *_OHLCV) and "close_time" in cols:
        return Layout("binance", "date", "iso", *_OHLCV, None, cols)
    return None


def _binance_kline(cols: tuple[str, ...], rows: Sequence[Sequence[str]]) -> Layout | None:
    if cols[:6] != BINANCE_KLINE_COLUMNS[:6]:
        return None
    values = _time_values(cols, rows, "open_time")
    number = _number(values[0]) if values else None
    # Milliseconds, and microseconds for spot files since 2025: the magnitude says which.
    unit = unix_unit(number) if number is not None else "unix_ms"
    note = f"unit from the magnitude of {values[0]}" if values else ""
    return Layout("binance-kline", "open_time", unit, *_OHLCV, None, cols, note=note)


def _generic(cols: tuple[str, ...], rows: Sequence[Sequence[str]]) -> Layout | None:
    lower = {c.lower(): c for c in cols}
    if not all(k in lower for k in _OHLCV):
        return None
    time_col = next((lower[t] for t in _GENERIC_TIME if t in lower), None)
    if time_col is None:
        return None
    if (
        "date" in lower
        and "time" in lower
        and not {"timestamp", "datetime"} & set(lower)
        and all(_CLOCK_TIME.match(v) for v in _time_values(cols, rows, lower["time"]))
    ):
        time_col = f"{lower['date']}+{lower['time']}"  # MetaTrader, HistData: 2017.01.02;00:00
    fmt, note = detect_time_format(_time_values(cols, rows, time_col), column=time_col)
    name = {
        "iso": "generic-iso",
        **{u: "generic-" + u.replace("_", "-") for u in UNIX_UNITS},
    }.get(fmt, "generic")
    symbol = next((lower[s] for s in _GENERIC_SYMBOL if s in lower), None)
    o, h, lo, c, v = (lower[k] for k in _OHLCV)
    return Layout(name, time_col, fmt, o, h, lo, c, v, symbol, cols, note=note)


def _trades(cols: tuple[str, ...], rows: Sequence[Sequence[str]]) -> Layout | None:
    lower = {c.lower(): c for c in cols}
    size = next((lower[k] for k in _TRADE_SIZE if k in lower), None)
    time_col = next((lower[t] for t in _GENERIC_TIME if t in lower), None)
    if "price" not in lower or size is None or time_col is None:
        return None
    if any(k in lower for k in _OHLCV[:4]):
        return None  # bars with a price column too: not trades
    fmt, note = detect_time_format(_time_values(cols, rows, time_col), column=time_col)
    symbol = next((lower[s] for s in _GENERIC_SYMBOL if s in lower), None)
    return _trade_layout(
        "trades",
        time_col,
        fmt,
        lower["price"],
        size,
        symbol,
        cols,
        note=note,
        side=lower.get("side"),
    )


def _trade_layout(
    name: str,
    time: str,
    fmt: str,
    price: str,
    size: str,
    symbol: str | None,
    cols: tuple[str, ...],
    *,
    note: str = "",
    side: str | None = None,
) -> Layout:
    """A layout of trades: the price column stands for open, high, low and close."""
    return Layout(
        name, time, fmt, price, price, price, price, size, symbol, cols,
        note=note, kind="trade", side=side,
    )  # fmt: skip


_MATCHERS: Final[
    dict[LayoutName, Callable[[tuple[str, ...], Sequence[Sequence[str]]], Layout | None]]
] = {
    "kaggle-btc": _kaggle_btc,
    "binance": _binance,
    "binance-kline": _binance_kline,
    "generic": _generic,
    "trades": _trades,
}


def detect_layout(
    header: Sequence[str],
    *,
    source: str = "<csv>",
    first_row: Sequence[str] | None = None,
    rows: Sequence[Sequence[str]] = (),
    expect: LayoutName | Literal["auto"] = "auto",
) -> Layout:
    """Recognise the layout from the header.

    ``expect`` names the layout the file must have; ``auto`` (the default) tries
    every one of :data:`KNOWN_LAYOUTS` in turn. ``rows`` (the first data rows, or
    just ``first_row``) tell the time format where a layout does not fix it: ISO
    text, unix seconds to nanoseconds, a day-first date... Raises LayoutError naming
    ``source``, the columns found and the known layouts (:class:`AmbiguousTimes` when
    the rows do not tell day-first from month-first dates).
    """
    cols = tuple(header)
    sample = list(rows) or ([first_row] if first_row is not None else [])
    if len(set(cols)) != len(cols):
        dupes = sorted({c for c in cols if cols.count(c) > 1})
        raise _layout_error(source, cols, f"duplicate column names {dupes}")
    try:
        if expect != "auto":
            if expect not in _MATCHERS:
                raise ValueError(
                    f"unknown layout {expect!r}: expected auto or one of {', '.join(_MATCHERS)}"
                )
            layout = _MATCHERS[expect](cols, sample)
            if layout is None:
                raise _layout_error(
                    source,
                    cols,
                    f"the header does not match the {expect} layout that was asked for "
                    f"({KNOWN_LAYOUTS[expect]})",
                )
            return layout
        for match in _MATCHERS.values():
            layout = match(cols, sample)
            if layout is not None:
                return layout
    except AmbiguousTimes as exc:
        raise AmbiguousTimes(str(exc).replace("<csv>", source, 1)) from None
    raise _layout_error(source, cols, "the header matches no known CSV layout")


def layout_from_mapping(
    header: Sequence[str],
    mapping: ColumnMapping,
    *,
    source: str = "<csv>",
    rows: Sequence[Sequence[str]] = (),
) -> Layout:
    """The layout an explicit mapping describes; every mapped column must be in the header.

    A ``unix`` time takes its unit from the magnitude of the first of ``rows``."""
    cols = tuple(header)
    time_columns = (mapping.time,) if mapping.time in cols else tuple(mapping.time.split("+"))
    if mapping.price is not None and mapping.size is not None:
        wanted = [*time_columns, mapping.price, mapping.size]
        if mapping.side is not None:
            wanted.append(mapping.side)
    else:
        wanted = [*time_columns, mapping.open, mapping.high, mapping.low, mapping.close]
        wanted.append(mapping.volume)
    if mapping.symbol is not None:
        wanted.append(mapping.symbol)
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise _layout_error(
            source, cols, f"the column mapping names columns {missing} that are not in the header"
        )
    fmt, note = mapping.time_format, ""
    if fmt == "unix":
        values = _time_values(cols, rows, mapping.time)
        number = _number(values[0]) if values else None
        if number is not None:
            fmt, note = unix_unit(number), f"unit from the magnitude of {values[0]}"
        else:
            fmt = "unix_s"
    if mapping.price is not None and mapping.size is not None:
        return _trade_layout(
            "mapping-trades",
            mapping.time,
            fmt,
            mapping.price,
            mapping.size,
            mapping.symbol,
            cols,
            note=note,
            side=mapping.side,
        )
    return Layout(
        "mapping",
        mapping.time,
        fmt,
        mapping.open,
        mapping.high,
        mapping.low,
        mapping.close,
        mapping.volume,
        mapping.symbol,
        cols,
        note=note,
    )


REJECT_KINDS: Final = (
    "text",
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

    def columns(self) -> tuple[ObjectArray, IntArray, FloatArray, FloatArray, FloatArray,
                               FloatArray, FloatArray, IntArray, IntArray]:  # fmt: skip
        """The columns in :class:`Bar`'s field order (symbol, ts_ns, open, high, low,
        close, volume, seq, line): the order the compiled core takes them in too."""
        return (
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

    def bars(self) -> Iterator[Bar]:
        """The bars one by one, as plain Python values."""
        return map(Bar._make, zip(*(c.tolist() for c in self.columns()), strict=True))

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


# Unix times are read from their text, never through a double: 1700000000.123 as a
# double is 1700000000.12299990654, 93 ns early (issue 10, point 3). Plain decimal text
# ([+-]digits[.digits]) is converted with integer arithmetic on arrays of its bytes;
# anything else (exponents, blanks around it, very long text) one value at a time
# with Decimal. Either way a fraction finer than a nanosecond is rounded to the
# nearest, half a nanosecond away from zero.
_POW10: Final = 10 ** np.arange(19, dtype=np.int64)
_PLACES: Final = {"unix_s": 9, "unix_ms": 6, "unix_us": 3, "unix_ns": 0}
"""Digits of a fraction of the unit that are whole nanoseconds."""
_FAST_WIDTH: Final = 24
"""Time texts up to this many bytes go the array way."""
_FAST_DIGITS: Final = 18
"""Whole digits the array way adds up in an int64 (19 nines would overflow it): unix
microseconds (16 digits today) go that way, nanoseconds (19) one by one."""


def _exact_unix_ns(text: object, fmt: str) -> int:
    """The nanoseconds of one unix time text, exactly; NaT when it is no time."""
    if not isinstance(text, str):
        return int(_NAT)  # missing
    t = text.strip()
    if not t or len(t) > 64 or "_" in t or not t.isascii():
        return int(_NAT)
    try:
        value = Decimal(t)
    except InvalidOperation:
        return int(_NAT)
    if not value.is_finite() or abs(value) >= int(_MAX_ABS_UNIX[fmt]):
        return int(_NAT)
    ns = Context(prec=100).multiply(value, Decimal(_NS_PER_UNIT[fmt]))
    return int(ns.to_integral_value(rounding=ROUND_HALF_UP))


def _unix_text_to_ns(
    data: npt.NDArray[np.uint8],
    begin: IntArray,
    end: IntArray,
    fmt: str,
    text_at: Callable[[int], str],
) -> IntArray:
    """Unix seconds or milliseconds to int64 ns, exactly; bad values to NaT.

    Value ``i`` is the text ``data[begin[i]:end[i]]``; ``text_at(i)`` gives it as a
    string, for the values that go the slow way. The fast way reads the texts one
    character position at a time, for all values at once (Horner's scheme on arrays).
    """
    n = len(begin)
    unit, places, limit = _NS_PER_UNIT[fmt], _PLACES[fmt], int(_MAX_ABS_UNIX[fmt])
    lengths = end - begin
    width = int(min(lengths.max(initial=0), _FAST_WIDTH))
    if n and (lengths == width).all():
        uniform = _uniform_unix_ns(data, begin, width, unit, places, limit)
        if uniform is not None:
            return uniform
    whole = np.zeros(n, dtype=np.int64)
    fraction = np.zeros(n, dtype=np.int64)
    whole_digits = np.zeros(n, dtype=np.int64)
    fraction_digits = np.zeros(n, dtype=np.int64)
    negative = np.zeros(n, dtype=np.bool_)
    after_point = np.zeros(n, dtype=np.bool_)
    half_up = np.zeros(n, dtype=np.bool_)
    plain = (lengths > 0) & (lengths <= width)
    last = len(data) - 1
    for j in range(width):
        inside = lengths > j
        char = data[np.minimum(begin + j, last)] if last >= 0 else np.zeros(n, np.uint8)
        digit = char - np.uint8(ord("0"))  # wraps around below "0": a digit is < 10
        is_digit = inside & (digit < 10)
        is_point = inside & (char == ord("."))
        other = inside & ~is_digit & ~is_point
        if j == 0:
            negative = inside & (char == ord("-"))
            other &= ~negative & (char != ord("+"))
        plain &= ~other & ~(is_point & after_point)
        in_whole = is_digit & ~after_point
        whole = np.where(in_whole, whole * 10 + digit, whole)
        whole_digits += in_whole
        in_fraction = is_digit & after_point
        fraction = np.where(
            in_fraction & (fraction_digits < places), fraction * 10 + digit, fraction
        )
        half_up |= in_fraction & (fraction_digits == places) & (digit >= 5)
        fraction_digits += in_fraction
        after_point |= is_point
    plain &= (whole_digits + fraction_digits > 0) & (whole_digits <= _FAST_DIGITS)
    fraction *= _POW10[places - np.minimum(fraction_digits, places)]
    ok = plain & (whole < limit)
    magnitude = np.where(ok, whole, 0) * unit + fraction + half_up
    out = np.where(ok, np.where(negative, -magnitude, magnitude), _NAT)
    for i in np.flatnonzero(~plain).tolist():
        out[i] = _exact_unix_ns(text_at(i), fmt)
    return cast(IntArray, out)


def _uniform_unix_ns(
    data: npt.NDArray[np.uint8], begin: IntArray, width: int, unit: int, places: int, limit: int
) -> IntArray | None:
    """:func:`_unix_text_to_ns` for texts of one width with the point (if any) in one
    place, such as ``1325317920.0`` on every line (most files): None for other texts."""
    point = None
    columns = []
    for j in range(width):
        char = data[begin + j]
        digit = char - np.uint8(ord("0"))  # wraps around below "0": a digit is < 10
        if (digit < 10).all():
            columns.append(digit)
        elif point is None and (char == ord(".")).all():
            point = j
        else:
            return None
    whole_digits = width if point is None else point
    if not columns or whole_digits > _FAST_DIGITS:
        return None
    whole = np.zeros(len(begin), dtype=np.int64)
    for digit in columns[:whole_digits]:
        whole = whole * 10 + digit
    fraction = np.zeros(len(begin), dtype=np.int64)
    for digit in columns[whole_digits : whole_digits + places]:
        fraction = fraction * 10 + digit
    fraction_digits = len(columns) - whole_digits
    fraction *= int(_POW10[places - min(fraction_digits, places)])
    if fraction_digits > places:
        fraction += columns[whole_digits + places] >= 5
    ok = whole < limit
    return cast(IntArray, np.where(ok, np.where(ok, whole, 0) * unit + fraction, _NAT))


def _unix_to_ns(series: pd.Series, fmt: str) -> IntArray:
    """Unix time texts (a column read as text; missing values are NaN) to int64 ns."""
    return np.fromiter(
        (_exact_unix_ns(v, fmt) for v in series.to_numpy(dtype=object)),
        dtype=np.int64,
        count=len(series),
    )


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


def _time_texts(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """The time column's texts, or a date and a time column's joined by a space."""
    if len(columns) == 1:
        return frame[columns[0]]
    date, clock = (frame[c].astype("string").str.strip() for c in columns)
    return date.str.cat(clock, sep=" ").astype(object)


@dataclass(frozen=True, slots=True)
class LocalTimes:
    """Local times read in a zone: ``early`` and ``late`` differ only in a repeated hour
    (clocks set back: ``early`` is the first pass, daylight time); ``gap`` marks times
    the zone skips (clocks set forward), which are NaT in both."""

    early: IntArray
    late: IntArray
    gap: BoolArray


def _localize(naive: pd.Series, zone: ZoneInfo) -> LocalTimes:
    """Naive times (datetime64) as local times of ``zone`` (the zone database's rules,
    through zoneinfo), both readings of each, int64 ns UTC. Which reading a row of the
    repeated hour means is the reader's choice (:meth:`BarReader._resolve_repeated`)."""
    index = pd.DatetimeIndex(naive)
    missing = np.asarray(index.isna())
    readings = []
    for first_pass in (True, False):
        flags = np.full(len(index), first_pass, dtype=np.bool_)
        local = index.tz_localize(zone, ambiguous=flags, nonexistent="NaT")
        readings.append(cast(IntArray, np.asarray(local.tz_convert("UTC").asi8).copy()))
    early, late = readings
    return LocalTimes(early, late, (early == _NAT) & ~missing)


def _times_to_ns(
    texts: pd.Series, fmt: str, zone: ZoneInfo | None, *, offsets: bool
) -> tuple[IntArray, LocalTimes | None]:
    """ISO-8601 or ``strftime`` texts to int64 ns UTC (bad text to NaT); with a zone,
    the rows without an offset as :class:`LocalTimes` too (their first readings are
    the times returned)."""
    if fmt == "iso":
        if zone is None:
            return _iso_to_ns(texts, may_hold_offsets=offsets), None
        aware = texts.str.contains(_HAS_OFFSET, regex=True, na=False).to_numpy(dtype=np.bool_)
        early = np.full(len(texts), _NAT, dtype=np.int64)
        if aware.any():
            early[aware] = _iso_to_ns(texts[aware], may_hold_offsets=False)
        late, gap = early.copy(), np.zeros(len(texts), dtype=np.bool_)
        if not aware.all():
            naive = pd.to_datetime(texts[~aware], format="ISO8601", errors="coerce")
            local = _localize(naive, zone)
            early[~aware], late[~aware], gap[~aware] = local.early, local.late, local.gap
        return cast(IntArray, early), LocalTimes(cast(IntArray, early), cast(IntArray, late), gap)
    if "%z" in fmt or "%Z" in fmt:  # the text has its offset: the zone is not needed
        parsed = pd.to_datetime(texts, format=fmt, utc=True, errors="coerce")
        return cast(IntArray, parsed.to_numpy(dtype="datetime64[ns]").view(np.int64)), None
    naive = pd.to_datetime(texts, format=fmt, errors="coerce")
    if zone is None:
        return cast(IntArray, pd.DatetimeIndex(naive).asi8.copy()), None
    local = _localize(naive, zone)
    return local.early, local


def _fields_of(text: str, delimiter: str = ",") -> list[str]:
    """The fields of one line (for messages and detection; never raises)."""
    try:
        return next(csv.reader([text], delimiter=delimiter), [])
    except csv.Error:  # a field over csv's size limit, a stray line break
        return text.split(delimiter)


def _count_fields(text: str, delimiter: str = ",") -> tuple[int, str | None]:
    """Fields of one line with quotes, or -1 and why it cannot be split into fields."""
    try:
        return len(next(csv.reader([text], delimiter=delimiter, strict=True), [])), None
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            return -1, (
                "a quoted field is not closed on its line (a quoted field may hold "
                "delimiters, not line breaks)"
            )
    try:  # other quoting oddities are read as pandas reads them
        return len(next(csv.reader([text], delimiter=delimiter), [])), None
    except csv.Error as exc:
        return -1, f"the line cannot be split into fields: {exc}"


def sniff_delimiter(lines: Sequence[str]) -> str:
    """The delimiter of a file's first lines: one of :data:`DELIMITERS`.

    The standard library's ``csv.Sniffer`` decides (it weighs how consistently each
    character occurs per line, quotes included); where it cannot, the candidate that
    occurs most in line 1, and a comma when none does (a file of one column)."""
    short = [line for line in lines[:_SNIFF_LINES] if len(line) <= _SNIFF_CHARS]
    text = "\n".join(short or [lines[0][:_SNIFF_CHARS]] if lines else [])
    try:
        found = csv.Sniffer().sniff(text, delimiters=DELIMITERS).delimiter
        if found in DELIMITERS:
            return found
    except csv.Error:
        pass
    first = lines[0] if lines else ""
    best = max(DELIMITERS, key=first.count)
    return best if first.count(best) else ","


def _is_numeric_row(fields: Sequence[str]) -> bool:
    return bool(fields) and all(_number(f) is not None for f in fields)


_HEADERLESS_OK: Final = ("auto", "binance-kline")
"""Layouts a file whose line 1 is numbers may be read as (without a mapping)."""


def _header_of(
    source: str, fields: list[str], columns: Sequence[str] | None, *, numbered: bool
) -> tuple[list[str], bool]:
    """The column names, and whether line 1 is a row rather than a header: the names
    given, Binance's kline fields for a line 1 of 12 numbers (when ``numbered`` allows
    it), else line 1's fields."""
    if columns is not None:
        return [c.strip() for c in columns], True
    if not numbered or not _is_numeric_row(fields):
        return fields, False
    # No header: line 1 is a row. Binance's kline dumps are the one layout known
    # without one (12 numbers); others need their columns named.
    if len(fields) != len(BINANCE_KLINE_COLUMNS):
        raise LayoutError(
            f"{source}:1: line 1 holds {len(fields)} numbers, no column names: for a file "
            "without a header give its columns, e.g. hftpipe produce --columns "
            "time,open,high,low,close,volume (HFTPIPE_COLUMNS; a ReplayJob's "
            "spec.source.columns)"
        )
    return list(BINANCE_KLINE_COLUMNS), True


def _check_choices(
    source: str,
    *,
    mapping: ColumnMapping | None,
    layout: LayoutName | Literal["auto"],
    time_format: str | None,
) -> None:
    """A ValueError for choices that exclude each other, or a time format that is none."""
    if mapping is not None and layout != "auto":
        raise ValueError(f"{source}: give a column mapping or a layout ({layout}), not both")
    if mapping is not None and time_format is not None:
        raise ValueError(
            f"{source}: give the time format in the column mapping or as a time format, not both"
        )
    if time_format is not None:
        check_time_format(time_format)


def _choose_layout(
    source: str,
    header: list[str],
    rows: list[list[str]],
    *,
    mapping: ColumnMapping | None,
    layout: LayoutName | Literal["auto"],
    time_format: str | None,
) -> Layout:
    """The layout of a mapping, or the one recognised (with ``time_format`` if named)."""
    if mapping is not None:
        return layout_from_mapping(header, mapping, source=source, rows=rows)
    if time_format is None:
        return detect_layout(header, source=source, rows=rows, expect=layout)
    # Without rows: the format named says what they would (and asks nothing).
    found = detect_layout(header, source=source, expect=layout)
    fmt = time_format
    if fmt == "unix":
        values = _time_values(header, rows, found.time)
        number = _number(values[0]) if values else None
        fmt = unix_unit(number) if number is not None else "unix_s"
    return replace(found, time_format=fmt, note="")


def _zone(name: str | None) -> ZoneInfo | None:
    """The IANA time zone ``name`` (zoneinfo: the system's zone database, else the
    tzdata package), or a ValueError saying it is unknown."""
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: give an IANA name such as America/New_York, "
            "Europe/London or UTC"
        ) from None


class ReaderOptions(TypedDict, total=False):
    """What every reader of bars takes, whatever the file's format (the CSV
    :class:`BarReader`, :class:`~.arrowformat.ArrowBarReader`), each optional: see
    :class:`BarReader` for what they mean."""

    source: str | None
    """The source's name in messages; None or absent: the stream's ``name``."""
    symbol: str | None
    mapping: ColumnMapping | None
    layout: LayoutName | Literal["auto"]
    """Absent: ``"auto"``."""
    start_ns: int | None
    end_ns: int | None
    time_format: str | None
    timezone: str | None
    fail_fast_rows: int
    """Absent: :data:`FAIL_FAST_ROWS`."""


class BarReader:
    """Reads bars from one CSV file object, chunk by chunk.

    The layout is recognised when the reader is built (read :attr:`layout` to
    log it); iterating yields :class:`ParsedChunk` objects. Within a symbol,
    times must strictly increase across the whole file: a row whose time is not
    after the last accepted bar of its symbol is rejected as a duplicate or as
    going backwards (trades may repeat a time: only going backwards is rejected).
    ``start_ns`` (inclusive) and ``end_ns`` (exclusive) select
    a time range; rows outside it are counted in ``out_of_range`` and not checked
    further. ``symbol`` names the symbol of files without a symbol column.
    ``layout`` names the layout the file must have (see :func:`detect_layout`);
    it cannot be combined with a ``mapping``. :attr:`encoding` says what the file
    was in (``UTF-8``, ``UTF-16LE``...: see :func:`utf8_stream`).

    A source that cannot be read (empty, no data row, not CSV text, a stream that
    fails) raises :class:`SourceError`, when the reader is built or while iterating;
    a file whose first :data:`FAIL_FAST_ROWS` rows are all set aside for the same
    reason raises :class:`UnreadableSource` once they are read (``fail_fast_rows``).

    Issue 11: ``delimiter`` (one of :data:`DELIMITERS`; None sniffs it), ``columns``
    (the column names of a file without a header: line 1 is then a row; a file whose
    line 1 is 12 numbers is read as a Binance kline dump without them),
    ``time_format`` (the format of the layout's time column, instead of the one
    recognised: see :data:`TIME_FORMATS`) and ``timezone`` (an IANA zone for times
    without an offset; unset: UTC).
    """

    ROW_WORD: ClassVar[str] = "line"
    """What a :attr:`RejectedRow.line` counts, in messages: file lines here."""

    def __init__(
        self,
        stream: Readable,
        *,
        block_bytes: int = 4 << 20,
        delimiter: str | None = None,
        columns: Sequence[str] | None = None,
        **options: Unpack[ReaderOptions],
    ) -> None:
        self._init_checks(stream, options)
        self._block_bytes = block_bytes

        try:
            self._stream, self.encoding = utf8_stream(stream)
        except Exception as exc:  # whatever stops the stream: one message
            raise read_error(self.source, 1, exc) from exc

        buf = bytearray()
        header_end = self._line_end(buf, 0, limit=HEADER_LIMIT, line=1)
        complete = header_end >= 0
        raw = bytes(buf[:header_end] if complete else buf)
        text = _header_text(self.source, raw, complete=complete)
        # Read ahead a few data lines (blank lines skipped): they tell the delimiter, a
        # header from a first row, ISO text from unix times, the unit and the date
        # order; and a file without a data row is refused before anything else happens.
        sample, line = self._read_ahead(buf, header_end)
        self.delimiter = (
            check_delimiter(delimiter) if delimiter else sniff_delimiter([text, *sample])
        )
        fields = [h.strip() for h in _fields_of(text, self.delimiter)]
        header, headerless = _header_of(
            self.source,
            fields,
            columns,
            numbered=self._mapping is None and self._layout_choice in _HEADERLESS_OK,
        )
        if headerless:
            sample = [text, *sample]
        rows = [_fields_of(r, self.delimiter) for r in sample]
        # From line 2 on, or from line 1 (without a UTF-8 byte-order mark) when headerless.
        bom = len(codecs.BOM_UTF8) if buf.startswith(codecs.BOM_UTF8) else 0
        self._pending = bytes(buf[bom:] if headerless else buf[header_end:])
        self._first_data_line = 1 if headerless else 2
        found = self._layout_of(header, rows)
        self.layout = replace(found, delimiter=self.delimiter, headerless=headerless)
        self._check_symbol()
        if not sample:
            raise SourceError(
                f"{self.source}:{line}: no data row after the header (line 1): nothing to "
                "replay; is the file complete (a download or export cut short?)"
            )
        self._ncols = len(header)
        self._time_index = header.index(self.layout.time_columns[0])
        self._usecols = [*self.layout.time_columns, *self.layout.value_columns]
        if self.layout.symbol is not None:
            self._usecols.append(self.layout.symbol)
        self._na_values = {c: _MISSING_TEXT for c in self._usecols if c != self.layout.symbol}
        # Times are text: ISO and patterns for pandas' parser, unix for the exact one.
        text_columns = (*self.layout.time_columns, self.layout.symbol)
        self._dtypes = {c: str for c in text_columns if c is not None}

    def _init_checks(self, stream: Readable, options: ReaderOptions) -> None:
        """The state the row checks keep, whatever the file's format (CSV here, Parquet
        and Arrow in :mod:`.arrowformat`): choices, zone, time range, order, failing fast."""
        source = options.get("source")
        self.source = source if source is not None else str(getattr(stream, "name", "<stream>"))
        self._mapping = options.get("mapping")
        self._layout_choice = options.get("layout", "auto")
        self._time_format = options.get("time_format")
        self._symbol = options.get("symbol") or ""
        _check_choices(
            self.source,
            mapping=self._mapping,
            layout=self._layout_choice,
            time_format=self._time_format,
        )
        self.zone = _zone(options.get("timezone"))
        start_ns, end_ns = options.get("start_ns"), options.get("end_ns")
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
        self._fail_fast_rows = options.get("fail_fast_rows", FAIL_FAST_ROWS)
        self._watching = self._fail_fast_rows > 0
        self._watched: list[RejectedRow] = []

    def _layout_of(self, header: list[str], rows: list[list[str]]) -> Layout:
        """The layout of a file of this *header* and these first *rows*, as the reader's
        choices (mapping, layout, time format) say."""
        return _choose_layout(
            self.source,
            header,
            rows,
            mapping=self._mapping,
            layout=self._layout_choice,
            time_format=self._time_format,
        )

    def _check_symbol(self) -> None:
        """A :class:`LayoutError` unless the layout has a symbol column or one was given."""
        if self.layout.symbol is None and not self._symbol:
            raise LayoutError(
                f"{self.source}: the file has no symbol column (layout {self.layout.name}); "
                "give the symbol of its bars: hftpipe produce --symbol BTCUSD "
                "(HFTPIPE_SYMBOL; a ReplayJob's spec.source.symbol)"
            )

    @property
    def symbol(self) -> str:
        """The symbol of the bars of a file without a symbol column ("" if none was given)."""
        return self._symbol

    def _column_index(self, column: str) -> int:
        """Where ``column`` is among the fields of a rejected row's text."""
        return self.layout.header.index(column)

    def _read_ahead(self, buf: bytearray, start: int) -> tuple[list[str], int]:
        """The first :data:`_SAMPLE_ROWS` non-blank lines from ``buf[start]`` on (line 2),
        read into ``buf`` (fewer, once it holds :data:`_SAMPLE_BYTES`), and the number of
        the line after them."""
        line = 2
        sample: list[str] = []
        while len(sample) < _SAMPLE_ROWS and (not sample or start < _SAMPLE_BYTES):
            end = self._line_end(buf, start, limit=None, line=line)
            if end == start:
                break
            row = bytes(buf[start:end]).rstrip(b"\r\n")
            if row:
                sample.append(row.decode("utf-8", "replace"))
            start, line = end, line + 1
        return sample, line

    def _read(self, size: int, line: int) -> bytes:
        """Up to ``size`` bytes (b"" at the end); a failure is a :class:`SourceError`
        naming ``line``, the line being read."""
        try:
            return self._stream.read(size)
        except Exception as exc:  # whatever stops the stream: one message
            raise read_error(self.source, line, exc) from exc

    def _line_end(self, buf: bytearray, start: int, *, limit: int | None, line: int) -> int:
        """Index just past the line that starts at ``buf[start]``, reading more of the
        stream into ``buf`` as needed: ``len(buf)`` at the end of the stream, -1 for a
        line longer than ``limit`` bytes."""
        scan = start
        while True:
            found = buf.find(b"\n", scan)
            if found >= 0:
                return found + 1 if limit is None or found - start < limit else -1
            if limit is not None and len(buf) - start >= limit:
                return -1
            scan = len(buf)
            data = self._read(1 << 16 if limit is not None else self._block_bytes, line)
            if not data:
                return len(buf)
            buf += data

    def _blocks(self) -> Iterator[tuple[bytes, int]]:
        """Blocks of whole lines, each with the file line number of its first line."""
        line_no = self._first_data_line
        pending = self._pending
        while True:
            data = self._read(self._block_bytes, line_no + pending.count(b"\n"))
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
        if self._watching and self._watched:
            raise self._unreadable()  # a short file whose every row was set aside alike

    def check_start(self) -> None:
        """Read until the first :data:`FAIL_FAST_ROWS` rows are judged: raises
        :class:`UnreadableSource` (or another :class:`SourceError`) as iterating would,
        so that a caller can refuse a file before it creates anything. Consumes the
        reader: iterate a new one afterwards."""
        for _ in self:
            if not self._watching:
                return

    # -- failing fast --------------------------------------------------------------

    def _watch(self, data_lines: IntArray, rejected: list[RejectedRow]) -> None:
        """Follow the first rows: once one is accepted (or out of range), or set aside
        for another reason than the rows before, the file is readable; when
        :data:`FAIL_FAST_ROWS` rows are set aside alike, it is not."""
        by_line = {r.line: r for r in rejected}
        for line in data_lines[: self._fail_fast_rows - len(self._watched)].tolist():
            row = by_line.get(line)
            if row is None or (self._watched and row.kind != self._watched[0].kind):
                self._watching, self._watched = False, []
                return
            self._watched.append(row)
        if len(self._watched) >= self._fail_fast_rows:
            raise self._unreadable()

    def _unreadable(self) -> UnreadableSource:
        """The one message for a file whose first rows were all set aside alike: the
        file, the row, the column and value, and the option that would read it."""
        first, count = self._watched[0], len(self._watched)
        which = f"the first {count} rows" if count >= self._fail_fast_rows else f"all {count} rows"
        return UnreadableSource(
            f"{self.source}: {which} were set aside for the same reason, so nothing is "
            f"replayed: {self.ROW_WORD} {first.line}: {first.reason}. {self._hint(first)}"
        )

    def _hint(self, row: RejectedRow) -> str:
        """What would read ``row`` (a row of a file refused by :meth:`_unreadable`)."""
        lay = self.layout
        if row.kind == "time":
            index = [self._column_index(c) for c in lay.time_columns]
            values = [
                " ".join(_field(r.text, i, self.delimiter) for i in index) for r in self._watched
            ]
            sample = values[0]
            if _number(sample) is not None:
                formats = ["unix"]
            else:
                formats = [f for f in guess_time_formats(sample) if _reads_all(values, f)]
            where = (
                "(HFTPIPE_TIME_FORMAT; a ReplayJob's spec.source.timeFormat), or in a column "
                f"mapping: --mapping 'time={lay.time}:FORMAT,...'"
            )
            if not formats:
                return (
                    f"Column {lay.time!r} holds {sample!r}: give its format, a strftime "
                    f"pattern such as --time-format '%d.%m.%Y %H:%M:%S' {where}"
                )
            options = " or ".join(f"--time-format '{f}'" for f in formats)
            return (
                f"Column {lay.time!r} holds {sample!r}, which {options} reads (now read as "
                f"{lay.time_format}) {where}"
            )
        if row.kind == "fields":
            found = sniff_delimiter([row.text])
            other = (
                f"; its fields look {DELIMITER_NAMES[found]}-separated: --delimiter "
                f"{_DELIMITER_OPTION[found]}"
                if found != self.delimiter
                else ""
            )
            names = "--columns NAME,..." if lay.headerless else "a header of the same fields"
            return (
                f"Check the delimiter (now {DELIMITER_NAMES[self.delimiter]}){other}, and give "
                f"{names} (HFTPIPE_DELIMITER, HFTPIPE_COLUMNS; a ReplayJob's "
                "spec.source.delimiter, spec.source.columns)"
            )
        if row.kind == "symbol":
            return (
                f"Column {lay.symbol!r} holds no symbol: map another one, or none and give "
                "--symbol (HFTPIPE_SYMBOL; a ReplayJob's spec.source.symbol)"
            )
        if row.kind == "text":
            return "Save the file as UTF-8 text with one row per line"
        columns = ", ".join(f"{k}={c}" for k, c in zip(_OHLCV, lay.ohlcv, strict=True))
        return (
            f"The prices and volume are read from {columns}: if those are not the right "
            f"columns, give a column mapping: --mapping '{ColumnMapping.SPEC_HELP}' "
            "(HFTPIPE_MAPPING; a ReplayJob's spec.source.mapping)"
        )

    # -- one block ---------------------------------------------------------------

    def _parse_block(self, block: bytes, first_line: int) -> ParsedChunk:
        arr = np.frombuffer(block, dtype=np.uint8)
        breaks = np.flatnonzero(arr == ord("\n"))
        ends = breaks if block.endswith(b"\n") else np.append(breaks, len(arr))
        starts = np.concatenate(([0], breaks + 1))[: len(ends)]
        text_ends = _text_ends(arr, block, starts, ends)  # line content without its "\r"s
        line_nos = first_line + np.arange(len(ends), dtype=np.int64)
        blank = text_ends == starts

        def text_of(i: int) -> str:
            return block[starts[i] : text_ends[i]].decode("utf-8", "replace")

        def rejected_row(i: int, kind: str, why: str) -> RejectedRow:
            return RejectedRow(self.source, int(line_nos[i]), text_of(i), kind, why)

        # Lines that are no clean text: pandas would cut them elsewhere, or misread them.
        problems = _text_problems(block, arr, starts, text_ends, blank)
        commas: IntArray | None = None
        if b'"' in block:
            # Quoted fields may hide commas: count fields properly, line by line.
            nfields = np.zeros(len(ends), dtype=np.int64)
            for i in np.flatnonzero(~blank).tolist():
                if i not in problems:
                    nfields[i], why = _count_fields(text_of(i), self.delimiter)
                    if why is not None:
                        problems[i] = ("fields", why)
        else:
            commas = np.flatnonzero(arr == ord(self.delimiter))
            nfields = np.searchsorted(commas, text_ends) - np.searchsorted(commas, starts) + 1
        clean = np.ones(len(ends), dtype=np.bool_)
        clean[list(problems)] = False
        good = ~blank & clean & (nfields == self._ncols)

        rejected = [rejected_row(i, kind, why) for i, (kind, why) in problems.items()]
        rejected += [
            rejected_row(
                i,
                "fields",
                f"expected {self._ncols} {DELIMITER_NAMES[self.delimiter]}-separated fields "
                f"as in the {'column list' if self.layout.headerless else 'header'}, "
                f"found {nfields[i]}",
            )
            for i in np.flatnonzero(~blank & clean & ~good).tolist()
        ]
        n_blank = int(blank.sum())
        self.stats.blank_lines += n_blank
        self.stats.lines += len(ends) - n_blank

        good_idx = np.flatnonzero(good)
        if len(good_idx):
            frame, ts = self._read_frame(arr, block, starts, text_ends, ends, good, commas)
            if len(frame) != len(good_idx):
                # pandas split the lines otherwise than they were counted (quoting that
                # csv and pandas read differently): set the quoted lines aside, read again.
                quoted = np.array([b'"' in block[starts[i] : ends[i]] for i in good_idx])
                rejected += [
                    rejected_row(
                        i,
                        "fields",
                        "its quoting cannot be read consistently: quote whole fields only",
                    )
                    for i in good_idx[quoted].tolist()
                ]
                good[good_idx[quoted]] = False
                good_idx = np.flatnonzero(good)
                frame, ts = self._read_frame(arr, block, starts, text_ends, ends, good, None)
                if len(frame) != len(good_idx):  # never seen: refuse rather than misalign
                    raise SourceError(
                        f"{self.source}:{first_line}: lines {first_line} to "
                        f"{first_line + len(ends) - 1} cannot be split into rows "
                        "consistently; please report this file"
                    )
            offsets = self.layout.time_format == "iso" and _may_hold_offsets(block)
            chunk = self._check_rows(
                frame, line_nos[good_idx], lambda j: text_of(good_idx[j]), offsets=offsets, ts=ts
            )
        else:
            chunk = ParsedChunk(_empty_batch(), [], 0, 0)
        rejected += chunk.rejected
        rejected.sort(key=lambda r: r.line)
        self.stats.rejected += len(rejected)
        if self._watching:
            self._watch(line_nos[~blank], rejected)
        return ParsedChunk(chunk.bars, rejected, chunk.out_of_range, n_blank)

    def _read_frame(
        self,
        arr: npt.NDArray[np.uint8],
        block: bytes,
        starts: IntArray,
        text_ends: IntArray,
        ends: IntArray,
        good: BoolArray,
        commas: IntArray | None,
    ) -> tuple[pd.DataFrame, IntArray | None]:
        """The good lines' columns, and their unix times when read from the block itself
        (lines without quotes, whose fields lie between the commas found)."""
        lay = self.layout
        usecols = self._usecols
        ts: IntArray | None = None
        rows = np.flatnonzero(good)
        if lay.time_format in UNIX_UNITS and commas is not None:
            first_comma = np.searchsorted(commas, starts[rows])
            col = self._time_index
            begin = starts[rows] if col == 0 else commas[first_comma + col - 1] + 1
            end = commas[first_comma + col] if col < self._ncols - 1 else text_ends[rows]
            ts = _unix_text_to_ns(
                arr,
                begin,
                end,
                lay.time_format,
                lambda i: block[begin[i] : end[i]].decode("utf-8", "replace"),
            )
            usecols = [c for c in usecols if c != lay.time]
        extra_cr = bool((text_ends[rows] < ends[rows] - 1).any())
        if len(rows) == len(starts) and not extra_cr:
            data = block
        else:
            line_bytes = np.append(starts[1:], len(arr)) - starts
            keep = np.repeat(good, line_bytes)
            if extra_cr:
                # Lines ending in "\r\r\n": pandas would see a line break in each "\r".
                end_of_text = np.repeat(text_ends, line_bytes)
                keep &= ~((np.arange(len(arr)) >= end_of_text) & (arr == ord("\r")))
            data = arr[keep].tobytes()
        frame = pd.read_csv(
            io.BytesIO(data),
            sep=self.delimiter,
            header=None,
            names=list(lay.header),
            usecols=usecols,
            dtype=self._dtypes,
            keep_default_na=False,
            na_values=self._na_values,
            skip_blank_lines=False,
            engine="c",
            # Correctly rounded, so a price equals float() of its text.
            float_precision="round_trip",
        )
        return frame, ts

    def _check_rows(
        self,
        frame: pd.DataFrame,
        lines: IntArray,
        text_of: _TextOf,
        *,
        offsets: bool,
        ts: IntArray | None = None,
        local: LocalTimes | None = None,
    ) -> ParsedChunk:
        """Check the rows of ``frame`` (file lines ``lines``) and keep the valid ones.

        ``ts``: their times when already read (unix text read from the block, or typed
        Arrow columns), with ``local`` for local times of the zone; else the times are
        read from the frame's time column(s) in the layout's format."""
        lay = self.layout
        n = len(frame)
        if ts is not None:
            pass  # read by the caller
        elif lay.time_format in UNIX_UNITS:
            ts = _unix_to_ns(frame[lay.time], lay.time_format)
        else:
            ts, local = _times_to_ns(
                _time_texts(frame, lay.time_columns), lay.time_format, self.zone, offsets=offsets
            )
        o, h, lo, c, v = (_as_float(frame[col]) for col in lay.ohlcv)
        if lay.symbol is not None:
            sym = frame[lay.symbol].to_numpy(dtype=object)
            sym_missing = pd.isna(sym) | (sym == "")
        else:
            sym = np.full(n, self._symbol, dtype=object)
            sym_missing = np.zeros(n, dtype=np.bool_)
        if local is not None and bool((local.early != local.late).any()):
            ts = self._resolve_repeated(local, sym)

        time_bad = ts == _NAT
        in_range = ~time_bad & (ts >= self._start) & (ts < self._end)
        out_of_range = int((~time_bad & ~in_range).sum())
        codes = reason_codes(o, h, lo, c, v)
        values_bad = in_range & (codes != OK)
        symbol_bad = in_range & ~values_bad & sym_missing
        candidate = in_range & ~values_bad & ~symbol_bad

        rejected: list[RejectedRow] = []
        time_idx = [self._column_index(col) for col in lay.time_columns]
        for j in np.flatnonzero(time_bad).tolist():
            text = text_of(j)
            value = " ".join(_field(text, i, self.delimiter) for i in time_idx)
            reason = self._time_reason(value, gap=local is not None and bool(local.gap[j]))
            rejected.append(RejectedRow(self.source, int(lines[j]), text, "time", reason))
        for j in np.flatnonzero(values_bad).tolist():
            text = text_of(j)
            fields = _fields_of(text, self.delimiter)
            ro, rh, rl, rc, rv = (fields[self._column_index(col)] for col in lay.ohlcv)
            code = int(codes[j])
            values = (float(o[j]), float(h[j]), float(lo[j]), float(c[j]), float(v[j]))
            if lay.kind == "trade":
                reason = describe_trade_reason(code, values[0], values[4], raw=(ro, rv))
            else:
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

    def _time_reason(self, value: str, *, gap: bool) -> str:
        """Why the time ``value`` of a row was not read (``gap``: in the zone's spring gap)."""
        fmt = self.layout.time_format
        expected = _TIME_HELP.get(fmt, f"time in the format {fmt!r}")
        if fmt.startswith(("timestamp[", "date")):  # an Arrow column's own type
            expected = "time between 1677 and 2262 (nanoseconds since 1970 in 64 bits)"
        if gap:
            return (
                f"time {value!r} does not exist in time zone {self.zone} (skipped when "
                "the clocks were set forward: a daylight-saving change)"
            )
        if not value.strip():
            return f"no time: the time field is empty (expected a {expected})"
        return f"time {value!r} is not a valid {expected}"

    def _resolve_repeated(self, local: LocalTimes, sym: ObjectArray) -> IntArray:
        """The times of a block that holds a repeated local hour: a row of that hour is
        its first pass unless its symbol has already reached that instant (a row before
        it, in this block or an earlier one), then its second pass.

        Rows are in time order per symbol in a file the reader accepts, so this is the
        instant each row means, wherever the blocks are cut and however the symbols are
        interleaved (pandas' ``ambiguous="infer"`` sees one block, all symbols at once).
        One pass over the block in Python: a block with a clock change, once a year."""
        ts = local.early.copy()
        repeated = (local.early != local.late).tolist()
        nat = int(_NAT)
        last = {symbol: t for symbol, (t, _) in self._last.items()}
        rows = zip(sym.tolist(), local.early.tolist(), local.late.tolist(), repeated, strict=True)
        for j, (symbol, early, late, twice) in enumerate(rows):
            t = early
            if twice and early <= last.get(symbol, nat):
                t = ts[j] = late
            if t > last.get(symbol, nat):
                last[symbol] = t
        return ts

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
        """Rows of ``idx`` whose time is after the last accepted bar of their symbol (for
        trades: not before the last accepted trade; ticks share times).

        Vectorised per symbol: a row is accepted exactly when its time exceeds the
        running maximum of all earlier rows of the symbol, because a rejected row
        never raises that maximum. The running state carries across chunks.
        """
        if len(idx) == 0:
            return idx
        trades = self.layout.kind == "trade"
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
            # Trades of a symbol may share a time (ticks): only going back is refused.
            ok = t >= before if trades else t > before
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
    "unix_us": "unix time in microseconds",
    "unix_ns": "unix time in nanoseconds",
}


def _field(text: str, index: int, delimiter: str = ",") -> str:
    fields = _fields_of(text, delimiter)
    return fields[index] if index < len(fields) else ""


def _text_ends(
    arr: npt.NDArray[np.uint8], block: bytes, starts: IntArray, ends: IntArray
) -> IntArray:
    """Where each line's text ends: before its line break and every "\r" just before it
    (a "\r\n" file converted once more ends its lines in "\r\r\n")."""
    if b"\r\r" not in block:
        has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == ord("\r"))
        return cast(IntArray, ends - has_cr)
    not_cr = np.where(arr != ord("\r"), np.arange(len(arr)), -1)
    last_text = np.maximum.accumulate(not_cr)[np.maximum(ends - 1, 0)] + 1
    return cast(IntArray, np.clip(last_text, starts, ends))


def _first_in_line(
    positions: IntArray, starts: IntArray, text_ends: IntArray
) -> tuple[IntArray, IntArray]:
    """Lines holding one of ``positions`` (sorted) before their text ends, and the first
    such position of each."""
    first = np.searchsorted(positions, starts)
    at = positions[np.minimum(first, len(positions) - 1)]
    lines = np.flatnonzero((first < len(positions)) & (at < text_ends))
    return lines, at[lines]


def _text_problems(
    block: bytes,
    arr: npt.NDArray[np.uint8],
    starts: IntArray,
    text_ends: IntArray,
    blank: BoolArray,
) -> dict[int, tuple[str, str]]:
    """Lines (index in the block) that are no clean UTF-8 text: kind and reason."""
    problems: dict[int, tuple[str, str]] = {}
    if b"\x00" in block:
        lines, at = _first_in_line(np.flatnonzero(arr == 0), starts, text_ends)
        for i, pos in zip(lines.tolist(), at.tolist(), strict=True):
            problems[i] = (
                "text",
                f"a NUL byte at column {pos - starts[i] + 1}: binary data, or text in "
                "UTF-16/UTF-32 without a byte-order mark (save the file as UTF-8)",
            )
    if b"\r" in block:
        lines, at = _first_in_line(np.flatnonzero(arr == ord("\r")), starts, text_ends)
        for i, pos in zip(lines.tolist(), at.tolist(), strict=True):
            problems.setdefault(
                i,
                (
                    "text",
                    f"a carriage return (\\r) at column {pos - starts[i] + 1}, inside the "
                    "line: lines must end in \\n or \\r\\n, and a field cannot hold a "
                    "line break",
                ),
            )
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            for i in np.flatnonzero(~blank).tolist():
                line = block[starts[i] : text_ends[i]]
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    problems.setdefault(
                        i,
                        (
                            "text",
                            f"not UTF-8 text (byte 0x{line[exc.start]:02x} at column "
                            f"{exc.start + 1}): save the file as UTF-8",
                        ),
                    )
    return dict(sorted(problems.items()))


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
