"""Reading speed: our CSV and Parquet readers against pyarrow's own of the same file.

Issue 11's acceptance: the Parquet and CSV paths each in rows/s, against a baseline in
the same run. The CSV file is the bench's generated data set (:mod:`bench.datagen`);
the Parquet file holds the same rows (``Timestamp`` as ``timestamp[s, tz=UTC]``, the
prices as doubles) in row groups of :data:`ROW_GROUP`, written once next to it. Each
reader reads the whole file :data:`REPEAT` times; the best time counts.

- ours: :class:`hftpipe_workers.csvformat.BarReader` and
  :class:`hftpipe_workers.arrowformat.ArrowBarReader` (through ``open_reader``), every
  row checked (times in ns, prices, order per symbol) and made into bar columns;
- baselines: ``pyarrow.csv.read_csv`` and ``pyarrow.parquet.read_table``, the whole file
  into one table, multi-threaded, no checks: the format's decode speed on this machine,
  a ceiling rather than a peer.

Point 5's figure, the cost of merging many files: the same rows dealt round-robin into
:data:`MERGE_FILES` CSV files (row i to file i mod 4, so that every block of the merge
interleaves all of them: its worst case), read as one source by
:class:`hftpipe_workers.multifile.MergedReader` (the merged bars must equal the one
file's), against our CSV reader of the one file in the same run. The goal: no more than
20 % more time (``merge_over_one_file`` <= 1.2).

``python -m bench.reading [--rows N]`` measures only this (no broker).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from . import datagen

ROW_GROUP: Final = 100_000
REPEAT: Final = 3
MERGE_FILES: Final = 4


def parquet_of(csv_path: Path) -> Path:
    """The Parquet twin of a generated CSV file (written on first use, then reused)."""
    import pyarrow as pa  # type: ignore[import-untyped]  # noqa: PLC0415
    import pyarrow.csv as pacsv  # type: ignore[import-untyped]  # noqa: PLC0415
    import pyarrow.parquet as pq  # type: ignore[import-untyped]  # noqa: PLC0415

    path = csv_path.with_suffix(".parquet")
    if path.exists():
        return path
    table = pacsv.read_csv(csv_path)
    seconds = table.column("Timestamp").cast(pa.int64())
    table = table.set_column(0, "Timestamp", seconds.cast(pa.timestamp("s", tz="UTC")))
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP)
    tmp.replace(path)
    return path


def split_of(csv_path: Path, files: int = MERGE_FILES) -> list[Path]:
    """The rows of ``csv_path`` dealt round-robin into ``files`` CSV files with its header
    (written on first use, then reused)."""
    folder = csv_path.with_name(f"{csv_path.stem}-{files}-files")
    paths = [folder / f"part-{i}.csv" for i in range(files)]
    if all(p.exists() for p in paths):
        return paths
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with csv_path.open("rb") as source:
        header = source.readline()
        outs = [(tmp / p.name).open("wb") for p in paths]
        try:
            for out in outs:
                out.write(header)
            for i, line in enumerate(source):
                outs[i % files].write(line)
        finally:
            for out in outs:
                out.close()
    if folder.exists():
        for old in folder.iterdir():
            old.unlink()
        folder.rmdir()
    tmp.replace(folder)
    return paths


def _best(read: Callable[[], int], repeat: int) -> tuple[int, float]:
    """Rows read and the best of ``repeat`` wall times."""
    times, rows = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = read()
        times.append(time.perf_counter() - started)
    return rows, min(times)


def _ours(path: Path) -> int:
    from hftpipe_workers.arrowformat import open_reader  # noqa: PLC0415

    rows = 0
    with path.open("rb") as stream:
        for chunk in open_reader(stream, source=str(path), symbol=datagen.SYMBOL):
            rows += len(chunk.bars) + len(chunk.rejected) + chunk.out_of_range
    return rows


def _merged(paths: list[Path]) -> int:
    """Rows of ``paths`` read as one source, merged by event time (ours)."""
    from contextlib import ExitStack  # noqa: PLC0415

    from hftpipe_workers.arrowformat import open_reader  # noqa: PLC0415
    from hftpipe_workers.multifile import MergedReader  # noqa: PLC0415

    rows = 0
    with ExitStack() as stack:
        readers = [
            open_reader(stack.enter_context(p.open("rb")), source=str(p), symbol=datagen.SYMBOL)
            for p in paths
        ]
        for chunk in MergedReader(readers):
            rows += len(chunk.bars) + len(chunk.rejected) + chunk.out_of_range
    return rows


def _same_bars(one: Path, parts: list[Path]) -> None:
    """The merged files' bars are the one file's, in its order (checked once, untimed)."""
    import numpy as np  # noqa: PLC0415

    from hftpipe_workers.arrowformat import open_reader  # noqa: PLC0415
    from hftpipe_workers.multifile import MergedReader  # noqa: PLC0415

    with one.open("rb") as stream:
        reader = open_reader(stream, source=str(one), symbol=datagen.SYMBOL)
        expected = np.concatenate([c.bars.ts_ns for c in reader])
    streams = [p.open("rb") for p in parts]
    try:
        readers = [
            open_reader(s, source=str(p), symbol=datagen.SYMBOL)
            for s, p in zip(streams, parts, strict=True)
        ]
        got = np.concatenate([c.bars.ts_ns for c in MergedReader(readers)])
    finally:
        for s in streams:
            s.close()
    if not np.array_equal(expected, got):
        raise AssertionError(f"the merge of {len(parts)} files differs from {one}")


def merge_cost(csv_path: Path, repeat: int = REPEAT, files: int = MERGE_FILES) -> dict[str, Any]:
    """Our reader of the one file against the merge of its rows dealt into ``files``."""
    parts = split_of(csv_path, files)
    _same_bars(csv_path, parts)
    # In turns, so that whatever else loads the machine meanwhile weighs on both alike.
    one_s = merged_s = float("inf")
    one_rows = merged_rows = 0
    for _ in range(repeat):
        rows, seconds = _best(lambda: _ours(csv_path), 1)
        one_rows, one_s = rows, min(one_s, seconds)
        rows, seconds = _best(lambda: _merged(parts), 1)
        merged_rows, merged_s = rows, min(merged_s, seconds)
    if merged_rows != one_rows:
        raise AssertionError(f"the merge read {merged_rows:,} rows, the one file {one_rows:,}")
    return {
        "files": files,
        "rows": merged_rows,
        "rows_per_second": round(merged_rows / merged_s),
        "one_file_rows_per_second": round(one_rows / one_s),
        "merge_over_one_file": round(merged_s / one_s, 4),
    }


def _pyarrow_csv(path: Path) -> int:
    import pyarrow.csv as pacsv  # noqa: PLC0415

    return int(pacsv.read_csv(path).num_rows)


def _pyarrow_parquet(path: Path) -> int:
    import pyarrow.parquet as pq  # noqa: PLC0415

    return int(pq.read_table(path).num_rows)


def reading_speed(csv_path: Path, repeat: int = REPEAT) -> dict[str, Any]:
    """Rows/s of our readers and of pyarrow's, per format, and ours / pyarrow's."""
    parquet_path = parquet_of(csv_path)
    out: dict[str, Any] = {"repeat": repeat, "row_group": ROW_GROUP}
    for name, path, baseline in (
        ("csv", csv_path, _pyarrow_csv),
        ("parquet", parquet_path, _pyarrow_parquet),
    ):
        ours_rows, ours_s = _best(lambda path=path: _ours(path), repeat)  # type: ignore[misc]
        base_rows, base_s = _best(lambda b=baseline, p=path: b(p), repeat)  # type: ignore[misc]
        if ours_rows != base_rows:
            raise AssertionError(f"{path}: we read {ours_rows:,} rows, pyarrow {base_rows:,}")
        ours, base = ours_rows / ours_s, base_rows / base_s
        out[name] = {
            "file": str(path),
            "bytes": path.stat().st_size,
            "rows": ours_rows,
            "rows_per_second": round(ours),
            "pyarrow_rows_per_second": round(base),
            "over_pyarrow": round(ours / base, 4),
        }
    out["merge"] = merge_cost(csv_path, repeat)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.reading``: print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.reading", description=__doc__)
    parser.add_argument("--rows", type=int, default=500_000, help="generated rows (500,000)")
    parser.add_argument("--repeat", type=int, default=REPEAT)
    args = parser.parse_args(argv)
    print(json.dumps(reading_speed(datagen.ensure_dataset(args.rows), args.repeat), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
