"""Helpers for tests that drive the local stack."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from hftpipe_workers.processor import Processor, ProcessorReport
from hftpipe_workers.settings import KafkaSettings, RedisSettings

T = TypeVar("T")

CLI = [sys.executable, "-m", "hftpipe_workers"]
"""The workers' CLI, run by this interpreter (the project's venv)."""


def run_worker(
    env: dict[str, str], command: str, job: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``hftpipe <command> --job <job> <args>`` to its end, without serving metrics;
    its output captured (a worker's last stderr line is its error, if any)."""
    return subprocess.run(
        [*CLI, command, "--job", job, "--metrics-port", "-1", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def run_produce(
    env: dict[str, str], job: str, source: str | Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``hftpipe produce --job <job> <source> <args>``, without serving metrics."""
    return run_worker(env, "produce", job, str(source), *args)


def produce(env: dict[str, str], job: str, source: str | Path, *args: str) -> dict[str, Any]:
    """:func:`run_produce`, which must succeed; its final JSON report."""
    done = run_produce(env, job, source, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def process(
    job: str, kafka: KafkaSettings, redis_settings: RedisSettings, windows: Sequence[str]
) -> ProcessorReport:
    """A processor of *job* in this process, its metrics topic created, run until it has
    caught up and been idle a second; its report."""
    processor = Processor(
        job=job, kafka=kafka, redis_settings=redis_settings, windows=list(windows)
    )
    processor.ensure_metrics_topic()
    return processor.run(until_caught_up=True, idle_timeout=1.0)


def wait_for(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that.

    Raises AssertionError naming ``what`` after ``timeout`` seconds, so a test
    that waits on a controller says what never happened.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """``directory``'s files over plain HTTP on 127.0.0.1 (fsspec's HTTP filesystem, as
    for https:// sources); yields the base URL."""
    import functools  # noqa: PLC0415
    import http.server  # noqa: PLC0415

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    with serve_http(handler) as url:
        yield url


@contextmanager
def serve_http(handler: Callable[..., Any]) -> Iterator[str]:
    """An HTTP server on a free port of 127.0.0.1 with ``handler`` (a request handler
    class, or a factory of one), in a thread; yields the base URL."""
    import http.server  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from hftpipe_devstack.procs import free_port  # noqa: PLC0415

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def s3_endpoint(objects: Mapping[str, Path], host: str = "127.0.0.1") -> Iterator[dict[str, str]]:
    """An S3 endpoint on ``host`` (moto's server, a dev dependency: no S3 account is
    reachable here) holding ``objects`` (``s3://`` URL -> local file); yields the
    ``AWS_*`` variables that reach it, as a producer's pod gets them. For pods of the
    real node, ``host`` is the node's bridge address (``HFTPIPE_NODE_IP``)."""
    import boto3  # type: ignore[import-untyped]  # noqa: PLC0415 - dev dependencies
    from moto.server import ThreadedMotoServer  # noqa: PLC0415

    from hftpipe_devstack.procs import free_port  # noqa: PLC0415

    port = free_port()
    server = ThreadedMotoServer(ip_address=host, port=port)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "replay",
        "AWS_SECRET_ACCESS_KEY": "replay-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        for url, path in objects.items():
            bucket, _, key = url.removeprefix("s3://").partition("/")
            if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket=bucket)
            s3.upload_file(str(path), bucket, key)
        yield env
    finally:
        server.stop()
