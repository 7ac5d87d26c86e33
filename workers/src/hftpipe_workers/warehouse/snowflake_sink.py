"""Snowflake sink: stage a batch with ``write_pandas``, then ``MERGE`` it.

``snowflake.connector`` is imported inside the functions that use it, for two
reasons: it takes over a second to import, which a loader writing to DuckDB
should not pay; and fakesnow (the in-process fake used by the tests) patches the
module attributes ``snowflake.connector.connect`` and
``snowflake.connector.pandas_tools.write_pandas``, so they must be looked up at
call time, never bound by ``from ... import`` at module load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs not in the lock
import pyarrow as pa  # type: ignore[import-untyped]

# The settings live outside this package so that reading them (the operator does)
# imports neither pandas nor the DuckDB sink that ``hftpipe_workers.warehouse`` loads.
from hftpipe_workers.snowflake_settings import SnowflakeConfigError, SnowflakeSettings, env_var
from hftpipe_workers.warehouse.base import Sink
from hftpipe_workers.warehouse.schema import TABLES, Table, create_table_sql, merge_sql, quote

if TYPE_CHECKING:
    from snowflake.connector import SnowflakeConnection


def private_key_der(settings: SnowflakeSettings) -> bytes:
    """The settings' private key, decrypted, as the PKCS#8 DER bytes the connector takes.

    Read here rather than by the connector so a wrong passphrase or a file that is
    not a key gets a message saying which variable to fix.
    """
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - rarely needed

    if settings.private_key_path is not None:
        source = env_var("private_key_path") + f"={settings.private_key_path}"
        pem = settings.private_key_path.read_bytes()
    elif settings.private_key is not None:
        source = env_var("private_key")
        pem = settings.private_key.get_secret_value().encode()
    else:
        raise SnowflakeConfigError("no private key configured (password authentication)")
    passphrase = settings.private_key_passphrase
    try:
        key = serialization.load_pem_private_key(
            pem, password=None if passphrase is None else passphrase.get_secret_value().encode()
        )
    except TypeError as e:  # encrypted without passphrase, or passphrase for a plain key
        raise SnowflakeConfigError(
            f"private key from {source}: {e}; set or unset {env_var('private_key_passphrase')}"
        ) from None
    except ValueError:  # wrong passphrase, or not a PEM private key at all
        raise SnowflakeConfigError(
            f"cannot read the private key from {source}: wrong "
            f"{env_var('private_key_passphrase')}, or not a PEM private key"
        ) from None
    return key.private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def connect_kwargs(settings: SnowflakeSettings) -> dict[str, Any]:
    """Keyword arguments for ``snowflake.connector.connect`` (pure but for reading the key)."""
    kwargs: dict[str, Any] = {
        "account": settings.account,
        "user": settings.user,
        "database": settings.database,
        "schema": settings.schema_,
        # Snowflake's default session zone is America/Los_Angeles. The tables hold
        # naive UTC (TIMESTAMP_NTZ) and are unaffected, but CURRENT_TIMESTAMP and
        # any LTZ value in an ad-hoc query would not be UTC without this.
        "session_parameters": {"TIMEZONE": "UTC"},
    }
    if settings.role:
        kwargs["role"] = settings.role
    if settings.warehouse:
        kwargs["warehouse"] = settings.warehouse
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    else:
        kwargs["private_key"] = private_key_der(settings)
    return kwargs


_PARAM: Final = re.compile(r"\$([a-z_][a-z0-9_]*)")


def pyformat(sql: str) -> str:
    """*sql* with DuckDB-style ``$name`` parameters as the connector's ``%(name)s``.

    The queries of :mod:`~hftpipe_workers.warehouse.queries` are written once,
    for DuckDB (so the README shows them runnable); this lets Snowflake run them
    too. ``$1``-style positional references are left alone.
    """
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


def staged_frame(tbl: Table, staged: pa.Table) -> pd.DataFrame:
    """The staged Arrow rows as the DataFrame ``write_pandas`` takes (pure): NULL-able
    DOUBLEs as pandas' nullable ``Float64`` (NULL, not NaN, in the Parquet files it
    uploads), times as naive ``datetime64[ns]`` (``use_logical_type`` makes them
    TIMESTAMP_NTZ).

    Arrow to pandas (and, inside ``write_pandas``, back to Arrow for its Parquet files)
    because the connector's one bulk loader takes a DataFrame: snowflake-connector-python
    4.8 has no Arrow counterpart of ``write_pandas``. Writing the Parquet here and
    running ``PUT`` + ``COPY INTO`` ourselves would skip pandas, but fakesnow, which
    the tests run this sink against, fakes ``write_pandas`` and not ``PUT``."""
    frame = staged.to_pandas(coerce_temporal_nanoseconds=True)
    for col in tbl.columns:
        if col.nullable:
            frame[col.name] = frame[col.name].astype("Float64")  # NaN (from NULL) -> NA
    return frame


class SnowflakeSink(Sink):
    """Writes to Snowflake; settings from :class:`SnowflakeSettings` (the environment
    when not given).

    Each write stages the batch into a session-temporary table with
    ``write_pandas`` (Parquet upload + ``COPY``), then runs one ``MERGE``,
    which is atomic. Temporary, so two loaders writing the same schema never see
    each other's staging rows, and nothing is left behind.
    """

    def __init__(self, settings: SnowflakeSettings | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else SnowflakeSettings()
        import snowflake.connector  # noqa: PLC0415 - see the module docstring

        self._conn: SnowflakeConnection | None = snowflake.connector.connect(
            **connect_kwargs(self.settings)
        )

    @property
    def connection(self) -> SnowflakeConnection:
        """The open connection."""
        if self._conn is None:
            raise RuntimeError("Snowflake sink is closed")
        return self._conn

    def ensure_tables(self) -> None:
        """``CREATE TABLE IF NOT EXISTS`` ``bars`` and ``bar_metrics`` in the configured schema."""
        with self.connection.cursor() as cur:
            for tbl in TABLES.values():
                cur.execute(create_table_sql(tbl, "snowflake"))

    def _merge(self, tbl: Table, staged: pa.Table) -> int:
        import snowflake.connector.pandas_tools  # noqa: PLC0415 - see the module docstring

        frame = staged_frame(tbl, staged)

        staging = f"HFTPIPE_STAGING_{tbl.name.upper()}"
        # Upper-case column names, quoted by write_pandas: the staging columns are
        # then the same identifiers as unquoted names, and "WINDOW" (reserved) works.
        success, _chunks, rows, _ = snowflake.connector.pandas_tools.write_pandas(
            self.connection,
            frame.rename(columns=str.upper),
            staging,
            auto_create_table=True,
            overwrite=True,
            use_logical_type=True,  # naive datetime64 -> TIMESTAMP_NTZ, not a number
            quote_identifiers=True,
            table_type="temporary",
        )
        if not success or rows != len(frame):
            raise RuntimeError(
                f"staging {len(frame)} {tbl.name} rows into {staging} loaded {rows}: "
                "see the COPY errors in Snowflake's query history"
            )
        # fakesnow (the tests) runs this MERGE as written: it rewrites it into a
        # temporary join table, an UPDATE and an INSERT (so it is atomic only in
        # Snowflake), and needs the unqualified SET targets merge_sql emits anyway.
        # Its write_pandas creates the staging table from the pandas dtypes rather
        # than from Parquet, with the column names unquoted, and supports datetime
        # columns only with use_logical_type=True, which real Snowflake wants too.
        with self.connection.cursor() as cur:
            cur.execute(merge_sql(tbl, "snowflake", quote(staging, "snowflake")))
            counts = cur.fetchone()
        # One column per action: rows inserted, rows updated (Decimal under fakesnow).
        assert counts is not None
        return sum(int(v) for v in counts)

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pd.DataFrame:
        """Run *sql* written with ``$name`` parameters (see :func:`pyformat`)."""
        with self.connection.cursor() as cur:
            if params:
                cur.execute(pyformat(sql), dict(params))
            else:  # the connector interpolates nothing without params: leave '%' as it is
                cur.execute(sql)
            frame = cur.fetch_pandas_all()
        frame.columns = [str(c).lower() for c in frame.columns]
        return frame

    def close(self) -> None:
        """Close the connection (temporary staging tables go with the session)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
