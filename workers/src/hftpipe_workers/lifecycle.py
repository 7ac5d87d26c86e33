"""Process lifecycle shared by the long-running workers."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType


def stop_on_signals(stop: threading.Event, log: logging.Logger) -> None:
    """SIGTERM/SIGINT set ``stop``: the worker finishes and commits its batch, then exits 0.

    Kubernetes sends SIGTERM on scale-down and rollout; finishing the batch means
    nothing is redone by the next owner of the partitions.
    """

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing the current batch, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
