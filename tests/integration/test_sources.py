"""Every kind of source the ReplayJob's schema promises, replayed for real by ``hftpipe produce``.

Local files in each compression the producer infers from the suffix, an ``http://`` URL
served on 127.0.0.1, and an ``s3://`` URL on an S3 endpoint on 127.0.0.1 (moto's server:
no S3 account is reachable here). The S3 endpoint and credentials reach the producer as
the ReplayJob's pod gives them: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` in its environment.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from hftpipe_devstack.testing import http_server, produce, run_produce, s3_endpoint
from hftpipe_workers.producer import count_rows

SAMPLE = (
    Path(__file__).resolve().parents[2]
    / "workers/src/hftpipe_workers/sample_data/btcusdt_1h_binance.csv.gz"
)
ROWS = 55_765


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "": lambda data: data,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


def produce_source(env: dict[str, str], source: str) -> dict[str, Any]:
    """``hftpipe produce <source>`` into a new job's topics; its final JSON report."""
    return produce(env, f"src-{uuid.uuid4().hex[:8]}", source, "--symbol", "BTCUSDT")


@pytest.fixture(scope="module")
def plain_csv() -> bytes:
    return gzip.decompress(SAMPLE.read_bytes())


@pytest.fixture(scope="module")
def files(plain_csv: bytes, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sample, stored once per compression suffix."""
    root = tmp_path_factory.mktemp("sources")
    out = {}
    for suffix, compress in COMPRESSORS.items():
        path = root / f"btc.csv{suffix}"
        path.write_bytes(compress(plain_csv))
        out[suffix] = path
    return out


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_a_local_file_in_every_compression(
    suffix: str, files: dict[str, Path], subprocess_env: dict[str, str]
) -> None:
    path = files[suffix]
    assert count_rows(str(path)) == ROWS
    report = produce_source(subprocess_env, str(path))
    assert (report["produced"], report["dead_lettered"]) == (ROWS, 0), report


@pytest.fixture(scope="module")
def http_root(files: dict[str, Path]) -> Iterator[str]:
    """The files over plain HTTP on 127.0.0.1 (fsspec's HTTP filesystem, as for https://)."""
    with http_server(files[""].parent) as root:
        yield root


def test_an_http_url(http_root: str, subprocess_env: dict[str, str]) -> None:
    url = f"{http_root}/btc.csv.gz"
    assert count_rows(url) == ROWS
    report = produce_source(subprocess_env, url)
    assert (report["produced"], report["dead_lettered"]) == (ROWS, 0), report


def test_an_http_url_that_is_not_there_names_it(
    http_root: str, subprocess_env: dict[str, str]
) -> None:
    url = f"{http_root}/missing.csv.gz"
    done = run_produce(subprocess_env, f"src-{uuid.uuid4().hex[:8]}", url, "--symbol", "BTCUSDT")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "missing.csv.gz" in done.stderr, done.stderr[-2000:]


S3_URL = "s3://market-data/btc/btcusdt_1h.csv.gz"


@pytest.fixture(scope="module")
def s3_env(files: dict[str, Path]) -> Iterator[dict[str, str]]:
    """An S3 endpoint on 127.0.0.1 with a bucket holding the gzip'ed sample."""
    with s3_endpoint({S3_URL: files[".gz"]}) as env:
        yield env


def test_an_s3_url_with_the_endpoint_and_keys_from_the_environment(
    s3_env: dict[str, str], subprocess_env: dict[str, str]
) -> None:
    report = produce_source({**subprocess_env, **s3_env}, S3_URL)
    assert (report["produced"], report["dead_lettered"]) == (ROWS, 0), report


# ------------------------------------------------- Parquet, local and through fsspec

S3_PARQUET = "s3://market-data/btc/btcusdt_1h.parquet"


@pytest.fixture(scope="module")
def parquet_file(plain_csv: bytes, files: dict[str, Path]) -> Path:
    """The sample as Parquet (pyarrow's CSV reader types ``date`` as timestamp[s]), in
    row groups of 10,000, next to the CSV files (so the HTTP server has it too)."""
    import io  # noqa: PLC0415

    import pyarrow.csv as pacsv  # type: ignore[import-untyped]  # noqa: PLC0415
    import pyarrow.parquet as pq  # type: ignore[import-untyped]  # noqa: PLC0415

    path = files[""].parent / "btc.parquet"
    pq.write_table(pacsv.read_csv(io.BytesIO(plain_csv)), path, row_group_size=10_000)
    return path


@pytest.fixture(scope="module")
def s3_parquet_env(parquet_file: Path) -> Iterator[dict[str, str]]:
    with s3_endpoint({S3_PARQUET: parquet_file}) as env:
        yield env


@pytest.mark.parametrize("where", ["local", "http", "s3"])
def test_a_parquet_file_local_over_http_and_on_s3(
    where: str,
    parquet_file: Path,
    http_root: str,
    request: pytest.FixtureRequest,
    subprocess_env: dict[str, str],
) -> None:
    """Issue 11, point 4: the same rows as the CSV sample, wherever the file is."""
    env = dict(subprocess_env)
    if where == "s3":
        env |= request.getfixturevalue("s3_parquet_env")
        url = S3_PARQUET
    else:
        url = str(parquet_file) if where == "local" else f"{http_root}/btc.parquet"
        assert count_rows(url) == ROWS
    report = produce_source(env, url)
    assert (report["produced"], report["dead_lettered"]) == (ROWS, 0), report
