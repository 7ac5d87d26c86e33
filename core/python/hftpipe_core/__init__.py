"""hftpipe's compiled core (Rust): see ``hftpipe_workers.metrics.CompiledMetricsEngine`` (the
processor) and ``hftpipe_workers.codec.encode_records`` (the producer)."""

from hftpipe_core._core import (
    Engine,
    decode_bars,
    decode_metrics,
    decode_metrics_arrays,
    dumps_float,
    encode_records,
    zadd_command,
)

__all__ = [
    "Engine",
    "decode_bars",
    "decode_metrics",
    "decode_metrics_arrays",
    "dumps_float",
    "encode_records",
    "zadd_command",
]
