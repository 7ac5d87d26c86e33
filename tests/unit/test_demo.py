"""``make demo``: it installs and starts only what the demo runs, and its report says which
stage bounds the end-to-end figure."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hftpipe_devstack import cli, components, install
from hftpipe_devstack.procs import ProcessTable
from hftpipe_workers.demo import STAGES, bounded_by, stage_lines

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_on_an_empty_cache_builds_nothing_and_starts_only_kafka_and_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m hftpipe_devstack demo`` (what ``make demo`` runs) end to end with the
    servers stubbed: every install step of the devstack (``go install`` of helm and
    kubeconform, the Kubernetes build, Maven) runs through :func:`install.run_step`,
    which refuses here, on an empty cache so that nothing is found ready-made."""
    monkeypatch.setenv(install.CACHE_ENV, str(tmp_path / "cache"))
    built: list[list[str]] = []

    def refuse(cmd: list[str], **_: Any) -> str:
        built.append(list(cmd))
        raise install.InstallError(f"the demo built something it does not use: {cmd}")

    monkeypatch.setattr(install, "run_step", refuse)
    # Kafka's jars are the demo's one install (by Maven, so refused above): stand in.
    monkeypatch.setattr(install, "ensure_kafka", lambda: tmp_path / "kafka")
    started: list[str] = []

    def stub(name: str) -> Callable[..., dict[str, str]]:
        def start(self: object, table: ProcessTable, workdir: Path) -> dict[str, str]:
            started.append(name)
            return {f"STUB_{name.upper()}": str(workdir)}

        return start

    for cls, name in (
        (components.Kafka, "kafka"),
        (components.Redis, "redis"),
        (components.KubeControlPlane, "kube"),
    ):
        monkeypatch.setattr(cls, "start", stub(name))
    runs: list[tuple[list[str], dict[str, str]]] = []

    def call(argv: list[str], env: dict[str, str]) -> int:
        runs.append((argv, env))
        return 0

    monkeypatch.setattr(subprocess, "call", call)  # what cli._demo runs the demo with

    assert cli.main(["--dir", str(tmp_path / "stack"), "demo", "--stop-stack"]) == 0
    assert built == []
    assert sorted(started) == ["kafka", "redis"]
    [(argv, env)] = runs
    assert argv[1:4] == ["-m", "hftpipe_workers", "demo"]
    assert not {"HELM", "KUBECONFORM", "KUBECTL", "PROMTOOL"} & set(env)


def _make(*args: str) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed: the Makefile is what this test reads")
    return subprocess.run(
        [make, "--no-print-directory", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _apt_packages(recipe: str) -> set[str]:
    """The packages of every ``apt-get install`` in a ``make -n`` listing."""
    joined = recipe.replace("\\\n", " ")
    return {
        word
        for line in re.findall(r"apt-get install ([^;&|\n]*)", joined)
        for word in line.split()
        if not word.startswith("-")
    }


def test_make_demo_installs_no_debian_package_of_the_node_or_the_kubernetes_api() -> None:
    """``make demo`` (dry run) may apt-install only what Kafka and Redis need: none of the
    real node's packages (the Makefile's NODE_APT_PACKAGES) nor etcd and promtool, which
    only the Kubernetes API and the chart checks use."""
    node = set(_make("--eval", "print-node: ; @echo $(NODE_APT_PACKAGES)", "print-node").split())
    assert node, "the Makefile names no NODE_APT_PACKAGES"
    everything = _apt_packages(_make("-n", "system-deps"))
    assert node <= everything  # the parsing finds the packages where they are
    demo = _apt_packages(_make("-n", "demo"))
    assert demo & node == set()
    assert demo & {"etcd-server", "prometheus"} == set()
    assert demo <= everything


@pytest.mark.parametrize(
    ("done", "bound"),
    [
        # every stage done right behind the one before it: the producer sets the pace
        ({"producer": 3.0, "processor": 3.3, "loader": 4.2}, "producer"),
        # the case of issue 12: processor done, the loader's lag stood for seconds
        ({"producer": 3.0, "processor": 3.4, "loader": 16.0}, "loader"),
        # the processor fell behind, the loader followed it closely
        ({"producer": 3.0, "processor": 12.0, "loader": 12.9}, "processor"),
        # both fell behind: the last one is what the figure measures
        ({"producer": 3.0, "processor": 8.0, "loader": 11.0}, "loader"),
        # exactly the slack behind still counts as keeping pace
        ({"producer": 3.0, "processor": 3.5, "loader": 4.75}, "producer"),
        # a cold `make demo` (2026-12-07): the producer done in 0.6 s of replay, the
        # processor 1.3 s later (at a third of its rate alone), the loader 0.8 s after
        # that. The report said "bounded by the producer": the processor's slack was
        # the loader's (1.5 s), though its lag is seen every 0.25 s.
        ({"producer": 5.2, "processor": 6.5, "loader": 7.3}, "processor"),
    ],
)
def test_bounded_by_names_the_last_stage_that_fell_behind(
    done: dict[str, float], bound: str
) -> None:
    assert bounded_by(done) == bound


def test_the_report_splits_start_up_from_the_replay_and_names_the_bound() -> None:
    produced = {"produced": 48_000, "rows_per_second": 24_000, "seconds": 2.0}
    outputs = {
        "process": {"bars_in": 48_000},
        "load": {"bars": 48_000, "metrics_rows": 192_000},
    }
    # the first bar at 1.0 s: the producer's exit at 3.0 s less its 2.0 s replay
    done = {"producer": 3.0, "processor": 4.0, "loader": 16.0}
    done["processor"] = 3.4  # within its slack (0.5 s) of the producer
    lines = stage_lines(produced, outputs, done)
    rows = {line.split()[0]: line for line in lines}
    assert set(STAGES) <= set(rows)
    assert "48,000 bars in   2.0 s     24,000 bars/s" in rows["producer"]
    # the processor kept pace: its rate is only a floor
    assert "48,000 bars in   2.4 s >=  20,000 bars/s" in rows["processor"]
    assert "kept pace: done 0.4 s after the producer" in rows["processor"]
    assert "48,000 bars in  15.0 s      3,200 bars/s" in rows["loader"]
    assert "fell behind: done 12.6 s after the processor" in rows["loader"]
    assert "192,000 metric rows" in rows["loader"]
    assert "3,000 bars/s (16.0 s" in rows["end"]
    assert "1.0 s" in rows["start-up"]
    assert " ".join(rows["+"].split()) == (
        "+ replay 15.0 s from the first bar at 3,200 bars/s: bounded by the loader"
    )
