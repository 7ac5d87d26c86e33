"""Replay pacing on event time: when each bar is due, relative to the replay's start.

Pure: the producer asks :meth:`Pacer.due` for a bar's offset in seconds from
the start of the replay and sleeps until then. Three modes:

- ``speed`` ``60x``: event time runs 60 times faster than wall time, measured
  from the first bar's event time (gaps in the data become pauses, shortened);
- ``rate`` ``5000``: a fixed number of bars per second, whatever their times;
- ``max``: no pacing at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .bars import NS_PER_SECOND

PaceMode = Literal["speed", "rate", "max"]
_SPEED_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Pacing:
    """A parsed pacing choice."""

    mode: PaceMode
    value: float = 0.0

    @classmethod
    def parse(cls, speed: str | None = None, rate: float | None = None) -> Pacing:
        """From ``--speed 60x|max`` or ``--rate N`` (exactly one, or neither for max)."""
        if speed is not None and rate is not None:
            raise ValueError("give either --speed or --rate, not both")
        if rate is not None:
            if rate <= 0:
                raise ValueError(f"--rate must be a positive number of bars per second, got {rate}")
            return cls("rate", float(rate))
        if speed is None or speed.strip().lower() == "max":
            return cls("max")
        match = _SPEED_RE.match(speed)
        if not match or float(match.group(1)) <= 0:
            raise ValueError(
                f"--speed {speed!r} is not understood: use a multiple of real time such as "
                "'60x' or '1x', or 'max'"
            )
        return cls("speed", float(match.group(1)))

    def __str__(self) -> str:
        if self.mode == "speed":
            return f"{self.value:g}x real time"
        if self.mode == "rate":
            return f"{self.value:g} bars/s"
        return "max speed"


class Pacer:
    """Offsets (seconds since the replay started) at which bars are due."""

    def __init__(self, pacing: Pacing) -> None:
        self.pacing = pacing
        self._first_ts: int | None = None
        self._count = 0

    def due(self, ts_ns: int) -> float:
        """Seconds after the start at which the next bar (event time ``ts_ns``) is due."""
        mode = self.pacing.mode
        index = self._count
        self._count += 1
        if mode == "max":
            return 0.0
        if mode == "rate":
            return index / self.pacing.value
        if self._first_ts is None:
            self._first_ts = ts_ns
        # Event time can step back across symbols of one file; never go backwards.
        return max(0.0, (ts_ns - self._first_ts) / NS_PER_SECOND / self.pacing.value)
