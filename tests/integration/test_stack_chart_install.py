"""charts/hftpipe-stack against the real API server, with Strimzi's and the Prometheus
Operator's CRDs installed (the ``crds_installed`` fixture).

- every object rendered with the default, kind and production values passes
  kubeconform ``-strict`` (schemas taken from the server, the CRDs' included) and a
  server-side dry-run apply with strict field validation;
- the pod templates pass the ``restricted`` Pod Security admission of a namespace
  that enforces it;
- installed into a cluster (``helm install --dry-run=server``), the chart sees the
  Strimzi and Prometheus Operator APIs and renders their objects, and it keeps the
  Redis password of an existing Secret instead of generating a new one; helm is given
  :func:`hftpipe_devstack.charts.chart_for_helm` of the chart (stand-ins for its
  optional dependencies, which cannot be downloaded here), and an install that enables
  one of them without the real chart fails saying to run ``helm dependency build``.

A real Prometheus scraping a real pipeline and operator answers every dashboard query:
tests/integration/test_dashboard_queries.py.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from kubernetes import client

from hftpipe_devstack import charts

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "hftpipe-stack"
VALUE_SETS: Final[dict[str, tuple[Path, ...]]] = {
    "default": (),
    "kind": (CHART / "values-kind.yaml",),
    "production": (CHART / "values-production.yaml",),
}
EVERYTHING: Final = {
    # Off by default; render them too so that they are validated.
    "monitoring.podMonitors.workers.enabled": "true",
    "redis.metrics.enabled": "true",
}

Validate = Callable[[Any], str]
Manifest = dict[str, Any]


def render(value_set: str, namespace: str = "default") -> list[Manifest]:
    return charts.render(
        CHART, VALUE_SETS[value_set], "hftpipe-stack", namespace, set_values=EVERYTHING
    )


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace that enforces the `restricted` Pod Security Standard."""
    core = client.CoreV1Api(api)
    name = f"stack-chart-{uuid.uuid4().hex[:8]}"
    level = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}
    core.create_namespace({"metadata": {"name": name, "labels": level}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_kubeconform_strict_accepts_every_object(kubeconform: Validate, value_set: str) -> None:
    objects = render(value_set)
    assert {"Kafka", "KafkaNodePool", "PodMonitor", "PrometheusRule"} <= {
        o["kind"] for o in objects
    }
    summary = kubeconform(objects)
    assert f"Valid: {len(objects)}" in summary, summary


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_api_server_accepts_every_object(server_dry_run: Validate, value_set: str) -> None:
    objects = charts.with_namespaces(render(value_set), "default")
    server_dry_run(objects)


def kubectl_dry_run(
    stack_env: dict[str, str], kubeconfig: Path, namespace: str, objects: list[Manifest]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            stack_env["KUBECTL"],
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            namespace,
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=hftpipe-tests",
            "-f",
            "-",
        ],
        input=yaml.safe_dump_all(objects),
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_pass_restricted_pod_security(
    stack_env: dict[str, str], kubeconfig: Path, namespace: str, value_set: str
) -> None:
    """Workload templates get Pod Security warnings (`warn`); pods are refused (`enforce`)."""
    workloads = [o for o in render(value_set, namespace) if o["kind"] == "StatefulSet"]
    assert workloads
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{w['metadata']['name']}-probe", "namespace": namespace},
            "spec": w["spec"]["template"]["spec"],
        }
        for w in workloads
    ]
    for pod in pods:  # volumeClaimTemplates make the data volume; a bare pod needs one
        pod["spec"] = {**pod["spec"], "volumes": [*pod["spec"].get("volumes", [])]}
        if "data" not in {v["name"] for v in pod["spec"]["volumes"]}:
            pod["spec"]["volumes"].append({"name": "data", "emptyDir": {}})
    workloads = [{**w, "metadata": {**w["metadata"], "namespace": namespace}} for w in workloads]
    proc = kubectl_dry_run(stack_env, kubeconfig, namespace, [*workloads, *pods])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PodSecurity" not in proc.stderr, proc.stderr


def test_the_namespace_refuses_an_unrestricted_pod(
    stack_env: dict[str, str], kubeconfig: Path, namespace: str
) -> None:
    """The control for the test above: Pod Security admission is on and enforcing."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "unrestricted", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "redis:7.4.2"}]},
    }
    proc = kubectl_dry_run(stack_env, kubeconfig, namespace, [pod])
    assert proc.returncode != 0
    assert "PodSecurity" in proc.stderr, proc.stderr


def helm_online(
    kubeconfig: Path, namespace: str, *args: str, chart: Path = CHART
) -> list[Manifest]:
    """``helm install --dry-run=server``: rendered with the server's APIs and lookups."""
    proc = charts.helm_chart(
        "install",
        chart,
        "--namespace",
        namespace,
        "--dry-run=server",
        *args,
        release="hftpipe-stack",
        env={"KUBECONFIG": str(kubeconfig)},
    )
    manifest = proc.stdout.split("\nMANIFEST:\n", 1)[1].split("\nNOTES:\n", 1)[0]
    return charts.parse_manifests(manifest)


def test_install_sees_the_operators_apis(
    kubeconfig: Path, crds_installed: list[dict[str, Any]], namespace: str
) -> None:
    objects = helm_online(kubeconfig, namespace)
    kinds = {o["kind"] for o in objects}
    assert {"Kafka", "KafkaNodePool", "PodMonitor", "PrometheusRule"} <= kinds


def test_install_keeps_an_existing_redis_password(
    api: client.ApiClient, kubeconfig: Path, crds_installed: list[dict[str, Any]], namespace: str
) -> None:
    password = base64.b64encode(b"kept-across-upgrades").decode()
    # The Secret as an earlier install of the release left it (Helm's ownership marks).
    metadata = {
        "name": "hftpipe-stack-redis",
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {
            "meta.helm.sh/release-name": "hftpipe-stack",
            "meta.helm.sh/release-namespace": namespace,
        },
    }
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": metadata, "data": {"password": password}}
    )
    objects = helm_online(kubeconfig, namespace)
    [secret] = [o for o in objects if o["kind"] == "Secret"]
    assert secret["data"]["password"] == password


@pytest.mark.parametrize("name", ["strimzi-kafka-operator", "kube-prometheus-stack"])
def test_install_enabling_a_missing_dependency_says_to_build_it(
    kubeconfig: Path,
    crds_installed: list[dict[str, Any]],
    namespace: str,
    name: str,
    tmp_path: Path,
) -> None:
    """Not an install of the chart without the operator: helm stops, saying what to do."""
    # A fresh clone's chart: no charts/ (even where `helm dependency build` ran here).
    bare = tmp_path / CHART.name
    shutil.copytree(CHART, bare, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    assert helm_online(kubeconfig, namespace, chart=bare)
    with pytest.raises(charts.ChartError) as raised:
        helm_online(kubeconfig, namespace, "--set", f"{name}.enabled=true", chart=bare)
    message = str(raised.value)
    assert f"{name} is enabled" in message
    assert "`helm dependency build charts/hftpipe-stack`" in message
    assert str(bare) in message, "the error names the cached copy, not the chart given"
