"""The dependency floors hold: the tests pass with each direct dependency at the lowest
release that the workspace's pyproject files allow (issue 10, point 13).

The lock pins the newest releases, so an old floor (``duckdb>=1.1`` under a MERGE that
DuckDB parses from 1.4 on) goes unnoticed until someone installs next to an old pin.
Here uv resolves the workspace with ``--resolution lowest-direct`` into a virtualenv
cached by the hash of the specifiers (:mod:`hftpipe_devstack.floors`), and a pytest of
that virtualenv runs the tests that go through the floored APIs, the real stack included.
The tests through fakesnow, which cannot run beside DuckDB's floor, run in a second one
with every other floor (:data:`hftpipe_devstack.floors.LIFTED_FOR_FAKESNOW`). Neither run
may skip a test: a skipped check is one that was not made.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Final

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from hftpipe_devstack import floors

REPO = Path(__file__).resolve().parents[2]

SELECTION: Final = (
    # DuckDB's SQL (the MERGE), numpy and pandas (codec, metrics, bars, CSV parsing),
    # pydantic and pydantic-settings (settings, the CRD model), typer (the CLI), kopf and
    # the Kubernetes client (the operator's builders, status and handlers).
    "tests/unit/test_warehouse.py",
    "tests/unit/test_codec.py",
    "tests/unit/test_metrics.py",
    "tests/unit/test_bars.py",
    "tests/unit/test_csvformat.py",
    "tests/unit/test_cli_settings.py",
    "tests/unit/test_operator_crd.py",
    "tests/unit/test_operator_builders.py",
    "tests/unit/test_operator_status.py",
    "tests/unit/test_operator_handlers.py",
    # The real stack, in the floors' own session: confluent-kafka and redis-py through
    # the processor (produce_batch, incremental_assign, the Redis commit), DuckDB
    # through the loader, fsspec, s3fs, aiohttp and zstandard through the sources,
    # kopf and the Kubernetes client against the API server.
    "tests/integration/test_pipeline.py::test_processor_output_in_redis_equals_a_pandas_oracle",
    "tests/integration/test_pipeline.py::test_loader_killed_mid_batch_three_times_leaves_one_row_per_bar_in_duckdb",
    "tests/integration/test_sources.py::test_a_local_file_in_every_compression[.zst]",
    "tests/integration/test_sources.py::test_an_http_url",
    "tests/integration/test_sources.py::test_an_http_url_that_is_not_there_names_it",
    "tests/integration/test_sources.py::test_an_s3_url_with_the_endpoint_and_keys_from_the_environment",
    "tests/integration/test_operator.py::test_create_makes_exactly_the_children_owned_by_the_job",
)
SLOW_AND_NO_FLOOR_OF_ITS_OWN: Final = (
    "tests/unit/test_metrics.py::test_a_million_bars_do_not_drift",
)
"""Deselected: a quarter of the run, through the same numpy calls as its neighbours."""
THROUGH_FAKESNOW: Final = (
    # The Snowflake sink through the real connector (its floor), served by fakesnow:
    # run in the fakesnow virtualenv, deselected from the floors' own run, where a test
    # that enters fakesnow fails and names this list.
    "tests/unit/test_warehouse.py::test_snowflake_ddl_runs_under_fakesnow",
    "tests/unit/test_warehouse.py::test_rewriting_a_batch_updates_and_never_duplicates[snowflake]",
    "tests/unit/test_warehouse.py::test_keys_separate_jobs_symbols_and_windows[snowflake]",
    "tests/unit/test_warehouse.py::test_in_batch_duplicate_keys_last_wins[snowflake]",
    "tests/unit/test_warehouse.py::test_null_metrics_are_stored_as_null_never_nan[snowflake]",
    "tests/unit/test_warehouse.py::test_timestamps_round_trip_as_naive_utc[snowflake]",
    "tests/unit/test_warehouse.py::test_empty_batch_writes_nothing[snowflake]",
    "tests/unit/test_warehouse.py::test_most_volatile_days_on_a_hand_made_set[snowflake]",
    "tests/unit/test_warehouse.py::test_most_volatile_days_refuses_a_bad_limit[snowflake]",
    "tests/unit/test_warehouse.py::test_snowflake_sink_connects_with_a_key_pair",
    "tests/unit/test_warehouse.py::test_open_sink_snowflake_url_reads_the_environment",
)


@pytest.fixture(scope="module")
def floors_env() -> floors.Floors:
    """The workspace's requirements at their floors (built once per set of specifiers)."""
    return floors.floors_venv(REPO)


@pytest.fixture(scope="module")
def fakesnow_env(floors_env: floors.Floors) -> floors.Floors:
    """The floors but DuckDB's, and fakesnow (built once per set of floors)."""
    return floors.fakesnow_venv(REPO, floors_env)


def test_every_test_the_lists_name_exists() -> None:
    """A renamed or removed test left in a list fails the slow runs only at their end
    (THROUGH_FAKESNOW named a test the review had removed): found here at once."""
    for node in (*SELECTION, *SLOW_AND_NO_FLOOR_OF_ITS_OWN, *THROUGH_FAKESNOW):
        path, _, test = node.partition("::")
        source = (REPO / path).read_text()
        if test:
            name = test.partition("[")[0]
            assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{node}: no such test"


def test_the_virtualenv_is_keyed_by_every_specifier() -> None:
    specs, tools = floors.requirements(REPO), floors.tool_requirements(REPO)
    names = {floors.requirement_name(s) for s in specs}
    assert {"duckdb", "redis", "kopf"} <= names
    assert not names & {"hftpipe-workers", "hftpipe-operator", "hftpipe-devstack"}
    assert {floors.requirement_name(s) for s in tools} == set(floors.TEST_TOOLS)
    raised = [s.replace(">=", ">=9", 1) if s.startswith("duckdb") else s for s in specs]
    assert floors.cache_name(raised, tools) != floors.cache_name(specs, tools)
    assert floors.cache_name(specs, tools[1:]) != floors.cache_name(specs, tools)
    assert floors.cache_name(list(specs), list(tools)) == floors.cache_name(specs, tools)


def test_every_direct_dependency_resolves_to_its_floor(floors_env: floors.Floors) -> None:
    """A floor that cannot be installed (no wheel for this Python, or excluded by another
    requirement) would leave the suite below testing a higher version than it claims."""
    off = []
    for spec in floors_env.requirements:
        req = Requirement(spec)
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "~=", "==")]
        got = floors_env.pins.get(floors.canonical(req.name))
        if lows and (got is None or Version(got) != max(lows)):
            off.append(f"{spec} resolved to {got}")
    pins = floors_env.path / "floors.txt"
    assert off == [], f"raise these floors to what installs (pins in {pins}): {off}"


def test_the_fakesnow_virtualenv_lifts_duckdb_alone(
    floors_env: floors.Floors, fakesnow_env: floors.Floors
) -> None:
    """The tests through fakesnow check the floors as much as the others do: every pin of
    the floors but DuckDB's holds there, the Snowflake connector's included."""
    lifted = {n for n, v in floors_env.pins.items() if fakesnow_env.pins.get(n) != v}
    assert lifted == set(floors.LIFTED_FOR_FAKESNOW), fakesnow_env.path / "floors.txt"
    assert Version(fakesnow_env.pins["duckdb"]) > Version(floors_env.pins["duckdb"])
    fakesnow = Requirement(floors.fakesnow_requirement(REPO))
    assert fakesnow.specifier.contains(fakesnow_env.pins["fakesnow"])
    assert "snowflake-connector-python" in floors_env.pins


SUMMARY: Final = re.compile(r"^=* ?((?:\d+ \w+(?:, )?)+) in [\d.]+s")
"""pytest's closing line (``426 passed, 11 deselected in 155.07s``, ``=`` around it
without ``-q``)."""


def run_pytest(env_: floors.Floors, tmp_path: Path, *args: str) -> int:
    """``pytest args`` in the checkout with ``env_``'s packages, which must pass every
    test it collects and skip none; the number of tests passed (printed with the time)."""
    python = floors.overlay(env_, REPO, tmp_path / "venv")
    started = time.monotonic()
    junit = tmp_path / "report.xml"
    env = {
        k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    }
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'basetemp'}",
            f"--junitxml={junit}",
            "-q",
            "-rfEsxX",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    output = proc.stdout + proc.stderr
    (tmp_path / "pytest.log").write_text(output)
    tail = "\n".join(output.splitlines()[-60:])
    assert proc.returncode != 5, f"pytest collected no tests:\n{tail}"
    assert proc.returncode == 0, f"the tests fail (exit {proc.returncode}, with {python}):\n{tail}"
    closing = [m.group(1) for line in output.splitlines() if (m := SUMMARY.match(line))]
    assert closing, f"no closing line in pytest's output:\n{tail}"
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", closing[-1])}
    # S314: the report that pytest wrote just now, not data from outside.
    cases = ET.parse(junit).getroot().findall(".//testcase")  # noqa: S314
    skipped = [
        f"{c.get('classname')}::{c.get('name')}" for c in cases if c.find("skipped") is not None
    ]
    assert skipped == [], f"skipped at the floors, so not checked: {skipped}\n{tail}"
    assert set(counts) <= {"passed", "deselected", "warnings", "warning"}, closing[-1]
    assert counts.get("passed", 0) == len(cases) > 0, closing[-1]
    print(f"with {env_.path.name}: {closing[-1]} ({time.monotonic() - started:.0f} s)")
    return len(cases)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_tests_pass_with_every_dependency_at_its_floor(
    floors_env: floors.Floors, tmp_path: Path
) -> None:
    run_pytest(
        floors_env,
        tmp_path,
        # A stand-in fakesnow module: the test modules import it; a test that enters it
        # fails, naming THROUGH_FAKESNOW.
        *("-p", "hftpipe_devstack.floors"),
        *(f"--deselect={node}" for node in (*SLOW_AND_NO_FLOOR_OF_ITS_OWN, *THROUGH_FAKESNOW)),
        *SELECTION,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_tests_through_fakesnow_pass_with_every_other_dependency_at_its_floor(
    fakesnow_env: floors.Floors, tmp_path: Path
) -> None:
    assert run_pytest(fakesnow_env, tmp_path, *THROUGH_FAKESNOW) == len(THROUGH_FAKESNOW)
