"""Helm charts of ``charts/``: run helm, render, lint, and generate what ``make manifests`` writes.

One module for every chart, so that the operator chart, the stack chart and their
tests render the same way:

- :func:`helm` runs the pinned helm binary (``$HELM`` from the stack's env file, else
  the cached ``go install`` build of :data:`install.HELM`);
- :func:`render` is ``helm template`` parsed into plain dict manifests, :func:`lint`
  is ``helm lint --strict``;
- :func:`chart_for_helm` is the chart directory to give helm: a chart whose declared
  dependencies are not in its ``charts/`` (nobody ran ``helm dependency build``, and
  this machine cannot download charts) is copied into the cache with a stand-in for
  each missing one, which renders nothing while its condition is false and fails with
  what to do when it is true; :func:`helm_chart` runs a helm command on it, its output
  and errors naming the chart given;
- :func:`generate` writes the files generated from Python sources (the operator chart's
  ReplayJob CRD and RBAC rules in ``files/``, kopf's peering CRDs in ``crds/``,
  ``k8s/replayjob.yaml``) and the raw install manifests ``k8s/NNN-Kind-name.yaml``,
  rendered from every chart with its kind values (:func:`raw_manifests`); another chart
  registers its own generated files in :data:`GENERATORS` and :data:`GENERATED_DIRS`.

Each chart is installed as one release (:class:`Release`): named after the chart, in
the namespace its ``Chart.yaml`` names in the annotation :data:`NAMESPACE_ANNOTATION`
(``default`` without one), with ``values-kind.yaml`` when the chart has it. skaffold and
the README install the charts the same way.

``python -m hftpipe_devstack.charts manifests [--out DIR] [--skip-broken]`` is what
``make manifests`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from . import install, versions

REPO: Final = Path(__file__).resolve().parents[3]
"""The repository root (``devstack/src/hftpipe_devstack/charts.py`` is three levels down)."""

CHARTS_DIR: Final = "charts"
K8S_DIR: Final = "k8s"

NAMESPACE_ANNOTATION: Final = "hftpipe.io/namespace"
"""``Chart.yaml`` annotation: the namespace the chart's release is installed into."""

KIND_VALUES: Final = "values-kind.yaml"
"""Values file for a kind cluster; the raw manifests are rendered with it."""

MANIFEST_PATTERN: Final = re.compile(r"^\d{3}-[A-Za-z]+-.+\.yaml$")
"""Names of the raw manifests in ``k8s/``; only these are replaced or removed as stale."""

# Apply order of the raw manifests: CRDs, namespaces, RBAC, policy, config, services,
# workloads, then custom resources (kinds not listed), whose CRDs must exist first.
KIND_ORDER: Final[tuple[str, ...]] = (
    "CustomResourceDefinition",
    "Namespace",
    "PriorityClass",
    "StorageClass",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ResourceQuota",
    "LimitRange",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Secret",
    "ConfigMap",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Service",
    "DaemonSet",
    "Deployment",
    "StatefulSet",
    "ReplicaSet",
    "Pod",
    "Job",
    "CronJob",
    "HorizontalPodAutoscaler",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
)

CLUSTER_SCOPED: Final = frozenset(
    {
        "APIService",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "IngressClass",
        "MutatingWebhookConfiguration",
        "Namespace",
        "PersistentVolume",
        "PriorityClass",
        "StorageClass",
        "ValidatingWebhookConfiguration",
        # Custom resources of the stack's operators that are cluster-scoped.
        "ClusterKopfPeering",
    }
)
"""Kinds that take no ``metadata.namespace`` (every other kind gets the release's)."""

KUBE_VERSION: Final = f"v{versions.KUBERNETES}"
"""Kubernetes version charts are rendered and linted for: the local stack's.

helm built by ``go install`` (no release ldflags) would otherwise assume v1.20.0.
"""

BUILTIN_NAMESPACES: Final = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})

Manifest = dict[str, Any]


class ChartError(RuntimeError):
    """helm failed, or a chart cannot be rendered; the message carries helm's own words."""


# ----------------------------------------------------------------------------- helm


def helm_binary() -> str:
    """The helm to run: ``$HELM`` (the stack's env file sets it), else the cached build."""
    return os.environ.get("HELM") or str(install.HELM.ensure())


def helm(
    *args: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``helm *args``; with ``check`` a non-zero exit raises :class:`ChartError`."""
    cmd = [helm_binary(), *(str(a) for a in args)]
    proc = subprocess.run(
        cmd,
        env={**os.environ, **(env or {})},
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise ChartError(
            f"helm {' '.join(cmd[1:])} failed (exit {proc.returncode}):\n"
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def _value_args(
    values_files: Iterable[str | os.PathLike[str]], set_values: Mapping[str, str] | None
) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["--values", str(path)]
    for key, value in (set_values or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def parse_manifests(text: str) -> list[Manifest]:
    """The objects of a multi-document YAML stream (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


# --------------------------------------------------------------------- dependencies

STAND_IN_ANNOTATION: Final = "hftpipe.io/stand-in"
"""``Chart.yaml`` annotation of the stand-in subcharts :func:`chart_for_helm` writes."""

STAND_IN_TEMPLATE: Final = "templates/stand-in.yaml"
"""The stand-in's one template: no object, only a ``fail`` saying what to do."""

STAND_IN_FAILURE: Final = "holds only a stand-in for the chart"
"""Words of every stand-in's ``fail`` message, by which :func:`lint` recognises it."""

STAND_IN_COPIES: Final = "chart-stand-ins"
"""Name prefix of the cache directories holding :func:`chart_for_helm`'s copies."""

STAND_IN_KEEP_DAYS: Final = 7
"""A copy unused this long is removed (each edit of a chart makes a new one)."""


@dataclass(frozen=True)
class Dependency:
    """One entry of a chart's ``Chart.yaml`` ``dependencies:``."""

    name: str
    version: str
    repository: str = ""
    condition: str = ""
    alias: str = ""

    @property
    def key(self) -> str:
        """The subchart's name in the parent: its values key and what conditions name."""
        return self.alias or self.name


def dependencies(chart: str | os.PathLike[str]) -> list[Dependency]:
    """The dependencies a chart's ``Chart.yaml`` declares (none for a chart archive)."""
    path = Path(chart)
    if not (path / "Chart.yaml").is_file():
        return []
    declared = chart_metadata(path).get("dependencies") or []
    return [
        Dependency(
            name=str(dep["name"]),
            version=str(dep.get("version", "")),
            repository=str(dep.get("repository", "")),
            condition=str(dep.get("condition", "")),
            alias=str(dep.get("alias", "")),
        )
        for dep in declared
    ]


def subcharts_present(chart: str | os.PathLike[str]) -> set[str]:
    """Names of the charts in ``<chart>/charts/``, as helm loads them.

    A directory with a ``Chart.yaml`` or a chart archive (what ``helm dependency build``
    writes), named by its ``Chart.yaml`` ``name``; helm matches dependencies by name too.
    """
    directory = Path(chart) / CHARTS_DIR
    if not directory.is_dir():
        return set()
    return {name for entry in directory.iterdir() if (name := _subchart_name(entry))}


def _subchart_name(entry: Path) -> str | None:
    text: str | bytes | None = None
    if entry.is_dir() and (entry / "Chart.yaml").is_file():
        text = (entry / "Chart.yaml").read_text()
    elif entry.is_file() and entry.name.endswith((".tgz", ".tar.gz")):
        try:
            with tarfile.open(entry) as archive:
                member = next(
                    (
                        m
                        for m in archive.getmembers()
                        if m.isfile()
                        and len(Path(m.name).parts) == 2
                        and Path(m.name).name == "Chart.yaml"
                    ),
                    None,
                )
                handle = archive.extractfile(member) if member is not None else None
                text = handle.read() if handle is not None else None
        except (OSError, tarfile.TarError):
            return None
    if text is None:
        return None
    meta = yaml.safe_load(text)
    return str(meta["name"]) if isinstance(meta, dict) and meta.get("name") else None


def chart_for_helm(chart: str | os.PathLike[str]) -> Path:
    """The chart directory to give helm for ``chart``: the chart itself, or a copy.

    helm refuses to template, lint, package or install a chart whose declared
    dependencies are missing from its ``charts/``, even disabled ones, and they cannot
    be downloaded here. When every dependency is there (``helm dependency build`` ran),
    this is ``chart``. Otherwise it is a copy in the cache (keyed by the chart's
    content, removed after :data:`STAND_IN_KEEP_DAYS` unused; never inside the
    repository, where checkov and git would see it) whose
    ``charts/`` adds, for each missing dependency, a stand-in subchart with its name and
    version (:func:`stand_in_files`). Helm drops a subchart whose condition is false
    before rendering, so the output is then the same as with the real dependencies;
    with its condition true, the stand-in's template fails saying to run
    ``helm dependency build``, instead of silently rendering nothing.
    """
    path = Path(chart)
    present = subcharts_present(path)
    missing = [dep for dep in dependencies(path) if dep.name not in present]
    if not missing:
        return path
    directory = path.resolve().name  # the copy's directory is named like the chart's
    parent = str(chart_metadata(path).get("name", directory))
    files: dict[str, str] = {}
    for dep in missing:
        files.update(stand_in_files(dep, parent))
    digest = hashlib.sha256()
    for rel, text in sorted(files.items()):
        digest.update(f"stand-in:{rel}\0{text}\0".encode())
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0".encode())
        digest.update(file.read_bytes() + b"\0")

    def build(tmp: Path) -> None:
        copy = tmp / directory
        shutil.copytree(path, copy)
        for rel, text in files.items():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            (copy / rel).write_text(text)

    prefix = f"{STAND_IN_COPIES}-{directory}-"
    copies = install.cached(prefix + digest.hexdigest()[:16], build)
    _prune_copies(copies, prefix)
    return copies / directory


def _prune_copies(used: Path, prefix: str) -> None:
    """Mark ``used`` as used now; remove its siblings unused for :data:`STAND_IN_KEEP_DAYS`."""
    now = time.time()
    os.utime(used, (now, now))
    oldest = now - STAND_IN_KEEP_DAYS * 86400
    for stale in used.parent.glob(f"{prefix}*"):
        if stale != used and stale.is_dir() and stale.stat().st_mtime < oldest:
            shutil.rmtree(stale, ignore_errors=True)
            (stale.parent / f".{stale.name}.lock").unlink(missing_ok=True)


def stand_in_files(dep: Dependency, parent: str) -> dict[str, str]:
    """``charts/<name>/...`` -> text of the stand-in for ``dep``, a dependency of ``parent``.

    A ``Chart.yaml`` with the dependency's name and version, labelled a stand-in (its
    description and :data:`STAND_IN_ANNOTATION`), and one template that renders no
    object and fails, saying to run ``helm dependency build``. Helm renders a subchart's
    templates only when its condition is true, so the stand-in changes nothing otherwise.
    The texts name the parent chart's directory in this repository, ``charts/<parent>``,
    never where the copy is, so equal charts share one copy in the cache.
    """
    version = (
        dep.version
        if re.fullmatch(r"v?\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]*)?", dep.version)
        else "0.0.0"
    )
    where = f" from {dep.repository}" if dep.repository else ""
    shown = f"{CHARTS_DIR}/{parent}"
    meta = {
        "apiVersion": "v2",
        "name": dep.name,
        "version": version,
        "type": "application",
        "description": (
            f"Stand-in for the chart {dep.name} {dep.version}{where}, a dependency of "
            f"{parent}: the real chart cannot be downloaded here. It renders nothing while "
            f"its condition is false and fails when it is true; `helm dependency build "
            f"{shown}` fetches the real chart."
        ),
        "annotations": {STAND_IN_ANNOTATION: "true"},
    }
    chart_yaml = (
        "# Written by hftpipe_devstack.charts.chart_for_helm: NOT the real chart.\n"
        + yaml.safe_dump(meta, sort_keys=False, width=88)
    )
    repo_add = (
        f"`helm repo add {dep.repository[1:]} <its chart repository>` and "
        if dep.repository.startswith("@")
        else ""
    )
    switch = f"{dep.condition} is true" if dep.condition else "it has no condition"
    message = (
        f"{dep.key} is enabled ({switch}), but the {parent} chart's charts/ "
        f"{STAND_IN_FAILURE} {dep.name} {dep.version}, which cannot be downloaded here. "
        f"Run {repo_add}`helm dependency build {shown}` (the chart's directory) first"
        + (f", or set {dep.condition}=false." if dep.condition else ".")
    )
    template = (
        f"{{{{- /* Stand-in for the chart {dep.name}: see Chart.yaml. */ -}}}}\n"
        f"{{{{- fail {json.dumps(message)} }}}}\n"
    )
    return {
        f"{CHARTS_DIR}/{dep.name}/Chart.yaml": chart_yaml,
        f"{CHARTS_DIR}/{dep.name}/{STAND_IN_TEMPLATE}": template,
    }


def helm_chart(
    verb: str,
    chart: str | os.PathLike[str],
    *args: str | os.PathLike[str],
    release: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``helm <verb> [release] <chart> *args`` on :func:`chart_for_helm` of ``chart``.

    helm's output and errors name ``chart``, never the cached copy it was given.
    """
    given = Path(chart)
    used = chart_for_helm(given)

    def as_given(text: str) -> str:
        return text if used == given else text.replace(str(used), str(given))

    try:
        proc = helm(verb, *([release] if release is not None else []), used, *args, env=env)
    except ChartError as err:
        raise ChartError(as_given(str(err))) from err
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, as_given(proc.stdout), as_given(proc.stderr)
    )


def render(
    chart: str | os.PathLike[str],
    values_files: Sequence[str | os.PathLike[str]] = (),
    release: str | None = None,
    namespace: str = "default",
    *,
    set_values: Mapping[str, str] | None = None,
    kube_version: str = KUBE_VERSION,
    include_crds: bool = True,
    extra_args: Sequence[str] = (),
) -> list[Manifest]:
    """``helm template`` of ``chart``: its objects as dicts, in helm's output order.

    ``release`` defaults to the chart directory's name; ``include_crds`` adds the files of
    the chart's ``crds/`` (what ``helm install`` creates first). ``extra_args`` go to helm
    as they are (``--api-versions``, ``--show-only`` ...). Run by :func:`helm_chart`.
    """
    proc = helm_chart(
        "template",
        chart,
        "--namespace",
        namespace,
        "--kube-version",
        kube_version,
        *(["--include-crds"] if include_crds else []),
        *_value_args(values_files, set_values),
        *extra_args,
        release=release or Path(chart).name,
    )
    return parse_manifests(proc.stdout)


def lint(
    chart: str | os.PathLike[str],
    values_files: Sequence[str | os.PathLike[str]] = (),
    *,
    strict: bool = True,
    set_values: Mapping[str, str] | None = None,
    kube_version: str = KUBE_VERSION,
) -> str:
    """``helm lint [--strict]``; returns helm's report, raises :class:`ChartError` on failure.

    Run by :func:`helm_chart`. helm lint turns a template's ``fail`` into an ``[INFO]``
    line on stderr and passes: an enabled stand-in's is raised here, as :func:`render`
    raises it.
    """
    proc = helm_chart(
        "lint",
        chart,
        "--kube-version",
        kube_version,
        *(["--strict"] if strict else []),
        *_value_args(values_files, set_values),
    )
    stand_ins = dict.fromkeys(
        line.split("Fail: ", 1)[-1].strip()
        for line in proc.stderr.splitlines()
        if STAND_IN_FAILURE in line
    )
    if stand_ins:
        raise ChartError(f"helm lint {Path(chart)} failed:\n" + "\n".join(stand_ins))
    return proc.stdout


# ------------------------------------------------------------------------- releases


@dataclass(frozen=True)
class Release:
    """How a chart of ``charts/`` is installed: release name, namespace, values files."""

    chart: Path
    name: str
    namespace: str
    values_files: tuple[Path, ...]

    def render(self, **kwargs: Any) -> list[Manifest]:
        """:func:`render` of this release."""
        return render(self.chart, self.values_files, self.name, self.namespace, **kwargs)


def chart_metadata(chart: Path) -> dict[str, Any]:
    """The chart's ``Chart.yaml``."""
    data = yaml.safe_load((chart / "Chart.yaml").read_text())
    if not isinstance(data, dict):
        raise ChartError(f"{chart / 'Chart.yaml'}: not a YAML mapping")
    return data


def release_of(chart: Path, values: str = KIND_VALUES) -> Release:
    """The release of one chart, with ``values`` (a file name in the chart) if it has it."""
    meta = chart_metadata(chart)
    annotations = meta.get("annotations") or {}
    values_file = chart / values
    return Release(
        chart=chart,
        name=str(meta.get("name", chart.name)),
        namespace=str(annotations.get(NAMESPACE_ANNOTATION, "default")),
        values_files=(values_file,) if values_file.is_file() else (),
    )


def discover(charts_dir: Path | None = None, values: str = KIND_VALUES) -> list[Release]:
    """Every chart under ``charts_dir`` (default ``charts/``), sorted by directory name."""
    root = charts_dir or REPO / CHARTS_DIR
    if not root.is_dir():
        return []
    return [release_of(path.parent, values) for path in sorted(root.glob("*/Chart.yaml"))]


# -------------------------------------------------------------------- raw manifests


def kind_rank(kind: str) -> int:
    """Position of ``kind`` in :data:`KIND_ORDER`; custom resources come last."""
    try:
        return KIND_ORDER.index(kind)
    except ValueError:
        return len(KIND_ORDER)


def install_order(objects: Iterable[Manifest]) -> list[Manifest]:
    """``objects`` in apply order: by :func:`order_key`, else in the order charts render them."""
    return sorted(objects, key=order_key)


def order_key(obj: Manifest) -> tuple[int, str, str, str]:
    """Sort key of :func:`install_order`: the kind's rank and the kind; CRDs by group, name.

    Sorting is stable, so other objects of one kind keep their chart's order.
    """
    kind = str(obj.get("kind"))
    if kind == "CustomResourceDefinition":
        group = str((obj.get("spec") or {}).get("group", ""))
        return kind_rank(kind), kind, group, str((obj.get("metadata") or {}).get("name", ""))
    return kind_rank(kind), kind, "", ""


def with_namespaces(objects: Iterable[Manifest], default_namespace: str) -> list[Manifest]:
    """Copies of ``objects`` with ``metadata.namespace`` set on namespaced kinds lacking one.

    ``helm template`` leaves the namespace to the template; ``kubectl apply -f`` would put
    an object without one wherever the current context points.
    """
    out: list[Manifest] = []
    for original in objects:
        obj = {**original, "metadata": dict(original.get("metadata") or {})}
        if obj.get("kind") not in CLUSTER_SCOPED:
            obj["metadata"].setdefault("namespace", default_namespace)
        out.append(obj)
    return out


def missing_namespaces(objects: Sequence[Manifest]) -> list[Manifest]:
    """Namespace objects for every namespace ``objects`` use but neither define nor come with."""
    defined = {
        (o.get("metadata") or {}).get("name") for o in objects if o.get("kind") == "Namespace"
    }
    used = {
        ns
        for o in objects
        if (ns := (o.get("metadata") or {}).get("namespace"))
        and ns not in BUILTIN_NAMESPACES
        and ns not in defined
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in sorted(used)
    ]


def manifest_name(index: int, obj: Manifest) -> str:
    """``NNN-Kind-name.yaml``, e.g. ``000-CustomResourceDefinition-replayjobs.hftpipe.io.yaml``."""
    name = str((obj.get("metadata") or {}).get("name", "unnamed"))
    return f"{index:03d}-{obj.get('kind')}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.yaml"


def dump(obj: Manifest) -> str:
    """One object as YAML (keys in the chart's order)."""
    return yaml.safe_dump(obj, sort_keys=False, width=100, allow_unicode=True)


def object_key(obj: Manifest) -> tuple[str, str, str]:
    """``(kind, namespace, name)``: what identifies an object in a cluster."""
    meta = obj.get("metadata") or {}
    return str(obj.get("kind")), str(meta.get("namespace", "")), str(meta.get("name", ""))


def load_manifests(directory: Path) -> list[Manifest]:
    """The objects of the raw manifests (``NNN-Kind-name.yaml``) in ``directory``."""
    if not directory.is_dir():
        return []
    return [
        obj
        for path in sorted(directory.iterdir())
        if MANIFEST_PATTERN.match(path.name)
        for obj in parse_manifests(path.read_text())
    ]


def keep_secret_data(obj: Manifest, previous: Mapping[tuple[str, str, str], Manifest]) -> Manifest:
    """``obj``, or for a Secret with the same keys as before, ``obj`` with the earlier data.

    A chart may generate a Secret's value (a random password that ``helm upgrade`` keeps
    with ``lookup``, which finds nothing in ``helm template``). Keeping the committed value
    makes ``make manifests`` reproducible, and re-applying ``k8s/`` never rotates it.
    """
    before = previous.get(object_key(obj))
    if obj.get("kind") != "Secret" or before is None:
        return obj
    for field in ("data", "stringData"):
        if set(obj.get(field) or {}) != set(before.get(field) or {}):
            return obj
    out = dict(obj)
    for field in ("data", "stringData"):
        if field in before:
            out[field] = before[field]
    return out


def raw_manifests(releases: Sequence[Release], previous: Sequence[Manifest] = ()) -> dict[str, str]:
    """File name -> content of the raw install manifests rendered from ``releases``.

    Every object of every release, one per file, numbered in :func:`install_order`
    across releases, each with a header naming the chart it comes from. Generated Secret
    values are taken from ``previous`` (the committed manifests): :func:`keep_secret_data`.
    """
    earlier = {object_key(obj): obj for obj in previous}
    tagged: list[tuple[Manifest, str]] = []
    for release in releases:
        values = ", ".join(p.name for p in release.values_files) or "default values"
        source = (
            f"# Generated by `make manifests` from {CHARTS_DIR}/{release.chart.name} "
            f"(helm template {release.name} --namespace {release.namespace}, {values}).\n"
            "# Do not edit: change the chart and run `make manifests`.\n"
        )
        objects = with_namespaces(release.render(), release.namespace)
        tagged += [(keep_secret_data(obj, earlier), source) for obj in objects]
    extra = missing_namespaces([obj for obj, _ in tagged])
    tagged += [
        (ns, "# Generated by `make manifests`: a namespace the charts use.\n") for ns in extra
    ]
    tagged.sort(key=lambda pair: order_key(pair[0]))  # stable: chart order within a kind
    return {manifest_name(i, obj): header + dump(obj) for i, (obj, header) in enumerate(tagged)}


# ------------------------------------------------------------------ generated files


def operator_files() -> dict[str, str]:
    """Files generated from ``hftpipe_operator`` (paths relative to the repository).

    The operator package is imported here, not at module level: the devstack does not
    depend on it, only ``make manifests`` (which runs in the workspace's venv) does.
    """
    from hftpipe_operator import crd, rbac  # noqa: PLC0415

    chart = f"{CHARTS_DIR}/hftpipe-operator"
    header = (
        "# Generated from hftpipe_operator.crd.build_peering_crds (make manifests); do not edit.\n"
        "# kopf's peering CRDs, shared by every kopf operator in a cluster: helm creates them on\n"
        "# install when absent, before the KopfPeering objects of templates/kopfpeering.yaml.\n"
    )
    files = {
        # The ReplayJob CRD is a template input (templates/crds.yaml), so upgrades deliver it.
        f"{chart}/files/crds/{crd.NAME}.yaml": crd.crd_yaml(),
        f"{chart}/files/rbac-rules.yaml": rbac.rules_yaml(),
        f"{K8S_DIR}/replayjob.yaml": crd.sample_yaml(),
    }
    for peering in crd.build_peering_crds():
        files[f"{chart}/crds/{peering['metadata']['name']}.yaml"] = header + dump(peering)
    return files


GENERATORS: Final[dict[str, Callable[[], dict[str, str]]]] = {
    "hftpipe-operator": operator_files,
}
"""Chart name -> function returning the files generated from Python for it."""

GENERATED_DIRS: Final[tuple[str, ...]] = (
    f"{CHARTS_DIR}/hftpipe-operator/crds",
    f"{CHARTS_DIR}/hftpipe-operator/files/crds",
)
"""Directories whose YAML files are all generated: any other YAML file there is stale."""


def generated_files(charts: Iterable[str]) -> dict[str, str]:
    """The Python-generated files of the charts named ``charts`` (relative path -> text)."""
    files: dict[str, str] = {}
    for name in charts:
        if generator := GENERATORS.get(name):
            files.update(generator())
    return files


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def generate(
    repo: Path = REPO, out: Path | None = None, *, skip_broken: bool = False
) -> list[Path]:
    """Write every generated file; return their paths (relative to the output root).

    With ``out`` (a drift test's temporary directory), ``charts/`` is copied there first
    and everything is written and rendered under ``out``, leaving ``repo`` untouched.
    Raw manifests in ``k8s/`` that are no longer rendered are removed. A chart that does
    not render raises :class:`ChartError`, or with ``skip_broken`` is left out of ``k8s/``
    with a warning on stderr (for a chart still being written).
    """
    root = out or repo
    if out is not None and (repo / CHARTS_DIR).is_dir():
        shutil.copytree(repo / CHARTS_DIR, out / CHARTS_DIR, dirs_exist_ok=True)
    written: list[Path] = []
    # Chart inputs first: the raw manifests render from them.
    generated = generated_files(GENERATORS)
    for rel, text in generated.items():
        _write(root / rel, text)
        written.append(Path(rel))
    for directory in GENERATED_DIRS:
        for stale in (root / directory).glob("*.yaml"):
            if f"{directory}/{stale.name}" not in generated:
                stale.unlink()
    releases = discover(root / CHARTS_DIR)
    if skip_broken:
        releases = [r for r in releases if _renders(r)]
    manifests = raw_manifests(releases, previous=load_manifests(repo / K8S_DIR))
    k8s = root / K8S_DIR
    k8s.mkdir(parents=True, exist_ok=True)
    for stale in k8s.iterdir():
        if MANIFEST_PATTERN.match(stale.name) and stale.name not in manifests:
            stale.unlink()
    for name, text in manifests.items():
        _write(k8s / name, text)
        written.append(Path(K8S_DIR) / name)
    return written


def _renders(release: Release) -> bool:
    try:
        release.render()
    except ChartError as err:
        print(f"warning: {release.chart.name} left out of {K8S_DIR}/: {err}", file=sys.stderr)
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hftpipe_devstack.charts manifests [--out DIR] [--skip-broken]``."""
    parser = argparse.ArgumentParser(prog="python -m hftpipe_devstack.charts")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("manifests", help="regenerate chart files and k8s/ from the sources")
    gen.add_argument("--out", type=Path, help="write under this directory instead of the repo")
    gen.add_argument(
        "--skip-broken",
        action="store_true",
        help="leave charts that fail to render out of k8s/ (with a warning) instead of failing",
    )
    args = parser.parse_args(argv)
    try:
        written = generate(out=args.out, skip_broken=args.skip_broken)
    except ChartError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(written)} files generated under {args.out or REPO}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
