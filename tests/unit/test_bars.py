"""The bar record, its validation rules and the UTC time helpers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from hftpipe_workers.bars import (
    NS_PER_DAY,
    NS_PER_SECOND,
    OK,
    Bar,
    day_start_ns,
    describe_reason,
    format_utc,
    parse_utc,
    reason_code,
    reason_codes,
    validate_bar,
    validate_values,
)

GOOD = Bar("BTCUSDT", 1_700_000_000 * NS_PER_SECOND, 100.0, 110.0, 90.0, 105.0, 3.5, seq=0)


def test_a_valid_bar_has_no_reason() -> None:
    assert validate_bar(GOOD) is None
    assert validate_bar(GOOD._replace(volume=0.0)) is None  # no trades is still a bar
    assert validate_bar(GOOD._replace(open=90.0, close=110.0)) is None  # edges are inside


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"open": math.nan}, "open is not a finite number (got nan)"),
        ({"high": math.inf}, "high is not a finite number (got inf)"),
        ({"volume": -math.inf}, "volume is not a finite number (got -inf)"),
        ({"low": -1.0}, "low -1.0 is not a positive price"),
        ({"low": 0.0, "open": 0.0}, "open 0.0 is not a positive price"),
        ({"volume": -0.5}, "volume -0.5 is negative"),
        ({"high": 80.0}, "high 80.0 is below low 90.0"),
        ({"open": 111.0}, "open 111.0 is outside [low 90.0, high 110.0]"),
        ({"close": 89.0}, "close 89.0 is outside [low 90.0, high 110.0]"),
        ({"symbol": ""}, "symbol is empty"),
    ],
)
def test_each_invalid_bar_says_why(change: dict[str, Any], reason: str) -> None:
    assert validate_bar(GOOD._replace(**change)) == reason


def test_the_first_failing_rule_wins() -> None:
    # Negative low and high below low: the price rule comes first.
    assert validate_values(1.0, 0.5, -1.0, 1.0, 1.0) == "low -1.0 is not a positive price"


def test_raw_text_is_shown_when_known() -> None:
    values = (math.nan, 1.0, 1.0, 1.0, 1.0)
    reason = describe_reason(1, values, raw=("abc", "1", "1", "1", "1"))
    assert reason == "open is not a finite number (got 'abc')"


def test_vectorised_rules_agree_with_the_scalar_rules() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    pool = np.array([math.nan, math.inf, -math.inf, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    o, h, lo, c, v = (rng.choice(pool, n) for _ in range(5))
    codes = reason_codes(o, h, lo, c, v)
    expected = [
        reason_code(*row) for row in zip(*(a.tolist() for a in (o, h, lo, c, v)), strict=True)
    ]
    assert codes.tolist() == expected
    assert OK in expected
    assert len(set(expected)) == 14  # every rule fired at least once


def test_utc_text_round_trips_to_nanoseconds() -> None:
    assert parse_utc("2024-01-01T00:00:00Z") == 1_704_067_200 * NS_PER_SECOND
    assert parse_utc("2024-01-01 00:00:00") == 1_704_067_200 * NS_PER_SECOND  # naive is UTC
    assert parse_utc("2024-01-01T02:00:00+02:00") == 1_704_067_200 * NS_PER_SECOND
    assert format_utc(1_704_067_200 * NS_PER_SECOND) == "2024-01-01T00:00:00Z"
    assert format_utc(1_704_067_200 * NS_PER_SECOND + 1500) == "2024-01-01T00:00:00.0000015Z"
    assert parse_utc(format_utc(1_704_067_200 * NS_PER_SECOND + 1500)) == (
        1_704_067_200 * NS_PER_SECOND + 1500
    )


def test_bad_time_text_explains_the_expected_form() -> None:
    with pytest.raises(ValueError, match=r"bad time 'yesterday': expected ISO-8601"):
        parse_utc("yesterday")


def test_day_start_is_midnight_utc() -> None:
    t = parse_utc("2024-03-05T17:45:12.5Z")
    assert day_start_ns(t) == parse_utc("2024-03-05")
    assert day_start_ns(parse_utc("2024-03-05")) == parse_utc("2024-03-05")
    assert day_start_ns(t) % NS_PER_DAY == 0
