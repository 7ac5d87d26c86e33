"""Security scan of the charts and Dockerfiles with checkov: no failed check, every skip justified.

checkov (cached in a virtualenv of its own by ``python -m hftpipe_devstack install``)
scans each chart with its helm framework, once per values file (``--var-file``), and
the two Dockerfiles with its dockerfile framework. The only skips are

- the ``skip-check`` list of ``charts/<chart>/.checkov.yaml``, each entry with its
  justification in the comment lines directly above it (:func:`config_skips`);
- ``# checkov:skip=CKV_DOCKER_x: <reason>`` comments in the Dockerfiles.

checkov's helm framework runs ``helm template --dependency-update <chart>`` from PATH and
silently drops a chart whose rendering fails, reporting nothing and so no failure. Our
helm is a ``go install`` build, which assumes Kubernetes 1.20 (below the charts'
``kubeVersion``) without ``--kube-version``: a small ``helm`` script first on PATH
(:func:`helm_shim`) adds it, with the release name and namespace the chart is installed
with (:func:`hftpipe_devstack.charts.release_of`), and every scan must have covered the
chart's workloads as ``helm template`` renders them.

``--dependency-update`` would try to download a chart's declared dependencies that are
missing from its ``charts/`` (the stack chart's Strimzi operator and
kube-prometheus-stack), which fails here: each chart is scanned as
:func:`hftpipe_devstack.charts.chart_for_helm` gives it to helm, a copy with stand-ins
outside the repository, so that nothing is ever written into ``charts/``. checkov also
finds the stand-ins' own ``Chart.yaml`` there; rendered on their own they fail, and
checkov drops them, as it should.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from hftpipe_devstack import charts, install, thirdparty, versions

REPO = charts.REPO
CHARTS: Final = ("hftpipe-operator", "hftpipe-stack")
VALUES: Final[dict[str, str | None]] = {
    "default": None,
    "kind": "values-kind.yaml",
    "production": "values-production.yaml",
}
CONFIG: Final = ".checkov.yaml"
DOCKERFILES: Final = ("operator/Dockerfile", "workers/Dockerfile")
WORKLOAD_KINDS: Final = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"})
DOCKER_SKIP: Final = re.compile(r"checkov:skip=(?P<ids>[A-Za-z_\d,-]+)(?::(?P<reason>[^\n]*))?")
MIN_REASON_WORDS: Final = 3
TIMEOUT: Final = 300

Report = dict[str, Any]


# ------------------------------------------------------------------------- the tools


@pytest.fixture(scope="module")
def checkov() -> Path:
    """checkov from the cache; a missing install fails (never skips) saying how to fix it."""
    name = f"checkov-{versions.CHECKOV}-py{sys.version_info.major}.{sys.version_info.minor}"
    directory = install.completed(name)
    if directory is None:
        pytest.fail(
            f"checkov {versions.CHECKOV} is not in the cache ({install.cache_root() / name}): "
            f"{thirdparty.INSTALL_HINT}"
        )
    return directory / "bin" / "checkov"


@pytest.fixture(scope="module")
def helm() -> Path:
    """The pinned helm from the cache (what thirdparty.checkov_env puts on PATH)."""
    directory = install.completed(f"{install.HELM.name}-{install.HELM.version}")
    if directory is None:
        pytest.fail(f"helm {install.HELM.version} is not in the cache: {thirdparty.INSTALL_HINT}")
    return directory / "bin" / install.HELM.name


def helm_shim(directory: Path, helm: Path, release: charts.Release) -> Path:
    """A ``helm`` that renders ``helm template`` as ``release`` is installed; else plain helm.

    checkov runs ``helm template --dependency-update <chart> [--values <file>]...``; the
    shim puts the release name, namespace and Kubernetes version in front of that.
    """
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "helm"
    real = shlex.quote(str(helm))
    script.write_text(
        "#!/bin/sh\n"
        "# Written by tests/unit/test_checkov.py for checkov's helm framework.\n"
        'if [ "$1" = template ]; then\n'
        "  shift\n"
        f"  exec {real} template {shlex.quote(release.name)}"
        f" --namespace {shlex.quote(release.namespace)}"
        f' --kube-version {shlex.quote(charts.KUBE_VERSION)} "$@"\n'
        "fi\n"
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)
    return directory


def run_checkov(
    checkov: Path, args: list[str], *, path_prefix: Path | None = None, cwd: Path = REPO
) -> list[Report]:
    """checkov's JSON reports (one per framework that found something to scan)."""
    env = thirdparty.checkov_env()
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    cmd = [str(checkov), *args, "--skip-download", "--output", "json"]
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=TIMEOUT
    )
    # 0: no failed check, 1: some failed; anything else is checkov itself failing.
    if proc.returncode not in (0, 1):
        pytest.fail(f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    try:
        output = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"{shlex.join(cmd)} printed no JSON:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    reports = output if isinstance(output, list) else [output]
    # With nothing to scan, checkov prints only a summary (no check_type, no results).
    return [r for r in reports if "results" in r]


def failures(reports: list[Report]) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for report in reports
        for c in report["results"]["failed_checks"]
    ]


def scanned_resources(reports: list[Report]) -> set[tuple[str, str]]:
    """``(kind, name)`` of what checkov checked (its ids are ``Kind.namespace.name``)."""
    out = set()
    for report in reports:
        results = report["results"]
        for check in (*results["passed_checks"], *results["failed_checks"]):
            parts = str(check["resource"]).split(".", 2)
            if len(parts) == 3:
                out.add((parts[0], parts[2]))
    return out


# ------------------------------------------------------------------------ the skips


def config_skips(text: str) -> dict[str, str]:
    """``skip-check`` entries of a ``.checkov.yaml`` -> their justification.

    The justification is the comment lines directly above the entry, plus a trailing
    comment on its line; a blank line or another entry ends it. An entry without one maps
    to ``""``.
    """
    skips: dict[str, str] = {}
    in_list = False
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not in_list:
            in_list = bool(re.match(r"^skip-check:\s*(#.*)?$", line))
            continue
        if re.match(r"^[^\s#-]", line):  # the next top-level key
            break
        if not stripped:
            comment = []
        elif stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
        elif item := re.match(r"^-\s*([^\s#]+)\s*(?:#\s*(.*))?$", stripped):
            skips[item[1]] = " ".join([*comment, item[2] or ""]).strip()
            comment = []
    return skips


def dockerfile_skips(text: str) -> dict[str, str]:
    """``# checkov:skip=ID[,ID]: reason`` comments of a Dockerfile -> their reason."""
    skips: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            continue
        if match := DOCKER_SKIP.search(stripped):
            for check_id in match["ids"].split(","):
                skips[check_id] = (match["reason"] or "").strip()
    return skips


def justified(reason: str) -> bool:
    return len(reason.split()) >= MIN_REASON_WORDS


def test_skip_readers_see_missing_justifications() -> None:
    config = (
        "framework: [helm]\n"
        "skip-check:\n"
        "  # Needed because the image is loaded into kind.\n"
        "  - CKV_K8S_15\n"
        "  - CKV_K8S_43\n"
        "\n"
        "  # a justification cut off by a blank line\n"
        "\n"
        "  - CKV_K8S_11  # CPU limits throttle the hot loop\n"
        "skip-download: true\n"
    )
    assert config_skips(config) == {
        "CKV_K8S_15": "Needed because the image is loaded into kind.",
        "CKV_K8S_43": "",
        "CKV_K8S_11": "CPU limits throttle the hot loop",
    }
    dockerfile = (
        "# checkov:skip=CKV_DOCKER_2: no HEALTHCHECK in Kubernetes\n# checkov:skip=CKV_DOCKER_3\n"
    )
    assert dockerfile_skips(dockerfile) == {
        "CKV_DOCKER_2": "no HEALTHCHECK in Kubernetes",
        "CKV_DOCKER_3": "",
    }
    assert not justified("")
    assert not justified("TODO")


@functools.cache
def chart_skips(chart: str) -> dict[str, str]:
    path = REPO / "charts" / chart / CONFIG
    if not path.is_file():
        return {}
    text = path.read_text()
    skips = config_skips(text)
    listed = (yaml.safe_load(text) or {}).get("skip-check") or []
    assert isinstance(listed, list), f"{path}: skip-check must be a YAML list, one check a line"
    assert list(skips) == [str(s) for s in listed], (
        f"{path}: the skip-check list {listed} does not read as one entry a line {list(skips)}"
    )
    return skips


@pytest.mark.parametrize("chart", CHARTS)
def test_every_chart_skip_is_justified(chart: str) -> None:
    for check_id, reason in chart_skips(chart).items():
        assert re.fullmatch(r"CKV2?_K8S_\d+", check_id), (
            f"{chart}: {check_id} is no Kubernetes check"
        )
        assert justified(reason), (
            f"charts/{chart}/{CONFIG}: skip of {check_id} needs its justification in the "
            "comment lines directly above it"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_dockerfile_skip_is_justified(dockerfile: str) -> None:
    for check_id, reason in dockerfile_skips((REPO / dockerfile).read_text()).items():
        assert justified(reason), (
            f"{dockerfile}: `# checkov:skip={check_id}` needs a justification after a colon"
        )


# ------------------------------------------------------------------------- the scans


def chart_args(chart_dir: Path, values: str | None) -> list[str]:
    args = ["--directory", str(chart_dir), "--framework", "helm"]
    if values is not None:
        args += ["--var-file", str(chart_dir / values)]
    return args


@functools.cache
def workloads(chart: str, values: str | None) -> frozenset[tuple[str, str]]:
    """``(kind, name)`` of the pod-running objects helm renders for the release."""
    release = charts.release_of(REPO / "charts" / chart)
    files = [release.chart / values] if values else []
    objects = charts.render(release.chart, files, release.name, release.namespace)
    return frozenset(
        (o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] in WORKLOAD_KINDS
    )


@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("chart", CHARTS)
def test_chart_has_no_failed_check(
    chart: str, values: str, checkov: Path, helm: Path, tmp_path: Path
) -> None:
    release = charts.release_of(REPO / "charts" / chart)
    config = release.chart / CONFIG
    args = chart_args(charts.chart_for_helm(release.chart), VALUES[values])
    if config.is_file():
        args += ["--config-file", str(config)]
    reports = run_checkov(checkov, args, path_prefix=helm_shim(tmp_path / "bin", helm, release))
    expected = workloads(chart, VALUES[values])
    assert expected, f"{chart} renders no workload with {values} values"
    missing = expected - scanned_resources(reports)
    assert not missing, (
        f"checkov did not scan {sorted(missing)} of {chart} ({values} values): its `helm "
        "template` failed or printed to stderr (run it by hand with --log-level DEBUG)"
    )
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["results"]["parsing_errors"]
    found = failures(reports)
    assert not found, (
        f"checkov failed checks of {chart} with {values} values (fix the chart, or skip in "
        f"charts/{chart}/{CONFIG} with a justification):\n" + "\n".join(found)
    )


@pytest.mark.parametrize("chart", CHARTS)
def test_every_chart_skip_is_still_needed(
    chart: str, checkov: Path, helm: Path, tmp_path: Path
) -> None:
    """Each skipped check fails without the skip, with at least one values file."""
    skips = chart_skips(chart)
    if not skips:
        return
    release = charts.release_of(REPO / "charts" / chart)
    # A copy without .checkov.yaml: checkov reads the file from the scanned directory.
    copy = tmp_path / "charts" / chart
    shutil.copytree(release.chart, copy, ignore=shutil.ignore_patterns(CONFIG))
    scanned = charts.chart_for_helm(copy)
    assert not (scanned / CONFIG).exists()
    shim = helm_shim(tmp_path / "bin", helm, release)
    unseen = set(skips)
    for values in VALUES.values():
        args = [*chart_args(scanned, values), "--check", ",".join(sorted(skips))]
        reports = run_checkov(checkov, args, path_prefix=shim, cwd=tmp_path)
        assert scanned_resources(reports), f"checkov scanned nothing of {chart}"
        unseen -= {c["check_id"] for r in reports for c in r["results"]["failed_checks"]}
        if not unseen:
            break
    assert not unseen, (
        f"charts/{chart}/{CONFIG} skips {sorted(unseen)}, which no values file fails any "
        "more: remove the skip"
    )


def test_dockerfiles_have_no_failed_check(checkov: Path, helm: Path) -> None:
    """The dockerfile framework needs no helm, but checkov_env puts it on PATH: it must exist."""
    args = [arg for path in DOCKERFILES for arg in ("--file", str(REPO / path))]
    reports = run_checkov(checkov, [*args, "--framework", "dockerfile"])
    scanned = {
        Path(c["file_abs_path"]).resolve()
        for r in reports
        for c in (*r["results"]["passed_checks"], *r["results"]["failed_checks"])
    }
    assert scanned == {(REPO / p).resolve() for p in DOCKERFILES}, scanned
    found = failures(reports)
    assert not found, (
        "checkov failed checks of the Dockerfiles (fix them, or skip with "
        "`# checkov:skip=<id>: <justification>`):\n" + "\n".join(found)
    )
    for report in reports:
        for skipped in report["results"]["skipped_checks"]:
            reason = str(skipped.get("check_result", {}).get("suppress_comment", ""))
            assert justified(reason.lstrip(":").strip()), (
                f"{skipped['file_path']}: skip of {skipped['check_id']} has no justification"
            )
