"""Queries over the warehouse tables, written once and shown as they are in the README.

They are written for DuckDB, with its ``$name`` parameters, and run as written
in the DuckDB CLI or Python API; :meth:`Sink.query
<hftpipe_workers.warehouse.base.Sink.query>` runs them on Snowflake too.
"""

from __future__ import annotations

from typing import Final

import duckdb
import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs not in the lock

from hftpipe_workers.warehouse.base import Sink

MOST_VOLATILE_DAYS: Final = """\
-- The days (UTC) with the largest high-low swing of one symbol in one job.
-- swing_pct is the swing in percent of the day's low: the rise from low to high.
SELECT
    CAST(bar_time AS DATE)                  AS day,
    max(high)                               AS high,
    min(low)                                AS low,
    max(high) - min(low)                    AS swing,
    100 * (max(high) - min(low)) / min(low) AS swing_pct,
    sum(volume)                             AS volume
FROM bars
WHERE job = $job AND symbol = $symbol
GROUP BY CAST(bar_time AS DATE)
ORDER BY swing DESC, day
LIMIT $limit
"""
"""Parameters ``$job``, ``$symbol``, ``$limit``. Ties in swing go to the earlier day.

Relative to the low rather than the open because the low is always positive
and is a bound of the range itself: the swing is the same move whichever came
first, high or low, and so is its percentage."""

_COLUMNS: Final = ("day", "high", "low", "swing", "swing_pct", "volume")


def most_volatile_days(
    source: Sink | duckdb.DuckDBPyConnection, job: str, symbol: str, limit: int = 4
) -> pd.DataFrame:
    """The *limit* days with the largest swing of *symbol* in *job*, largest first.

    Columns ``day`` (datetime64, midnight UTC), ``high``, ``low``, ``swing``,
    ``swing_pct``, ``volume``; see :data:`MOST_VOLATILE_DAYS`. *source* is a
    sink (DuckDB or Snowflake) or an open DuckDB connection.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    params = {"job": job, "symbol": symbol, "limit": limit}
    if isinstance(source, Sink):
        frame = source.query(MOST_VOLATILE_DAYS, params)
    elif isinstance(source, duckdb.DuckDBPyConnection):
        frame = source.execute(MOST_VOLATILE_DAYS, params).df()
    else:
        raise TypeError(
            f"most_volatile_days needs a Sink or a duckdb connection, got {type(source).__name__}"
        )
    frame.columns = [str(c).lower() for c in frame.columns]
    out = frame[list(_COLUMNS)].copy()
    out["day"] = pd.to_datetime(out["day"]).astype("datetime64[ns]")
    for col in _COLUMNS[1:]:
        out[col] = out[col].astype("float64")
    return out.reset_index(drop=True)
