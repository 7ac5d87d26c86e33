"""The workspace at its dependency floors: each direct dependency at the lowest release
its specifier allows, in a virtualenv of its own, to run the tests with.

A floor is a promise: ``duckdb>=1.4`` says the code works with DuckDB 1.4.0. Nothing
checks that promise while the lock pins the newest releases, so :func:`floors_venv`
resolves the workspace members' requirements with uv's ``--resolution lowest-direct``
(each direct dependency at its floor, what those pull in at its newest: what a fresh
install next to an old pin gets) and installs the result, wheels only, into
``<cache>/floors-<hash>``. The hash covers the requirement strings, the Python version
and uv's, so an edited floor builds a new virtualenv beside the old one, and a built
one is reused by every clone on the machine.

The cached virtualenv holds third-party packages only. :func:`overlay` makes a small
virtualenv per run that sees them through a ``.pth`` file and has the checkout's own
packages installed editable, so two clones never point one cached virtualenv at each
other's sources.

No fakesnow release runs beside DuckDB's floor (see :data:`LIFTED_FOR_FAKESNOW`), so the
tests that enter fakesnow run in a virtualenv of their own, :func:`fakesnow_venv`: the
floors' pins with DuckDB's left out and the dev group's fakesnow added. Loaded as a pytest
plugin (``pytest -p hftpipe_devstack.floors``) in the floors' own run, this module stands
in for the fakesnow module that the tests import, and fails any test that enters it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import tomllib
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from . import install, versions

if TYPE_CHECKING:
    import pytest

MEMBERS: Final = ("workers", "operator", "devstack")
"""The workspace packages (directories under the root), installed editable, never resolved."""

TEST_TOOLS: Final = ("pytest", "pytest-timeout", "moto")
"""Dev-group requirements the tests need to run at all (moto: the S3 endpoint of the
``s3://`` source test). Resolved after the floors, at their newest releases that fit
beside them: moto's own dependencies would otherwise pull some floors up (cfn-lint
wants a newer PyYAML), and the floors are the workspace's, not the test tools'."""

RESOLUTION: Final = "lowest-direct"

FAKESNOW: Final = "fakesnow"
"""The in-process Snowflake of the Snowflake sink's tests (a dev-group requirement)."""

LIFTED_FOR_FAKESNOW: Final = ("duckdb",)
"""The floors that the fakesnow virtualenv leaves out, for fakesnow's own requirement.

No fakesnow release installs and works beside DuckDB's floor, 1.4.0: 0.12 requires
``duckdb~=2.0.0``; 0.11.0 to 0.11.4 require ``duckdb~=1.4.1``, and even with that
overridden their ``write_pandas`` cannot create a table from a datetime column, which the
Snowflake sink writes (``NotImplementedError: sql_type dtype=dtype('<M8[ns]')``: 8 of the
11 tests through fakesnow fail); older releases require a DuckDB below 1.4. So the tests
through fakesnow run with every other floor as it is (snowflake-connector-python, pandas,
numpy, pyarrow, cryptography...) and DuckDB at what the dev group's fakesnow requires:
there DuckDB is only fakesnow's engine, and its floor is what the floors' own run checks."""

OUTSIDE_FAKESNOW_VENV: Final = (
    "this test enters fakesnow, which cannot run beside DuckDB's floor: list it in "
    "THROUGH_FAKESNOW (tests/integration/test_dependency_floors.py), which runs it in the "
    "fakesnow virtualenv (hftpipe_devstack.floors.fakesnow_venv)"
)


def canonical(name: str) -> str:
    """A distribution name as the registries compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    """``snowflake-connector-python`` of ``snowflake-connector-python[pandas]>=3.12``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    if match is None:
        raise ValueError(f"not a requirement: {spec!r}")
    return canonical(match.group(1))


def requirements(root: Path) -> list[str]:
    """Each workspace member's dependencies, less the members themselves, each string once."""
    members = {canonical(f"hftpipe-{m}") for m in MEMBERS}
    specs: list[str] = []
    for member in MEMBERS:
        project = tomllib.loads((root / member / "pyproject.toml").read_text())["project"]
        specs += [s for s in project["dependencies"] if requirement_name(s) not in members]
    return list(dict.fromkeys(specs))


def tool_requirements(root: Path) -> list[str]:
    """The :data:`TEST_TOOLS` specifiers of the root's dev group."""
    dev = tomllib.loads((root / "pyproject.toml").read_text())["dependency-groups"]["dev"]
    tools = {canonical(t) for t in TEST_TOOLS}
    return [s for s in dev if requirement_name(s) in tools]


def fakesnow_requirement(root: Path) -> str:
    """The dev group's :data:`FAKESNOW` specifier (``fakesnow>=0.12,<0.13``)."""
    dev = tomllib.loads((root / "pyproject.toml").read_text())["dependency-groups"]["dev"]
    (spec,) = (s for s in dev if requirement_name(s) == FAKESNOW)
    return str(spec)


def cache_name(
    specs: Sequence[str],
    tools: Sequence[str] = (),
    resolution: str | None = RESOLUTION,
    prefix: str = "floors",
) -> str:
    """``<prefix>-<16 hex digits>`` naming the virtualenv that ``specs`` (and ``tools``)
    resolve to."""
    key = {
        "requirements": list(specs),
        "tools": list(tools),
        "resolution": resolution,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "uv": versions.UV,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"{prefix}-{digest[:16]}"


def parse_pins(text: str) -> dict[str, str]:
    """``{name: version}`` of ``uv pip compile`` output (``name==version`` lines)."""
    pins = {}
    for line in text.splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[canonical(name.split("[", 1)[0])] = version.split(";", 1)[0].strip()
    return pins


@dataclass(frozen=True)
class Floors:
    """A built floors virtualenv: where it is, the workspace's specifiers it was resolved
    from, and the version resolved for each package (``floors.txt`` in it)."""

    path: Path
    requirements: tuple[str, ...]
    pins: dict[str, str]

    @property
    def site_packages(self) -> Path:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        return self.path / "lib" / version / "site-packages"


_ENV: Final = {"UV_PYTHON_DOWNLOADS": "never"}
"""Never let uv fetch a Python build of its own: only package registries are reachable."""


def floors_venv(root: Path) -> Floors:
    """The workspace's requirements at their floors, with the test tools, installed in
    ``<cache>/floors-<hash>`` (built on first use: under a minute with uv's download
    cache warm)."""
    specs, tools = requirements(root), tool_requirements(root)
    path = _venv(cache_name(specs, tools), specs, tools, RESOLUTION)
    return Floors(path, tuple(specs), parse_pins((path / "floors.txt").read_text()))


def fakesnow_venv(root: Path, floors: Floors) -> Floors:
    """``floors``' pins but :data:`LIFTED_FOR_FAKESNOW`, the dev group's fakesnow and what
    it requires, with the test tools: the virtualenv of the tests that enter fakesnow."""
    kept = [
        f"{name}=={version}"
        for name, version in sorted(floors.pins.items())
        if name not in LIFTED_FOR_FAKESNOW
    ]
    specs, tools = [*kept, fakesnow_requirement(root)], tool_requirements(root)
    # The floors' pins fix everything but fakesnow and what it brings: resolved highest.
    path = _venv(cache_name(specs, tools, None, "floors-fakesnow"), specs, tools, None)
    return Floors(path, tuple(specs), parse_pins((path / "floors.txt").read_text()))


def _venv(name: str, specs: Sequence[str], tools: Sequence[str], resolution: str | None) -> Path:
    """``<cache>/<name>``, built on first use: ``specs`` resolved (with ``resolution``)
    into its ``floors.txt``, the test tools resolved around those pins into its
    ``requirements.txt``, all of it installed."""

    def build(tmp: Path) -> None:
        install.log(f"resolving the dependency floors into {install.cache_root() / name}")
        uv, python = install.uv(), str(tmp / "bin" / "python")
        install.run_step(
            [uv, "venv", "--quiet", "--relocatable", "--python", sys.executable, str(tmp)],
            env=_ENV,
            what="creating the floors virtualenv",
        )
        (tmp / "requirements.in").write_text("".join(f"{s}\n" for s in specs))
        (tmp / "tools.in").write_text("".join(f"{s}\n" for s in tools))
        # Wheels only: a floor whose release has no wheel for this Python would build
        # from source (minutes, or not at all); --only-binary makes the resolver pass
        # over it, and the version it resolves then differs from the floor, which the
        # floors test reports.
        compile_ = [uv, "pip", "compile", "--quiet", "--only-binary", ":all:"]
        strategy = ("--resolution", resolution) if resolution else ()
        install.run_step(
            [
                *compile_,
                *strategy,
                *("--python", python, "--no-header"),
                *("--output-file", str(tmp / "floors.txt"), str(tmp / "requirements.in")),
            ],
            env=_ENV,
            what=" ".join(("uv pip compile", *strategy, f"of the requirements of {name}")),
        )
        # The floors' pins as requirements, the test tools around them.
        install.run_step(
            [
                *compile_,
                *("--python", python, "--no-header"),
                *("--output-file", str(tmp / "requirements.txt")),
                *(str(tmp / "floors.txt"), str(tmp / "tools.in")),
            ],
            env=_ENV,
            what="uv pip compile of the test tools beside the floors",
        )
        with install.Ticker("installing the floors"):
            install.run_step(
                [
                    *(uv, "pip", "sync", "--quiet", "--only-binary", ":all:"),
                    *("--python", python, str(tmp / "requirements.txt")),
                ],
                env=_ENV,
                what="uv pip sync of the floors",
            )

    return install.cached(name, build)


def overlay(floors: Floors, root: Path, dest: Path) -> Path:
    """A virtualenv at ``dest`` that imports ``floors``' packages and has ``root``'s
    workspace members installed editable; returns its python."""
    uv = install.uv()
    install.run_step(
        [uv, "venv", "--quiet", "--python", sys.executable, str(dest)],
        env=_ENV,
        what="creating the overlay virtualenv",
    )
    python = dest / "bin" / "python"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    # A .pth line that starts with 'import' runs: addsitedir also reads the floors'
    # own .pth files, as if their site-packages were this virtualenv's.
    (dest / "lib" / version / "site-packages" / "_hftpipe_floors.pth").write_text(
        f"import site; site.addsitedir({str(floors.site_packages)!r})\n"
    )
    editable = [arg for m in MEMBERS for arg in ("--editable", str(root / m))]
    install.run_step(
        [uv, "pip", "install", "--quiet", "--no-deps", "--python", str(python), *editable],
        env=_ENV,
        what="installing the workspace packages editable",
    )
    return python


# ------------------------------------------------------------------- pytest plugin


def _fakesnow_patch(*_args: object, **_kwargs: object) -> NoReturn:
    import pytest  # noqa: PLC0415 - only the plugin, inside a pytest run, needs it

    pytest.fail(OUTSIDE_FAKESNOW_VENV)


def pytest_configure(config: pytest.Config) -> None:
    """Plugin hook: a stand-in ``fakesnow`` module where the real one is not installed
    (the test modules import it; a test that enters it fails)."""
    del config
    if "fakesnow" in sys.modules or importlib.util.find_spec("fakesnow") is not None:
        return
    stub = types.ModuleType("fakesnow", OUTSIDE_FAKESNOW_VENV)
    stub.patch = _fakesnow_patch  # type: ignore[attr-defined]
    sys.modules["fakesnow"] = stub
