"""Third-party CRDs in the real API server, and the validators built on them.

Strimzi's and the Prometheus Operator's CRDs (pinned in
``hftpipe_devstack.versions``) must install and become Established; then the
same manifests must pass, or fail, both kubeconform (against schemas taken from
the server) and a server-side dry-run. The deployment checks (chart tests) rely
on exactly these fixtures: ``crds_installed``, ``kube_schemas``, ``kubeconform``
and ``server_dry_run``.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from hftpipe_devstack import kubeschemas, thirdparty, versions
from hftpipe_operator import builders, crd
from hftpipe_operator.spec import ReplayJob

Validate = Callable[[Any], str]

NEEDED_KINDS = {
    ("kafka.strimzi.io", "Kafka"),
    ("kafka.strimzi.io", "KafkaNodePool"),
    ("kafka.strimzi.io", "KafkaTopic"),
    ("kafka.strimzi.io", "KafkaUser"),
    ("monitoring.coreos.com", "PodMonitor"),
    ("monitoring.coreos.com", "ServiceMonitor"),
    ("monitoring.coreos.com", "PrometheusRule"),
    (crd.GROUP, crd.KIND),
}

KAFKA: dict[str, Any] = {
    "apiVersion": "kafka.strimzi.io/v1",
    "kind": "Kafka",
    "metadata": {"name": "events"},
    "spec": {
        # KRaft only and node pools only: in the v1 API neither needs an annotation.
        "kafka": {
            "version": "4.2.0",
            "listeners": [
                {"name": "plain", "port": 9092, "type": "internal", "tls": False},
                {"name": "tls", "port": 9093, "type": "internal", "tls": True},
            ],
            "config": {"offsets.topic.replication.factor": 1, "min.insync.replicas": 1},
        },
        "entityOperator": {"topicOperator": {}, "userOperator": {}},
    },
}
NODE_POOL: dict[str, Any] = {
    "apiVersion": "kafka.strimzi.io/v1",
    "kind": "KafkaNodePool",
    "metadata": {"name": "dual", "labels": {"strimzi.io/cluster": "events"}},
    "spec": {
        "replicas": 1,
        "roles": ["controller", "broker"],
        "storage": {
            "type": "jbod",
            "volumes": [
                {
                    "id": 0,
                    "type": "persistent-claim",
                    "size": "10Gi",
                    "deleteClaim": False,
                    "kraftMetadata": "shared",
                }
            ],
        },
        "resources": {"requests": {"memory": "2Gi", "cpu": 1}},
    },
}
TOPIC: dict[str, Any] = {
    "apiVersion": "kafka.strimzi.io/v1",
    "kind": "KafkaTopic",
    "metadata": {"name": "bars", "labels": {"strimzi.io/cluster": "events"}},
    "spec": {"partitions": 3, "replicas": 1, "config": {"retention.ms": 604800000}},
}
POD_MONITOR: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PodMonitor",
    "metadata": {"name": "workers"},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/name": "hftpipe-worker"}},
        "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
    },
}
PROMETHEUS_RULE: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "replay"},
    "spec": {
        "groups": [
            {
                "name": "replay",
                "rules": [
                    {
                        "alert": "ReplayLagging",
                        "expr": "hftpipe_replay_lag_seconds > 60",
                        "for": "5m",
                        "labels": {"severity": "warning"},
                        "annotations": {"summary": "replay is behind"},
                    }
                ],
            }
        ]
    },
}
VALID = [KAFKA, NODE_POOL, TOPIC, POD_MONITOR, PROMETHEUS_RULE]


def _changed(doc: dict[str, Any], path: list[str | int], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


# Each: (object, what kubeconform must name, what the API server must name).
INVALID = {
    "misspelt-topic-field": (
        _changed(TOPIC, ["spec", "partitons"], 3),
        "partitons",
        "partitons",
    ),
    "replicas-not-a-number": (
        _changed(NODE_POOL, ["spec", "replicas"], "three"),
        "replicas",
        "replicas",
    ),
    "listener-without-tls": (
        _changed(
            KAFKA, ["spec", "kafka", "listeners"], [{"name": "p", "port": 9092, "type": "internal"}]
        ),
        "tls",
        "tls",
    ),
    "unknown-role": (
        _changed(NODE_POOL, ["spec", "roles"], ["zookeeper"]),
        "roles",
        "zookeeper",
    ),
    "podmonitor-port-as-number": (
        _changed(POD_MONITOR, ["spec", "podMetricsEndpoints", 0, "port"], 8080),
        "port",
        "port",
    ),
    # CRDs mark int-or-string with an extension and no type: the schemas must
    # still refuse an object there (kubeschemas turns it into string|integer).
    "targetport-an-object": (
        _changed(POD_MONITOR, ["spec", "podMetricsEndpoints", 0, "targetPort"], {"name": "m"}),
        "targetPort",
        "targetPort",
    ),
    "rule-with-unknown-field": (
        _changed(PROMETHEUS_RULE, ["spec", "groups", 0, "rules", 0, "severity"], "page"),
        "severity",
        "severity",
    ),
}


def _established(ext: client.ApiextensionsV1Api, name: str) -> dict[str, str]:
    found = ext.read_custom_resource_definition(name)
    return {c.type: c.status for c in (found.status.conditions or [])}


# --------------------------------------------------------------------- installing


def test_every_crd_installs_and_is_established(
    api: client.ApiClient, crds_installed: list[dict[str, Any]]
) -> None:
    kinds = {(c["spec"]["group"], c["spec"]["names"]["kind"]) for c in crds_installed}
    assert kinds >= NEEDED_KINDS
    ext = client.ApiextensionsV1Api(api)
    for body in crds_installed:
        conditions = _established(ext, body["metadata"]["name"])
        assert conditions.get("Established") == "True", (body["metadata"]["name"], conditions)
        assert conditions.get("NamesAccepted") == "True", (body["metadata"]["name"], conditions)


def test_strimzi_serves_only_v1_which_our_operator_writes(
    crds_installed: list[dict[str, Any]],
) -> None:
    strimzi = [c for c in crds_installed if c["spec"]["group"] == "kafka.strimzi.io"]
    assert {c["spec"]["names"]["kind"] for c in strimzi} >= {
        k for k in thirdparty.STRIMZI_KINDS if k != "StrimziPodSet"
    }
    for body in strimzi:
        assert thirdparty.served_versions(body) == ["v1"], body["metadata"]["name"]
    assert builders.STRIMZI_API_VERSION == "kafka.strimzi.io/v1"
    assert int(versions.STRIMZI.split(".")[0]) >= 1  # 1.x: v1beta2 is gone


def test_install_is_idempotent(stack_env: dict[str, str], kubeconfig: Path) -> None:
    """Installing again (a second test session on the same server) changes nothing."""
    crds = thirdparty.load_crds(thirdparty.ensure_prometheus_operator_crds())
    names = thirdparty.install_crds(stack_env["KUBECTL"], kubeconfig, crds)
    assert "podmonitors.monitoring.coreos.com" in names


# ----------------------------------------------------------------------- schemas


def test_schemas_cover_every_served_version_of_every_crd(
    kube_schemas: Path, crds_installed: list[dict[str, Any]]
) -> None:
    paths = kubeschemas.crd_schema_paths(crds_installed)
    assert "kafka.strimzi.io/kafka_v1.json" in paths
    assert "monitoring.coreos.com/podmonitor_v1.json" in paths
    for rel in paths:
        schema = json.loads((kube_schemas / rel).read_text())
        assert schema["additionalProperties"] is False, rel  # strict, like the built-ins
    assert (kube_schemas / "apps" / "deployment_v1.json").exists()


# -------------------------------------------------------------- valid and invalid


def test_valid_strimzi_and_monitoring_objects_pass_both_validators(
    kubeconform: Validate, server_dry_run: Validate
) -> None:
    out = kubeconform(VALID)
    assert f"Valid: {len(VALID)}, Invalid: 0, Errors: 0, Skipped: 0" in out
    server_dry_run(VALID)
    # YAML text too, as `helm template` prints it.
    assert "Invalid: 0" in kubeconform(yaml.safe_dump_all(VALID))
    assert "kafkatopic.kafka.strimzi.io/bars serverside-applied (server dry run)" in (
        server_dry_run(yaml.safe_dump_all(VALID))
    )


def test_what_our_operator_builds_passes_both_validators(
    kubeconform: Validate, server_dry_run: Validate
) -> None:
    body = crd.example_replayjob("btc", "default")
    body["spec"]["kafka"] = {"strimziCluster": {"name": "events"}, "topic": {"partitions": 3}}
    job = ReplayJob.from_body(body)
    built = [*builders.build_topic_kafkatopics(job), builders.build_workers_podmonitor(job)]
    assert {d["kind"] for d in built} == {"KafkaTopic", "PodMonitor"}
    docs = [body, *built]
    assert "Invalid: 0" in kubeconform(docs)
    server_dry_run(docs)


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_objects_fail_both_validators(
    case: str, kubeconform: Validate, server_dry_run: Validate
) -> None:
    doc, kubeconform_says, server_says = INVALID[case]
    with pytest.raises(AssertionError) as by_schema:
        kubeconform([doc])
    assert "Invalid: 1" in str(by_schema.value)
    assert kubeconform_says in str(by_schema.value)
    with pytest.raises(AssertionError) as by_server:
        server_dry_run([doc])
    assert server_says in str(by_server.value)


def test_an_unknown_kind_fails_kubeconform(kubeconform: Validate) -> None:
    unknown = {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "Kafka", "metadata": {"name": "x"}}
    with pytest.raises(AssertionError, match="could not find schema"):
        kubeconform([unknown])


def test_validators_refuse_an_empty_input(kubeconform: Validate) -> None:
    with pytest.raises(ValueError, match="no Kubernetes objects"):
        kubeconform("---\n# nothing\n")


# ------------------------------------------------------------------------ checkov

_CHART = {
    "Chart.yaml": "apiVersion: v2\nname: sample\nversion: 0.1.0\n",
    "values.yaml": "image: registry.example/app:1.0\n",
    "templates/deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  replicas: 1
  selector:
    matchLabels: {app: sample}
  template:
    metadata:
      labels: {app: sample}
    spec:
      containers:
        - name: app
          image: {{ .Values.image }}
""",
}


def test_checkov_scans_a_helm_chart(tmp_path: Path) -> None:
    """checkov (its own virtualenv) renders a chart with our helm and reports on it."""
    for rel, text in _CHART.items():
        (tmp_path / "sample" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sample" / rel).write_text(text)
    proc = subprocess.run(
        [
            str(thirdparty.ensure_checkov()),
            "-d",
            str(tmp_path),
            "--framework",
            "helm",
            "--output",
            "json",
            "--soft-fail",
            "--skip-download",
        ],
        env=thirdparty.checkov_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["check_type"] == "helm"
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert "CKV_K8S_43" in failed  # "Image should use digest": the chart was really rendered
    assert report["summary"]["passed"] > 0
