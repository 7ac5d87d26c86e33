"""The images' build stages, run for real without Docker; their venvs used as the images use them.

There is no Docker engine here, so ``docker build`` never ran. This module replays the
build stage of each Dockerfile (read by the parser in ``tests/dockerfile.py``), outside
Docker but as close to it as it can:

- a tmp dir stands for the build container's file system: WORKDIR maps into it, and each
  COPY brings in exactly what it names from the build context (the repository root,
  less what ``.dockerignore`` excludes), with Docker's rules for directories;
- the environment is the build stage's ENV, except that ``UV_PROJECT_ENVIRONMENT`` points
  at a tmp venv instead of the image's ``/opt/venv``; of this machine's environment only
  HOME (uv's default, warm cache) and TLS/proxy settings get in, and no user uv.toml;
- ``pip install uv==<X>`` is not run: the Makefile's pinned uv (``UV_VERSION``, cached in
  ``<HFTPIPE_CACHE_DIR>/uv-<X>``) must be that very version, and it runs every ``uv sync``
  with the Dockerfile's own arguments, on this machine's ``python3.<Y>`` for the base
  image's ``python:3.<Y>`` (named by UV_PYTHON and first on PATH: the image has only its
  base's interpreter);
- any other RUN, and any instruction the replay cannot reproduce, fails the test.

Then everything of the build stage but the venv is deleted (the final stage copies only
the venv), and the venv is used as the final stage uses it: the final stage's ENV, with
PATH the venv's ``bin`` followed by ``/usr/bin:/bin``, no PYTHONPATH or VIRTUAL_ENV of the
dev venv, an empty working directory and a HOME that does not exist (the image's user has
none). There the ENTRYPOINT must resolve into the venv and run (``hftpipe --help`` and the
``--help`` of every subcommand the operator's pods run; the operator's ENTRYPOINT starts
kopf and has no ``--help``, so its console script's entry point is loaded instead), every
module of the installed first-party packages must import, no package outside the
runtime closure of ``uv.lock`` may be installed (none of the dev group: pytest, ruff,
mypy, ...), and the workers' venv must hold the sample data where
``hftpipe_operator.crd.SAMPLE_SOURCE`` says.

Not reproduced: the base image itself (its Debian userland and its ``/usr/local`` Python
build), the image's user (uid 10001; the processes here run as the test's user) and a
cold uv cache (the image's build downloads what this machine's cache already holds).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import posixpath
import shlex
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dockerfile import (
    VARIABLE,
    Dockerfile,
    DockerIgnore,
    Instruction,
    Stage,
    base_python,
    console_scripts,
    final_entrypoint,
    makefile_uv_version,
    no_install_packages,
    normalize,
    parse,
    parse_env,
    pip_install_requirements,
    shell_commands,
    substitute,
    uv_syncs,
    venv_of,
    venv_source_stage,
)

from hftpipe_devstack import install
from hftpipe_operator import crd
from hftpipe_operator.workerapi import COMMANDS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "workers")
WORKER_SUBCOMMANDS = sorted({"produce", "process", "load", *COMMANDS.values()})
"""``hftpipe`` subcommands whose ``--help`` must run in the workers image: the ones the
operator's pods run (``hftpipe_operator.workerapi.COMMANDS``)."""

BASE_PATH = "/usr/bin:/bin"
"""Stands for the base image's PATH (``$PATH`` in the Dockerfile) after the build."""

PASSED_THROUGH = (
    "HOME",  # uv's default cache, ~/.cache/uv (UV_CACHE_DIR or XDG_CACHE_HOME if set)
    "UV_CACHE_DIR",
    "XDG_CACHE_HOME",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "all_proxy",
)
"""The only variables of this machine the build steps see (where uv's cache and the
network are), besides the Dockerfile's ENV."""

NO_EFFECT_ON_THE_VENV = frozenset(
    {"LABEL", "EXPOSE", "STOPSIGNAL", "HEALTHCHECK", "CMD", "ENTRYPOINT", "USER", "VOLUME"}
)
"""Build-stage instructions that change nothing the final stage copies (the venv)."""

MUST_NOT_BE_IMPORTABLE = frozenset({"pytest", "ruff", "mypy"})
"""Dev tools whose absence from the images is checked by import name, whatever the lock."""

SYNC_TIMEOUT = 600
RUN_TIMEOUT = 120


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: int) -> tuple[int, str]:
    """``(exit code, stdout and stderr)`` of ``argv``; a timeout counts as exit code -1."""
    try:
        proc = subprocess.run(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return -1, f"{output}\n[timed out after {timeout}s]"
    return proc.returncode, proc.stdout


def expand(value: str, variables: dict[str, str], where: str) -> str:
    """``$VAR`` and ``${VAR}`` as Docker substitutes them in ENV, WORKDIR and COPY."""

    for match in VARIABLE.finditer(value):
        if (name := match[1] or match[2]) not in variables:
            pytest.fail(f"{where}: ${name} is not set at this point of the build")
    out = substitute(value, variables)
    if "${" in out:
        pytest.fail(f"{where}: {value!r} uses a substitution the replay does not support")
    return out


# ----------------------------------------------------------------------------- tools


def pinned_uv() -> tuple[str, Path]:
    """``(version, binary)`` of the Makefile's uv (``$(UV)``: ``<cache>/uv-<UV_VERSION>``)."""
    version = makefile_uv_version(REPO)
    binary = install.cache_root() / f"uv-{version}" / "bin" / "uv"
    if not binary.is_file():
        pytest.fail(f"the pinned uv {version} is missing at {binary}: run `make venv`")
    return version, binary


def machine_python(version: str) -> Path:
    """This machine's ``python<version>``, through any shim to the real interpreter."""
    found = shutil.which(f"python{version}")
    if found is None:
        pytest.fail(f"no python{version} on PATH: the images' base is python:{version}")
    code, output = run(
        [found, "-c", "import sys; print(sys.executable)"],
        env=dict(os.environ),
        cwd=REPO,
        timeout=RUN_TIMEOUT,
    )
    assert code == 0, f"{found} does not run:\n{tail(output)}"
    return Path(output.strip().splitlines()[-1])


# ------------------------------------------------------------------------ uv.lock


def lock_closure(lock: dict[str, Any], roots: list[tuple[str, tuple[str, ...]]]) -> set[str]:
    """Names of the packages ``roots`` (``(name, extras)``) need per ``uv.lock``, themselves
    included; markers are ignored, so this is a superset of what any platform installs."""
    entries: dict[str, list[dict[str, Any]]] = {}
    for package in lock["package"]:
        entries.setdefault(package["name"], []).append(package)
    seen: set[tuple[str, tuple[str, ...]]] = set()
    names: set[str] = set()
    todo = list(roots)
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        names.add(name)
        assert name in entries, f"uv.lock has no package {name!r}"
        for entry in entries[name]:
            dependencies = list(entry.get("dependencies", []))
            for extra in extras:
                dependencies += entry.get("optional-dependencies", {}).get(extra, [])
            todo += [(d["name"], tuple(d.get("extra", ()))) for d in dependencies]
    return names


def hatch_packages(member: Path) -> list[str]:
    """Import names a workspace member's wheel holds (hatch's ``packages``)."""
    pyproject = tomllib.loads((member / "pyproject.toml").read_text())
    wheel = pyproject.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {})
    return [Path(p).name for p in wheel.get("wheel", {}).get("packages", [])]


# -------------------------------------------------------------------------- replay


@dataclass
class Build:
    """A build stage replayed into ``venv``, and how the final stage would run it."""

    image: str
    parsed: Dockerfile
    python: str
    container_venv: str
    venv: Path
    rootfs: Path
    package: str
    extras: tuple[str, ...]
    left_out: frozenset[str] = frozenset()
    """What the last ``uv sync`` leaves out (``--no-install-package``)."""
    seconds: float = 0.0
    runtime_env: dict[str, str] = field(default_factory=dict)
    cwd: Path = Path()

    def where(self, line: int) -> str:
        return f"{self.parsed.path.relative_to(REPO)}:{line}"

    def run(self, argv: list[str], what: str) -> str:
        """Run ``argv`` as the final stage would (its ENV, PATH lookup); fail unless it exits 0."""
        executable = shutil.which(argv[0], path=self.runtime_env["PATH"])
        assert executable is not None, (
            f"{self.image} image: {argv[0]!r} is not on the final stage's PATH "
            f"({self.runtime_env['PATH']})"
        )
        code, output = run(
            [executable, *argv[1:]], env=self.runtime_env, cwd=self.cwd, timeout=RUN_TIMEOUT
        )
        command = shlex.join(argv)
        command = command if len(command) <= 200 else f"{command[:200]}..."
        assert code == 0, f"{self.image} image: {what}: `{command}` exited {code}\n{tail(output)}"
        return output

    def python_json(self, what: str, code: str, *args: str) -> Any:
        """JSON printed by ``python -c code args`` of the image's PATH (the venv's python)."""
        output = self.run(["python", "-c", code, *args], what)
        return json.loads(output.strip().splitlines()[-1])


class Replay:
    """Runs a build stage's instructions in a tmp dir standing for the container."""

    def __init__(self, build: Build, python: Path, uv: tuple[str, Path]) -> None:
        self.build = build
        self.rootfs = build.rootfs
        self.uv_version, self.uv = uv
        self.ignore = DockerIgnore.read(REPO)
        self.workdir = "/"
        self.env: dict[str, str] = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
        self.env.update(
            PATH=f"{python.parent}:{BASE_PATH}",
            LANG="C.UTF-8",  # as the python base image sets it
            # The base image's interpreter is the only one uv finds there: this one here.
            UV_PYTHON=str(python),
            # No uv.toml of this machine's user (a build container has none).
            XDG_CONFIG_HOME=str(build.rootfs.parent / "xdg-config"),
        )

    def host(self, container_path: str) -> Path:
        path = posixpath.normpath(posixpath.join(self.workdir, container_path))
        return self.rootfs / path.lstrip("/")

    def stage(self, stage: Stage) -> None:
        for instruction in stage.instructions:
            where = self.build.where(instruction.line)
            if instruction.keyword == "ENV":
                for name, value in parse_env(instruction.args).items():
                    self.env[name] = expand(value, self.env, where)
                    if name == "UV_PROJECT_ENVIRONMENT":
                        assert self.env[name] == self.build.container_venv
                        self.env[name] = str(self.build.venv)
            elif instruction.keyword == "WORKDIR":
                self.workdir = posixpath.normpath(
                    posixpath.join(self.workdir, expand(instruction.args, self.env, where))
                )
                self.host(".").mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY":
                self.copy(instruction, where)
            elif instruction.keyword == "RUN":
                self.run_instruction(instruction, where)
            elif instruction.keyword not in NO_EFFECT_ON_THE_VENV:
                pytest.fail(
                    f"{where}: {instruction.keyword} {instruction.args}: the replay cannot "
                    "reproduce this instruction outside Docker; teach it to this test"
                )

    def copy(self, instruction: Instruction, where: str) -> None:
        args = instruction.args
        tokens: list[str] = json.loads(args) if args.startswith("[") else args.split()
        while tokens and tokens[0].startswith("--"):
            flag = tokens.pop(0)
            if not flag.startswith(("--chown=", "--chmod=", "--link")):
                pytest.fail(f"{where}: COPY {flag}: not reproducible here (only the context)")
        assert len(tokens) >= 2, f"{where}: COPY {args}: want sources and a destination"
        *sources, dest = tokens
        dest = expand(dest, self.env, where)
        into_dir = dest.endswith("/")
        assert into_dir or len(sources) == 1, (
            f"{where}: COPY of several sources to {dest!r}: Docker wants a trailing '/'"
        )
        target = self.host(dest)
        for source in sources:
            relative = posixpath.normpath(expand(source, self.env, where)).lstrip("/")
            assert not relative.startswith(".."), f"{where}: {source} is outside the context"
            if any(c in relative for c in "*?["):
                matches = sorted(REPO.glob(relative))
            else:
                matches = [REPO / relative] if (REPO / relative).exists() else []
            matches = [m for m in matches if not self.ignore.excludes(self.rel(m))]
            assert matches, (
                f"{where}: COPY {source}: not in the build context (missing, or excluded by "
                ".dockerignore)"
            )
            for match in matches:
                if match.is_dir():
                    self.copy_tree(match, target)
                else:
                    destination = target / match.name if into_dir else target
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(match, destination, follow_symlinks=False)

    @staticmethod
    def rel(path: Path) -> str:
        return path.relative_to(REPO).as_posix()

    def copy_tree(self, source: Path, target: Path) -> None:
        """A directory's contents into ``target``, as COPY does (less what is ignored)."""
        target.mkdir(parents=True, exist_ok=True)
        for directory, dirnames, filenames in os.walk(source):
            here = Path(directory)
            for name in sorted(dirnames):
                if not self.ignore.excludes(self.rel(here / name)):
                    (target / (here / name).relative_to(source)).mkdir(exist_ok=True)
            for name in sorted(filenames):
                if self.ignore.excludes(self.rel(here / name)):
                    continue
                destination = target / (here / name).relative_to(source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(here / name, destination, follow_symlinks=False)

    def run_instruction(self, instruction: Instruction, where: str) -> None:
        lexer = shlex.shlex(instruction.args, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        separators = {t for t in lexer if t and set(t) <= set(";&|")} - {"&&"}
        if separators or instruction.args.startswith("--"):
            pytest.fail(
                f"{where}: RUN {instruction.args}: only `&&` chains of commands without "
                "RUN flags are replayed"
            )
        for command in shell_commands(instruction):
            if command[:2] == ["uv", "sync"]:
                self.uv_sync(command, where)
            elif (requirements := pip_install_requirements(command)) is not None:
                self.pip_install_uv(requirements, where)
            else:
                pytest.fail(
                    f"{where}: `{shlex.join(command)}`: the replay only runs `uv sync` and "
                    "checks `pip install uv==<pin>`; teach it this command"
                )

    def pip_install_uv(self, requirements: list[str], where: str) -> None:
        assert requirements == [f"uv=={self.uv_version}"], (
            f"{where}: pip installs {requirements}; this replay stands in the Makefile's uv "
            f"{self.uv_version} for `uv=={self.uv_version}` and nothing else"
        )
        code, output = run(
            [str(self.uv), "--version"], env=self.env, cwd=self.rootfs, timeout=RUN_TIMEOUT
        )
        assert code == 0, f"{self.uv} --version failed:\n{tail(output)}"
        assert output.split()[:2] == ["uv", self.uv_version], (
            f"{self.uv} is {output.strip()!r}, not uv {self.uv_version}"
        )

    def uv_sync(self, command: list[str], where: str) -> None:
        assert "$" not in " ".join(command), f"{where}: shell expansion is not replayed"
        code, output = run(
            [str(self.uv), *command[1:]],
            env=self.env,
            cwd=self.host("."),
            timeout=SYNC_TIMEOUT,
        )
        assert code == 0, (
            f"{where}: `{shlex.join(command)}` failed (exit {code}) with the pinned uv "
            f"{self.uv_version} in {self.host('.')}:\n{tail(output)}"
        )


def runtime_env(parsed: Dockerfile, container_venv: str, venv: Path, home: Path) -> dict[str, str]:
    """The final stage's ENV, its ``/opt/venv`` moved to ``venv``, ``$PATH`` = /usr/bin:/bin."""
    env = {"PATH": BASE_PATH, "LANG": "C.UTF-8", "HOME": str(home)}
    for stage in reversed(parsed.lineage(parsed.final)):
        for instruction in stage.of("ENV"):
            where = f"{parsed.path.relative_to(REPO)}:{instruction.line}"
            for name, value in parse_env(instruction.args).items():
                env[name] = expand(value, env, where)
    return {name: value.replace(container_venv, str(venv)) for name, value in env.items()}


def replay(image: str, tmp: Path) -> Build:
    parsed = parse(REPO / image / "Dockerfile")
    container_venv = venv_of(parsed)
    source = venv_source_stage(parsed, container_venv)
    syncs = [(line, tokens) for s in parsed.lineage(source) for line, tokens in uv_syncs(s)]
    assert syncs, f"{parsed.path}: no `uv sync` in the build stage"
    last = syncs[-1][1]
    assert "--package" in last, f"{parsed.path}:{syncs[-1][0]}: the last uv sync names no package"
    extras = [last[i + 1] for i, token in enumerate(last[:-1]) if token == "--extra"]
    assert "--all-extras" not in last, f"{parsed.path}: --all-extras is not replayed"
    python_version = base_python(parsed)
    build = Build(
        image=image,
        parsed=parsed,
        python=python_version,
        container_venv=container_venv,
        venv=tmp / "venv",
        rootfs=tmp / "rootfs",
        package=last[last.index("--package") + 1],
        extras=tuple(extras),
        left_out=no_install_packages(last),
    )
    build.rootfs.mkdir()
    replayer = Replay(build, machine_python(python_version), pinned_uv())
    started = time.monotonic()
    for stage in reversed(parsed.lineage(source)):
        replayer.stage(stage)
    build.seconds = time.monotonic() - started
    # Only the venv reaches the final stage: the build's WORKDIR (/src) must not be needed.
    shutil.rmtree(build.rootfs)
    build.cwd = tmp / "cwd"
    build.cwd.mkdir()
    build.runtime_env = runtime_env(parsed, container_venv, build.venv, tmp / "no-home")
    return build


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Build]:
    """``built(image)``: the image's build stage replayed (once per module) into a tmp venv."""
    done: dict[str, Build] = {}
    failed: dict[str, str] = {}

    def get(image: str) -> Build:
        if image in failed:
            pytest.fail(f"the replay of {image}/Dockerfile failed before:\n{failed[image]}")
        if image not in done:
            try:
                done[image] = replay(image, tmp_path_factory.mktemp(f"{image}-image"))
            except (AssertionError, pytest.fail.Exception) as exc:
                failed[image] = str(exc)
                raise
        return done[image]

    return get


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("image", IMAGES)
def test_build_stage_runs_outside_docker(image: str, built: Callable[[str], Build]) -> None:
    build = built(image)
    assert (build.venv / "bin" / "python").exists(), f"uv sync made no venv at {build.venv}"
    version = build.python_json(
        "the venv's Python version", "import json, sys; print(json.dumps(sys.version[:4]))"
    )
    assert version.startswith(build.python), (
        f"the {image} venv runs Python {version}, the image's base is python:{build.python}"
    )
    for pth in (build.venv / "lib" / f"python{build.python}" / "site-packages").glob("*.pth"):
        assert str(build.rootfs) not in pth.read_text(), (
            f"{pth.name} points into the build stage's file system, which the final stage "
            "does not copy (an editable install?)"
        )
    print(f"{image}: build stage replayed in {build.seconds:.1f}s")


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_runs_from_the_venv(image: str, built: Callable[[str], Build]) -> None:
    build = built(image)
    line, entrypoint = final_entrypoint(build.parsed)
    where = build.where(line)
    resolved = shutil.which(entrypoint[0], path=build.runtime_env["PATH"])
    assert resolved is not None, f"{where}: {entrypoint[0]} is not on the final stage's PATH"
    assert Path(resolved).parent == build.venv / "bin", (
        f"{where}: {entrypoint[0]} resolves to {resolved}, not into the venv"
    )
    # The console script's target imports and is the one its pyproject.toml declares.
    loaded = build.python_json(
        f"load the entry point of the console script {entrypoint[0]}",
        "import json, sys; from importlib.metadata import entry_points; "
        "(ep,) = entry_points(group='console_scripts', name=sys.argv[1]); "
        "target = ep.load(); assert callable(target), ep; print(json.dumps(ep.value))",
        entrypoint[0],
    )
    declared = console_scripts(REPO / image).get(entrypoint[0])
    assert loaded == declared, (
        f"{where}: the installed {entrypoint[0]} loads {loaded}, {image}/pyproject.toml "
        f"declares {declared}"
    )
    # hftpipe-operator takes no arguments: it starts kopf against a cluster at once, so
    # loading its entry point above (which imports hftpipe_operator.handlers) is its check.
    if image == "workers":
        output = build.run([*entrypoint, "--help"], f"{where}: ENTRYPOINT --help")
        for subcommand in WORKER_SUBCOMMANDS:
            assert subcommand in output, f"`hftpipe --help` lists no {subcommand}:\n{output}"
            build.run([*entrypoint, subcommand, "--help"], f"{where}: ENTRYPOINT {subcommand}")


@pytest.mark.parametrize("image", IMAGES)
def test_first_party_modules_import_in_the_final_stage(
    image: str, built: Callable[[str], Build]
) -> None:
    """Every module of the workspace packages in the venv, function-level imports aside.

    An image whose syncs leave packages out (``--no-install-package``: the operator's
    leaves out the data plane's libraries) imports every module of its own package,
    and of the workspace packages it depends on only what that imports."""
    build = built(image)
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    closure = (
        {normalize(build.package)}
        if build.left_out
        else lock_closure(lock, [(build.package, build.extras)])
    )
    members = {
        normalize(p["name"]): REPO / p["source"]["editable"]
        for p in lock["package"]
        if "editable" in p.get("source", {})
    }
    packages = sorted(
        m for name, path in members.items() if name in closure for m in hatch_packages(path)
    )
    assert packages, f"{image}: no workspace package in the closure of {build.package}"
    failures = build.python_json(
        f"import every module of {', '.join(packages)}",
        "import importlib, json, pkgutil, sys, traceback\n"
        "failed = {}\n"
        "for top in sys.argv[1:]:\n"
        "    package = importlib.import_module(top)\n"
        "    for info in pkgutil.walk_packages(package.__path__, top + '.'):\n"
        "        if info.name.rsplit('.', 1)[-1] == '__main__':\n"
        "            continue\n"
        "        try:\n"
        "            importlib.import_module(info.name)\n"
        "        except Exception:\n"
        "            failed[info.name] = traceback.format_exc(limit=3)\n"
        "print(json.dumps(failed))",
        *packages,
    )
    assert not failures, f"{image} image: modules that do not import:\n" + "\n".join(
        f"{name}:\n{text}" for name, text in failures.items()
    )


@pytest.mark.parametrize("image", IMAGES)
def test_no_dev_only_package_in_the_venv(image: str, built: Callable[[str], Build]) -> None:
    build = built(image)
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    # The closure below is of what the image runs: the member whose script is the ENTRYPOINT.
    entrypoint = final_entrypoint(build.parsed)[1][0]
    owners = [
        p["name"]
        for p in lock["package"]
        if "editable" in p.get("source", {})
        and entrypoint in console_scripts(REPO / p["source"]["editable"])
    ]
    assert owners == [build.package], (
        f"{image} image: the build installs --package {build.package}, the ENTRYPOINT "
        f"{entrypoint} is a script of {owners}"
    )
    runtime = lock_closure(lock, [(build.package, build.extras)])
    installed = {
        normalize(name)
        for name in build.python_json(
            "list the installed distributions",
            "import importlib.metadata as m, json; "
            "print(json.dumps(sorted({d.metadata['Name'] for d in m.distributions()})))",
        )
    }
    assert normalize(build.package) in installed, f"{build.package} is not in the {image} venv"
    left_in = installed & {normalize(name) for name in build.left_out}
    assert not left_in, f"{image} image: installed though its syncs leave them out: {left_in}"
    assert installed <= runtime, (
        f"{image} image: installed but not needed by {build.package} per uv.lock: "
        f"{sorted(installed - runtime)}"
    )
    # The dev side: the dev groups and the workspace members the image does not need.
    members = set(lock["manifest"]["members"])
    dev_roots = [(m, ()) for m in members - runtime] + [
        (d["name"], tuple(d.get("extra", ())))
        for p in lock["package"]
        for group in p.get("dev-dependencies", {}).values()
        for d in group
    ]
    dev_only = lock_closure(lock, dev_roots) - runtime
    assert dev_only >= MUST_NOT_BE_IMPORTABLE, f"uv.lock's dev side is {sorted(dev_only)}"
    modules = {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if all(normalize(d) in dev_only for d in dists)
    }
    modules |= {name.replace("-", "_") for name in members - runtime} | MUST_NOT_BE_IMPORTABLE
    importable = build.python_json(
        "look for dev-only modules",
        "import importlib.util, json, sys; "
        "print(json.dumps([n for n in sys.argv[1:] if importlib.util.find_spec(n)]))",
        *sorted(modules),
    )
    assert not importable, f"{image} image: dev-only modules importable: {importable}"


def test_sample_data_is_in_the_workers_venv(built: Callable[[str], Build]) -> None:
    build = built("workers")
    prefix = build.container_venv.rstrip("/") + "/"
    assert crd.SAMPLE_SOURCE.startswith(prefix), (
        f"SAMPLE_SOURCE {crd.SAMPLE_SOURCE} is not under the image's venv {build.container_venv}"
    )
    sample = build.venv / crd.SAMPLE_SOURCE.removeprefix(prefix)
    assert sample.is_file(), (
        f"SAMPLE_SOURCE {crd.SAMPLE_SOURCE} is not in the workers image: no {sample}"
    )
    assert sample.stat().st_size > 0, f"{sample} is empty"


def test_the_workers_image_reads_every_source_the_crd_promises(
    built: Callable[[str], Build],
) -> None:
    """s3:// and http(s):// (fsspec's remote filesystems) and each compression suffix: the
    image has to carry their packages itself (the dev venv gets some through other tools)."""
    build = built("workers")
    missing = build.python_json(
        "instantiate the source filesystems and codecs",
        "import json, fsspec, fsspec.compression, fsspec.utils\n"
        "missing = []\n"
        "for protocol in ('file', 'http', 'https', 's3'):\n"
        "    try:\n"
        "        fsspec.get_filesystem_class(protocol)\n"
        "    except Exception as exc:\n"
        "        missing.append(f'{protocol}: {exc}')\n"
        "for suffix in ('gz', 'bz2', 'xz', 'zst'):\n"
        "    if fsspec.utils.infer_compression('f.csv.' + suffix) is None:\n"
        "        missing.append(f'.{suffix}: no codec')\n"
        "print(json.dumps(missing))",
    )
    assert not missing, f"workers image cannot read: {missing}"
