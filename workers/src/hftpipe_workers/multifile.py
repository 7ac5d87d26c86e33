"""Many files as one feed: a directory, a glob or a list, merged by event time (issue 11,
point 5).

:func:`expand_sources` makes the files of a source (in *file order*: a list in its own
order, each directory's and glob's files sorted by name); :func:`symbol_from_filename`
reads a file's symbol off its name (``{symbol}-1m-*.csv``); :class:`MergedReader` replays
the files' readers (:func:`~.arrowformat.open_reader`, one per file) as one stream.

The merge's order is total and stated: by event time, then symbol, then file order (then
a file's own order). It is a k-way merge by blocks: every file's reader holds one chunk
(a heap orders the files by the last time of their chunk); every row earlier than the
least of those last times is final, so those rows of all files are sorted together and
yielded, and the file(s) whose chunk ends at that time read their next chunk. Memory is
one chunk per file (plus, for a file whose chunk ends at the frontier, its rows at that
one time), whatever the number of rows; the sorting is array operations per block.

What the merge needs and checks:

- Each file's bars in time order, across its symbols (per symbol, the readers check it
  as ever). A file that goes back in time (one sorted by symbol, then time) cannot be
  merged one chunk at a time: :class:`~.csvformat.SourceError` naming its line.
- The same symbol in several files (monthly dumps of one pair) is merged by time; a bar
  at the same time as a bar of the same symbol from an earlier file in file order is set
  aside as ``duplicate_time`` (a dead letter naming both files), as within one file.

The merged stream's ``seq`` is a bar's position in it: the same on every read of the same
files, which is what resuming after a kill relies on. Rows set aside come out in an order
that is the same on every read too (each file's, as its chunks are read): the producer
resumes them by count.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import fsspec
import numpy as np
import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs is not in the lock

from .bars import format_utc
from .csvformat import (
    BarBatch,
    BarReader,
    IntArray,
    ParsedChunk,
    ReadStats,
    RejectedRow,
    SourceError,
    _empty_batch,
)
from .settings import check_filename_pattern

TIE_BREAK: Final = "event time, then symbol, then file order"
"""The merge's order, as the docs and the log state it."""

_GLOB: Final = re.compile(r"[*?\[]")
_LOCAL: Final = ("file", "local")
_NO_LISTING: Final = ("http", "https")
"""Protocols that cannot list files: their URLs (``?`` starts a query) are never globs."""


# ------------------------------------------------------------------- the files


def _protocol(source: str) -> str:
    return source.split("://", 1)[0].lower() if "://" in source else "file"


def is_many(source: str) -> bool:
    """Whether ``source`` names files rather than one: a glob, or a directory (a local
    one, or a URL ending in ``/``)."""
    protocol = _protocol(source)
    if protocol in _NO_LISTING:
        return False
    if _GLOB.search(source.split("://", 1)[-1]) or source.endswith("/"):
        return True
    if protocol in _LOCAL:
        fs, path = fsspec.core.url_to_fs(source)
        return bool(fs.isdir(path))
    return False


def _base(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _hidden(path: str) -> bool:
    return _base(path).startswith(".")


def _name(fs: fsspec.AbstractFileSystem, path: str, source: str) -> str:
    """A listed file as the user would write it: a local path, or a URL of the source's
    protocol."""
    if _protocol(source) == "file" and "://" not in source:
        return str(path)
    return str(fs.unstrip_protocol(path))


def expand_sources(sources: Sequence[str]) -> list[str]:
    """The files of ``sources``, in file order: each entry a file, a directory (its files,
    hidden ones left out, not its subdirectories) or a glob (``s3://b/2024/*.csv.gz``),
    the files of each sorted by name. A directory or glob without a file is a
    :class:`~.csvformat.SourceError` naming it; a file named twice, too."""
    files: list[str] = []
    for source in sources:
        if not is_many(source):
            files.append(source)
            continue
        try:
            fs, path = fsspec.core.url_to_fs(source)
            if _GLOB.search(path):
                # As a shell's: * does not match a hidden file's leading dot.
                hidden = _base(path).startswith(".")
                # With details: one listing, not a request per match to tell files.
                matches = fs.glob(path, detail=True)
                found = [
                    p
                    for p, info in matches.items()
                    if (hidden or not _hidden(p)) and info.get("type") == "file"
                ]
                what = "no file matches the pattern"
            else:
                found = [
                    e["name"]
                    for e in fs.ls(path, detail=True)
                    if e.get("type") == "file" and not _hidden(e["name"])
                ]
                what = "the directory holds no file"
        except FileNotFoundError:
            found, what = [], "no such directory"
        except Exception as exc:  # whatever stops the listing: one message
            from .producer import open_error  # noqa: PLC0415 - the producer's words for it

            raise open_error(source, exc) from exc
        if not found:
            raise SourceError(
                f"{source}: {what}: check the path (in a pod: below the source volume's "
                "mount path) and the pattern (* and ? match within one name)"
            )
        files += [_name(fs, p, source) for p in sorted(found)]
    twice = sorted({f for f in files if files.count(f) > 1})
    if twice:
        raise SourceError(f"{twice[0]}: named twice in the source: give each file once")
    return files


def _glob_regex(pattern: str) -> str:
    return "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in pattern)


@dataclass(frozen=True)
class FilenameSymbol:
    """Reads a file's symbol off its name, by a ``{symbol}-1m-*.csv`` pattern."""

    pattern: str
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        before, after = check_filename_pattern(self.pattern).split("{symbol}")
        regex = re.compile(f"{_glob_regex(before)}(?P<symbol>[^/]+?){_glob_regex(after)}")
        object.__setattr__(self, "regex", regex)

    def symbol(self, name: str) -> str:
        """The symbol in the name of the file ``name`` (a path or URL); a
        :class:`~.csvformat.SourceError` naming the file and the pattern if it does not
        match."""
        base = name.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        found = self.regex.fullmatch(base)
        if found is None or not found["symbol"].strip():
            raise SourceError(
                f"{name}: the file name {base!r} does not match --symbol-from-filename "
                f"{self.pattern!r}: name the files alike, or change the pattern"
            )
        return found["symbol"]


# ------------------------------------------------------------------- the merge


def concat(batches: Sequence[BarBatch]) -> BarBatch:
    """The bars of ``batches`` one after the other."""
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return _empty_batch()
    return BarBatch(
        *(
            np.concatenate([getattr(b, name) for b in batches])
            for name in BarBatch.__dataclass_fields__
        )
    )


def _slice(batch: BarBatch, start: int, stop: int) -> BarBatch:
    """Rows ``start:stop`` of ``batch``, as views (no copy)."""
    return BarBatch(*(getattr(batch, name)[start:stop] for name in BarBatch.__dataclass_fields__))


@dataclass
class _File:
    """One file's reader in the merge, and the rows of it not yet merged."""

    index: int
    reader: BarReader
    chunks: Iterator[ParsedChunk]
    held: BarBatch = field(default_factory=_empty_batch)
    done: bool = False
    last: tuple[int, int] | None = None
    """(time, line) of this file's last bar read: its next bars may not be earlier."""


class MergedReader:
    """Several files' readers as one stream, merged by :data:`TIE_BREAK` (see the
    module's docstring). Yields :class:`~.csvformat.ParsedChunk` objects as a reader
    does, each file's rows set aside as that file's reader sets them aside; ``seq`` is
    the position in the merged stream. ``readers``: in file order."""

    def __init__(self, readers: Sequence[BarReader]) -> None:
        if not readers:
            raise ValueError("a merged source needs at least one file")
        self.readers = list(readers)
        self.source = ", ".join(r.source for r in self.readers)
        self._seq = 0
        self._duplicates = 0
        self.max_held = 0
        """The most rows any file held at once (for the tests of constant memory)."""

    @property
    def stats(self) -> ReadStats:
        """The files' totals (bars set aside by the merge counted as set aside)."""
        total = ReadStats()
        for reader in self.readers:
            for name in ReadStats.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(reader.stats, name))
        total.accepted -= self._duplicates
        total.rejected += self._duplicates
        return total

    def __iter__(self) -> Iterator[ParsedChunk]:
        files = [_File(i, r, iter(r)) for i, r in enumerate(self.readers)]
        out = _Pending()
        for f in files:
            self._read(f, out)
        # Files still being read, by the last time of the rows they hold.
        heap = [(int(f.held.ts_ns[-1]), f.index) for f in files if not f.done]
        heapq.heapify(heap)
        while True:
            bound = heap[0][0] if heap else None
            merged = self._merge(files, bound, out)
            if len(merged) or out.any():
                yield out.chunk(merged)
            if bound is None:
                return
            # Every file whose rows end at the frontier reads on (its rows at that time
            # stay: a later chunk of another file may still hold rows at it).
            while heap and heap[0][0] == bound:
                _, index = heapq.heappop(heap)
                f = files[index]
                self._read(f, out)
                if not f.done:
                    heapq.heappush(heap, (int(f.held.ts_ns[-1]), index))

    def check_start(self) -> None:
        """Each file's :meth:`~.csvformat.BarReader.check_start` (consumes the readers)."""
        for reader in self.readers:
            reader.check_start()

    def _read(self, f: _File, out: _Pending) -> None:
        """Read ``f``'s next chunks until it holds a bar more, or is done."""
        while True:
            chunk = next(f.chunks, None)
            if chunk is None:
                f.done = True
                return
            out.add(chunk)
            bars = chunk.bars
            if not len(bars):
                continue
            self._check_time_order(f, bars)
            f.held = concat([f.held, bars]) if len(f.held) else bars
            self.max_held = max(self.max_held, len(f.held))
            return

    @staticmethod
    def _check_time_order(f: _File, bars: BarBatch) -> None:
        ts = bars.ts_ns
        back = np.flatnonzero(ts[1:] < ts[:-1])
        if f.last is not None and ts[0] < f.last[0]:
            at, before = 0, f.last
        elif len(back):
            i = int(back[0])
            at, before = i + 1, (int(ts[i]), int(bars.line[i]))
        else:
            f.last = (int(ts[-1]), int(bars.line[-1]))
            return
        raise SourceError(
            f"{f.reader.source}:{int(bars.line[at])}: time {format_utc(int(ts[at]))} "
            f"({bars.symbol[at]}) is before {format_utc(before[0])} on line {before[1]}: a "
            "file of a merged source must be in time order across its symbols (the merge "
            "keeps one chunk of each file): sort it by time, or replay it on its own"
        )

    def _merge(self, files: list[_File], bound: int | None, out: _Pending) -> BarBatch:
        """The held rows earlier than ``bound`` (all, if None), in merged order, with
        their seqs; same-symbol same-time rows after the first set aside into ``out``."""
        parts: list[BarBatch] = []
        owners: list[int] = []
        for f in files:
            n = len(f.held)
            if not n:
                continue
            cut = n if bound is None else int(np.searchsorted(f.held.ts_ns, bound, "left"))
            if cut:
                parts.append(_slice(f.held, 0, cut) if cut < n else f.held)
                owners.append(f.index)
                f.held = _slice(f.held, cut, n) if cut < n else _empty_batch()
        if not parts:
            return _empty_batch()
        batch = concat(parts)
        ts = batch.ts_ns
        # Parts in file order, each in time order: a stable sort by time is the merged
        # order, unless rows share a time (then symbol, file order, position decide).
        order: IntArray = np.argsort(ts, kind="stable") if len(parts) > 1 else np.arange(len(ts))
        sorted_ts = ts[order]
        ties = sorted_ts[1:] == sorted_ts[:-1]
        if ties.any():
            file_of = np.repeat(np.array(owners), [len(p) for p in parts])
            codes = pd.factorize(batch.symbol, sort=True)[0]
            order = np.lexsort((np.arange(len(ts)), file_of, codes, ts))
            batch = batch.take(order)
            same = (batch.ts_ns[1:] == batch.ts_ns[:-1]) & (batch.symbol[1:] == batch.symbol[:-1])
            # Trades of one symbol may share a time (ticks): only bars are duplicates.
            if same.any() and self.readers[0].layout.kind != "trade":
                file_of = file_of[order]
                batch = self._set_aside(batch, same, file_of, out)
        elif len(parts) > 1:
            batch = batch.take(order)
        n = len(batch)
        seq = self._seq + np.arange(n, dtype=np.int64)
        self._seq += n
        return replace(batch, seq=seq)

    def _set_aside(
        self, batch: BarBatch, same: np.ndarray, file_of: IntArray, out: _Pending
    ) -> BarBatch:
        """``batch`` without its rows at the time and symbol of the row before them (the
        same bar from a later file), each set aside as a ``duplicate_time`` dead letter."""
        drop = np.concatenate(([False], same))
        for i in np.flatnonzero(drop).tolist():
            keep = i - 1
            while drop[keep]:
                keep -= 1
            kept = self.readers[int(file_of[keep])].source
            source = self.readers[int(file_of[i])].source
            when = format_utc(int(batch.ts_ns[i]))
            out.rejected.append(
                RejectedRow(
                    source,
                    int(batch.line[i]),
                    ",".join(
                        str(v)
                        for v in (
                            when,
                            batch.open[i],
                            batch.high[i],
                            batch.low[i],
                            batch.close[i],
                            batch.volume[i],
                            batch.symbol[i],
                        )
                    ),
                    "duplicate_time",
                    f"duplicate time {when} for {batch.symbol[i]}: {kept} line "
                    f"{int(batch.line[keep])} (earlier in file order) already has a bar at "
                    "that time",
                )
            )
        self._duplicates += int(drop.sum())
        return batch.take(~drop)


@dataclass
class _Pending:
    """What the files' readers gave besides bars since the last merged chunk."""

    rejected: list[RejectedRow] = field(default_factory=list)
    out_of_range: int = 0
    blank_lines: int = 0

    def add(self, chunk: ParsedChunk) -> None:
        self.rejected += chunk.rejected
        self.out_of_range += chunk.out_of_range
        self.blank_lines += chunk.blank_lines

    def any(self) -> bool:
        return bool(self.rejected or self.out_of_range or self.blank_lines)

    def chunk(self, bars: BarBatch) -> ParsedChunk:
        """A chunk of ``bars`` and all that is pending; nothing is pending afterwards."""
        chunk = ParsedChunk(bars, self.rejected, self.out_of_range, self.blank_lines)
        self.rejected, self.out_of_range, self.blank_lines = [], 0, 0
        return chunk
