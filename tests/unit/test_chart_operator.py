"""The operator's Helm chart, rendered with the pinned helm (no cluster): lint, schema, one source.

The CRD, the RBAC rules and the operator's settings are defined once in Python
(``hftpipe_operator.crd``, ``.rbac``, ``.settings``); these tests fail when the chart,
its generated files or the raw manifests in ``k8s/`` drift from them.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hftpipe_devstack import charts, versions
from hftpipe_devstack.charts import ChartError, Manifest
from hftpipe_operator import crd, labels, rbac
from hftpipe_operator.settings import OperatorSettings

REPO = charts.REPO
CHART = REPO / "charts" / "hftpipe-operator"
K8S = REPO / "k8s"
RELEASE = "hftpipe-operator"
NAMESPACE = "hftpipe-system"

VALUES: dict[str, tuple[Path, ...]] = {
    "default": (),
    "kind": (CHART / "values-kind.yaml",),
    "production": (CHART / "values-production.yaml",),
}

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


@functools.cache
def _render(values: str, sets: tuple[tuple[str, str], ...] = ()) -> tuple[Manifest, ...]:
    return tuple(charts.render(CHART, VALUES[values], RELEASE, NAMESPACE, set_values=dict(sets)))


def render(values: str = "default", **sets: str) -> list[Manifest]:
    """The chart's objects with a values file (by name) and ``--set`` overrides (cached)."""
    return list(_render(values, tuple(sorted(sets.items()))))


def only(objects: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def deployment(objects: list[Manifest]) -> Manifest:
    (found,) = only(objects, "Deployment")
    return found


def container_env(objects: list[Manifest]) -> dict[str, str]:
    (container,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"] if "value" in e}


# ------------------------------------------------------------------------ lint, render


@pytest.mark.parametrize("values", VALUES)
def test_chart_lints_strictly(values: str) -> None:
    report = charts.lint(CHART, VALUES[values])
    assert "0 chart(s) failed" in report


@pytest.mark.parametrize("values", VALUES)
def test_chart_renders_the_operator_and_its_rbac(values: str) -> None:
    kinds = {o["kind"] for o in render(values)}
    assert {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    } <= kinds
    for obj in render(values):
        if obj["kind"] not in charts.CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace"), f"{obj['kind']} without a namespace"


# --------------------------------------------------------------------- one source: CRD


def test_rendered_crd_is_build_crd_with_helm_labels_and_the_keep_policy() -> None:
    (rendered,) = only(render(), "CustomResourceDefinition", crd.NAME)
    built = crd.build_crd()
    assert rendered["spec"] == built["spec"]
    assert rendered["apiVersion"] == built["apiVersion"]
    # The CRD's own labels win over the chart's; helm's are added.
    assert built["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_crds_keep_false_drops_the_keep_policy_and_install_false_the_crd() -> None:
    (unkept,) = only(render(**{"crds.keep": "false"}), "CustomResourceDefinition", crd.NAME)
    assert "annotations" not in unkept["metadata"]
    assert not only(render(**{"crds.install": "false"}), "CustomResourceDefinition", crd.NAME)


def test_the_crd_is_a_template_and_kopf_peering_crds_are_in_crds_dir() -> None:
    # crds/ is never upgraded by helm: the ReplayJob CRD must not be there.
    crds_dir = {p.name for p in (CHART / "crds").glob("*.yaml")}
    assert f"{crd.NAME}.yaml" not in crds_dir
    on_upgrade = charts.render(CHART, (), RELEASE, NAMESPACE, include_crds=False)
    assert only(on_upgrade, "CustomResourceDefinition", crd.NAME)
    peering = [yaml.safe_load((CHART / "crds" / name).read_text()) for name in sorted(crds_dir)]
    assert sorted(peering, key=lambda c: c["metadata"]["name"]) == sorted(
        crd.build_peering_crds(), key=lambda c: c["metadata"]["name"]
    )


# -------------------------------------------------------------------- one source: RBAC


def test_rendered_rbac_rules_are_rbac_py_rules() -> None:
    objects = render(**{"watchNamespaces": "{default,trading}"})
    (cluster_role,) = only(objects, "ClusterRole")
    assert cluster_role["rules"] == rbac.cluster_rules()
    roles = only(objects, "Role")
    assert {r["metadata"]["namespace"] for r in roles} == {"default", "trading"}
    for role in roles:
        assert role["rules"] == rbac.namespaced_rules()


def test_rendered_rbac_is_what_build_rbac_builds() -> None:
    """Same objects, names, namespaces, rules, bindings as ``rbac.build_rbac`` (labels aside)."""
    watched = ["default", "trading"]
    objects = render(**{"watchNamespaces": "{default,trading}"})
    rbac_kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

    def comparable(obj: Manifest) -> tuple[str, str, str, str]:
        body = {k: v for k, v in obj.items() if k not in {"metadata", "apiVersion", "kind"}}
        meta = obj["metadata"]
        return (
            obj["kind"],
            meta["name"],
            meta.get("namespace", ""),
            json.dumps(body, sort_keys=True),
        )

    rendered = sorted(comparable(o) for o in objects if o["kind"] in rbac_kinds)
    built = rbac.build_rbac(name=RELEASE, namespace=NAMESPACE, watch_namespaces=watched)
    assert rendered == sorted(comparable(o) for o in built)


def test_rbac_rules_file_is_generated_from_rbac_py() -> None:
    assert (CHART / "files" / "rbac-rules.yaml").read_text() == rbac.rules_yaml()


# ------------------------------------------------------------- settings and security


@pytest.mark.parametrize("values", VALUES)
def test_every_pod_runs_restricted(values: str) -> None:
    pods = [o for o in render(values) if o["kind"] in POD_KINDS]
    assert pods
    for obj in pods:
        spec = obj["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001  # operator/Dockerfile's user
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["runAsNonRoot"] is True
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp
            assert tmp[0]["name"] in tmp_volumes, "/tmp must be an emptyDir (read-only root)"


def test_environment_is_what_operator_settings_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(**{"watchNamespaces": "{default,trading}", "replicas": "3"})
    env = container_env(objects)
    prefix = OperatorSettings.model_config.get("env_prefix", "")
    ours = {k: v for k, v in env.items() if k.startswith(prefix)}
    fields = {f"{prefix}{name}".upper() for name in OperatorSettings.model_fields}
    assert set(ours) <= fields, f"not settings: {set(ours) - fields}"
    for key in list(ours):
        monkeypatch.setenv(key, ours[key])
    settings = OperatorSettings()
    assert settings.namespace_list == ["default", "trading"]
    assert settings.replicas == 3
    assert settings.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert settings.metrics_port == 8000
    assert settings.peering_name == RELEASE
    (container,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8000, "healthz": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}


def test_image_defaults_to_app_version_and_accepts_a_digest() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    (container,) = deployment(render())["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"hftpipe-operator:{app_version}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    digest = "sha256:" + "a" * 64
    (pinned,) = deployment(render(**{"image.digest": digest}))["spec"]["template"]["spec"][
        "containers"
    ]
    assert pinned["image"] == f"hftpipe-operator@{digest}"


def test_one_replica_is_standalone_and_never_overlaps_in_a_rollout() -> None:
    objects = render("kind")
    assert deployment(objects)["spec"]["strategy"] == {"type": "Recreate"}
    assert container_env(objects)["HFTPIPE_OPERATOR_REPLICAS"] == "1"
    assert not only(objects, "KopfPeering")
    assert not only(objects, "PodDisruptionBudget")
    assert not only(objects, "ServiceMonitor")


def test_production_peers_two_replicas_with_a_pdb_anti_affinity_and_service_monitor() -> None:
    objects = render("production")
    dep = deployment(objects)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    env = container_env(objects)
    watched = env["HFTPIPE_OPERATOR_NAMESPACES"].split(",")
    peerings = only(objects, "KopfPeering")
    assert {p["metadata"]["namespace"] for p in peerings} == set(watched)
    assert {p["metadata"]["name"] for p in peerings} == {env["HFTPIPE_OPERATOR_PEERING_NAME"]}
    assert all(p["apiVersion"] == f"{crd.PEERING_GROUP}/v1" for p in peerings)
    (pdb,) = only(objects, "PodDisruptionBudget")
    selector = dep["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["minAvailable"] == 1
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    (monitor,) = only(objects, "ServiceMonitor")
    (service,) = only(objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_labels_are_the_recommended_ones() -> None:
    # The templates' objects; crds/ holds kopf's shared CRDs as kopf defines them.
    for obj in charts.render(CHART, (), RELEASE, NAMESPACE, include_crds=False):
        meta_labels = obj["metadata"].get("labels", {})
        assert meta_labels.get(labels.APP_PART_OF) == labels.APP, obj["metadata"]["name"]
        assert meta_labels.get(labels.APP_MANAGED_BY) == "Helm"


# ---------------------------------------------------------------------- values schema


def _object_sections(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            found.append((path or "/", node))
        for key, value in node.items():
            found += _object_sections(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _object_sections(value, f"{path}/{i}")
    return found


def test_every_values_section_refuses_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    sections = _object_sections(schema)
    assert len(sections) > 10
    for path, section in sections:
        assert section.get("additionalProperties") is False, path


def test_every_default_value_is_in_the_schema() -> None:
    """values.yaml and the schema list the same top-level sections."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicaCount=2"], "additional properties 'replicaCount' not allowed"),
        (["--set", "image.registry=x"], "additional properties 'registry' not allowed"),
        (["--set", "crds.upgrade=true"], "additional properties 'upgrade' not allowed"),
        (["--set-json", "watchNamespaces=[]"], "watchNamespaces"),
        (["--set", "watchNamespaces=null"], "watchNamespaces"),
        (["--set", "podAntiAffinity=always"], "podAntiAffinity"),
        (["--set", "replicas=0"], "replicas"),
    ],
)
def test_values_schema_rejects_unknown_keys_and_empty_watch_namespaces(
    args: list[str], message: str
) -> None:
    with pytest.raises(ChartError, match=re.escape(message)):
        charts.helm("template", RELEASE, CHART, "--kube-version", charts.KUBE_VERSION, *args)


# ------------------------------------------------------------------- raw manifests (k8s/)


def test_make_manifests_output_equals_the_committed_files(tmp_path: Path) -> None:
    """Drift: regenerate into a temporary copy and compare with the repository."""
    written = charts.generate(out=tmp_path)
    stale = [str(p) for p in written if (tmp_path / p).read_text() != _read(REPO / p)]
    assert not stale, f"stale generated files (run `make manifests`): {stale}"
    fresh = {p.name for p in (tmp_path / "k8s").iterdir() if charts.MANIFEST_PATTERN.match(p.name)}
    committed = {p.name for p in K8S.iterdir() if charts.MANIFEST_PATTERN.match(p.name)}
    assert committed == fresh, (
        f"k8s/ holds {sorted(committed - fresh)} that no chart renders, "
        f"lacks {sorted(fresh - committed)}"
    )
    for directory in charts.GENERATED_DIRS:
        assert {p.name for p in (REPO / directory).glob("*.yaml")} == {
            p.name for p in (tmp_path / directory).glob("*.yaml")
        }


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else f"<missing {path}>"


def _raw_manifests() -> list[tuple[str, Manifest]]:
    return [
        (p.name, yaml.safe_load(p.read_text()))
        for p in sorted(K8S.iterdir())
        if charts.MANIFEST_PATTERN.match(p.name)
    ]


def test_raw_manifests_are_one_object_per_file_named_and_numbered_in_apply_order() -> None:
    raw = _raw_manifests()
    assert raw[0][0] == f"000-CustomResourceDefinition-{crd.NAME}.yaml"
    numbers = [int(name[:3]) for name, _ in raw]
    assert numbers == list(range(len(raw)))
    for name, obj in raw:
        assert name == charts.manifest_name(int(name[:3]), obj)
        assert len([d for d in yaml.safe_load_all((K8S / name).read_text()) if d]) == 1
    ranks = [charts.kind_rank(obj["kind"]) for _, obj in raw]
    assert ranks == sorted(ranks), "k8s/ files are not in apply order"
    namespaces = {obj["metadata"]["name"] for _, obj in raw if obj["kind"] == "Namespace"}
    assert NAMESPACE in namespaces
    for _, obj in raw:
        ns = obj["metadata"].get("namespace")
        assert ns is None or ns in namespaces | charts.BUILTIN_NAMESPACES


def test_raw_manifests_hold_the_operator_chart_rendered_with_kind_values() -> None:
    def key(obj: Manifest) -> tuple[str, str, str]:
        return obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace", "")

    raw = {key(obj): obj for _, obj in _raw_manifests()}
    rendered = charts.with_namespaces(
        charts.render(CHART, VALUES["kind"], RELEASE, NAMESPACE), NAMESPACE
    )
    assert rendered
    for obj in rendered:
        assert raw.get(key(obj)) == obj, f"k8s/ lacks or differs from {key(obj)}"
    ours = {
        k
        for k, o in raw.items()
        if o["metadata"].get("labels", {}).get(labels.APP_INSTANCE) == RELEASE
    }
    assert ours <= {key(o) for o in rendered}


# --------------------------------------------------------------------- charts.py helpers


def test_install_order_puts_crds_namespaces_rbac_config_workloads_then_custom_resources() -> None:
    objects = [
        {"kind": k, "metadata": {"name": n}}
        for k, n in [
            ("KopfPeering", "p"),
            ("Deployment", "d"),
            ("ConfigMap", "c"),
            ("RoleBinding", "rb"),
            ("Role", "r"),
            ("Namespace", "ns"),
            ("CustomResourceDefinition", "x"),
        ]
    ]
    assert [o["kind"] for o in charts.install_order(objects)] == [
        "CustomResourceDefinition",
        "Namespace",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "KopfPeering",
    ]


def test_namespaced_objects_get_the_release_namespace_and_used_namespaces_an_object() -> None:
    objects = charts.with_namespaces(
        [
            {"kind": "ClusterRole", "metadata": {"name": "a"}},
            {"kind": "Service", "metadata": {"name": "b"}},
            {"kind": "Role", "metadata": {"name": "c", "namespace": "default"}},
        ],
        "team",
    )
    assert [o["metadata"].get("namespace") for o in objects] == [None, "team", "default"]
    assert charts.missing_namespaces(objects) == [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}
    ]


def test_chart_names_its_install_namespace() -> None:
    release = charts.release_of(CHART)
    assert (release.name, release.namespace) == (RELEASE, NAMESPACE)
    assert release.values_files == (CHART / "values-kind.yaml",)


# --------------------------------------------------------------------- skaffold and kind


def _skaffold() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    return config


def test_skaffold_installs_strimzi_then_the_charts_with_their_namespaces() -> None:
    releases = _skaffold()["deploy"]["helm"]["releases"]
    names = [r["name"] for r in releases]
    strimzi_release = "strimzi-kafka-operator"
    assert names.index(strimzi_release) < names.index("hftpipe-stack") < names.index(RELEASE)
    (strimzi,) = [r for r in releases if r["name"] == strimzi_release]
    assert strimzi["remoteChart"] == f"strimzi/{strimzi_release}"
    assert strimzi["version"] == versions.STRIMZI
    for release in releases:
        if "chartPath" not in release:
            continue
        chart = REPO / release["chartPath"]
        assert release["namespace"] == charts.release_of(chart).namespace
        assert release["name"] == charts.release_of(chart).name


def test_skaffold_wires_the_built_operator_image_into_the_chart() -> None:
    config = _skaffold()
    images = [a["image"] for a in config["build"]["artifacts"]]
    assert images == ["hftpipe-operator", "hftpipe-workers"]
    (operator,) = [r for r in config["deploy"]["helm"]["releases"] if r["name"] == RELEASE]
    assert operator["setValueTemplates"] == {
        "image.repository": "{{.IMAGE_REPO_hftpipe_operator}}",
        "image.tag": "{{.IMAGE_TAG_hftpipe_operator}}",
    }
    assert operator["valuesFiles"] == ["charts/hftpipe-operator/values-kind.yaml"]
    for path in operator["valuesFiles"]:
        assert (REPO / path).is_file()
    # The values the templates set must be keys the chart's schema accepts.
    image_schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["image"]
    for key in operator["setValueTemplates"]:
        assert key.split(".")[1] in image_schema["properties"]


def test_skaffold_kind_profile_matches_kind_config() -> None:
    config = _skaffold()
    kind_config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    (kind_profile,) = [p for p in config["profiles"] if p["name"] == "kind"]
    assert kind_profile["activation"] == [{"kubeContext": f"kind-{kind_config['name']}"}]
    node_ports = {
        p["value"] for p in kind_profile["patches"] if str(p["path"]).endswith(".nodePort")
    }
    mapped = {m["containerPort"] for m in kind_config["nodes"][0]["extraPortMappings"]}
    assert node_ports == mapped == {30300, 30090}
    assert {p["localPort"] for p in config["portForward"]} == {3000, 9090}
    (remote,) = [p for p in config["profiles"] if p["name"] == "remote"]
    assert config["deploy"]["helm"]["releases"][3]["name"] == RELEASE  # what the patches index
    patched = {p["path"]: p.get("value") for p in remote["patches"]}
    assert patched["/build/local/push"] is True
    assert patched["/deploy/helm/releases/3/valuesFiles"] == [
        "charts/hftpipe-operator/values-production.yaml"
    ]


def test_a_generated_secret_keeps_its_committed_value_unless_its_keys_change() -> None:
    previous = {"kind": "Secret", "metadata": {"name": "redis", "namespace": "default"}}
    before = {**previous, "data": {"password": "b2xk"}}
    index = {charts.object_key(before): before}
    fresh = {**previous, "data": {"password": "bmV3"}}
    assert charts.keep_secret_data(fresh, index)["data"] == {"password": "b2xk"}
    rekeyed = {**previous, "data": {"token": "bmV3"}}
    assert charts.keep_secret_data(rekeyed, index) == rekeyed
    other = {"kind": "ConfigMap", "metadata": previous["metadata"], "data": {"password": "x"}}
    assert charts.keep_secret_data(other, index) == other


def test_readme_run_on_kind_installs_the_versions_skaffold_pins() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Run on kind") : readme.index("## Upgrade")]
    releases = _skaffold()["deploy"]["helm"]["releases"]
    for release in releases:
        if "remoteChart" in release:
            assert f"{release['remoteChart']} --version {release['version']}" in section
        else:
            values = " ".join(f"-f {v}" for v in release["valuesFiles"])
            assert f"{release['chartPath']} -n {release['namespace']}" in section
            assert values in section
    assert section.index("strimzi-kafka-operator") < section.index(f"helm install {RELEASE}")
