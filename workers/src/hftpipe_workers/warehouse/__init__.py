"""The warehouse the loader writes bars and metrics to: DuckDB (embedded default) or Snowflake.

- :mod:`.schema`: the tables (bars, trades and their metrics), defined once; DDL, MERGE
  and batch checks come from it.
- :mod:`.base`: the :class:`Sink` interface; writes are idempotent MERGEs.
- :mod:`.duckdb_sink`, :mod:`.snowflake_sink`: the backends.
- :mod:`.queries`: SQL shown in the README, and helpers that run it.

Pick a backend with :func:`open_sink`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from hftpipe_workers.snowflake_settings import SnowflakeConfigError, SnowflakeSettings
from hftpipe_workers.warehouse.base import Sink
from hftpipe_workers.warehouse.duckdb_sink import DuckDBSink
from hftpipe_workers.warehouse.queries import MOST_VOLATILE_DAYS, most_volatile_days
from hftpipe_workers.warehouse.schema import (
    BAR_METRICS,
    BARS,
    TABLES,
    TRADE_METRICS,
    TRADES,
    BatchError,
    Column,
    Table,
)
from hftpipe_workers.warehouse.snowflake_sink import SnowflakeSink

__all__ = [
    "BARS",
    "BAR_METRICS",
    "MOST_VOLATILE_DAYS",
    "TABLES",
    "TRADES",
    "TRADE_METRICS",
    "BatchError",
    "Column",
    "DuckDBSink",
    "Sink",
    "SnowflakeConfigError",
    "SnowflakeSettings",
    "SnowflakeSink",
    "Table",
    "most_volatile_days",
    "open_sink",
    "parse_target",
]

_DUCKDB: Final = "duckdb:///"
_SNOWFLAKE: Final = "snowflake://"
_USAGE: Final = (
    "use duckdb:///<path>.duckdb (relative; duckdb:////<path> for an absolute path), "
    "a plain file path, or snowflake:// (settings from HFTPIPE_SNOWFLAKE_* variables)"
)


def parse_target(target: str | Path) -> Path | str | None:
    """Which backend *target* names: a DuckDB path (``":memory:"`` stays a str) or
    ``None`` for Snowflake. Raises ValueError for anything else."""
    if isinstance(target, Path):
        return target
    text = target.strip()
    if text.startswith(_DUCKDB):
        # As SQLAlchemy spells file URLs: what follows the third slash is the path.
        path = text.removeprefix(_DUCKDB)
        if not path:
            raise ValueError(f"warehouse URL {text!r} has no file path: {_USAGE}")
        return path if path == ":memory:" else Path(path)
    if text in (_SNOWFLAKE, "snowflake:"):
        return None
    if "://" in text or text.startswith("snowflake:"):
        # Only the scheme is echoed: the rest of a URL may hold a password.
        scheme = text.split(":", 1)[0]
        hint = (
            " (connection details come from HFTPIPE_SNOWFLAKE_* variables, not the URL)"
            if scheme == "snowflake"
            else ""
        )
        raise ValueError(f"unsupported warehouse URL (scheme {scheme!r}){hint}: {_USAGE}")
    if not text:
        raise ValueError(f"empty warehouse target: {_USAGE}")
    return text if text == ":memory:" else Path(text)


def open_sink(target: str | Path | SnowflakeSettings, *, create_tables: bool = True) -> Sink:
    """The sink *target* names, connected, with its tables created unless *create_tables* is False.

    *target*: ``duckdb:///data/hftpipe.duckdb`` or a plain path (DuckDB file),
    ``snowflake://`` (Snowflake, :class:`SnowflakeSettings` read from the
    environment), or a :class:`SnowflakeSettings` instance.
    """
    sink: Sink
    if isinstance(target, SnowflakeSettings):
        sink = SnowflakeSink(target)
    else:
        path = parse_target(target)
        sink = SnowflakeSink() if path is None else DuckDBSink(path)
    if create_tables:
        try:
            sink.ensure_tables()
        except BaseException:
            sink.close()
            raise
    return sink
