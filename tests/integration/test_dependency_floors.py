"""The dependency floors hold: the tests pass with each direct dependency at the lowest
release that the workspace's pyproject files allow (issue 10, point 13).

The lock pins the newest releases, so an old floor (``duckdb>=1.1`` under a MERGE that
DuckDB parses from 1.4 on) goes unnoticed until someone installs next to an old pin.
Here uv resolves the workspace with ``--resolution lowest-direct`` into a virtualenv
cached by the hash of the specifiers (:mod:`hftpipe_devstack.floors`), and a pytest of
that virtualenv runs the tests that go through the floored APIs, the real stack included.
"""

from __future__ import annotations

import os
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
    "tests/integration/test_pipeline.py::test_loader_killed_mid_batch_leaves_one_row_per_bar_in_duckdb",
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


@pytest.fixture(scope="module")
def floors_env() -> floors.Floors:
    """The workspace's requirements at their floors (built once per set of specifiers)."""
    return floors.floors_venv(REPO)


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


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_tests_pass_with_every_dependency_at_its_floor(
    floors_env: floors.Floors, tmp_path: Path
) -> None:
    python = floors.overlay(floors_env, REPO, tmp_path / "venv")
    junit = tmp_path / "floors.xml"
    env = {
        k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    }
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    started = time.monotonic()
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "hftpipe_devstack.floors",
            f"--basetemp={tmp_path / 'basetemp'}",
            f"--junitxml={junit}",
            "-q",
            "-rfEs",
            *(f"--deselect={node}" for node in SLOW_AND_NO_FLOOR_OF_ITS_OWN),
            *SELECTION,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    output = proc.stdout + proc.stderr
    (tmp_path / "floors.log").write_text(output)
    tail = "\n".join(output.splitlines()[-60:])
    assert proc.returncode != 5, f"pytest of the floors collected no tests:\n{tail}"
    assert proc.returncode == 0, (
        f"the tests fail at the dependency floors (exit {proc.returncode}, "
        f"pins in {floors_env.path / 'requirements.txt'}):\n{tail}"
    )
    # S314: the report that pytest wrote just now, not data from outside.
    cases = ET.parse(junit).getroot().findall(".//testcase")  # noqa: S314
    skips = [s.get("message", "") for c in cases for s in c.findall("skipped")]
    passed = len(cases) - len(skips)
    assert passed > 0, f"no test passed at the floors:\n{tail}"
    # Only the tests that enter fakesnow (which needs DuckDB 2.0) may be skipped.
    assert all(floors.FAKESNOW_SKIP in s for s in skips), skips
    took = time.monotonic() - started
    print(f"{passed} passed, {len(skips)} skipped at the dependency floors in {took:.0f} s")
