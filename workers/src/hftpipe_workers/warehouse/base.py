"""The :class:`Sink` interface every warehouse backend implements.

A write is idempotent: the batch is staged, then merged (``MERGE``) into the
target on its natural key. The loader commits its Kafka offsets only after a write
returns; if it dies in between, the batch comes again and the MERGE updates the
rows it already wrote instead of adding copies.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs not in the lock
import pyarrow as pa  # type: ignore[import-untyped]

from hftpipe_workers.warehouse.schema import Table, prepare_table, table

log = logging.getLogger(__name__)


class Sink(ABC):
    """A warehouse the loader writes ``bars`` and ``bar_metrics`` batches to.

    :meth:`write` is the same for every backend: it validates the batch against
    :mod:`~hftpipe_workers.warehouse.schema` and removes in-batch duplicate keys
    (pure, in :func:`~hftpipe_workers.warehouse.schema.prepare_table`), then
    hands a clean Arrow table to :meth:`_merge`, the one write path a backend
    implements. A backend also says how to create its tables, run a query and
    close.

    Use as a context manager: ``with open_sink(url) as sink: sink.write(...)``.
    """

    def __init__(self) -> None:
        self.duplicates_dropped = 0
        """In-batch rows replaced by a later row with the same key, over this sink's life."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def write(self, table_name: str, batch: pa.Table) -> int:
        """Merge the Arrow table *batch* into the table *table_name*; return the rows
        inserted or updated.

        *batch* has exactly the table's columns but ``loaded_at`` (see
        :func:`~hftpipe_workers.warehouse.schema.prepare_table` for the rules; a
        DataFrame goes in as ``pyarrow.Table.from_pandas(frame, preserve_index=False)``).
        Writing the same batch again changes no row count. All or nothing: a
        write that fails leaves the table as it was.
        """
        tbl = table(table_name)
        staged, duplicates = prepare_table(tbl, batch, datetime.now(UTC).replace(tzinfo=None))
        if duplicates:
            self.duplicates_dropped += duplicates
            log.info(
                "%s batch: %d row(s) replaced by a later row with the same key (last wins)",
                tbl.name,
                duplicates,
            )
        if not staged.num_rows:
            return 0
        return self._merge(tbl, staged)

    @abstractmethod
    def ensure_tables(self) -> None:
        """Create the tables that do not exist yet; leave existing ones as they are."""

    @abstractmethod
    def _merge(self, tbl: Table, staged: pa.Table) -> int:
        """Stage *staged* (valid, one row per key, ``loaded_at`` set, typed as
        :func:`~hftpipe_workers.warehouse.schema.arrow_schema`) and MERGE it into *tbl*
        atomically; return the rows inserted plus updated."""

    @abstractmethod
    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pd.DataFrame:
        """Run a read query with ``$name`` parameters; columns named in lower case."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; calling it again does nothing."""
