"""Helpers for tests that drive the local stack."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

CLI = [sys.executable, "-m", "hftpipe_workers"]
"""The workers' CLI, run by this interpreter (the project's venv)."""


def run_produce(
    env: dict[str, str], job: str, source: str | Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``hftpipe produce <source> --job <job> <args>``, without serving metrics."""
    return subprocess.run(
        [*CLI, "produce", str(source), "--job", job, "--metrics-port", "-1", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def produce(env: dict[str, str], job: str, source: str | Path, *args: str) -> dict[str, Any]:
    """:func:`run_produce`, which must succeed; its final JSON report."""
    done = run_produce(env, job, source, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def wait_for(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that.

    Raises AssertionError naming ``what`` after ``timeout`` seconds, so a test
    that waits on a controller says what never happened.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
