"""The operator chart installed for real into the local API server, upgraded and uninstalled.

The API server has no kubelet, so the operator's pods never run; every object the chart
makes is created and admitted for real, and ``kubectl auth can-i`` as the operator's
ServiceAccount proves what its RBAC allows and refuses. The upgrade goes from a copy of
the chart at version 0.1.0 whose ReplayJob CRD lacks a field to the current chart, and
checks that ``helm upgrade`` delivered the field (the CRD is a template, not in crds/).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hftpipe_devstack import charts, kubeschemas, thirdparty
from hftpipe_devstack.charts import Manifest
from hftpipe_devstack.testing import wait_for
from hftpipe_operator import crd

CHART = charts.REPO / "charts" / "hftpipe-operator"
K8S = charts.REPO / "k8s"
SUFFIX = uuid.uuid4().hex[:6]
RELEASE = "rj-op"
NS_SYSTEM = f"chart-op-{SUFFIX}"
"""Where the operator runs: a namespace it does not watch."""
NS_WATCHED = f"chart-jobs-{SUFFIX}"
NS_OTHER = f"chart-other-{SUFFIX}"
SERVICE_ACCOUNT = f"system:serviceaccount:{NS_SYSTEM}:{RELEASE}-hftpipe-operator"


@dataclass
class Cluster:
    """kubectl and helm against the session's API server, helm's state in a temp dir."""

    env: dict[str, str]

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.env["KUBECTL"], *args],
            env=self.env,
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}:\n{proc.stdout}{proc.stderr}")
        return proc

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def helm(self, *args: str | Path) -> str:
        return charts.helm(*args, env=self.env).stdout

    def can_i(self, verb: str, resource: str, *flags: str) -> bool:
        proc = self.kubectl(
            "auth", "can-i", verb, resource, "--as", SERVICE_ACCOUNT, *flags, check=False
        )
        if proc.returncode not in (0, 1):
            raise AssertionError(f"kubectl auth can-i failed: {proc.stderr}")
        return proc.returncode == 0


@pytest.fixture(scope="module")
def cluster(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    helm_home = tmp_path_factory.mktemp("helm-home")
    return Cluster(
        {
            **stack_env,
            "PATH": f"{Path(stack_env['KUBECTL']).parent}:/usr/bin:/bin",
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }
    )


@pytest.fixture(scope="module")
def namespaces(cluster: Cluster) -> Iterator[None]:
    for namespace in (NS_SYSTEM, NS_WATCHED, NS_OTHER):
        cluster.kubectl("create", "namespace", namespace)
    yield
    cluster.kubectl("delete", "namespace", NS_SYSTEM, NS_WATCHED, NS_OTHER, "--wait=false")


def _removable_field(body: Manifest) -> str:
    """An optional ReplayJob spec field no CEL rule names: one a chart version may lack."""
    schema = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    rules = json.dumps([spec.get("x-kubernetes-validations"), schema["x-kubernetes-validations"]])
    optional = [f for f in spec["properties"] if f not in spec.get("required", [])]
    candidates = [f for f in optional if f not in rules]
    return "monitoring" if "monitoring" in candidates else candidates[-1]


@pytest.fixture(scope="module")
def old_chart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the chart as version 0.1.0, whose ReplayJob CRD lacks a spec field."""
    chart = tmp_path_factory.mktemp("old") / "hftpipe-operator"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.0"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    crd_file = chart / "files" / "crds" / f"{crd.NAME}.yaml"
    body = yaml.safe_load(crd_file.read_text())
    field = _removable_field(body)
    spec = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"][field]
    crd_file.write_text(yaml.safe_dump(body, sort_keys=False))
    return chart, field


def _spec_fields(cluster: Cluster) -> set[str]:
    found = cluster.get("crd", crd.NAME)
    schema = found["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return set(schema["properties"]["spec"]["properties"])


def _adopt(cluster: Cluster, kind: str, name: str) -> None:
    """Let helm take over an object created without it (Helm 3.2+ adoption).

    The session installs the ReplayJob CRD with kubectl (``crds_installed``), as a user
    who applied k8s/ first would have; helm refuses objects that lack these marks.
    """
    cluster.kubectl("label", kind, name, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    cluster.kubectl(
        "annotate",
        kind,
        name,
        f"meta.helm.sh/release-name={RELEASE}",
        f"meta.helm.sh/release-namespace={NS_SYSTEM}",
        "--overwrite",
    )


@dataclass
class Upgrade:
    field: str
    fields_before: set[str]
    fields_after: set[str]
    history: list[dict[str, Any]]


WATCH = f'watchNamespaces=["{NS_WATCHED}"]'


@pytest.fixture(scope="module")
def upgraded(
    cluster: Cluster,
    namespaces: None,
    old_chart: tuple[Path, str],
    crds_installed: list[dict[str, Any]],
) -> Iterator[Upgrade]:
    """helm install of chart 0.1.0, then helm upgrade to the current chart."""
    chart, field = old_chart
    if cluster.kubectl("get", "crd", crd.NAME, check=False).returncode == 0:
        _adopt(cluster, "crd", crd.NAME)
    cluster.helm("install", RELEASE, chart, "-n", NS_SYSTEM, "--set-json", WATCH)
    before = _spec_fields(cluster)
    cluster.helm("upgrade", RELEASE, CHART, "-n", NS_SYSTEM, "--set-json", WATCH)
    after = _spec_fields(cluster)
    history = json.loads(cluster.helm("history", RELEASE, "-n", NS_SYSTEM, "-o", "json"))
    yield Upgrade(field, before, after, history)
    releases = json.loads(cluster.helm("list", "-n", NS_SYSTEM, "-o", "json"))
    if any(r["name"] == RELEASE for r in releases):
        cluster.helm("uninstall", RELEASE, "-n", NS_SYSTEM)


# ---------------------------------------------------------------------- install, upgrade


def test_helm_upgrade_delivers_the_crd_change(upgraded: Upgrade) -> None:
    assert upgraded.field not in upgraded.fields_before, "chart 0.1.0's CRD was not installed"
    assert upgraded.field in upgraded.fields_after, "helm upgrade did not update the CRD"
    assert [h["chart"] for h in upgraded.history] == [
        "hftpipe-operator-0.1.0",
        "hftpipe-operator-0.2.0",
    ]
    assert upgraded.history[-1]["status"] == "deployed"


def test_every_object_of_the_release_exists(cluster: Cluster, upgraded: Upgrade) -> None:
    manifest = charts.parse_manifests(cluster.helm("get", "manifest", RELEASE, "-n", NS_SYSTEM))
    kinds = {obj["kind"] for obj in manifest}
    assert {"CustomResourceDefinition", "Deployment", "Role", "ClusterRole"} <= kinds
    live = json.loads(
        cluster.kubectl(
            "get", "-f", "-", "-o", "json", input_text=yaml.safe_dump_all(manifest)
        ).stdout
    )
    assert sorted(charts.object_key(o) for o in live["items"]) == sorted(
        charts.object_key(o) for o in manifest
    )
    found_crd = cluster.get("crd", crd.NAME)
    assert found_crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    roles = cluster.get("roles", "-n", NS_WATCHED)["items"]
    assert [r["metadata"]["name"] for r in roles] == [f"{RELEASE}-hftpipe-operator"]
    assert not cluster.get("roles", "-n", NS_OTHER)["items"]


def test_helm_upgrade_dry_run_server_succeeds(cluster: Cluster, upgraded: Upgrade) -> None:
    out = cluster.helm(
        "upgrade", RELEASE, CHART, "-n", NS_SYSTEM, "--set-json", WATCH, "--dry-run=server"
    )
    assert "STATUS: pending-upgrade" in out


# ---------------------------------------------------------------------------------- RBAC

ALLOWED = [
    ("list", "replayjobs.hftpipe.io", NS_WATCHED),
    ("watch", "replayjobs.hftpipe.io", NS_WATCHED),
    ("patch", "replayjobs.hftpipe.io", NS_WATCHED),
    ("patch", "replayjobs.hftpipe.io/status", NS_WATCHED),
    ("create", "deployments.apps", NS_WATCHED),
    ("delete", "deployments.apps", NS_WATCHED),
    ("create", "jobs.batch", NS_WATCHED),
    ("create", "configmaps", NS_WATCHED),
    ("create", "services", NS_WATCHED),
    ("create", "kafkatopics.kafka.strimzi.io", NS_WATCHED),
    ("create", "podmonitors.monitoring.coreos.com", NS_WATCHED),
    ("get", "secrets", NS_WATCHED),
    ("create", "events", NS_WATCHED),
    ("patch", "kopfpeerings.kopf.dev", NS_WATCHED),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", ""),
]

REFUSED = [
    ("get", "secrets", "kube-system"),
    ("list", "secrets", "kube-system"),
    ("get", "secrets", NS_OTHER),
    ("list", "secrets", NS_OTHER),
    ("get", "secrets", NS_SYSTEM),  # its own namespace is not a watched one
    ("list", "secrets", NS_WATCHED),  # secrets are read by name, never listed
    ("watch", "secrets", NS_WATCHED),
    ("list", "secrets", "*"),
    ("create", "deployments.apps", NS_OTHER),
    ("create", "jobs.batch", NS_OTHER),
    ("list", "replayjobs.hftpipe.io", NS_OTHER),
    ("patch", "pods", NS_WATCHED),  # pods are observed, never changed
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("get", "nodes", ""),
    ("list", "nodes", ""),
    ("patch", "nodes", ""),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", NS_WATCHED),
]


def _scope(namespace: str) -> list[str]:
    if namespace == "*":
        return ["--all-namespaces"]
    return ["-n", namespace] if namespace else []


def _verb_resource(verb: str, resource: str) -> tuple[str, list[str]]:
    base, _, sub = resource.partition("/")
    return base, ["--subresource", sub] if sub else []


@pytest.mark.parametrize(("verb", "resource", "namespace"), ALLOWED)
def test_service_account_can(
    cluster: Cluster, upgraded: Upgrade, verb: str, resource: str, namespace: str
) -> None:
    base, sub = _verb_resource(verb, resource)
    assert cluster.can_i(verb, base, *sub, *_scope(namespace)), (
        f"{SERVICE_ACCOUNT} cannot {verb} {resource} in {namespace or 'the cluster'}"
    )


@pytest.mark.parametrize(("verb", "resource", "namespace"), REFUSED)
def test_service_account_cannot(
    cluster: Cluster, upgraded: Upgrade, verb: str, resource: str, namespace: str
) -> None:
    base, sub = _verb_resource(verb, resource)
    assert not cluster.can_i(verb, base, *sub, *_scope(namespace)), (
        f"{SERVICE_ACCOUNT} may {verb} {resource} in {namespace or 'the cluster'}"
    )


# --------------------------------------------------------------- production, peering


@pytest.fixture(scope="module")
def production(
    cluster: Cluster, upgraded: Upgrade, crds_installed: list[dict[str, Any]]
) -> Iterator[list[Manifest]]:
    """A second release with the production values, beside the first (which owns the CRD).

    Two replicas: the KopfPeering objects are created in the same install as the
    Deployment, which works because kopf's peering CRDs come from crds/ (helm creates
    those before it maps the templates' kinds).
    """
    name = "rj-prod"
    namespace, watched = f"chart-prod-{SUFFIX}", f"chart-prod-jobs-{SUFFIX}"
    cluster.kubectl("create", "namespace", watched)
    cluster.helm(
        "install",
        name,
        CHART,
        "-n",
        namespace,
        "--create-namespace",
        "-f",
        CHART / "values-production.yaml",
        "--set",
        "crds.install=false",
        "--set-json",
        f'watchNamespaces=["{watched}"]',
    )
    yield charts.parse_manifests(cluster.helm("get", "manifest", name, "-n", namespace))
    cluster.helm("uninstall", name, "-n", namespace)
    cluster.kubectl("delete", "namespace", namespace, watched, "--wait=false")


def test_production_install_creates_peering_pdb_and_service_monitor(
    cluster: Cluster, production: list[Manifest]
) -> None:
    (peering,) = [o for o in production if o["kind"] == "KopfPeering"]
    meta = peering["metadata"]
    assert cluster.get("kopfpeerings.kopf.dev", meta["name"], "-n", meta["namespace"])
    for kind in ("PodDisruptionBudget", "ServiceMonitor", "Deployment"):
        (obj,) = [o for o in production if o["kind"] == kind]
        assert cluster.get(kind, obj["metadata"]["name"], "-n", obj["metadata"]["namespace"])
    (deployment,) = [o for o in production if o["kind"] == "Deployment"]
    live = cluster.get(
        "deployment", deployment["metadata"]["name"], "-n", deployment["metadata"]["namespace"]
    )
    assert live["spec"]["replicas"] == 2


# ------------------------------------------------------------- validation: kubeconform


@pytest.fixture(scope="module")
def schemas(
    cluster: Cluster,
    kubeconfig: Path,
    crds_installed: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """kubeconform schemas of every kind served, kopf's peering kinds included.

    The session's ``kube_schemas`` are written once, possibly before kopf's CRDs exist,
    so this module writes its own after installing them.
    """
    peering = crd.build_peering_crds()
    thirdparty.install_crds(cluster.env["KUBECTL"], kubeconfig, peering)
    directory = tmp_path_factory.mktemp("schemas")
    kubeschemas.write_from_server(
        cluster.env["KUBECTL"],
        kubeconfig,
        directory,
        expect=kubeschemas.crd_schema_paths([*crds_installed, *peering]),
    )
    return directory


@pytest.mark.parametrize("values", ["", "values-kind.yaml", "values-production.yaml"])
def test_rendered_chart_passes_kubeconform_strict(
    cluster: Cluster, schemas: Path, values: str
) -> None:
    """kubeconform -strict on every rendered object, the CRDs included."""
    objects = charts.render(CHART, [CHART / values] if values else [], RELEASE, NS_SYSTEM)
    checked = objects
    assert sum(o["kind"] == "CustomResourceDefinition" for o in objects) == 3
    proc = subprocess.run(
        [cluster.env["KUBECONFORM"], *kubeschemas.kubeconform_args(schemas), "-"],
        input=yaml.safe_dump_all(checked, sort_keys=False),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Valid: {len(checked)}, Invalid: 0, Errors: 0, Skipped: 0" in proc.stdout


# ------------------------------------------------------- the raw manifests in k8s/


def _raw() -> list[Path]:
    return sorted(p for p in K8S.iterdir() if charts.MANIFEST_PATTERN.match(p.name))


@pytest.fixture(scope="module")
def raw_ready(cluster: Cluster, kubeconfig: Path, crds_installed: list[dict[str, Any]]) -> None:
    """What `kubectl apply -f k8s/` creates before anything else: its CRDs and namespaces.

    Applied for real (CRDs server-side, taking fields over from the session's stand-ins),
    so that the dry run of the rest meets them as a real `kubectl apply -f k8s/` does.
    """
    objects = [yaml.safe_load(p.read_text()) for p in _raw()]
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    thirdparty.install_crds(cluster.env["KUBECTL"], kubeconfig, crds)
    for ns in (o for o in objects if o["kind"] == "Namespace"):
        cluster.kubectl("create", "namespace", ns["metadata"]["name"], check=False)


def _served(cluster: Cluster) -> set[tuple[str, str]]:
    """(apiVersion, kind) of every custom resource the API server serves."""
    return {
        (f"{item['spec']['group']}/{version['name']}", item["spec"]["names"]["kind"])
        for item in cluster.get("crd")["items"]
        for version in item["spec"]["versions"]
        if version["served"]
    }


@pytest.mark.parametrize("path", _raw(), ids=lambda p: p.name)
def test_raw_manifest_is_accepted_by_the_api_server(
    cluster: Cluster,
    raw_ready: None,
    crds_installed: list[dict[str, Any]],
    server_dry_run: Callable[[Any], str],
    path: Path,
) -> None:
    obj = yaml.safe_load(path.read_text())
    custom = obj["kind"] not in charts.KIND_ORDER
    # crds_installed puts Strimzi's and the Prometheus Operator's CRDs in place: a custom
    # kind the server does not serve is a wrong apiVersion, never a reason to skip.
    assert not custom or (obj["apiVersion"], obj["kind"]) in _served(cluster), (
        f"{path.name}: {obj['kind']} ({obj['apiVersion']}) is not served by the API server"
    )
    server_dry_run([obj])


def test_kubectl_apply_dry_run_of_the_whole_directory(
    cluster: Cluster, raw_ready: None, crds_installed: list[dict[str, Any]]
) -> None:
    """`kubectl apply --dry-run=server -f k8s/` as the README says, replayjob.yaml included."""
    wait_for(
        lambda: cluster.kubectl("get", "replayjobs", "-A", check=False).returncode == 0,
        30,
        "the ReplayJob kind to be served",
    )
    out = cluster.kubectl("apply", "--dry-run=server", "-f", str(K8S)).stdout
    assert f"replayjob.{crd.GROUP}/btc created (server dry run)" in out
    assert len(out.strip().splitlines()) == len(_raw()) + 1


# ------------------------------------------------------------------- uninstall (last)


def test_helm_uninstall_keeps_the_crd(cluster: Cluster, upgraded: Upgrade) -> None:
    out = cluster.helm("uninstall", RELEASE, "-n", NS_SYSTEM)
    assert f"[CustomResourceDefinition] {crd.NAME}" in out  # "kept due to the resource policy"
    assert cluster.get("crd", crd.NAME)["metadata"]["name"] == crd.NAME
    assert (
        cluster.kubectl("get", "clusterrole", f"{RELEASE}-hftpipe-operator", check=False).returncode
        != 0
    )
    assert not cluster.get("roles", "-n", NS_WATCHED)["items"]
