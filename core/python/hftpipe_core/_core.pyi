from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

_Columns = tuple[
    list[int], list[float], list[float | None], list[float], list[float | None], list[float | None]
]

class Engine:
    ignored: int
    def __init__(self, labels: Sequence[str], lengths: Sequence[int]) -> None: ...
    def symbol_names(self) -> list[str]: ...
    def update_columns(
        self,
        symbol: str,
        ts_ns: Sequence[int],
        high: Sequence[float],
        low: Sequence[float],
        close: Sequence[float],
        volume: Sequence[float],
    ) -> tuple[list[int], list[_Columns]]: ...
    def update_encoded(
        self,
        version: int,
        symbol: str,
        ts_ns: Sequence[int],
        seq: Sequence[int],
        high: Sequence[float],
        low: Sequence[float],
        close: Sequence[float],
        volume: Sequence[float],
    ) -> tuple[list[int], list[_Columns], list[bytes]]: ...
    def update_trades(
        self,
        symbol: str,
        ts_ns: Sequence[int],
        seq: Sequence[int],
        price: Sequence[float],
        size: Sequence[float],
    ) -> tuple[list[int], list[_Columns]]: ...
    def snapshot(self) -> bytes: ...
    def restore_symbol(
        self,
        name: str,
        last_ts: int,
        last_seq: int,
        has_prev: bool,
        has_r: bool,
        run_c: int,
        run_r: int,
        prev_close: float,
        last_r: float,
        ts: Sequence[int],
        tpv: Sequence[float],
        vol: Sequence[float],
        cl: Sequence[float],
        ret: Sequence[float],
        wins: Sequence[tuple[int, int, int, Sequence[float]]],
    ) -> None: ...

def dumps_float(x: float) -> bytes: ...
def encode_records(
    version: int,
    kind: str | None,
    symbol: Iterable[str],
    ts_ns: npt.NDArray[np.int64],
    open: npt.NDArray[np.float64],
    high: npt.NDArray[np.float64],
    low: npt.NDArray[np.float64],
    close: npt.NDArray[np.float64],
    volume: npt.NDArray[np.float64],
    seq: npt.NDArray[np.int64],
    line: npt.NDArray[np.int64],
) -> list[bytes] | None: ...
def zadd_command(key: bytes, ts_ns: Sequence[int], members: Sequence[bytes]) -> bytes: ...
def decode_bars(
    values: Sequence[bytes], version: int
) -> (
    tuple[
        list[str],
        list[int],
        list[float],
        list[float],
        list[float],
        list[float],
        list[float],
        list[int],
        list[int],
    ]
    | None
): ...
