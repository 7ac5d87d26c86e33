"""The compiled reader of metrics messages (hftpipe-core's decode_metrics, the loader's hot
path) against the Python codec, bit for bit.

``codec.decode_metrics_columns`` with and without the compiled core must give the same
columns: every float by its bits and type, every null as None, the windows in order, the
trade flags. Randomised batches (JSON integers for floats, nulls, trades, extra fields,
shuffled keys, whitespace, integers at the edges of 64 bits, long decimal spellings) and
one breakage at a time, each of which must leave the batch to the Python codec (or be
read exactly as it reads it).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hftpipe_core import decode_metrics

from hftpipe_workers import codec
from hftpipe_workers.codec import MetricsColumns
from hftpipe_workers.metrics import WindowColumns

T0 = 1_700_000_000 * 1_000_000_000
WINDOWS = ("5m", "1h", "session")


def _number(rng: random.Random, *, nullable: bool = False) -> Any:
    """A metric value as the processor or another writer may spell it."""
    pick = rng.random()
    if nullable and pick < 0.15:
        return None
    if pick < 0.25:
        return rng.randint(-5, 10**6)  # a JSON integer where a float is meant
    if pick < 0.3:
        return rng.choice([0.0, -0.0, 5e-324, 1.7976931348623157e308, 2.0**53 + 2])
    return rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-12, 12)


def _doc(rng: random.Random, j: int, *, trades: bool) -> dict[str, Any]:
    windows = {
        label: {
            "n": rng.randint(0, 10_000),
            "v": _number(rng),
            "vw": _number(rng, nullable=True),
            "ma": _number(rng),
            "sd": _number(rng, nullable=True),
            "rsd": _number(rng, nullable=True),
        }
        for label in WINDOWS
    }
    doc: dict[str, Any] = {
        "sv": 1,
        "s": rng.choice(["BTCUSDT", "ETH-USD", "É€", ""]),
        "t": T0 + j * 60_000_000_000,
        "q": j,
        "c": _number(rng),
        "bv": _number(rng),
        "w": windows,
    }
    if trades and rng.random() < 0.5:
        doc["k"] = "t"
    if rng.random() < 0.1:
        doc["x"] = rng.choice([1, "y", None, True, 2.5])  # a field this reader ignores
    return doc


def _shuffled(rng: random.Random, doc: dict[str, Any]) -> dict[str, Any]:
    """The same document with its top-level keys and each window's keys in random order
    (the windows' own order kept: it is part of what must match)."""
    keys = list(doc)
    rng.shuffle(keys)
    out = {k: doc[k] for k in keys}
    out["w"] = {label: dict(rng.sample(list(w.items()), len(w))) for label, w in doc["w"].items()}
    return out


def _message(rng: random.Random, j: int, *, trades: bool = False) -> bytes:
    doc = _doc(rng, j, trades=trades)
    if rng.random() < 0.3:
        doc = _shuffled(rng, doc)
    data = orjson.dumps(doc)
    if rng.random() < 0.1:  # whitespace a JSON writer may put between tokens
        data = data.replace(b",", b", ").replace(b":", b" :\n\t").replace(b"{", b" {\r")
    return data


def _typed(cols: MetricsColumns | None) -> Any:
    """Columns as comparable values: floats by their bits and type, the rest as they are."""
    if cols is None:
        return None

    def col(column: list[Any] | None) -> Any:
        if column is None:
            return None
        return [(type(x), struct.pack("<d", x) if type(x) is float else x) for x in column]

    plain = [col(c) for c in (cols.symbol, cols.ts_ns, cols.seq, cols.close, cols.bar_volume)]
    windows = [
        (w.window, *(col(list(c)) for c in (w.n_bars, w.volume, w.vwap, w.sma, w.std, w.ret_std)))
        for w in cols.windows
    ]
    return plain, windows, col(cols.trade)


def _as_columns(arrays: codec.MetricsArrays | None) -> MetricsColumns | None:
    """The loader's arrays as the codec's columns: NaN (a null) back to None."""
    if arrays is None:
        return None

    def floats(column: Any) -> list[float | None]:
        return [None if math.isnan(x) else x for x in column.tolist()]

    return MetricsColumns(
        arrays.symbol,
        arrays.ts_ns.tolist(),
        arrays.seq.tolist(),
        arrays.close.tolist(),
        arrays.bar_volume.tolist(),
        tuple(
            WindowColumns(
                w.window,
                w.n_bars.tolist(),
                w.volume.tolist(),
                floats(w.vwap),
                w.sma.tolist(),
                floats(w.std),
                floats(w.ret_std),
            )
            for w in arrays.windows
        ),
        None if arrays.trade is None else arrays.trade.tolist(),
    )


def _same(batch: list[bytes]) -> None:
    """The compiled readers (columns, and the loader's arrays) give what the Python
    codec gives, or (arrays) leave the batch to it exactly when the columns reader does."""
    want = codec.decode_metrics_columns(batch, compiled=False)
    got = codec.decode_metrics_columns(batch, compiled=True)
    assert _typed(got) == _typed(want)
    arrays = codec.decode_metrics_arrays(batch)
    if decode_metrics(batch, 1) is None:
        assert arrays is None
    else:
        assert _typed(_as_columns(arrays)) == _typed(want)


@pytest.mark.parametrize("trades", [False, True])
def test_plain_messages_match_the_python_codec(trades: bool) -> None:
    rng = random.Random(71 + trades)
    values = [_message(rng, j, trades=trades) for j in range(5_000)]
    assert decode_metrics(values, 1) is not None, "the compiled reader refused plain messages"
    lo = 0
    while lo < len(values):
        hi = lo + rng.randint(0, 800)
        _same(values[lo:hi])
        lo = hi
    _same([])


def _edit(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda doc: {**doc, key: value}


def _edit_window(label: str, key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda doc: {**doc, "w": {**doc["w"], label: {**doc["w"][label], key: value}}}


def _drop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda doc: {k: v for k, v in doc.items() if k != key}


DOC_BREAKAGES: list[Callable[[dict[str, Any]], Any]] = [
    _edit("sv", 2),
    _edit("sv", 1.0),
    _edit("sv", True),
    _drop("sv"),
    _edit("s", 5),
    _edit("s", None),
    _edit("t", 1.5),
    _edit("t", True),
    _edit("t", 2**63),
    _edit("t", -(2**63)),
    _edit("q", True),
    _edit("q", 2**64 - 1),
    _edit("c", None),
    _edit("c", "1"),
    _edit("c", False),
    _edit("c", 2**63 - 1),
    _edit("bv", -(2**63)),
    _drop("bv"),
    _drop("w"),
    _edit("k", "b"),
    _edit("k", None),
    _edit("k", 1),
    _edit("w", []),
    _edit("w", {}),
    _edit("w", {"5m": {}}),
    lambda doc: {**doc, "w": {"5m": doc["w"]["5m"]}},
    lambda doc: {**doc, "w": {k: doc["w"][k] for k in ("1h", "5m", "session")}},
    lambda doc: {**doc, "w": {**doc["w"], "1d": doc["w"]["5m"]}},
    lambda doc: {**doc, "w": {**doc["w"], "5m": 3}},
    lambda doc: {**doc, "w": {**doc["w"], "5m": None}},
    _edit_window("5m", "vw", "x"),
    _edit_window("5m", "ma", None),
    _edit_window("5m", "v", None),
    _edit_window("5m", "n", 1.0),
    _edit_window("5m", "n", True),
    _edit_window("5m", "n", 2**63),
    _edit_window("1h", "sd", False),
    _edit_window("1h", "rsd", [1]),
    _edit_window("1h", "extra", {"a": 1}),
    _edit_window("session", "extra", 7),
    lambda doc: {**doc, "w": {**doc["w"], "1h": {"n": 1}}},
    lambda doc: {**doc, "x": {"nested": 1}},
    lambda doc: {**doc, "x": [1, 2]},
    lambda doc: {**doc, "s": 'a"b\\c\n'},  # escapes in a string
    lambda doc: [doc],
    lambda doc: 1,
]

BYTE_BREAKAGES: list[Callable[[bytes], bytes]] = [
    lambda b: b"",
    lambda b: b"not json",
    lambda b: b[:-1],
    lambda b: b + b" ",
    lambda b: b + b"x",
    lambda b: b + b"{}",
    lambda b: b.replace(b'"q":', b'"q":1,"q":', 1),  # a repeated key
    lambda b: b.replace(b'"n":', b'"n":1,"n":', 1),
    lambda b: b.replace(b'"1h":', b'"5m":{"n":1,"v":1,"vw":1,"ma":1,"sd":1,"rsd":1},"1h":', 1),
    lambda b: b.replace(b'"c":', b'"c":1e400,"x":', 1),  # orjson refuses a double overflow
    lambda b: b.replace(b'"c":', b'"x":-1e400,"c":', 1),
    lambda b: b.replace(b'"c":', b'"x":1e-400,"c":', 1),
    lambda b: b.replace(b'"c":', b'"c":01,"x":', 1),
    lambda b: b.replace(b'"c":', b'"c":1.,"x":', 1),
    lambda b: b.replace(b'"c":', b'"c":-0,"x":', 1),
    lambda b: b.replace(b'"c":', b'"c":-0.0e0,"x":', 1),
    lambda b: b.replace(b'"c":', b'"c":NaN,"x":', 1),
    lambda b: b.replace(b'"c":', b'"c":nulls,"x":', 1),
    lambda b: b.replace(b'"vw":', b'"vw":nul,"x":', 1),
    lambda b: b.replace(b'"s":"', b'"s":"\xff', 1),  # not UTF-8
    lambda b: b.replace(b'"s":"', b'"s":"\x01', 1),  # a control character
    lambda b: b.replace(b"{", b"{,", 1),
    lambda b: b.replace(b"}", b",}", 1),
    lambda b: b.replace(b'"w":{', b'"w" {', 1),
    lambda b: b.replace(b"}}", b"} }", 1),
]


def test_anything_unusual_matches_the_python_codec() -> None:
    rng = random.Random(73)
    for k, breakage in enumerate(DOC_BREAKAGES):
        for trades in (False, True):
            batch = [_message(rng, j, trades=trades) for j in range(12)]
            doc = orjson.loads(batch[rng.randrange(12)])
            at = rng.randrange(12)
            batch[at] = orjson.dumps(breakage(doc))
            try:
                _same(batch)
            except AssertionError as exc:
                raise AssertionError(f"document breakage {k}: {batch[at]!r}") from exc
    for k, broken in enumerate(BYTE_BREAKAGES):
        batch = [_message(rng, j) for j in range(12)]
        at = rng.randrange(12)
        batch[at] = broken(orjson.dumps(orjson.loads(batch[at])))
        try:
            _same(batch)
        except AssertionError as exc:
            raise AssertionError(f"byte breakage {k}: {batch[at]!r}") from exc


def test_the_compiled_reader_refuses_what_python_must_decide() -> None:
    """Refusals are None (the Python codec then names the problem), never a guess."""
    good = orjson.dumps(_doc(random.Random(1), 0, trades=False))
    assert decode_metrics([good], 1) is not None
    assert decode_metrics([good], 2) is None  # another schema version
    assert decode_metrics([good.replace(b'"q":', b'"q":1,"q":', 1)], 1) is None
    assert decode_metrics([good.replace(b'"c":', b'"c":1e400,"x":', 1)], 1) is None
    with pytest.raises(TypeError):
        decode_metrics(["text"], 1)


def test_numbers_are_read_as_orjson_reads_them() -> None:
    rng = random.Random(74)
    texts = []
    for _ in range(5_000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30)))
        point = rng.randint(0, len(digits))
        text = f"{(digits[:point] or '0').lstrip('0') or '0'}.{digits[point:] or '0'}"
        if rng.random() < 0.3:
            text += f"e{rng.randint(-320, 310)}"
        texts.append(rng.choice(["", "-"]) + text)
    texts += ["9007199254740993", "-9223372036854775808", "9223372036854775807"]
    base = orjson.dumps(_doc(random.Random(2), 0, trades=False))
    batch = [base.replace(b'"c":', b'"c":%b,"x":' % t.encode(), 1) for t in texts]
    for lo in range(0, len(batch), 500):
        _same(batch[lo : lo + 500])


def test_the_loader_asks_the_compiled_reader_once_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch the compiled core refuses goes to the Python codec straight away: the core's
    array reader is None exactly when its column reader is, so asking the second after the
    first said None only spends the time of one more pass over the batch."""
    from hftpipe_workers.loader import metrics_table  # noqa: PLC0415

    calls: list[int] = []
    core = codec._core_decode_metrics
    assert core is not None

    def counted(values: Any, version: int) -> Any:
        calls.append(len(values))
        return core(values, version)

    monkeypatch.setattr(codec, "_core_decode_metrics", counted)
    rng = random.Random(75)
    batch = [_message(rng, j) for j in range(12)]
    doc = orjson.loads(batch[3])
    doc["w"] = dict(reversed(doc["w"].items()))  # the windows in another order: refused
    batch[3] = orjson.dumps(doc)
    assert codec.decode_metrics_arrays(batch) is None
    bars, _, refused = metrics_table("j", batch)
    assert calls == []
    assert (bars.num_rows, refused) == (12 * (len(WINDOWS) - 1), [])
