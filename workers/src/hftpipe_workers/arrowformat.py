"""Parquet and Arrow IPC (Feather v2) sources, read as :mod:`.csvformat` reads CSV text.

Issue 11, point 4. :class:`ArrowBarReader` is a :class:`~.csvformat.BarReader` (its
layout, stats, :meth:`~.csvformat.BarReader.check_start`, the :class:`~.csvformat.ParsedChunk`
objects it yields, the same row checks, dead letters and failing fast), reading record
batches instead of blocks of lines: a Parquet file one row group at a time (pyarrow's
``ParquetFile.iter_batches``, only the columns the layout uses), an IPC file one record
batch at a time (``pyarrow.ipc.open_file``), an IPC stream as it arrives
(``open_stream``). The whole file is never in memory. :func:`open_reader` picks the
reader of a source: its first bytes say (``PAR1``, ``ARROW1``, an IPC stream's
continuation marker), else the name's suffix (:data:`SUFFIXES`), else it is CSV text.

Layouts and column mappings are CSV's, recognised from the schema's column names and the
first rows (rendered as text for that); the times are read by the time column's type:

- timestamp columns (any unit): with a zone, the instants they hold; without one, wall
  times in the reader's ``timezone`` (daylight saving from the zone database), else UTC.
  Date columns: midnight.
- integer, float and decimal columns under a unix format: unix times in the unit named,
  or read off the magnitude, exactly (a float is read as its shortest text, as CSV's
  text would be). Under another format (``%Y%m%d``) their digits are read as text.
- string columns: as in CSV (ISO-8601, unix text, ``strftime`` patterns, ``Date+Time``).

Parquet and IPC files are read by position (the footer first, then each row group):
local files, fsspec's S3 files, and HTTP(S) from servers that answer range requests
(fsspec fetches a small file whole; a large one from a server that ignores ranges fails
with fsspec's "doesn't appear to support range requests"). An IPC stream is read in
order, from anywhere.

A row's ``line`` is its row number in the file (1 is the first row): the dead letters
carry it and resuming counts on it (the producer re-reads the file and skips what is
committed, as for CSV). A rejected row's ``text`` is its used columns as a CSV line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import date, datetime, time
from typing import Any, ClassVar, Final, Literal, Protocol, Unpack, cast

import numpy as np
import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs is not in the lock
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
from pyarrow import ipc

from hftpipe_workers.bars import NS_PER_SECOND
from hftpipe_workers.csvformat import (
    _MAX_ABS_UNIX,
    _NAT,
    _NS_PER_UNIT,
    _SAMPLE_ROWS,
    UNIX_UNITS,
    BarReader,
    IntArray,
    LayoutError,
    LocalTimes,
    ParsedChunk,
    Readable,
    ReaderOptions,
    SourceError,
    _exact_unix_ns,
    _localize,
    one_line,
    read_error,
)

SourceFormat = Literal["csv", "parquet", "arrow", "arrow-stream"]
"""What a source holds: CSV text, a Parquet file, an Arrow IPC file (Feather v2), an
Arrow IPC stream."""

SUFFIXES: Final[dict[str, SourceFormat]] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".arrows": "arrow-stream",
}
"""Names that say a source is Parquet or Arrow (the first bytes are checked anyway)."""

FORMAT_NAMES: Final[dict[SourceFormat, str]] = {
    "csv": "CSV text",
    "parquet": "Parquet",
    "arrow": "Arrow IPC file (Feather v2)",
    "arrow-stream": "Arrow IPC stream",
}

BATCH_ROWS: Final = 65_536
"""Rows per record batch read from a Parquet file (a row group is read whole, then cut)."""

_PARQUET_MAGIC: Final = b"PAR1"
_ARROW_FILE_MAGIC: Final = b"ARROW1"
_ARROW_STREAM_MAGIC: Final = b"\xff\xff\xff\xff"  # an IPC message's continuation marker
_FEATHER_V1_MAGIC: Final = b"FEA1"
_TIMESTAMP_NS: Final = {"s": NS_PER_SECOND, "ms": 1_000_000, "us": 1_000, "ns": 1}


class _Peekable(Protocol):
    def read(self, size: int, /) -> bytes | str: ...


def peek(stream: _Peekable, size: int = 8) -> bytes:
    """The first ``size`` bytes of ``stream``, left to be read (b"" when it cannot say)."""
    peek_at = getattr(stream, "peek", None)
    if callable(peek_at):
        data = peek_at(size)
        return (data.encode() if isinstance(data, str) else bytes(data))[:size]
    seekable = getattr(stream, "seekable", None)
    if callable(seekable) and seekable():
        at = stream.tell()  # type: ignore[attr-defined]
        data = stream.read(size)
        stream.seek(at)  # type: ignore[attr-defined]
        return data.encode() if isinstance(data, str) else data
    return b""


def source_format(name: str, head: bytes) -> SourceFormat:
    """What ``name``, starting with the bytes ``head``, holds: the bytes say, else the
    name's suffix (a name that says Parquet or Arrow of other bytes is a
    :class:`~.csvformat.SourceError`); CSV text otherwise."""
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    if head.startswith(_ARROW_FILE_MAGIC):
        return "arrow"
    if head.startswith(_ARROW_STREAM_MAGIC):
        return "arrow-stream"
    if head.startswith(_FEATHER_V1_MAGIC):
        raise SourceError(
            f"{name}: a Feather version 1 file, which pyarrow no longer writes and this "
            "reader does not take: convert it to version 2 (pyarrow.feather.write_feather "
            "of pyarrow.feather.read_table) or to Parquet"
        )
    path = name.split("?", 1)[0].lower()
    said = next((f for s, f in SUFFIXES.items() if path.endswith(s)), None)
    if said is None:
        return "csv"
    if not head:
        raise SourceError(f"{name}: the file is empty: expected {FORMAT_NAMES[said]}")
    raise SourceError(
        f"{name}: the name says {FORMAT_NAMES[said]}, but the file does not start as one "
        f"(first bytes {head[:8]!r}): is it another format, or compressed (name it *.gz...)?"
    )


def _cell(value: Any) -> str:
    """A value of a row as CSV text would hold it."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def _as_py(array: pa.Array, index: int) -> Any:
    scalar = array[index]
    try:
        return scalar.as_py()
    except (OverflowError, ValueError):  # a time outside Python's datetime range
        return f"{getattr(scalar, 'value', '?')} ({array.type})"  # its stored number


def _values(array: pa.Array) -> list[Any]:
    """``array`` as Python values; one by one when a value has none (a time beyond
    Python's datetime range)."""
    try:
        return list(array.to_pylist())
    except (OverflowError, ValueError):
        return [_as_py(array, i) for i in range(len(array))]


def _row_text(values: Sequence[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow([_cell(v) for v in values])
    return out.getvalue()


def _plain(array: pa.Array) -> pa.Array:
    """``array`` with its dictionary encoding (Parquet's for repeated strings) undone."""
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _floats(array: pa.Array) -> Any:
    """A price or volume column as float64 (nulls NaN), or its text for pandas to convert
    (text that is no number is then NaN, and the row is set aside)."""
    array = _plain(array)
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array.to_numpy(zero_copy_only=False)
    try:
        return pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a column of another kind
        return np.full(len(array), np.nan)


def _texts(array: pa.Array) -> Any:
    """A column as text (None for a null): a symbol, or a time read as CSV reads it."""
    array = _plain(array)
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = pc.cast(array, pa.string())
    return array.to_numpy(zero_copy_only=False)


def _valid(array: pa.Array) -> Any:
    return array.is_valid().to_numpy(zero_copy_only=False)


def timestamp_ns(array: pa.Array) -> tuple[IntArray, bool]:
    """A timestamp or date column as int64 ns (NaT for nulls and times beyond 1677-2262),
    and whether its times are naive (no zone in the type)."""
    array = _plain(array)
    if pa.types.is_date(array.type):
        array = pc.cast(array, pa.timestamp("s"))
    per = _TIMESTAMP_NS[array.type.unit]
    raw = pc.fill_null(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    limit = np.iinfo(np.int64).max // per
    ok = _valid(array) & (raw < limit) & (raw > -limit)
    ns = np.where(ok, np.where(ok, raw, 0) * per, _NAT)
    return cast(IntArray, ns.astype(np.int64)), array.type.tz is None


def unix_number_ns(array: pa.Array, fmt: str) -> IntArray:
    """A numeric column of unix times in ``fmt`` (``unix_s``...) as int64 ns, exactly:
    integers by integer arithmetic, floats as their shortest text (what a CSV file would
    hold); NaT for nulls and times beyond int64 nanoseconds."""
    array = _plain(array)
    kind = array.type
    per, limit = _NS_PER_UNIT[fmt], int(_MAX_ABS_UNIX[fmt])
    out = np.full(len(array), _NAT, dtype=np.int64)
    valid = _valid(array)
    if pa.types.is_integer(kind):
        raw = pc.fill_null(array, 0).to_numpy(zero_copy_only=False)
        if pa.types.is_unsigned_integer(kind):
            ok = valid & (raw < limit)
        else:
            ok = valid & (raw < limit) & (raw > -limit)
        out[ok] = raw[ok].astype(np.int64) * per
        return cast(IntArray, out)
    if pa.types.is_floating(kind):
        values = pc.fill_null(array.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            finite = valid & np.isfinite(values) & (np.abs(values) < limit)
            whole = finite & (values == np.trunc(values)) & (np.abs(values) < 2**53)
        out[whole] = values[whole].astype(np.int64) * per
        for i in np.flatnonzero(finite & ~whole).tolist():
            out[i] = _exact_unix_ns(repr(float(values[i])), fmt)
        return cast(IntArray, out)
    texts = _texts(array)  # decimals: their exact text
    return cast(
        IntArray,
        np.fromiter((_exact_unix_ns(t, fmt) for t in texts), dtype=np.int64, count=len(texts)),
    )


def _is_number(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    )


def _is_time(kind: pa.DataType) -> bool:
    return bool(pa.types.is_timestamp(kind) or pa.types.is_date(kind))


class ArrowBarReader(BarReader):
    """Reads bars from a Parquet file or an Arrow IPC file or stream, batch by batch.

    The interface and the checks of :class:`~.csvformat.BarReader` (see the module's
    docstring for how columns are read by type). ``stream``: an opened binary file
    object (seekable for Parquet and IPC files: a local file, fsspec's remote files);
    ``file_format``: what it holds (:func:`source_format`). A source pyarrow cannot
    read (a truncated file, another format) is a :class:`~.csvformat.SourceError`."""

    ROW_WORD: ClassVar[str] = "row"

    def __init__(
        self,
        stream: Readable,
        *,
        file_format: SourceFormat,
        batch_rows: int = BATCH_ROWS,
        **options: Unpack[ReaderOptions],
    ) -> None:
        self._init_checks(stream, options)
        if file_format == "csv":
            raise ValueError(f"{self.source}: CSV text is read by csvformat.BarReader")
        self.file_format: SourceFormat = file_format
        self.encoding = "UTF-8"  # Arrow's strings are UTF-8
        self.delimiter = ","  # of the rows' texts, in dead letters
        self._batch_rows = batch_rows
        self._held: list[pa.RecordBatch] = []
        self._parquet: pq.ParquetFile | None = None
        self._ipc: Any = None
        self.num_rows: int | None = None
        """Rows in the file, where its metadata says (Parquet, IPC files)."""
        try:
            self.schema, sample = self._open(stream)
        except SourceError:
            raise
        except Exception as exc:  # whatever pyarrow says of a file it cannot read
            raise self._error(exc) from exc
        header = list(self.schema.names)
        texts = [[_cell(v) for v in _values(column)] for column in sample.columns]
        rows = [list(row) for row in zip(*texts, strict=True)]
        found = self._layout_of(header, rows)
        if len(found.time_columns) == 1:
            kind = _plain_type(self.schema.field(found.time_columns[0]).type)
            if _is_time(kind):
                # The type says what the values are: no format to recognise or to name.
                # A format named for it (--time-format, a mapping's) is not needed: say so.
                named = self._time_format is not None or self._mapping is not None
                note = "the column's own type" + (
                    f"; the format named, {found.time_format}, does not apply" if named else ""
                )
                name = "generic-timestamp" if found.name.startswith("generic") else found.name
                found = replace(found, name=name, time_format=f"{kind}", note=note)
            elif not _is_number(kind) and not _is_text(kind):
                raise LayoutError(
                    f"{self.source}: the time column {found.time!r} is of type {kind}: "
                    "expected a timestamp, a date, unix times (numbers) or text"
                )
        self.layout = replace(found, file_format=FORMAT_NAMES[file_format])
        self._check_symbol()
        if sample.num_rows == 0:
            raise SourceError(f"{self.source}: the file holds no row: nothing to replay")
        lay = self.layout
        used = [*lay.time_columns, *lay.ohlcv, *([lay.symbol] if lay.symbol else [])]
        self._columns = list(dict.fromkeys(used))
        """The columns read, in this order in a rejected row's text."""

    @property
    def container(self) -> str:
        """The format, and how the file is cut (for the log and ``hftpipe inspect``)."""
        name = FORMAT_NAMES[self.file_format]
        if self._parquet is not None:
            meta = self._parquet.metadata
            return f"{name}, {meta.num_rows:,} rows in {meta.num_row_groups:,} row groups"
        if self.file_format == "arrow":
            return f"{name}, {self._ipc.num_record_batches:,} record batches"
        return name

    # -- opening ---------------------------------------------------------------

    def _open(self, stream: Readable) -> tuple[pa.Schema, pa.RecordBatch]:
        """The schema and the first rows (at most :data:`~.csvformat._SAMPLE_ROWS`)."""
        if self.file_format == "parquet":
            self._parquet = pq.ParquetFile(stream)
            self.num_rows = int(self._parquet.metadata.num_rows)
            schema = self._parquet.schema_arrow
            first = next(self._row_groups(None, _SAMPLE_ROWS), None)
            return schema, first if first is not None else _empty(schema)
        if self.file_format == "arrow":
            self._ipc = ipc.open_file(stream)
            schema = self._ipc.schema
            batches = (self._ipc.get_batch(i) for i in range(self._ipc.num_record_batches))
        else:
            self._ipc = ipc.open_stream(stream)
            schema = self._ipc.schema
            batches = iter(self._ipc)
        # The first non-empty batch tells the layout; an IPC stream cannot be read twice,
        # so what was read is kept for the rows.
        for batch in batches:
            self._held.append(batch)
            if batch.num_rows:
                return schema, batch.slice(0, _SAMPLE_ROWS)
        return schema, _empty(schema)

    def _row_groups(self, columns: list[str] | None, rows: int) -> Iterator[pa.RecordBatch]:
        """A Parquet file's batches, one row group after the other: left to itself,
        ``iter_batches`` reads ahead most of a file (33 MB of a 46 MB file to give its
        first 1,000 rows, in a probe)."""
        assert self._parquet is not None
        for group in range(self._parquet.metadata.num_row_groups):
            yield from self._parquet.iter_batches(
                batch_size=rows, row_groups=[group], columns=columns
            )

    def _error(self, exc: BaseException, row: int = 1) -> SourceError:
        if isinstance(exc, pa.ArrowInvalid | pa.ArrowNotImplementedError):
            return SourceError(
                f"{self.source}: not a readable {FORMAT_NAMES[self.file_format]} file (row "
                f"{row}): {one_line(exc)}: a file cut short, or another format?"
            )
        return read_error(self.source, row, exc)

    def _batches(self) -> Iterator[pa.RecordBatch]:
        """The rows, in batches of the used columns."""
        if self._parquet is not None:
            yield from self._row_groups(self._columns, self._batch_rows)
            return
        pending, self._held = self._held, []
        yield from (b.select(self._columns) for b in pending)
        if self.file_format == "arrow":
            start = len(pending)
            for i in range(start, self._ipc.num_record_batches):
                yield self._ipc.get_batch(i).select(self._columns)
        else:
            for batch in self._ipc:
                yield batch.select(self._columns)

    # -- reading ---------------------------------------------------------------

    def _column_index(self, column: str) -> int:
        return self._columns.index(column)

    def __iter__(self) -> Iterator[ParsedChunk]:
        batches = self._batches()
        first = 1
        while True:
            try:
                batch = next(batches, None)
            except SourceError:
                raise
            except Exception as exc:  # whatever stops the stream: one message
                raise self._error(exc, first) from exc
            if batch is None:
                break
            if batch.num_rows:
                yield self._parse_batch(batch, first)
                first += batch.num_rows
        if self._watching and self._watched:
            raise self._unreadable()  # a short file whose every row was set aside alike

    def _times(self, columns: dict[str, pa.Array]) -> tuple[IntArray | None, LocalTimes | None]:
        """The times of typed time columns; None where they are text to parse as CSV's."""
        lay = self.layout
        if len(lay.time_columns) != 1:
            return None, None
        array = columns[lay.time_columns[0]]
        kind = _plain_type(array.type)
        if _is_time(kind):
            ns, naive = timestamp_ns(array)
            if naive and self.zone is not None:
                local = _localize(pd.Series(ns.view("datetime64[ns]")), self.zone)
                return local.early, local
            return ns, None
        if _is_number(kind) and lay.time_format in UNIX_UNITS:
            return unix_number_ns(array, lay.time_format), None
        return None, None

    def _parse_batch(self, batch: pa.RecordBatch, first_row: int) -> ParsedChunk:
        lay = self.layout
        n = batch.num_rows
        columns = {name: batch.column(name) for name in self._columns}
        lines = first_row + np.arange(n, dtype=np.int64)
        ts, local = self._times(columns)
        frame: dict[str, Any] = {name: _floats(columns[name]) for name in lay.ohlcv}
        if ts is None:
            for name in lay.time_columns:
                frame[name] = _texts(columns[name])
        if lay.symbol is not None:
            frame[lay.symbol] = _texts(columns[lay.symbol])

        def text_of(j: int) -> str:
            return _row_text([_as_py(columns[name], j) for name in self._columns])

        chunk = self._check_rows(
            pd.DataFrame(frame), lines, text_of, offsets=True, ts=ts, local=local
        )
        chunk.rejected.sort(key=lambda r: r.line)
        self.stats.lines += n
        self.stats.rejected += len(chunk.rejected)
        if self._watching:
            self._watch(lines, chunk.rejected)
        return chunk


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def _plain_type(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def open_reader(
    stream: Readable,
    *,
    delimiter: str | None = None,
    columns: Sequence[str] | None = None,
    block_bytes: int = 4 << 20,
    batch_rows: int = BATCH_ROWS,
    **options: Unpack[ReaderOptions],
) -> BarReader:
    """The reader of ``stream``: an :class:`ArrowBarReader` for Parquet and Arrow (see
    :func:`source_format`), else a CSV :class:`~.csvformat.BarReader`. ``options`` are
    the readers' common ones (``symbol``, ``mapping``, ``layout``, ``time_format``...);
    ``delimiter``, ``columns`` and ``block_bytes`` are CSV's, ``batch_rows`` Parquet's."""
    source = options.get("source")
    name = source if source is not None else str(getattr(stream, "name", "<stream>"))
    found = source_format(name, peek(stream))
    if found == "csv":
        return BarReader(
            stream,
            delimiter=delimiter,
            columns=columns,
            block_bytes=block_bytes,
            **options,
        )
    if delimiter is not None or columns is not None:
        given = "a delimiter" if delimiter is not None else "column names"
        raise ValueError(
            f"{name}: {given} given, but the file is {FORMAT_NAMES[found]}, which names its "
            "columns itself: --delimiter and --columns apply to CSV text; map its columns "
            "with --mapping"
        )
    return ArrowBarReader(stream, file_format=found, batch_rows=batch_rows, **options)


def count_rows(stream: Readable, file_format: SourceFormat) -> int:
    """Rows of a Parquet or Arrow source: from the metadata of a Parquet or IPC file, by
    reading an IPC stream through (one batch at a time)."""
    if file_format == "parquet":
        return int(pq.ParquetFile(stream).metadata.num_rows)
    if file_format == "arrow":
        return int(ipc.open_file(stream).count_rows())
    if file_format == "arrow-stream":
        return sum(int(batch.num_rows) for batch in ipc.open_stream(stream))
    raise ValueError(f"count_rows: {file_format} is no Arrow format")
