"""Process lifecycle shared by the long-running workers."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sized
from types import FrameType
from typing import Any, TypeVar

from confluent_kafka import KafkaException

from .observability import HEARTBEAT, LAG_EXPORT_SECONDS

Batch = TypeVar("Batch", bound=Sized)
log = logging.getLogger("hftpipe.lifecycle")


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


class DrainClock:
    """The bookkeeping the consuming workers' loops share.

    Refreshes the consumer-lag gauges every :data:`LAG_EXPORT_SECONDS`, and, in
    ``until_caught_up`` mode, says when to exit: nothing arrived for
    ``idle_timeout`` seconds and every assigned partition has zero lag.
    """

    def __init__(
        self,
        export_lag: Callable[[], Mapping[Any, int] | None],
        *,
        until_caught_up: bool,
        idle_timeout: float,
    ) -> None:
        self._export_lag = export_lag
        self._until_caught_up = until_caught_up
        self._idle_timeout = idle_timeout
        self._last_data = self._last_lag = time.monotonic()

    def _lags(self) -> Mapping[Any, int] | None:
        """The lags, or None when the broker cannot say right now."""
        try:
            return self._export_lag()
        except KafkaException as exc:
            # A leader election (NOT_LEADER_FOR_PARTITION) or a slow broker: the gauges
            # wait for the next refresh; a worker must not die over a gauge.
            log.warning("consumer lag not refreshed: %s", exc)
            return None

    def before_poll(self) -> None:
        """Refresh the lag gauges when they are due."""
        if time.monotonic() - self._last_lag > LAG_EXPORT_SECONDS:
            self._lags()
            self._last_lag = time.monotonic()

    def got_data(self) -> None:
        """Records arrived: the idle clock restarts."""
        self._last_data = time.monotonic()

    def drain(
        self,
        stop: threading.Event,
        fetch: Callable[[], Batch],
        handle: Callable[[Batch], None],
    ) -> None:
        """The consuming loop: ``fetch`` a batch, ``handle`` it, until ``stop`` is set
        or (``until_caught_up``) the input is drained."""
        try:
            while not stop.is_set():
                HEARTBEAT.beat()
                self.before_poll()
                batch = fetch()
                if not batch:
                    if self.done_when_idle():
                        return
                    continue
                self.got_data()
                handle(batch)
        finally:
            HEARTBEAT.stop()

    def done_when_idle(self) -> bool:
        """Whether a worker in ``until_caught_up`` mode has drained its input."""
        if not self._until_caught_up or time.monotonic() - self._last_data <= self._idle_timeout:
            return False
        lags = self._lags()
        return lags is not None and not any(lags.values())
