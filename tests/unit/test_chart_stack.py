"""charts/hftpipe-stack rendered with helm: lint, what each value set renders, and the
agreements with the code (rules file, dashboard, operator labels, topic names, sample job).

helm runs through :mod:`hftpipe_devstack.charts` (the pinned binary). Rendering is
offline (``helm template``), where the chart renders every object the values ask
for; what an install into a cluster without Strimzi or the Prometheus Operator
does is tested against the real API server in tests/integration/test_chart_stack.py.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest
import yaml

from hftpipe_devstack import charts
from hftpipe_operator import builders, labels
from hftpipe_operator.crd import example_replayjob
from hftpipe_operator.spec import ReplayJob
from hftpipe_workers.contract import Groups, Topics

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
    charts.helm("package", CHART, "--destination", tmp_path)
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


def test_kafka_user_acls_cover_every_jobs_topics_and_groups() -> None:
    acls = one(render("production"), "KafkaUser")["spec"]["authorization"]["acls"]
    by_type = {acl["resource"]["type"]: acl for acl in acls}
    topic, group = by_type["topic"], by_type["group"]
    assert topic["resource"]["patternType"] == group["resource"]["patternType"] == "prefix"
    assert set(topic["operations"]) == {"Read", "Write", "Describe", "Create"}
    assert group["operations"] == ["Read"]
    job_topics, job_groups = Topics.for_job("any-job"), Groups.for_job("any-job")
    for name in (job_topics.bars, job_topics.metrics, job_topics.deadletter):
        assert name.startswith(topic["resource"]["name"]), name
    for name in (job_groups.processor, job_groups.loader):
        assert name.startswith(group["resource"]["name"]), name


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
