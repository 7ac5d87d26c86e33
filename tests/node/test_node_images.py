"""The images the node runs, checked by running them: what ``docker build`` would have made.

The operator and workers images are built from their Dockerfiles, unchanged, by buildah
(``hftpipe_devstack.images``) and imported into the node's containerd. Each check here
runs the imported image once with ``ctr run``: its own root file system (read-only, as
the charts mount it), its own user (the Dockerfile's ``USER 10001``), its own ENV and
PATH. So these are the Dockerfile's results, not a replay of its steps outside a
container (which ``tests/integration/test_image_builds.py`` did before the real node).

Also run: every image of the node (the labelled stand-ins, CoreDNS, the provisioner,
pause) once through :data:`hftpipe_devstack.images.SMOKE_TESTS`.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import tomllib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dockerfile import (
    Dockerfile,
    console_scripts,
    final_entrypoint,
    no_install_packages,
    normalize,
    parse,
    uv_syncs,
    venv_of,
    venv_source_stage,
)

from hftpipe_devstack import images
from hftpipe_devstack.cluster import Cluster
from hftpipe_operator import crd
from hftpipe_operator.workerapi import COMMANDS

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"operator": images.OPERATOR_IMAGE, "workers": images.WORKERS_IMAGE}
WORKER_SUBCOMMANDS = sorted({"produce", "process", "load", *COMMANDS.values()})
"""``hftpipe`` subcommands whose ``--help`` must run in the workers image: the ones the
operator's pods run (``hftpipe_operator.workerapi.COMMANDS``)."""

MUST_NOT_BE_IMPORTABLE = frozenset({"pytest", "ruff", "mypy"})
"""Dev tools whose absence from the images is checked by import name, whatever the lock."""

RUN_TIMEOUT = 180


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
    """Import names a workspace member's wheel holds (hatch's ``packages``, or the package
    of maturin's ``module-name`` for the compiled core)."""
    pyproject = tomllib.loads((member / "pyproject.toml").read_text())
    tool = pyproject.get("tool", {})
    module = tool.get("maturin", {}).get("module-name")
    if module:
        return [module.split(".")[0]]
    wheel = tool.get("hatch", {}).get("build", {}).get("targets", {})
    return [Path(p).name for p in wheel.get("wheel", {}).get("packages", [])]


# ------------------------------------------------------------------- running an image


@dataclass(frozen=True)
class Image:
    """One of our images as the node's containerd holds it, and what its Dockerfile says."""

    name: str
    ref: str
    cluster: Cluster
    parsed: Dockerfile
    container_venv: str
    package: str
    extras: tuple[str, ...]
    left_out: frozenset[str]
    """What the last ``uv sync`` leaves out (``--no-install-package``)."""

    def config(self) -> dict[str, Any]:
        """The image's OCI config (Entrypoint, Env, User, ...) as the runtime reads it."""
        inspected = json.loads(self.cluster.crictl("inspecti", "-o", "json", self.ref))
        config: dict[str, Any] = inspected["info"]["imageSpec"]["config"]
        return config

    def run(self, argv: Sequence[str], what: str) -> str:
        """``argv`` in a container of the image (its user, ENV, PATH; read-only root);
        its output, or a failure naming ``what`` unless it exits 0."""
        address = Path(self.cluster.stack.env["CONTAINERD_ADDRESS"])
        cid = f"hftpipe-imgtest-{uuid.uuid4().hex[:10]}"
        cmd = images.ctr_run_args(address, self.ref, cid, argv, read_only=True)
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as exc:
            base = ["ctr", "--address", str(address), "--namespace", "k8s.io"]
            subprocess.run([*base, "tasks", "kill", "--signal", "SIGKILL", cid],
                           capture_output=True, check=False)  # fmt: skip
            raise AssertionError(f"{self.name} image: {what}: no exit in {RUN_TIMEOUT} s") from exc
        output = done.stdout + done.stderr
        shown = " ".join(argv)
        shown = shown if len(shown) <= 200 else f"{shown[:200]}..."
        assert done.returncode == 0, (
            f"{self.name} image: {what}: `{shown}` exited {done.returncode}\n{output[-3000:]}"
        )
        return output

    def python_json(self, what: str, code: str, *args: str) -> Any:
        """JSON printed by ``python -c code args`` with the image's PATH (the venv's python)."""
        output = self.run(["python", "-c", code, *args], what)
        return json.loads(output.strip().splitlines()[-1])


def _image(cluster: Cluster, name: str) -> Image:
    parsed = parse(REPO / name / "Dockerfile")
    container_venv = venv_of(parsed)
    source = venv_source_stage(parsed, container_venv)
    syncs = [(line, tokens) for s in parsed.lineage(source) for line, tokens in uv_syncs(s)]
    assert syncs, f"{parsed.path}: no `uv sync` in the build stage"
    last = syncs[-1][1]
    assert "--package" in last, f"{parsed.path}:{syncs[-1][0]}: the last uv sync names no package"
    assert "--all-extras" not in last, f"{parsed.path}: --all-extras: extras cannot be derived"
    return Image(
        name=name,
        ref=IMAGES[name],
        cluster=cluster,
        parsed=parsed,
        container_venv=container_venv,
        package=last[last.index("--package") + 1],
        extras=tuple(last[i + 1] for i, token in enumerate(last[:-1]) if token == "--extra"),
        left_out=no_install_packages(last),
    )


@pytest.fixture(scope="module", params=sorted(IMAGES))
def image(request: pytest.FixtureRequest, cluster: Cluster) -> Image:
    return _image(cluster, request.param)


@pytest.fixture(scope="module")
def workers(cluster: Cluster) -> Image:
    return _image(cluster, "workers")


# --------------------------------------------------------------------------- tests


def test_every_image_of_the_node_runs_once(cluster: Cluster) -> None:
    """The stand-ins, CoreDNS, the provisioner, pause and ours, each run as the charts run
    it (:data:`images.SMOKE_TESTS`: uid 10001 and a read-only root where the charts do)."""
    address = Path(cluster.stack.env["CONTAINERD_ADDRESS"])
    results = images.smoke_test(address)
    assert set(images.CLUSTER_IMAGES.values()) <= {what.split()[0] for what in results}


def test_the_images_run_as_the_dockerfile_says(image: Image) -> None:
    config = image.config()
    line, entrypoint = final_entrypoint(image.parsed)
    where = f"{image.parsed.path.relative_to(REPO)}:{line}"
    assert config.get("Entrypoint") == entrypoint, (where, config)
    assert config.get("User") == "10001:10001", config
    # The uid is the one the image runs as, not merely the one it names.
    uid = image.python_json("read its uid", "import json, os; print(json.dumps(os.getuid()))")
    assert uid == 10001
    resolved = image.run(["sh", "-c", f"command -v {entrypoint[0]}"], "look up ENTRYPOINT")
    assert resolved.strip() == f"{image.container_venv}/bin/{entrypoint[0]}", (where, resolved)
    # The console script's target imports and is the one its pyproject.toml declares.
    loaded = image.python_json(
        f"load the entry point of the console script {entrypoint[0]}",
        "import json, sys; from importlib.metadata import entry_points; "
        "(ep,) = entry_points(group='console_scripts', name=sys.argv[1]); "
        "target = ep.load(); assert callable(target), ep; print(json.dumps(ep.value))",
        entrypoint[0],
    )
    assert loaded == console_scripts(REPO / image.name).get(entrypoint[0]), where
    # hftpipe-operator takes no arguments: it starts kopf against a cluster at once, so
    # loading its entry point above (which imports hftpipe_operator.handlers) is its check.
    if image.name == "workers":
        output = image.run([*entrypoint, "--help"], f"{where}: ENTRYPOINT --help")
        for subcommand in WORKER_SUBCOMMANDS:
            assert subcommand in output, f"`hftpipe --help` lists no {subcommand}:\n{output}"
            image.run([*entrypoint, subcommand, "--help"], f"{where}: ENTRYPOINT {subcommand}")


COMPILERS = ("cargo", "rustc", "cc", "gcc", "ld")
"""What the workers image's build stage uses to build the compiled core, and its final
stage must not hold."""


def test_workers_image_runs_the_compiled_core_without_a_compiler(workers: Image) -> None:
    """The compiled core (hftpipe-core, Rust) was built in the build stage, imports in the
    final image, and is the processor's engine there; no compiler came along with it."""
    found = workers.python_json(
        "import the compiled core and look for compilers",
        "import json, shutil, sys\n"
        "import hftpipe_core\n"
        "from hftpipe_workers.metrics import CompiledMetricsEngine, engine_class\n"
        "engine = CompiledMetricsEngine(['5m'])\n"
        "rows, cols = engine.update_columns(\n"
        "    'X', [1, 2], [2.0, 2.0], [1.0, 1.0], [1.5, 1.75], [1.0, 3.0])\n"
        "print(json.dumps({'module': hftpipe_core._core.__file__,\n"
        "    'engine': engine_class().__name__, 'vwap': cols[0].vwap,\n"
        "    'compilers': [c for c in sys.argv[1:] if shutil.which(c)]}))",
        *COMPILERS,
    )
    assert found["module"].startswith(workers.container_venv), found
    assert found["engine"] == "CompiledMetricsEngine", found
    assert found["vwap"] == [1.5, 1.5625], found  # (4.5 / 3 * 1 + 4.75 / 3 * 3) / 4
    assert found["compilers"] == [], f"workers image: compilers in the final stage: {found}"


def test_first_party_modules_import_in_the_image(image: Image) -> None:
    """Every module of the workspace packages in the venv, function-level imports aside.

    An image whose syncs leave packages out (``--no-install-package``: the operator's
    leaves out the data plane's libraries) imports every module of its own package,
    and of the workspace packages it depends on only what that imports."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    closure = (
        {normalize(image.package)}
        if image.left_out
        else lock_closure(lock, [(image.package, image.extras)])
    )
    members = {
        normalize(p["name"]): REPO / p["source"]["editable"]
        for p in lock["package"]
        if "editable" in p.get("source", {})
    }
    packages = sorted(
        m for name, path in members.items() if name in closure for m in hatch_packages(path)
    )
    assert packages, f"{image.name}: no workspace package in the closure of {image.package}"
    failures = image.python_json(
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
    assert not failures, f"{image.name} image: modules that do not import:\n" + "\n".join(
        f"{name}:\n{text}" for name, text in failures.items()
    )


def test_no_dev_only_package_in_the_image(image: Image) -> None:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    # The closure below is of what the image runs: the member whose script is the ENTRYPOINT.
    entrypoint = final_entrypoint(image.parsed)[1][0]
    owners = [
        p["name"]
        for p in lock["package"]
        if "editable" in p.get("source", {})
        and entrypoint in console_scripts(REPO / p["source"]["editable"])
    ]
    assert owners == [image.package], (
        f"{image.name} image: the build installs --package {image.package}, the ENTRYPOINT "
        f"{entrypoint} is a script of {owners}"
    )
    runtime = lock_closure(lock, [(image.package, image.extras)])
    installed = {
        normalize(name)
        for name in image.python_json(
            "list the installed distributions",
            "import importlib.metadata as m, json; "
            "print(json.dumps(sorted({d.metadata['Name'] for d in m.distributions()})))",
        )
    }
    assert normalize(image.package) in installed, f"{image.package} not in the {image.name} image"
    left_in = installed & {normalize(name) for name in image.left_out}
    assert not left_in, f"{image.name} image: installed though its syncs leave them out: {left_in}"
    # The base image's own pip (and its setuptools/wheel, if any) sit outside the venv but
    # on the same interpreter: only the venv's site-packages count.
    allowed = runtime | _base_image_distributions(image)
    assert installed <= allowed, (
        f"{image.name} image: installed but not needed by {image.package} per uv.lock: "
        f"{sorted(installed - allowed)}"
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
    importable = image.python_json(
        "look for dev-only modules",
        "import importlib.util, json, sys; "
        "print(json.dumps([n for n in sys.argv[1:] if importlib.util.find_spec(n)]))",
        *sorted(modules),
    )
    assert not importable, f"{image.name} image: dev-only modules importable: {importable}"


def _base_image_distributions(image: Image) -> set[str]:
    """Distributions of the base image's own Python (outside the venv), by name."""
    found = image.python_json(
        "list the base interpreter's distributions",
        "import importlib.metadata as m, json, sys; "
        "paths = [p for p in sys.path if not p.startswith(sys.argv[1])]; "
        "print(json.dumps(sorted({d.metadata['Name'] for d in m.distributions(path=paths)})))",
        image.container_venv,
    )
    return {normalize(name) for name in found}


def test_sample_data_is_in_the_workers_image(workers: Image) -> None:
    prefix = workers.container_venv.rstrip("/") + "/"
    assert crd.SAMPLE_SOURCE.startswith(prefix), (
        f"SAMPLE_SOURCE {crd.SAMPLE_SOURCE} is not under the image's venv {workers.container_venv}"
    )
    size = workers.python_json(
        "read the sample's size",
        "import json, os, sys; print(json.dumps(os.path.getsize(sys.argv[1])))",
        crd.SAMPLE_SOURCE,
    )
    assert size > 0, f"{crd.SAMPLE_SOURCE} is empty in the workers image"


def test_the_workers_image_reads_every_source_the_crd_promises(workers: Image) -> None:
    """s3:// and http(s):// (fsspec's remote filesystems) and each compression suffix: the
    image has to carry their packages itself (the dev venv gets some through other tools)."""
    missing = workers.python_json(
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
