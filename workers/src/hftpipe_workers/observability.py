"""Every Prometheus metric the workers export, defined once, plus the HTTP endpoint.

Names share the ``hftpipe_`` prefix. Dashboards and alert rules may only use
names listed here (a test checks them against this registry), and the README's
metrics table is generated from it.

The endpoint serves ``/metrics``, ``/healthz`` (liveness: the process runs and its
main loop came round within ``stall_seconds``, see :class:`Heartbeat`) and ``/readyz``
(readiness: the worker has connected and is doing its job, and is not stalled).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LAG_EXPORT_SECONDS = 5.0
"""How often the long-running workers refresh the consumer-lag gauges from the broker."""

REGISTRY = CollectorRegistry(auto_describe=True)
"""The workers' own registry (not the global one), so tests can read it in isolation."""

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

RECORDS_IN = Counter(
    "hftpipe_records_in",
    "Records read by a worker",
    ["worker", "job", "topic"],
    registry=REGISTRY,
)
RECORDS_OUT = Counter(
    "hftpipe_records_out",
    "Records written by a worker (the producer's: bars sent, counted per sent batch)",
    ["worker", "job", "sink"],
    registry=REGISTRY,
)
BYTES_OUT = Counter(
    "hftpipe_bytes_out",
    "Bytes written by a worker",
    ["worker", "job", "sink"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "hftpipe_errors",
    "Errors by reason",
    ["worker", "job", "reason"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "hftpipe_dead_letters",
    "Source rows, and records a consumer could not use, set aside to the dead-letter topic",
    ["job", "reason"],
    registry=REGISTRY,
)
ERROR_REASONS: dict[str, tuple[str, ...]] = {
    "producer": ("delivery", "progress", "aborted", "fenced"),
    "processor": ("delivery", "consume", "lost_partition", "commit", "redis_state_lost"),
    "loader": ("consume", "commit"),
}
"""The ``reason`` label values of :data:`ERRORS`, per worker."""


def declare_series(worker: str, job: str, dead_letter_reasons: tuple[str, ...] = ()) -> None:
    """Create a worker's labelled counters at 0 when it starts.

    A labelled series appears at its first increment, and ``rate()`` / ``increase()``
    cannot see the step from nothing: a worker's first error, or a small file's dead
    letters scraped all at once, would never fire the alerts. From 0 they do.
    """
    for reason in ERROR_REASONS[worker]:
        ERRORS.labels(worker, job, reason)
    for reason in dead_letter_reasons:
        DEAD_LETTERS.labels(job, reason)


BATCH_SIZE = Histogram(
    "hftpipe_batch_size",
    "Records per processed batch",
    ["worker", "job"],
    buckets=(1, 10, 100, 500, 1000, 5000, 10_000, 50_000, 100_000),
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "hftpipe_consumer_lag",
    "End offset minus committed offset, per partition",
    ["worker", "job", "topic", "partition"],
    registry=REGISTRY,
)
EVENT_TO_REDIS_SECONDS = Histogram(
    "hftpipe_event_to_redis_seconds",
    "From a bar's send time (Kafka record timestamp) to the Redis commit of its metrics",
    ["job"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
LOADER_ROWS = Counter(
    "hftpipe_loader_rows",
    "Rows merged into the warehouse",
    ["job", "table", "backend"],
    registry=REGISTRY,
)
LOADER_BATCH_SECONDS = Histogram(
    "hftpipe_loader_batch_seconds",
    "Time to merge one micro-batch into the warehouse",
    ["job", "backend"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
REPLAY_ROWS_DONE = Gauge(
    "hftpipe_replay_rows_done",
    "Source rows handled by the producer so far (updated at least every 0.5 s while it sends)",
    ["job"],
    registry=REGISTRY,
)
REPLAY_ROWS_TOTAL = Gauge(
    "hftpipe_replay_rows_total",
    "Data rows in the source file (0 until counted)",
    ["job"],
    registry=REGISTRY,
)
LATEST_VWAP = Gauge(
    "hftpipe_latest_vwap",
    "Latest rolling VWAP per symbol and window",
    ["job", "symbol", "window"],
    registry=REGISTRY,
)
LATEST_CLOSE = Gauge(
    "hftpipe_latest_close",
    "Close price of the latest bar processed per symbol (plot it against the VWAP)",
    ["job", "symbol"],
    registry=REGISTRY,
)
READY = Gauge("hftpipe_ready", "1 when the worker is ready", ["worker", "job"], registry=REGISTRY)


class Heartbeat:
    """When a worker's main loop last came round (each batch, and each empty poll of a
    few tens of milliseconds while idle).

    A loop blocked in a call that never returns (a Redis that stopped answering, a
    broker that takes no more records) stops beating: liveness then fails and the
    kubelet restarts the pod, instead of a hung worker looking healthy for ever."""

    def __init__(self) -> None:
        self._last: float | None = None

    def beat(self) -> None:
        """The loop came round."""
        self._last = time.monotonic()

    def stop(self) -> None:
        """The loop ended (the worker is finishing): nothing to watch any more."""
        self._last = None

    def stalled_for(self) -> float:
        """Seconds since the last beat; 0 while no loop runs."""
        return 0.0 if self._last is None else time.monotonic() - self._last


HEARTBEAT = Heartbeat()
"""The heartbeat of this process's worker loop (:class:`.lifecycle.DrainClock` beats it)."""


class _Handler(BaseHTTPRequestHandler):
    ready: ClassVar[threading.Event]
    stall_seconds: ClassVar[float]

    def do_GET(self) -> None:
        stalled = HEARTBEAT.stalled_for()
        alive = stalled <= self.stall_seconds
        if self.path.startswith("/metrics"):
            body, status, ctype = generate_latest(REGISTRY), 200, CONTENT_TYPE_LATEST
        elif self.path.startswith("/healthz"):
            body, status, ctype = (
                (b"ok\n", 200, "text/plain")
                if alive
                else (f"main loop stalled for {stalled:.0f} s\n".encode(), 503, "text/plain")
            )
        elif self.path.startswith("/readyz"):
            ok = self.ready.is_set() and alive
            body, status, ctype = (
                (b"ok\n", 200, "text/plain") if ok else (b"not ready\n", 503, "text/plain")
            )
        else:
            body, status, ctype = b"not found\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would drown the worker's own logs."""


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a background thread."""

    def __init__(
        self,
        port: int,
        host: str = "0.0.0.0",  # noqa: S104 - pods listen on all
        stall_seconds: float = 120.0,
    ) -> None:
        self.ready = threading.Event()
        handler = type(
            "Handler", (_Handler,), {"ready": self.ready, "stall_seconds": stall_seconds}
        )
        self._server = ThreadingHTTPServer((host, port), handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> MetricsServer:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
