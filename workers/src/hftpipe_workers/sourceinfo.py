"""What a source holds, read the way the producer reads it (issue 11, point 7).

``hftpipe inspect`` reads a whole source with the producer's options and prints how it
was read (:func:`describe_reading`: the format, layout, delimiter, time format and zone)
and what came of its rows (:class:`SourceSummary`: the first and last event time, the
count of rows by outcome, bars per symbol), without producing anything. The producer
logs the same: how it reads when it starts, what came of the rows when it is done.
Nothing here touches Kafka.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import numpy as np

from .bars import format_utc
from .csvformat import DELIMITER_NAMES, BarReader, ParsedChunk, ReadStats
from .multifile import TIE_BREAK, MergedReader

SYMBOLS_LISTED: Final = 10
"""Symbols named one by one in a summary (the rest are counted)."""


class Reading(NamedTuple):
    """How a reader reads its source, in words: what the producer logs and writes to its
    progress record (and so the ReplayJob's ``status.source``), and ``inspect`` prints."""

    format: str
    layout: str
    time: str
    time_zone: str
    records: str = ""
    """What the rows are when they are not bars (trades), else ""."""

    def lines(self) -> list[str]:
        """``what: how`` lines, for a log or a terminal."""
        return [
            f"format: {self.format}",
            f"layout: {self.layout}",
            *([f"records: {self.records}"] if self.records else []),
            f"time: {self.time}",
            f"time zone: {self.time_zone}",
        ]


def reading_of(reader: BarReader | MergedReader) -> Reading:
    """How ``reader`` reads its source. For many files: how many and the merge's order,
    then what they share, or each file's own where they differ."""
    if not isinstance(reader, MergedReader):
        return _reading_of_one(reader)
    each = [_reading_of_one(one) for one in reader.readers]

    def common(values: list[str]) -> str:
        if len(set(values)) == 1:
            return values[0]
        return "; ".join(f"file {i}: {v}" for i, v in enumerate(values, 1))

    return Reading(
        format=f"{len(each):,} files merged by {TIE_BREAK}: {common([r.format for r in each])}",
        layout=common([r.layout for r in each]),
        time=common([r.time for r in each]),
        time_zone=common([r.time_zone for r in each]),
        records=each[0].records,
    )


def _reading_of_one(reader: BarReader) -> Reading:
    lay = reader.layout
    if lay.file_format:
        form = getattr(reader, "container", lay.file_format)
    else:
        headerless = ", no header (columns as given)" if lay.headerless else ", a header line"
        form = (
            f"CSV text ({reader.encoding}), {DELIMITER_NAMES[reader.delimiter]}-separated"
            f"{headerless}"
        )
    note = f" ({lay.note})" if lay.note else ""
    if lay.time_format.startswith("timestamp[") and "tz=" in lay.time_format:
        zone = "the column's own (its type has a zone): --timezone does not apply"
    elif reader.zone is not None:
        zone = f"{reader.zone} (times without an offset are its wall-clock times)"
    else:
        zone = "UTC (times without an offset are UTC)"
    return Reading(
        format=form,
        layout=lay.describe(),
        records=(
            "trades (time, price, size), replayed as trades (as bars with --bars)"
            if lay.kind == "trade"
            else ""
        ),
        time=f"column {lay.time} as {lay.time_format}{note}",
        time_zone=zone,
    )


def describe_reading(reader: BarReader | MergedReader) -> list[str]:
    """How ``reader`` reads its source: ``what: how`` lines, for a log or a terminal. For
    many files: how many, the merge's order, then each file's lines, indented."""
    if isinstance(reader, MergedReader):
        lines = [f"files: {len(reader.readers):,}, merged by {TIE_BREAK}"]
        for i, one in enumerate(reader.readers, 1):
            symbol = f" (symbol {one.symbol})" if one.layout.symbol is None else ""
            lines += [
                f"file {i}: {one.source}{symbol}",
                *(f"  {x}" for x in _reading_of_one(one).lines()),
            ]
        return lines
    return _reading_of_one(reader).lines()


def kind_of(reader: BarReader | MergedReader) -> str:
    """What the source's rows are, ``bar`` or ``trade`` (a merged source's files all hold
    one kind: the producer checks it first)."""
    if isinstance(reader, MergedReader):
        return reader.readers[0].layout.kind
    return reader.layout.kind


@dataclass
class SourceSummary:
    """What came of a source's rows: fed every chunk a reader yields (:meth:`add`), then
    the reader's totals (:meth:`finish`)."""

    source: str
    kind: str = "bar"
    """What the rows are: ``bar`` or ``trade`` (the layout's :attr:`~.csvformat.Layout.kind`)."""
    rows: int = 0
    """Data rows read (CSV: lines, header and blank lines left out)."""
    bars: int = 0
    out_of_range: int = 0
    blank_lines: int = 0
    set_aside: Counter[str] = field(default_factory=Counter)
    """Rows set aside (dead-lettered), by kind (``time``, ``not_finite``...)."""
    first_ns: int | None = None
    last_ns: int | None = None
    symbols: Counter[str] = field(default_factory=Counter)
    """Bars (or trades) per symbol."""

    def add(self, chunk: ParsedChunk) -> None:
        """Count one chunk (array operations, and one step per rejected row)."""
        batch = chunk.bars
        if len(batch):
            low, high = int(batch.ts_ns.min()), int(batch.ts_ns.max())
            self.first_ns = low if self.first_ns is None else min(self.first_ns, low)
            self.last_ns = high if self.last_ns is None else max(self.last_ns, high)
            if (batch.symbol == batch.symbol[0]).all():
                self.symbols[str(batch.symbol[0])] += len(batch)
            else:
                names, counts = np.unique(batch.symbol.astype(str), return_counts=True)
                self.symbols.update(dict(zip(names.tolist(), counts.tolist(), strict=True)))
        self.set_aside.update(row.kind for row in chunk.rejected)

    def finish(self, stats: ReadStats) -> SourceSummary:
        """Take the reader's totals (after its last chunk); returns itself."""
        self.rows, self.bars = stats.lines, stats.accepted
        self.out_of_range, self.blank_lines = stats.out_of_range, stats.blank_lines
        return self

    def lines(self) -> list[str]:
        """``what: how many`` lines."""
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in self.set_aside.most_common())
        outcome = (
            f"rows: {self.rows:,} read: {self.bars:,} {self.kind}s, "
            f"{sum(self.set_aside.values()):,} set aside" + (f" ({kinds})" if kinds else "")
        )
        outcome += f", {self.out_of_range:,} outside --start/--end"
        if self.blank_lines:
            outcome += f", {self.blank_lines:,} blank lines skipped"
        listed = ", ".join(f"{s} {n:,}" for s, n in self.symbols.most_common(SYMBOLS_LISTED))
        more = len(self.symbols) - SYMBOLS_LISTED
        return [
            f"first event: {format_utc(self.first_ns) if self.first_ns is not None else '-'}",
            f"last event: {format_utc(self.last_ns) if self.last_ns is not None else '-'}",
            outcome,
            f"symbols: {len(self.symbols):,}"
            + (f" ({listed}{f', {more:,} more' if more > 0 else ''})" if listed else ""),
        ]

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain values (JSON)."""
        return {
            "source": self.source,
            "rows": self.rows,
            "kind": self.kind,
            "bars": self.bars,  # records accepted: trades when kind is trade
            "set_aside": dict(self.set_aside.most_common()),
            "out_of_range": self.out_of_range,
            "blank_lines": self.blank_lines,
            "first_event": format_utc(self.first_ns) if self.first_ns is not None else None,
            "last_event": format_utc(self.last_ns) if self.last_ns is not None else None,
            "symbols": dict(self.symbols.most_common()),
        }


def summarize(reader: BarReader | MergedReader) -> SourceSummary:
    """Read ``reader`` to its end: what came of the rows. A source that cannot be read (or
    whose first rows are all set aside alike) raises as the producer would."""
    summary = SourceSummary(reader.source, kind=kind_of(reader))
    for chunk in reader:
        summary.add(chunk)
    return summary.finish(reader.stats)
