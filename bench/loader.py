"""The loader against DuckDB's own ingest of the same rows (issue 12, point 2), one run.

``python -m bench.loader --bars 200000``: a Kafka broker and Redis on loopback
(removed afterwards), the generated Kaggle-layout file produced to a bars topic
and run through the processor (so the metrics topic holds one message per bar);
then, on that pre-filled pair of topics:

- **loader**: :class:`~hftpipe_workers.loader.Loader` into a fresh DuckDB file,
  every row it writes, over the time it is busy (from the first collection that
  finds records to the end of the last merge; not the group join nor the idle
  wait at the end);
- **DuckDB's own ingest**: the very rows the loader wrote, read back as one Arrow
  table per warehouse table, inserted into the same empty tables (same DDL,
  same primary keys) of another fresh file with ``INSERT INTO ... SELECT * FROM``
  the registered table, in one transaction each.

The ratio is loader rows/s over DuckDB rows/s. ``--repeat`` loads again from
offset 0 (the loader's group is deleted between runs); ``--profile`` runs one
more load under cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
from confluent_kafka.admin import AdminClient

from hftpipe_devstack.stack import ephemeral_stack
from hftpipe_devstack.testing import produce
from hftpipe_workers.contract import Groups
from hftpipe_workers.loader import Loader
from hftpipe_workers.processor import Processor
from hftpipe_workers.settings import KafkaSettings, RedisSettings
from hftpipe_workers.warehouse import TABLES, DuckDBSink
from hftpipe_workers.warehouse.schema import create_table_sql

from . import datagen

WINDOWS = ("5m", "1h")
"""The processor's windows here: with ``session``, two ``bar_metrics`` rows per bar."""


def load_once(job: str, kafka: KafkaSettings, db: Path, *, profile: bool = False) -> dict[str, Any]:
    """One loader run from offset 0 into the fresh file *db*: rows, busy seconds, rows/s."""
    first_record = last_merge = 0.0
    with DuckDBSink(db) as sink:
        loader = Loader(job=job, kafka=kafka, sink=sink, backend="duckdb")
        collect, write = loader._collect, loader._write

        # Busy: from the start of the first collection that found records to the end
        # of the last merge (the merges run beside the collection of the next batch;
        # on a pre-filled topic nothing waits in between).
        def timed_collect(consumer: Any) -> Any:
            nonlocal first_record
            started = time.perf_counter()
            batch = collect(consumer)
            if batch and not first_record:
                first_record = started
            return batch

        def timed_write(prepared: Any) -> dict[str, int]:
            nonlocal last_merge
            written = write(prepared)
            last_merge = time.perf_counter()
            return written

        loader._collect = timed_collect  # type: ignore[method-assign]
        loader._write = timed_write  # type: ignore[method-assign]
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        report = loader.run(until_caught_up=True, idle_timeout=1.0)
        if profiler is not None:
            profiler.disable()
    rows = report.bars + report.metrics_rows
    busy = last_merge - first_record if first_record else 0.0
    out: dict[str, Any] = {
        "bars": report.bars,
        "metrics_rows": report.metrics_rows,
        "batches": report.batches,
        "busy_seconds": round(busy, 3),
        "rows_per_s": round(rows / busy) if busy else None,
    }
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(45)
        out["profile"] = text.getvalue()
    return out


def duckdb_ingest(source: Path, db: Path) -> dict[str, Any]:
    """DuckDB's own ingest of the rows in *source*: each table read as one Arrow table,
    then timed ``INSERT INTO <table> SELECT * FROM`` it into an empty *db*."""
    seconds, rows = 0.0, 0
    with duckdb.connect(str(source), read_only=True) as src, duckdb.connect(str(db)) as con:
        for tbl in TABLES.values():
            con.execute(create_table_sql(tbl, "duckdb"))
            relation = src.sql(f'SELECT * FROM "{tbl.name}"')  # noqa: S608
            assert relation is not None
            arrow = relation.to_arrow_table()
            con.register("staged", arrow)
            started = time.perf_counter()
            con.begin()
            con.execute(f'INSERT INTO "{tbl.name}" SELECT * FROM staged')  # noqa: S608
            con.commit()
            seconds += time.perf_counter() - started
            con.unregister("staged")
            rows += arrow.num_rows
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


def loader_speed(
    env: dict[str, str], source: Path, work: Path, *, repeat: int = 1, profile: bool = False
) -> dict[str, Any]:
    """On the stack of ``env``: produce ``source`` to a new job, run the processor over it
    (the metrics topic), then time the loader ``repeat`` times from offset 0 and DuckDB's
    own Arrow ingest of the rows it wrote. Best loader run over DuckDB's rows/s."""
    job = f"bench-loader-{uuid.uuid4().hex[:6]}"
    kafka = KafkaSettings(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    produce({**os.environ, **env}, job, source, "--symbol", datagen.SYMBOL, "--speed", "max")
    processor = Processor(
        job=job,
        kafka=kafka,
        redis_settings=RedisSettings(url=env["REDIS_URL"]),
        windows=list(WINDOWS),
    )
    processor.ensure_metrics_topic()
    processor.run(until_caught_up=True, idle_timeout=1.0)
    admin = AdminClient(kafka.common())
    group = Groups.for_job(job).loader
    runs = []
    for k in range(repeat + (1 if profile else 0)):
        if k:
            admin.delete_consumer_groups([group])[group].result(30)
        runs.append(load_once(job, kafka, work / f"loader-{k}.duckdb", profile=k == repeat))
    ingest = duckdb_ingest(work / "loader-0.duckdb", work / "ingest.duckdb")
    profiled = runs[-1].pop("profile", None) if profile else None
    timed = runs[:repeat]
    best = max(r["rows_per_s"] or 0 for r in timed)
    result: dict[str, Any] = {
        "bars": timed[0]["bars"],
        "windows": list(WINDOWS),
        "loader_runs": timed,
        "rows_per_second": best,
        "duckdb_arrow_ingest": ingest,
        "loader_over_duckdb_ingest": round(best / ingest["rows_per_s"], 4),
    }
    if profiled is not None:
        result["profile"] = profiled
    return result


def main(argv: list[str] | None = None) -> int:
    """Prefill the topics once, then time the loader and DuckDB's ingest; print JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.loader", description=__doc__)
    parser.add_argument("--bars", type=int, default=200_000, help="generated bars (200,000)")
    parser.add_argument("--repeat", type=int, default=1, help="loader runs (1)")
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile")
    args = parser.parse_args(argv)
    source = datagen.ensure_dataset(args.bars)
    with (
        ephemeral_stack(("kafka", "redis")) as stack,
        tempfile.TemporaryDirectory(prefix="bench-loader-") as work,
    ):
        result = loader_speed(
            dict(stack.env), source, Path(work), repeat=args.repeat, profile=args.profile
        )
    profile = result.pop("profile", None)
    if profile is not None:
        print(profile, file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
