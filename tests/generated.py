"""Generated market data for tests: deterministic, not real (the real bars are the shared
BTC file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-untyped]


def generated_minute_file(
    path: Path, *, symbols: int = 3, bars: int = 20_000, seed: int = 7
) -> Path:
    """Multi-symbol minute bars (generated, not real): random walks with gaps and
    zero-volume bars, interleaved by time, with a symbol column."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(symbols):
        minutes = np.cumsum(rng.choice([1, 1, 1, 1, 2, 5, 90], size=bars))
        ts = pd.Timestamp("2024-03-01", tz="UTC") + pd.to_timedelta(minutes, unit="min")
        close = 100.0 * (k + 1) * np.exp(np.cumsum(rng.normal(0, 1e-3, bars)))
        open_ = np.concatenate(([close[0]], close[:-1]))
        high = np.maximum(open_, close) * (1 + rng.uniform(0, 1e-3, bars))
        low = np.minimum(open_, close) * (1 - rng.uniform(0, 1e-3, bars))
        volume = rng.exponential(2.0, bars)
        volume[rng.random(bars) < 0.05] = 0.0
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "symbol": f"SYM{k}",
                    "open": open_,
                    "high": high,
                    "low": low,
                    "close": close,
                    "volume": volume,
                    "_t": ts,
                }
            )
        )
    frame = pd.concat(frames).sort_values(["_t", "symbol"], kind="stable").drop(columns="_t")
    frame.to_csv(path, index=False, float_format="%.10g")
    return path
