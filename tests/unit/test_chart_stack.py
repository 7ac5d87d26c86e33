"""charts/hftpipe-stack rendered with helm: lint, what each value set renders, and the
agreements with the code (rules file, dashboard, operator labels, topic names, sample job).

helm runs through :mod:`hftpipe_devstack.charts` (the pinned binary). Rendering is
offline (``helm template``), where the chart renders every object the values ask
for; what an install into a cluster without Strimzi or the Prometheus Operator
does is tested against the real API server in tests/integration/test_stack_chart_install.py.

Strimzi's operator chart and kube-prometheus-stack are optional dependencies, which
cannot be downloaded here: helm gets :func:`hftpipe_devstack.charts.chart_for_helm` of
the chart (:func:`hftpipe_devstack.charts.helm_chart`), a copy with stand-ins for them
(see "optional dependencies" below).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest
import yaml

from hftpipe_devstack import charts, install, versions
from hftpipe_operator import builders, labels
from hftpipe_operator.crd import example_replayjob
from hftpipe_operator.spec import ReplayJob
from hftpipe_workers.contract import Groups, Topics, job_id, transactional_id

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "hftpipe-stack"
RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "hftpipe.json"

VALUE_SETS: Final[dict[str, tuple[Path, ...]]] = {
    "default": (),
    "kind": (CHART / "values-kind.yaml",),
    "production": (CHART / "values-production.yaml",),
}
STRIMZI_KINDS: Final = frozenset({"Kafka", "KafkaNodePool", "KafkaUser"})
MONITORING_KINDS: Final = frozenset({"PodMonitor", "PrometheusRule"})
POD_TEMPLATE_KINDS: Final = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
)

Manifest = dict[str, Any]


def render(
    value_set: str = "default", set_values: Mapping[str, str] | None = None
) -> list[Manifest]:
    return _render(value_set, tuple(sorted((set_values or {}).items())))


@cache
def _render(value_set: str, set_values: tuple[tuple[str, str], ...]) -> list[Manifest]:
    return charts.render(
        CHART, VALUE_SETS[value_set], "hftpipe-stack", "hftpipe", set_values=dict(set_values)
    )


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [o for o in of_kind(objects, kind) if name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


# ----------------------------------------------------------------- lint and render


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(value_set: str) -> None:
    report = charts.lint(CHART, VALUE_SETS[value_set])
    assert "1 chart(s) linted, 0 chart(s) failed" in report


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_renders_the_stack(value_set: str) -> None:
    objects = render(value_set)
    kinds = {o["kind"] for o in objects}
    assert {"Kafka", "KafkaNodePool", "StatefulSet", "Secret", "Service"} <= kinds
    assert {"PodMonitor", "PrometheusRule", "ConfigMap"} <= kinds
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "hftpipe", obj["kind"]


def test_production_adds_the_kafka_user_and_redis_metrics() -> None:
    objects = render("production")
    assert of_kind(objects, "KafkaUser")
    assert not of_kind(render("default"), "KafkaUser")
    redis = one(objects, "StatefulSet")
    assert [c["name"] for c in redis["spec"]["template"]["spec"]["containers"]] == [
        "redis",
        "metrics",
    ]


def test_disabled_sections_render_nothing() -> None:
    without_kafka = render(set_values={"kafka.enabled": "false"})
    assert not {o["kind"] for o in without_kafka} & STRIMZI_KINDS
    assert "kafka" not in {
        p["metadata"]["name"].rsplit("-", 1)[-1] for p in of_kind(without_kafka, "PodMonitor")
    }
    without_monitoring = render(set_values={"monitoring.enabled": "false"})
    assert not {o["kind"] for o in without_monitoring} & MONITORING_KINDS
    assert not [
        c
        for c in of_kind(without_monitoring, "ConfigMap")
        if "grafana_dashboard" in c["metadata"]["labels"]
    ]
    without_redis = render(set_values={"redis.enabled": "false"})
    assert not of_kind(without_redis, "StatefulSet")


def test_the_packaged_chart_leaves_the_promtool_tests_out(tmp_path: Path) -> None:
    charts.helm_chart("package", CHART, "--destination", tmp_path)
    [archive] = tmp_path.glob("hftpipe-stack-*.tgz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "hftpipe-stack/files/prometheus-rules.yaml" in names
    assert not [n for n in names if n.startswith("hftpipe-stack/tests/")]


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bogus", "1"),
        ("kafka.bogus", "1"),
        ("kafka.nodePool.storage.bogus", "1"),
        ("redis.auth.bogus", "1"),
        ("monitoring.podMonitors.workers.bogus", "1"),
    ],
)
def test_schema_rejects_unknown_values(key: str, value: str) -> None:
    with pytest.raises(charts.ChartError, match="bogus"):
        charts.render(CHART, set_values={key: value})


def test_schema_rejects_a_bad_listener_authentication() -> None:
    with pytest.raises(charts.ChartError, match="authentication"):
        charts.render(CHART, set_values={"kafka.listeners.plain.authentication": "plain"})


# -------------------------------------------------------------------------- Strimzi


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_kafka_is_strimzi_v1_in_kraft_mode(value_set: str) -> None:
    objects = render(value_set)
    kafka = one(objects, "Kafka")
    pool = one(objects, "KafkaNodePool")
    assert kafka["apiVersion"] == pool["apiVersion"] == builders.STRIMZI_API_VERSION
    # v1 knows no ZooKeeper, and the nodes (replicas, storage) live in node pools only.
    assert "zookeeper" not in kafka["spec"]
    assert not {"replicas", "storage"} & set(kafka["spec"]["kafka"])
    assert pool["metadata"]["labels"][labels.STRIMZI_CLUSTER] == kafka["metadata"]["name"]
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]
    # The hftpipe operator creates KafkaTopics: the Topic Operator must run.
    assert "topicOperator" in kafka["spec"]["entityOperator"]
    metrics = kafka["spec"]["kafka"]["metricsConfig"]
    ref = metrics["valueFrom"]["configMapKeyRef"]
    assert metrics["type"] == "jmxPrometheusExporter"
    exporter = one(objects, "ConfigMap", ref["name"])
    assert yaml.safe_load(exporter["data"][ref["key"]])["rules"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_replication_settings_fit_the_node_count(value_set: str) -> None:
    objects = render(value_set)
    config = one(objects, "Kafka")["spec"]["kafka"]["config"]
    nodes = one(objects, "KafkaNodePool")["spec"]["replicas"]
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
    ):
        assert config[key] <= nodes, key
    assert config["min.insync.replicas"] <= config["default.replication.factor"]
    if nodes >= 3:  # production: a node may fail without stopping writes
        assert config["default.replication.factor"] >= 3
        assert config["min.insync.replicas"] == config["default.replication.factor"] - 1


def test_kind_has_one_node_and_production_three() -> None:
    assert one(render("kind"), "KafkaNodePool")["spec"]["replicas"] == 1
    assert one(render("production"), "KafkaNodePool")["spec"]["replicas"] == 3


def test_listeners_follow_the_values() -> None:
    listeners = one(render("production"), "Kafka")["spec"]["kafka"]["listeners"]
    assert [(x["name"], x["port"], x["tls"]) for x in listeners] == [
        ("plain", 9092, False),
        ("tls", 9093, True),
    ]
    assert listeners[1]["authentication"] == {"type": "scram-sha-512"}
    tls_auth = render(
        set_values={
            "kafka.listeners.tls.enabled": "true",
            "kafka.listeners.tls.authentication": "tls",
            "kafka.user.enabled": "true",
            "kafka.user.authentication": "tls",
        }
    )
    tls_listener = one(tls_auth, "Kafka")["spec"]["kafka"]["listeners"][1]
    assert tls_listener["authentication"] == {"type": "tls"}
    assert one(tls_auth, "KafkaUser")["spec"]["authentication"] == {"type": "tls"}


def test_kafka_user_turns_on_simple_authorization_and_the_user_operator() -> None:
    objects = render("production")
    kafka = one(objects, "Kafka")
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert "userOperator" in kafka["spec"]["entityOperator"]
    assert "authorization" not in one(render("default"), "Kafka")["spec"]["kafka"]
    user = one(objects, "KafkaUser")
    assert user["metadata"]["labels"][labels.STRIMZI_CLUSTER] == kafka["metadata"]["name"]
    assert user["spec"]["authorization"]["type"] == "simple"
    # The Secret Strimzi writes for it opts in to ReplayJobs (the operator uses no other).
    secret_labels = user["spec"]["template"]["secret"]["metadata"]["labels"]
    assert secret_labels[labels.SECRET_OPT_IN] == "true"


def test_kafka_user_acls_cover_every_jobs_topics_groups_and_transactional_id() -> None:
    """Every name a job's workers use lies under a prefix the user is granted (issue 10,
    point 12: the producer's resume group `hftpipe-producer-resume` did not);
    tests/integration/test_kafka_acls.py proves these ACLs on a broker that enforces them."""
    acls = one(render("production"), "KafkaUser")["spec"]["authorization"]["acls"]
    by_type = {acl["resource"]["type"]: acl for acl in acls}
    assert set(by_type) == {"topic", "group", "transactionalId"}
    topic, group, txn = by_type["topic"], by_type["group"], by_type["transactionalId"]
    assert {acl["resource"]["patternType"] for acl in acls} == {"prefix"}
    assert set(topic["operations"]) == {"Read", "Write", "Describe", "Create"}
    assert group["operations"] == ["Read"]
    assert set(txn["operations"]) == {"Write", "Describe"}
    job = job_id("any-job", "some-namespace")
    job_topics, job_groups = Topics.for_job(job), Groups.for_job(job)
    for name in dataclasses.astuple(job_topics):
        assert name.startswith(topic["resource"]["name"]), name
    for name in dataclasses.astuple(job_groups):
        assert name.startswith(group["resource"]["name"]), name
    assert transactional_id(job).startswith(txn["resource"]["name"])


def test_kafka_user_needs_a_listener_with_its_authentication() -> None:
    with pytest.raises(charts.ChartError, match="no enabled listener has authentication"):
        charts.render(CHART, set_values={"kafka.user.enabled": "true"})


def test_client_certificates_need_the_tls_listener() -> None:
    with pytest.raises(charts.ChartError, match="needs a TLS listener"):
        charts.render(CHART, set_values={"kafka.listeners.plain.authentication": "tls"})


# ---------------------------------------------------------------------------- Redis


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_redis_password_comes_from_the_secret(value_set: str) -> None:
    objects = render(value_set)
    redis = one(objects, "StatefulSet")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert "$(REDIS_PASSWORD)" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secret = one(objects, "Secret", ref["name"])
    assert ref["key"] in secret["data"]
    # ReplayJobs name this Secret (k8s/replayjob.yaml): it opts in to them.
    assert secret["metadata"]["labels"][labels.SECRET_OPT_IN] == "true"
    assert env["REDISCLI_AUTH"]["value"] == "$(REDIS_PASSWORD)"
    for probe in ("livenessProbe", "readinessProbe"):
        assert "redis-cli" in " ".join(container[probe]["exec"]["command"])


def test_an_existing_redis_secret_replaces_the_generated_one() -> None:
    objects = render(
        set_values={
            "redis.auth.existingSecret": "mine",
            "redis.auth.existingSecretPasswordKey": "pw",
        }
    )
    assert not of_kind(objects, "Secret")
    env = one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "pw", "optional": False}


def test_redis_persists_an_aof_on_a_claim_and_never_evicts() -> None:
    objects = render()
    redis = one(objects, "StatefulSet")
    assert [c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]] == ["data"]
    config = one(objects, "ConfigMap", f"{redis['metadata']['name']}-config")["data"]["redis.conf"]
    assert "appendonly yes" in config
    assert "maxmemory-policy noeviction" in config
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    assert services[redis["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    assert redis["metadata"]["name"] in services
    ephemeral = one(render(set_values={"redis.persistence.enabled": "false"}), "StatefulSet")
    assert "volumeClaimTemplates" not in ephemeral["spec"]


# --------------------------------------------------------------------- pod security


def pod_specs(objects: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for obj in objects:
        if obj["kind"] not in POD_TEMPLATE_KINDS:
            continue
        spec = obj["spec"]
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pod = spec if obj["kind"] == "Pod" else spec["template"]["spec"]
        out.append((f"{obj['kind']}/{obj['metadata']['name']}", pod))
    return out


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_pod_is_restricted(value_set: str) -> None:
    """Pod Security Standard `restricted`, what the workers' pods also meet."""
    objects = render(value_set, {"redis.metrics.enabled": "true"})
    specs = pod_specs(objects)
    assert specs
    for where, pod in specs:
        pod_context = pod.get("securityContext", {})
        assert pod_context.get("runAsNonRoot") is True, where
        assert pod_context.get("runAsUser", 1) != 0, where
        assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key), f"{where}: {key}"
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v], where
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            context = container.get("securityContext", {})
            name = f"{where}/{container['name']}"
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("privileged") is not True, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not context.get("capabilities", {}).get("add"), name
            assert context.get("readOnlyRootFilesystem") is True, name
            assert context.get("runAsNonRoot", True) is True, name
            assert container.get("resources", {}).get("limits", {}).get("memory"), name
            assert ":" in container["image"], f"{name}: image not pinned by tag"
            assert not container["image"].endswith(":latest"), name


# ----------------------------------------------------------------------- monitoring


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_prometheusrule_holds_the_rules_file(value_set: str) -> None:
    rule = one(render(value_set), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_dashboard_configmap_holds_the_dashboard(value_set: str) -> None:
    dashboards = [
        c
        for c in of_kind(render(value_set), "ConfigMap")
        if "grafana_dashboard" in c["metadata"]["labels"]
    ]
    assert len(dashboards) == 1
    configmap = dashboards[0]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (name, text), *rest = configmap["data"].items()
    assert not rest
    assert name.endswith(".json")
    assert json.loads(text) == json.loads(DASHBOARD.read_text())


def sample_job() -> ReplayJob:
    return ReplayJob.from_body(example_replayjob())


def test_workers_podmonitor_matches_the_operators_own() -> None:
    """Same pods, same port, same labels as builders.build_workers_podmonitor."""
    objects = render(set_values={"monitoring.podMonitors.workers.enabled": "true"})
    chart = one(objects, "PodMonitor", "hftpipe-stack-workers")["spec"]
    job = sample_job()
    built = builders.build_workers_podmonitor(job)["spec"]
    assert chart["podTargetLabels"] == built["podTargetLabels"]
    [endpoint], [built_endpoint] = chart["podMetricsEndpoints"], built["podMetricsEndpoints"]
    assert endpoint["port"] == builders.METRICS_PORT_NAME
    for key in ("port", "path", "honorLabels"):
        assert endpoint[key] == built_endpoint[key], key
    selector = chart["selector"]
    assert selector["matchLabels"] == {labels.APP_MANAGED_BY: labels.MANAGER}
    [expression] = selector["matchExpressions"]
    assert expression["key"] == labels.COMPONENT
    assert expression["operator"] == "In"
    assert expression["values"] == list(labels.WORKERS)
    # ... and the labels select the pods the operator builds.
    for workload in (builders.build_processor_deployment(job), builders.build_producer_job(job)):
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert pod_labels[labels.COMPONENT] in expression["values"]
        assert pod_labels[labels.APP_MANAGED_BY] == labels.MANAGER
        ports = workload["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert endpoint["port"] in {p["name"] for p in ports}


def test_workers_podmonitor_is_off_by_default() -> None:
    """The operator creates one per job; two would scrape every series twice."""
    for value_set in VALUE_SETS:
        names = {p["metadata"]["name"] for p in of_kind(render(value_set), "PodMonitor")}
        assert "hftpipe-stack-workers" not in names
        assert "hftpipe-stack-operator" in names


def test_operator_podmonitor_selects_the_operator_charts_pods() -> None:
    """charts/hftpipe-operator's Deployment carries the labels and port the PodMonitor wants."""
    operator_chart = charts.release_of(REPO / "charts" / "hftpipe-operator")
    [deployment] = of_kind(operator_chart.render(), "Deployment")
    pod = deployment["spec"]["template"]
    monitor = one(render("kind"), "PodMonitor", "hftpipe-stack-operator")["spec"]
    wanted = monitor["selector"]["matchLabels"]
    assert wanted.items() <= pod["metadata"]["labels"].items()
    assert monitor["namespaceSelector"] == {"any": True}
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    [endpoint] = monitor["podMetricsEndpoints"]
    assert endpoint["port"] in ports


def test_monitoring_labels_reach_the_prometheus_operator_objects() -> None:
    objects = render("kind")
    for obj in [*of_kind(objects, "PodMonitor"), *of_kind(objects, "PrometheusRule")]:
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", obj["kind"]


def test_kafka_podmonitor_scrapes_the_clusters_exporter() -> None:
    objects = render()
    monitor = one(objects, "PodMonitor", "hftpipe-stack-kafka")
    assert (
        monitor["spec"]["selector"]["matchLabels"][labels.STRIMZI_CLUSTER]
        == one(objects, "Kafka")["metadata"]["name"]
    )
    assert not [
        p
        for p in of_kind(render(set_values={"kafka.metrics.enabled": "false"}), "PodMonitor")
        if p["metadata"]["name"] == "hftpipe-stack-kafka"
    ]


# ------------------------------------------------------------ kind and the sample job


def test_kind_values_name_what_the_sample_replayjob_uses() -> None:
    """k8s/replayjob.yaml's Redis (and Kafka, once it names a Strimzi cluster) exist in kind."""
    objects = render("kind")
    spec = example_replayjob()["spec"]
    host = urlsplit(spec["redis"]["url"]).hostname
    assert host in {s["metadata"]["name"] for s in of_kind(objects, "Service")}
    secret_ref = spec["redis"]["credentials"]["secretRef"]
    secret = one(objects, "Secret", secret_ref["name"])
    assert secret_ref["passwordKey"] in secret["data"]
    cluster = spec["kafka"].get("strimziCluster")
    if cluster is not None:
        kafka = one(objects, "Kafka")
        assert cluster["name"] == kafka["metadata"]["name"]
        ports = {x["port"] for x in kafka["spec"]["kafka"]["listeners"]}
        assert cluster.get("port", 9092) in ports


# ------------------------------------------------------------ optional dependencies

SKAFFOLD: Final = REPO / "skaffold.yaml"
DEPENDENCIES: Final = ("strimzi-kafka-operator", "kube-prometheus-stack")
PROBE_CONFIGMAP: Final = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-{{ .Chart.Name }}-probe
  labels:
    app.kubernetes.io/part-of: hftpipe
data:
  watchAnyNamespace: {{ .Values.watchAnyNamespace | default false | quote }}
"""


def skaffold_release(name: str) -> dict[str, Any]:
    config = yaml.safe_load(SKAFFOLD.read_text())
    (release,) = [r for r in config["deploy"]["helm"]["releases"] if r["name"] == name]
    return dict(release)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, the way ``--set`` and skaffold name values."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def merged_values(value_set: str) -> dict[str, Any]:
    """values.yaml with the value set's files over it (flattened), as helm merges them."""
    flat = flatten(yaml.safe_load((CHART / "values.yaml").read_text()))
    for path in VALUE_SETS[value_set]:
        flat.update(flatten(yaml.safe_load(path.read_text()) or {}))
    return flat


def bare_copy(tmp_path: Path) -> Path:
    """A copy of the chart without a charts/ directory: what a fresh clone has."""
    copy = tmp_path / "bare" / CHART.name
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    return copy


def probe_crd(name: str) -> dict[str, Any]:
    """The CRD a probe chart ``name`` has in its crds/ (Helm installs those first)."""
    group = f"{name}.probe.test"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"probes.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": "Probe", "plural": "probes", "singular": "probe"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }


def probe_subchart(directory: Path, name: str, version: str) -> Path:
    """A tiny real-looking chart ``name``: one ConfigMap, and a CRD in crds/."""
    (directory / "templates").mkdir(parents=True)
    (directory / "crds").mkdir()
    (directory / "crds" / "probe.yaml").write_text(yaml.safe_dump(probe_crd(name)))
    meta = {
        "apiVersion": "v2",
        "name": name,
        "version": version,
        "type": "application",
        "description": f"A test's small chart named like {name}, with one ConfigMap.",
    }
    (directory / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    (directory / "templates" / "configmap.yaml").write_text(PROBE_CONFIGMAP)
    return directory


def with_probe_subcharts(tmp_path: Path, names: tuple[str, ...] = DEPENDENCIES) -> Path:
    """A copy of the chart with probe charts for ``names`` in its charts/.

    The first as a directory, any other as an archive (``helm package``), the form
    ``helm dependency build`` writes.
    """
    copy = bare_copy(tmp_path)
    declared = {dep.name: dep for dep in charts.dependencies(copy)}
    for index, name in enumerate(names):
        if index == 0:
            probe_subchart(copy / "charts" / name, name, declared[name].version)
        else:
            source = probe_subchart(tmp_path / "sources" / name, name, declared[name].version)
            charts.helm("package", source, "--destination", copy / "charts")
    return copy


def template_text(chart: Path, value_set: str) -> str:
    """``helm template`` output as text, the generated Redis password masked."""
    files = [arg for path in VALUE_SETS[value_set] for arg in ("--values", str(path))]
    text = charts.helm(
        "template",
        "hftpipe-stack",
        chart,
        "--namespace",
        "hftpipe",
        "--kube-version",
        charts.KUBE_VERSION,
        "--include-crds",
        *files,
    ).stdout
    return re.sub(r"(?m)^(  password: )\S+$", r"\1<random>", text)


def test_the_operators_are_optional_dependencies_with_conditions() -> None:
    """Declared with a condition each, from a repository alias (no host in the chart)."""
    declared = {dep.name: dep for dep in charts.dependencies(CHART)}
    assert tuple(declared) == DEPENDENCIES
    for name, dep in declared.items():
        assert dep.condition == f"{name}.enabled"
        assert re.fullmatch(r"@[a-z0-9-]+", dep.repository), dep.repository
        assert not dep.alias
        # One source of truth: skaffold installs the same chart, from the same repository
        # alias, at the same version, when it installs it as a release of its own.
        release = skaffold_release(name)
        assert release["remoteChart"] == f"{dep.repository[1:]}/{name}"
        assert dep.version == str(release["version"]), name
    assert declared["strimzi-kafka-operator"].version == versions.STRIMZI


def test_no_chart_repository_host_is_written_into_the_chart() -> None:
    text = (CHART / "Chart.yaml").read_text()
    assert "://" not in text
    for dep in yaml.safe_load(text)["dependencies"]:
        assert str(dep["repository"]).startswith("@"), dep


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_dependencies_are_off_by_default(value_set: str) -> None:
    values = merged_values(value_set)
    for dep in charts.dependencies(CHART):
        assert values[dep.condition] is False, f"{dep.condition} with {value_set} values"


def test_kube_prometheus_stack_values_are_skaffolds_release_settings() -> None:
    """Enabled as a subchart, kube-prometheus-stack gets what skaffold's release gets."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())["kube-prometheus-stack"]
    subchart = {k: v for k, v in flatten(values).items() if k != "enabled"}
    assert subchart == skaffold_release("kube-prometheus-stack")["setValues"]


def test_strimzi_subchart_values_are_only_the_switch() -> None:
    """watchAnyNamespace stays a comment: as a subchart the operator runs in the Kafka's
    namespace, and its own default (watch that namespace) is enough there."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())["strimzi-kafka-operator"]
    assert values == {"enabled": False}
    assert "# watchAnyNamespace: true" in (CHART / "values.yaml").read_text()


def test_a_chart_without_dependencies_is_used_as_it_is() -> None:
    operator_chart = REPO / "charts" / "hftpipe-operator"
    assert not charts.dependencies(operator_chart)
    assert charts.chart_for_helm(operator_chart) == operator_chart


def test_stand_ins_replace_the_missing_dependencies_outside_the_repository(
    tmp_path: Path,
) -> None:
    copy = bare_copy(tmp_path)
    used = charts.chart_for_helm(copy)
    assert used != copy
    assert used.name == copy.name
    assert install.cache_root() in used.parents
    assert REPO not in used.resolve().parents
    assert not (copy / "charts").exists(), "the stand-ins went into the chart itself"
    for dep in charts.dependencies(copy):
        meta = yaml.safe_load((used / "charts" / dep.name / "Chart.yaml").read_text())
        assert (meta["name"], meta["version"], meta["type"]) == (
            dep.name,
            dep.version,
            "application",
        )
        assert meta["annotations"][charts.STAND_IN_ANNOTATION] == "true"
        assert "stand-in" in meta["description"].lower()
        assert "cannot be downloaded" in meta["description"]
    # The same content maps to the same copy: nothing new per call, nor per clone.
    assert charts.chart_for_helm(copy) == used
    # The repository's chart renders through such a copy too (or, after
    # `helm dependency build`, as it is): no stand-in is ever written into it.
    repo_used = charts.chart_for_helm(CHART)
    if repo_used != CHART:
        assert install.cache_root() in repo_used.parents
    for found in (CHART / "charts").glob("*/Chart.yaml"):
        annotations = yaml.safe_load(found.read_text()).get("annotations") or {}
        assert charts.STAND_IN_ANNOTATION not in annotations, found


def test_copies_unused_for_a_week_are_removed(tmp_path: Path) -> None:
    used = charts.chart_for_helm(bare_copy(tmp_path)).parent
    prefix = f"{charts.STAND_IN_COPIES}-{CHART.name}-"
    old, recent = (used.parent / f"{prefix}test-{age}" for age in ("old", "recent"))
    try:
        for directory, days in ((old, charts.STAND_IN_KEEP_DAYS + 1), (recent, 1)):
            directory.mkdir(exist_ok=True)
            then = time.time() - days * 86400
            os.utime(directory, (then, then))
        assert charts.chart_for_helm(bare_copy(tmp_path / "again")).parent == used
        assert not old.exists()
        assert recent.is_dir()
        assert used.stat().st_mtime > time.time() - 60
    finally:
        for directory in (old, recent):
            shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_and_template_pass_through_the_stand_ins(value_set: str, tmp_path: Path) -> None:
    copy = bare_copy(tmp_path)
    report = charts.lint(copy, VALUE_SETS[value_set])
    assert "1 chart(s) linted, 0 chart(s) failed" in report
    assert str(install.cache_root()) not in report, "the report names the cached copy"
    objects = charts.render(copy, VALUE_SETS[value_set], "hftpipe-stack", "hftpipe")
    secrets = [o for o in objects if o["kind"] == "Secret"]
    expected = render(value_set)
    assert [o for o in objects if o not in secrets] == [
        o for o in expected if o["kind"] != "Secret"
    ]
    assert not [o for o in objects if o["metadata"]["name"].endswith("-probe")]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_disabled_stand_ins_render_what_the_real_dependencies_would(
    value_set: str, tmp_path: Path
) -> None:
    """Byte for byte (CRDs included), against a copy with real-looking charts in charts/."""
    stand_ins = charts.chart_for_helm(bare_copy(tmp_path / "a"))
    real = with_probe_subcharts(tmp_path / "b")
    assert charts.chart_for_helm(real) == real
    text = template_text(stand_ins, value_set)
    assert "kind: Kafka\n" in text
    assert "-probe" not in text
    assert text == template_text(real, value_set)


def test_schema_passes_subchart_values_through() -> None:
    objects = render(set_values={"strimzi-kafka-operator.watchAnyNamespace": "true"})
    assert len(objects) == len(render())
    assert render(set_values={"kube-prometheus-stack.grafana.enabled": "false"})


@pytest.mark.parametrize("name", DEPENDENCIES)
def test_schema_rejects_a_switch_that_is_no_boolean(name: str) -> None:
    with pytest.raises(charts.ChartError, match=f"/{name}/enabled.*boolean") as raised:
        charts.render(CHART, set_values={f"{name}.enabled": "notabool"})
    assert "helm dependency build" not in str(raised.value)


@pytest.mark.parametrize("name", DEPENDENCIES)
def test_enabling_a_stand_in_says_to_run_helm_dependency_build(name: str, tmp_path: Path) -> None:
    copy = bare_copy(tmp_path)
    used = charts.chart_for_helm(copy)
    enable = {f"{name}.enabled": "true"}
    for call in (charts.render, charts.lint):
        with pytest.raises(charts.ChartError) as raised:
            call(copy, set_values=enable)
        message = str(raised.value)
        assert f"{name} is enabled ({name}.enabled is true)" in message
        assert "only a stand-in" in message
        assert "`helm dependency build charts/hftpipe-stack`" in message
        assert f"or set {name}.enabled=false" in message
        # The error names the chart it was given, not the cached copy.
        assert str(used) not in message
        assert str(copy) in message


def test_dependencies_present_in_charts_are_used_as_they_are(tmp_path: Path) -> None:
    """The conditions wired with real Helm: enabled, a subchart's ConfigMap renders."""
    real = with_probe_subcharts(tmp_path)
    version = {dep.name: dep.version for dep in charts.dependencies(real)}
    assert {p.name for p in (real / "charts").iterdir()} == {
        "strimzi-kafka-operator",
        f"kube-prometheus-stack-{version['kube-prometheus-stack']}.tgz",
    }
    assert charts.chart_for_helm(real) == real

    def probes(sets: dict[str, str]) -> dict[str, dict[str, str]]:
        objects = charts.render(real, (), "hftpipe-stack", "hftpipe", set_values=sets)
        found = {
            o["metadata"]["name"]: o["data"]
            for o in objects
            if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-probe")
        }
        # An enabled subchart's crds/ comes along (first, in `helm install`); a disabled
        # one's does not.
        crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
        subcharts = [n.removeprefix("hftpipe-stack-").removesuffix("-probe") for n in found]
        assert sorted(crds, key=str) == sorted(map(probe_crd, subcharts), key=str)
        return found

    strimzi = "hftpipe-stack-strimzi-kafka-operator-probe"
    assert probes({}) == {}
    assert probes({"strimzi-kafka-operator.enabled": "true"}) == {
        strimzi: {"watchAnyNamespace": "false"}
    }
    both = probes(
        {
            "strimzi-kafka-operator.enabled": "true",
            "strimzi-kafka-operator.watchAnyNamespace": "true",
            "kube-prometheus-stack.enabled": "true",
        }
    )
    assert both == {
        strimzi: {"watchAnyNamespace": "true"},
        "hftpipe-stack-kube-prometheus-stack-probe": {"watchAnyNamespace": "false"},
    }


def test_only_the_missing_dependency_gets_a_stand_in(tmp_path: Path) -> None:
    partial = with_probe_subcharts(tmp_path, ("strimzi-kafka-operator",))
    used = charts.chart_for_helm(partial)
    assert used != partial
    kept = yaml.safe_load((used / "charts" / "strimzi-kafka-operator" / "Chart.yaml").read_text())
    assert charts.STAND_IN_ANNOTATION not in (kept.get("annotations") or {})
    enabled = charts.render(
        partial,
        (),
        "hftpipe-stack",
        "hftpipe",
        set_values={"strimzi-kafka-operator.enabled": "true"},
    )
    assert "hftpipe-stack-strimzi-kafka-operator-probe" in {o["metadata"]["name"] for o in enabled}
    with pytest.raises(charts.ChartError, match="helm dependency build"):
        charts.render(partial, set_values={"kube-prometheus-stack.enabled": "true"})
