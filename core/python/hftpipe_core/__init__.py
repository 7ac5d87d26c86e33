"""hftpipe's compiled core (Rust): see ``hftpipe_workers.metrics.CompiledMetricsEngine``."""

from hftpipe_core._core import Engine, dumps_float

__all__ = ["Engine", "dumps_float"]
