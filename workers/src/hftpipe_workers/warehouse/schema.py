"""The warehouse tables, defined once, and the pure preparation of a batch for them.

The tables (``bars`` and ``bar_metrics``; ``trades`` and ``trade_metrics`` for
sources of trades, issue 11 point 6) are described here as data: a
tuple of :class:`Column` per :class:`Table`. Everything else is generated from
that: the ``CREATE TABLE`` and ``MERGE`` statements of both backends
(:func:`create_table_sql`, :func:`merge_sql`), the validation of incoming
batches (:func:`prepare_table`) and the docs table (:func:`markdown_table`).

Time: ``bar_time`` and ``loaded_at`` are **UTC stored without a time zone**
(DuckDB ``TIMESTAMP``, Snowflake ``TIMESTAMP_NTZ(6)``), at microsecond
precision, which both backends share. A naive value always means UTC; a
tz-aware input is converted to UTC first. Naive-as-UTC rather than
``TIMESTAMPTZ``/``TIMESTAMP_LTZ`` because those render (and cast to ``DATE``) in
the *session's* time zone, so "the day of a bar" would depend on who runs the
query; a naive UTC timestamp means the same thing in every session.

Nulls: a nullable DOUBLE column (``vwap``, the standard deviations,
``session_vwap``) is NULL where the metric is undefined; a NaN in the input
means "undefined" and is stored as NULL, never as NaN, so ``IS NULL`` and
``count(col)`` work in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, NamedTuple

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

Dialect = Literal["duckdb", "snowflake"]

LOADED_AT: Final = "loaded_at"
"""Column set by the sink (one UTC time per written batch), never by the caller."""


class BatchError(ValueError):
    """A batch does not fit its table: the message names the table, column and what to do."""


@dataclass(frozen=True)
class Column:
    """One column of a warehouse table."""

    name: str
    duckdb_type: str
    snowflake_type: str
    nullable: bool = False
    key: bool = False
    doc: str = ""

    def sql_type(self, dialect: Dialect) -> str:
        """The column's type in *dialect*."""
        return self.duckdb_type if dialect == "duckdb" else self.snowflake_type


@dataclass(frozen=True)
class Table:
    """One warehouse table: its columns, in order, and its natural key."""

    name: str
    columns: tuple[Column, ...]
    doc: str = ""

    @property
    def key(self) -> tuple[str, ...]:
        """The natural key: names of the key columns, in column order."""
        return tuple(c.name for c in self.columns if c.key)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The columns a batch must have: all but ``loaded_at``."""
        return tuple(c.name for c in self.columns if c.name != LOADED_AT)

    @property
    def names(self) -> tuple[str, ...]:
        """All column names, in order."""
        return tuple(c.name for c in self.columns)


# Types in both dialects. Snowflake BIGINT and DOUBLE are synonyms of
# NUMBER(38,0) and FLOAT; the synonyms are used so the two DDLs read alike.
_TEXT: Final = ("VARCHAR", "VARCHAR")
_TIME: Final = ("TIMESTAMP", "TIMESTAMP_NTZ(6)")
_FLOAT: Final = ("DOUBLE", "DOUBLE")
_INT: Final = ("BIGINT", "BIGINT")


def _col(
    name: str, types: tuple[str, str], doc: str, *, nullable: bool = False, key: bool = False
) -> Column:
    return Column(name, types[0], types[1], nullable=nullable, key=key, doc=doc)


_KEY_COLUMNS: Final = (
    _col("job", _TEXT, "job id: `<namespace>.<name>` of a ReplayJob, or `--job`", key=True),
    _col("symbol", _TEXT, "instrument, e.g. BTCUSDT", key=True),
    _col("bar_time", _TIME, "bar open time, UTC (stored without time zone)", key=True),
)
_LOADED_AT_COLUMN: Final = _col(
    LOADED_AT, _TIME, "when the sink last wrote this row, UTC (set by the sink)"
)

BARS: Final = Table(
    "bars",
    (
        *_KEY_COLUMNS,
        _col("open", _FLOAT, "first trade price of the bar"),
        _col("high", _FLOAT, "highest trade price"),
        _col("low", _FLOAT, "lowest trade price"),
        _col("close", _FLOAT, "last trade price"),
        _col("volume", _FLOAT, "traded quantity (base asset)"),
        _col("seq", _INT, "position of the bar among the bars accepted from its source, from 0"),
        _LOADED_AT_COLUMN,
    ),
    doc="One OHLCV bar per job, symbol and bar time.",
)


def _metrics_table(
    name: str,
    key: tuple[Column, ...],
    record: str,
    price: str,
    docs: tuple[str, str, str, str, str, str],
) -> Table:
    """The metrics table of one kind of *record* ("bar", "trade"): its *key*, then one
    row per window, the price columns named after *price* (``sma_<price>``), the count
    ``<record>_count``. *docs*: of ``vwap``, ``sma_<price>``, ``std_<price>``,
    ``std_log_return``, the count and ``session_vwap``. The column order is the
    warehouses' (existing tables have it): append, never reorder."""
    vwap, sma, std, log_return, count, session = docs
    return Table(
        name,
        (
            *key,
            _col("window", _TEXT, "window name, e.g. '5m'", key=True),
            _col("window_seconds", _INT, "window length in seconds"),
            _col("vwap", _FLOAT, vwap, nullable=True),
            _col(f"sma_{price}", _FLOAT, sma),
            _col(f"std_{price}", _FLOAT, std, nullable=True),
            _col("std_log_return", _FLOAT, log_return, nullable=True),
            _col(f"{record}_count", _INT, count),
            _col("session_vwap", _FLOAT, session, nullable=True),
            _LOADED_AT_COLUMN,
        ),
        doc=f"Rolling metrics of each {record}, one row per window.",
    )


BAR_METRICS: Final = _metrics_table(
    "bar_metrics",
    _KEY_COLUMNS,
    "bar",
    "close",
    (
        "typical-price VWAP; NULL when the window's volume is 0",
        "mean close over the window",
        "sample std of close; NULL with < 2 bars",
        "sample std of log returns of close; NULL with < 2 returns",
        "bars in the window",
        "VWAP since 00:00 UTC; NULL while volume is 0",
    ),
)

# Trades (issue 11, point 6): ticks of a symbol share times, so the natural key holds
# the seq (the trade's position in its source) after the time.
_TRADE_KEY: Final = (
    *_KEY_COLUMNS[:2],
    _col("trade_time", _TIME, "trade time, UTC (stored without time zone)", key=True),
    _col(
        "seq",
        _INT,
        "position of the trade among the records accepted from its source, from 0",
        key=True,
    ),
)

TRADES: Final = Table(
    "trades",
    (
        *_TRADE_KEY,
        _col("price", _FLOAT, "trade price"),
        _col("size", _FLOAT, "traded quantity (base asset)"),
        _LOADED_AT_COLUMN,
    ),
    doc="One trade per job, symbol, trade time and seq (sources of trades).",
)

TRADE_METRICS: Final = _metrics_table(
    "trade_metrics",
    _TRADE_KEY,
    "trade",
    "price",
    (
        "sum(price * size) / sum(size); NULL when the window's size is 0",
        "mean trade price over the window",
        "sample std of price; NULL with < 2 trades",
        "sample std of log returns between trades; NULL with < 2 returns",
        "trades in the window",
        "VWAP since 00:00 UTC; NULL while size is 0",
    ),
)

TABLES: Final[dict[str, Table]] = {t.name: t for t in (BARS, BAR_METRICS, TRADES, TRADE_METRICS)}


def table(name: str) -> Table:
    """The table called *name*, or a :class:`BatchError` listing the known ones."""
    try:
        return TABLES[name]
    except KeyError:
        raise BatchError(
            f"unknown warehouse table {name!r}: use one of {', '.join(sorted(TABLES))}"
        ) from None


# --- SQL generation ------------------------------------------------------------------


def quote(name: str, dialect: Dialect) -> str:
    """*name* as a quoted identifier of *dialect*.

    Every identifier is quoted because ``window`` is a reserved word (in DuckDB,
    and in ANSI SQL whose keywords Snowflake reserves). In Snowflake the quoted
    name is upper case, which is exactly what an unquoted name resolves to, so
    ad-hoc queries can still say ``select close from bars``.
    """
    return f'"{name.upper()}"' if dialect == "snowflake" else f'"{name}"'


def create_table_sql(tbl: Table, dialect: Dialect) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for *tbl* in *dialect*, with its primary key.

    DuckDB enforces the primary key (a second guard against duplicates);
    Snowflake only records it, which documents the natural key for tools.
    """
    lines = [
        f"    {quote(c.name, dialect)} {c.sql_type(dialect)}{'' if c.nullable else ' NOT NULL'}"
        for c in tbl.columns
    ]
    keys = ", ".join(quote(k, dialect) for k in tbl.key)
    lines.append(f"    PRIMARY KEY ({keys})")
    body = ",\n".join(lines)
    return f"CREATE TABLE IF NOT EXISTS {quote(tbl.name, dialect)} (\n{body}\n)"


def merge_sql(tbl: Table, dialect: Dialect, source: str) -> str:
    """``MERGE`` of the staged rows in *source* (a table or view name) into *tbl*.

    Matched on the natural key: a matched row gets every non-key column from the
    source, an unmatched one is inserted. Re-delivering a batch therefore leaves
    the rows as they are (only ``loaded_at`` moves), never adds any. *source*
    must not hold a key twice (see :func:`prepare_table`).

    The target's ``SET`` columns are unqualified: DuckDB rejects ``t.col`` there,
    Snowflake accepts either form.
    """

    def q(name: str) -> str:
        return quote(name, dialect)

    on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in tbl.key)
    updates = ", ".join(f"{q(c)} = s.{q(c)}" for c in tbl.names if c not in tbl.key)
    columns = ", ".join(q(c) for c in tbl.names)
    values = ", ".join(f"s.{q(c)}" for c in tbl.names)
    # Identifiers come from this module's constants, never from input: no injection.
    return (
        f"MERGE INTO {q(tbl.name)} AS t\n"  # noqa: S608
        f"USING {source} AS s\n"
        f"ON {on}\n"
        f"WHEN MATCHED THEN UPDATE SET {updates}\n"
        f"WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})"
    )


def upsert_sql(tbl: Table, source: str) -> str:
    """DuckDB's ``INSERT ... ON CONFLICT DO UPDATE`` of *source* into *tbl*: what
    :func:`merge_sql` does (a row of a known key gets every non-key column, a new key is
    inserted), on the primary key DuckDB enforces.

    The DuckDB sink uses it rather than ``MERGE``: for a batch of new keys it runs at
    the speed of a plain ``INSERT``, where ``MERGE`` took a third longer (its join),
    measured on the loader's micro-batches (``bench/loader.py``). *source* must not
    hold a key twice (see :func:`prepare_table`): DuckDB refuses to update a row twice
    in one statement.
    """

    updates = ", ".join(
        f"{quote(c, 'duckdb')} = excluded.{quote(c, 'duckdb')}"
        for c in tbl.names
        if c not in tbl.key
    )
    return f"{insert_sql(tbl, source)}\nON CONFLICT DO UPDATE SET {updates}"


def insert_sql(tbl: Table, source: str) -> str:
    """DuckDB's plain ``INSERT`` of every row of *source* into *tbl*: it fails on a key
    already there, where :func:`upsert_sql` updates that row."""
    columns = ", ".join(quote(c, "duckdb") for c in tbl.names)
    # Identifiers come from this module's constants, never from input: no injection.
    return f"INSERT INTO {quote(tbl.name, 'duckdb')} ({columns})\nSELECT {columns} FROM {source}"


def markdown_table(tbl: Table) -> str:
    """A Markdown table of *tbl*'s columns, for the README."""
    rows = [
        "| column | DuckDB | Snowflake | null | key | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows += [
        f"| `{c.name}` | {c.duckdb_type} | {c.snowflake_type} | {'yes' if c.nullable else 'no'}"
        f" | {'yes' if c.key else ''} | {c.doc} |"
        for c in tbl.columns
    ]
    return "\n".join(rows)


# --- batch preparation (pure) --------------------------------------------------------


_NS_PER_US: Final = 1_000


def _check_names(tbl: Table, got: list[str]) -> None:
    expected = tbl.input_columns
    repeated = sorted({c for c in got if got.count(c) > 1})
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    if not (missing or extra or repeated):
        return
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        hint = " (loaded_at is set by the sink: drop it)" if LOADED_AT in extra else ""
        problems.append(f"unexpected columns {extra}{hint}")
    if repeated:
        problems.append(f"repeated columns {repeated}")
    raise BatchError(
        f"batch for table {tbl.name!r} does not match its schema: {'; '.join(problems)}. "
        f"A {tbl.name} batch has exactly the columns {', '.join(expected)}."
    )


_ARROW_TYPES: Final = {
    "VARCHAR": pa.string(),
    "TIMESTAMP": pa.timestamp("us"),
    "DOUBLE": pa.float64(),
    "BIGINT": pa.int64(),
}


def arrow_schema(tbl: Table) -> pa.Schema:
    """The Arrow schema of *tbl*'s staged rows, ``loaded_at`` included."""
    return pa.schema(
        [pa.field(c.name, _ARROW_TYPES[c.duckdb_type], nullable=c.nullable) for c in tbl.columns]
    )


class PreparedTable(NamedTuple):
    """An Arrow batch ready to stage: validated, typed, one row per key, ``loaded_at`` set."""

    table: pa.Table
    duplicates: int
    """Rows dropped because a later row of the same batch had the same key."""


def prepare_table(tbl: Table, batch: pa.Table, loaded_at: datetime) -> PreparedTable:
    """Check *batch* against *tbl*, coerce its types, drop in-batch duplicate keys: column
    at a time, in Arrow's compute kernels.

    - The columns must be exactly :attr:`Table.input_columns` (any order);
      ``loaded_at`` is set here, to *loaded_at* (naive UTC) for every row.
    - ``VARCHAR``: non-empty strings (dictionary-encoded too). ``TIMESTAMP``: timestamp
      columns of any unit (with a zone: the instants; without: UTC), whole
      microseconds. ``DOUBLE``: float or integer columns, finite; NaN or null only in
      nullable columns, where it becomes NULL. ``BIGINT``: integer columns.
    - Rows with the same natural key: the **last** one wins. A MERGE whose
      source holds a key twice goes wrong in every backend: Snowflake fails on
      an existing key (ERROR_ON_NONDETERMINISTIC_MERGE) and inserts a new key
      twice (its primary key is not enforced); DuckDB updates an existing row
      twice, in no defined order. So keys are made unique here, before staging.

    Raises :class:`BatchError` naming the table, the column and the fix.
    """
    _check_names(tbl, [str(c) for c in batch.column_names])
    if loaded_at.tzinfo is not None:
        loaded_at = loaded_at.astimezone(UTC)
    n = batch.num_rows
    arrays = [
        _arrow_coerce(tbl, col, batch.column(col.name))
        for col in tbl.columns
        if col.name != LOADED_AT
    ]
    stamp = np.datetime64(loaded_at.replace(tzinfo=None), "us")
    arrays.append(pa.array(np.full(n, stamp), type=pa.timestamp("us")))
    out = pa.Table.from_arrays(arrays, schema=arrow_schema(tbl))
    if n < 2:
        return PreparedTable(out, 0)
    index = "__hftpipe_row"
    keys = out.select(list(tbl.key)).append_column(index, pa.array(np.arange(n)))
    last = keys.group_by(list(tbl.key), use_threads=False).aggregate([(index, "max")])
    if last.num_rows == n:
        return PreparedTable(out, 0)
    keep = np.sort(last.column(f"{index}_max").to_numpy())
    return PreparedTable(out.take(pa.array(keep)), n - last.num_rows)


def _arrow_bad(tbl: Table, col: Column, what: str, mask: pa.ChunkedArray) -> BatchError:
    count = pc.sum(mask).as_py()
    first = pc.index(mask, True).as_py()
    return BatchError(
        f"{tbl.name}.{col.name}: {what} in {count} row(s), first at row {first} of the batch"
    )


def _arrow_coerce(tbl: Table, col: Column, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """*values* as the Arrow type staged for *col*, or a :class:`BatchError`."""
    kind, dtype = col.duckdb_type, values.type
    if pa.types.is_dictionary(dtype):
        values = values.cast(dtype.value_type)
    coerce = {
        "VARCHAR": _arrow_text,
        "TIMESTAMP": _arrow_time,
        "DOUBLE": _arrow_float,
        "BIGINT": _arrow_int,
    }.get(kind)
    if coerce is None:
        raise AssertionError(f"no coercion for {kind}")  # a new type in the schema needs one
    return coerce(tbl, col, values)


def _arrow_text(tbl: Table, col: Column, values: pa.ChunkedArray) -> pa.ChunkedArray:
    dtype = values.type
    if not (pa.types.is_string(dtype) or pa.types.is_large_string(dtype)):
        raise BatchError(f"{tbl.name}.{col.name}: must hold strings, got Arrow type {dtype}")
    values = values.cast(pa.string())
    if values.null_count:
        raise _arrow_bad(tbl, col, "is null", values.is_null())
    empty = pc.equal(values, "")
    if pc.any(empty).as_py():
        raise _arrow_bad(tbl, col, "is an empty string", empty)
    return values


def _arrow_time(tbl: Table, col: Column, values: pa.ChunkedArray) -> pa.ChunkedArray:
    dtype = values.type
    if not pa.types.is_timestamp(dtype):
        raise BatchError(
            f"{tbl.name}.{col.name}: must be an Arrow timestamp (no zone = UTC), got {dtype}"
        )
    if values.null_count:
        raise _arrow_bad(tbl, col, "is null", values.is_null())
    if dtype.unit == "ns":
        ns = values.cast(pa.int64()).to_numpy()
        sub_us = pa.chunked_array([pa.array(ns % _NS_PER_US != 0)])
        if pc.any(sub_us).as_py():
            raise _arrow_bad(
                tbl,
                col,
                "has sub-microsecond precision, which the warehouse does not store; "
                "round it to microseconds if that is intended",
                sub_us,
            )
    # A zone's instants are UTC already: dropping it keeps them (naive = UTC).
    return values.cast(pa.timestamp(dtype.unit)).cast(pa.timestamp("us"))


def _arrow_float(tbl: Table, col: Column, values: pa.ChunkedArray) -> pa.ChunkedArray:
    dtype = values.type
    if not (pa.types.is_floating(dtype) or pa.types.is_integer(dtype)):
        raise BatchError(f"{tbl.name}.{col.name}: must be numeric, got Arrow type {dtype}")
    values = values.cast(pa.float64())
    nan = pc.is_nan(values).fill_null(False)
    null = pc.or_(values.is_null(), nan)
    if not col.nullable and pc.any(null).as_py():
        raise _arrow_bad(tbl, col, "is null or NaN but the column is NOT NULL", null)
    infinite = pc.is_inf(values).fill_null(False)
    if pc.any(infinite).as_py():
        raise _arrow_bad(tbl, col, "is infinite", infinite)
    # NaN means undefined: stored as NULL, so IS NULL and count(col) work in SQL.
    return pc.if_else(nan, pa.scalar(None, pa.float64()), values) if pc.any(nan).as_py() else values


def _arrow_int(tbl: Table, col: Column, values: pa.ChunkedArray) -> pa.ChunkedArray:
    dtype = values.type
    if not pa.types.is_integer(dtype):
        raise BatchError(f"{tbl.name}.{col.name}: must be integers, got Arrow type {dtype}")
    if values.null_count:
        raise _arrow_bad(tbl, col, "is null", values.is_null())
    return values.cast(pa.int64())
