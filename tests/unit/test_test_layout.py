"""The test tiers' own layout: what would break a run of several tiers at once."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_name() -> None:
    """The tiers' folders are not packages, so pytest imports each test module by its
    basename: two of one name in one run ("import file mismatch") stop the whole
    collection, as ``make test``'s run of unit and integration together did."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for module in TESTS.rglob("test_*.py"):
        by_name[module.name].append(str(module.relative_to(TESTS)))
    assert by_name, f"no test modules under {TESTS}"
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not shared, f"rename one of each: {shared}"
