"""The benchmark's minute bars: GENERATED data in the Kaggle BTC layout, written once and cached.

The real Kaggle "Bitcoin Historical Data" file (~4 million 1-minute bars) is not
shipped with hftpipe and may not be redistributed, so the benchmark generates a
file of the same size and layout instead: ``Timestamp`` as unix seconds written
as a float (``1325317920.0``), then ``Open,High,Low,Close,Volume``. The prices
are a seeded geometric random walk (so every run benchmarks the same bytes),
rounded to cents like the exchange data; about 5 % of the minutes have zero
volume, as quiet minutes do in the real file. The file name says ``generated``
so nobody mistakes it for market data.

Generation is chunked and each chunk has its own seed, so the file of ``n``
rows is a prefix of every larger one (the quick mode's 500k rows are the first
500k rows of the full run's 4M).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

KAGGLE_HEADER: Final = "Timestamp,Open,High,Low,Close,Volume"
FIRST_TIMESTAMP: Final = 1_325_317_920
"""The first minute of the Kaggle file (2011-12-31 07:52 UTC)."""
START_PRICE: Final = 4.58 * 1000
SYMBOL: Final = "BTCUSD"
"""Symbol to replay the file as (the Kaggle layout has no symbol column)."""
_CHUNK: Final = 250_000
_SEED: Final = 20_120_101
_MINUTE_VOL: Final = 0.0006  # stdev of one minute's log return
_WICK_VOL: Final = 0.0003  # how far high/low reach beyond open/close, in log terms
_ZERO_VOLUME_SHARE: Final = 0.05


def cache_dir() -> Path:
    """``$HFTPIPE_CACHE_DIR/bench-data`` (default ``~/.cache/hftpipe/bench-data``)."""
    root = os.environ.get("HFTPIPE_CACHE_DIR") or str(Path.home() / ".cache" / "hftpipe")
    return Path(root) / "bench-data"


def dataset_name(rows: int) -> str:
    """File name of the generated data set of ``rows`` minutes (says it is generated)."""
    return f"generated-kaggle-layout-btc-1min-{rows}.csv"


def chunk_rows(index: int, rows: int, last_close: float) -> tuple[npt.NDArray[np.float64], float]:
    """Rows ``index*CHUNK ..`` of the data set as a (rows, 6) array, and the last close.

    Columns: timestamp (s), open, high, low, close, volume. Every row is a valid
    bar: ``low <= open, close <= high``, prices > 0, volume >= 0.
    """
    # One generator per column: a shorter chunk draws a prefix of each column.
    steps_rng, high_rng, low_rng, vol_rng, zero_rng = (
        np.random.default_rng([_SEED, index, column]) for column in range(5)
    )
    first = index * _CHUNK
    ts = (FIRST_TIMESTAMP + 60 * (first + np.arange(rows, dtype=np.int64))).astype(np.float64)
    steps = steps_rng.normal(0.0, _MINUTE_VOL, rows)
    close = np.round(last_close * np.exp(np.cumsum(steps)), 2)
    close = np.maximum(close, 0.01)
    open_ = np.concatenate(([round(last_close, 2)], close[:-1]))
    top = np.maximum(open_, close)
    bottom = np.minimum(open_, close)
    high = np.maximum(np.round(top * np.exp(np.abs(high_rng.normal(0.0, _WICK_VOL, rows))), 2), top)
    low = np.minimum(
        np.round(bottom * np.exp(-np.abs(low_rng.normal(0.0, _WICK_VOL, rows))), 2), bottom
    )
    low = np.maximum(low, 0.01)
    volume = np.round(vol_rng.lognormal(1.0, 1.2, rows), 8)
    volume[zero_rng.random(rows) < _ZERO_VOLUME_SHARE] = 0.0
    return np.column_stack([ts, open_, high, low, close, volume]), float(close[-1])


def format_rows(block: npt.NDArray[np.float64]) -> str:
    """CSV text of rows from :func:`chunk_rows`, formatted like the Kaggle file."""
    lines = [
        f"{t:.1f},{o:.2f},{h:.2f},{lo:.2f},{c:.2f},{v:.8f}" for t, o, h, lo, c, v in block.tolist()
    ]
    return "\n".join(lines) + "\n"


def ensure_dataset(rows: int, directory: Path | None = None, *, log: bool = True) -> Path:
    """The generated file of ``rows`` minute bars, generating it on first use.

    Written to a temporary name and renamed, so an interrupted run never
    leaves a truncated file that a later run would trust.
    """
    directory = directory or cache_dir()
    path = directory / dataset_name(rows)
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    if log:
        print(f"[bench] generating {rows:,} minute bars (Kaggle layout) into {path}", flush=True)
    last = START_PRICE
    with tmp.open("w") as out:
        out.write(KAGGLE_HEADER + "\n")
        for index in range((rows + _CHUNK - 1) // _CHUNK):
            block, last = chunk_rows(index, min(_CHUNK, rows - index * _CHUNK), last)
            out.write(format_rows(block))
    tmp.replace(path)
    return path
