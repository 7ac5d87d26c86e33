"""The drain clock: when a consuming worker in until-caught-up mode may exit."""

from __future__ import annotations

import threading
import time

from hftpipe_workers.lifecycle import DrainClock


def test_exits_only_after_idle_and_zero_lag() -> None:
    lags: dict[int, int] | None = None
    clock = DrainClock(lambda: lags, until_caught_up=True, idle_timeout=0.05)
    assert not clock.done_when_idle()  # not idle long enough
    time.sleep(0.06)
    assert not clock.done_when_idle()  # nothing assigned yet
    lags = {0: 3, 1: 0}
    assert not clock.done_when_idle()  # partition 0 still behind
    lags = {0: 0, 1: 0}
    assert clock.done_when_idle()
    clock.got_data()
    assert not clock.done_when_idle()  # data just arrived: idle clock restarted


def test_never_exits_when_not_draining() -> None:
    clock = DrainClock(lambda: {0: 0}, until_caught_up=False, idle_timeout=0.0)
    time.sleep(0.01)
    assert not clock.done_when_idle()


def test_drain_handles_every_batch_then_stops_when_caught_up() -> None:
    batches = [[1, 2], [], [3], []]
    handled: list[list[int]] = []
    # Lag stays above zero while batches remain: an empty poll then is not the end.
    clock = DrainClock(lambda: {0: len(batches)}, until_caught_up=True, idle_timeout=0.0)
    clock.drain(
        threading.Event(),
        lambda: batches.pop(0) if batches else [],
        handled.append,
    )
    assert handled == [[1, 2], [3]]


def test_drain_returns_at_once_when_stopped() -> None:
    stop = threading.Event()
    stop.set()
    calls: list[int] = []

    def fetch() -> list[int]:
        calls.append(1)
        return [1]

    DrainClock(lambda: None, until_caught_up=False, idle_timeout=0.0).drain(
        stop, fetch, lambda _: None
    )
    assert calls == []


def test_a_broker_that_cannot_tell_the_lag_does_not_stop_the_loop() -> None:
    from confluent_kafka import KafkaError, KafkaException  # noqa: PLC0415

    calls = []

    def not_leader() -> dict[int, int]:
        calls.append(1)
        raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))

    clock = DrainClock(not_leader, until_caught_up=True, idle_timeout=0.0)
    clock._last_lag = -1e9  # make the refresh due now
    clock.before_poll()
    assert not clock.done_when_idle(), "an unknown lag is not a drained input"
    assert len(calls) == 2
