"""charts/hftpipe-stack against the real API server, with Strimzi's and the Prometheus
Operator's CRDs installed (the ``crds_installed`` fixture).

- every object rendered with the default, kind and production values passes
  kubeconform ``-strict`` (schemas taken from the server, the CRDs' included) and a
  server-side dry-run apply with strict field validation;
- the pod templates pass the ``restricted`` Pod Security admission of a namespace
  that enforces it;
- installed into a cluster (``helm install --dry-run=server``), the chart sees the
  Strimzi and Prometheus Operator APIs and renders their objects, and it keeps the
  Redis password of an existing Secret instead of generating a new one;
- a real Prometheus (Debian's ``prometheus``) scraping running workers answers every
  query of the Grafana dashboard with data.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
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


def helm_online(kubeconfig: Path, namespace: str, *args: str) -> list[Manifest]:
    """``helm install --dry-run=server``: rendered with the server's APIs and lookups."""
    proc = charts.helm(
        "install",
        "hftpipe-stack",
        CHART,
        "--namespace",
        namespace,
        "--dry-run=server",
        *args,
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


# ------------------------------------------------ a real Prometheus and the dashboard

CLI: Final = [sys.executable, "-m", "hftpipe_workers"]
DASHBOARD = CHART / "files" / "dashboards" / "hftpipe.json"
SCRAPE_SECONDS: Final = 1
NAMESPACE_LABEL: Final = "stack-test"

# Queries allowed to stay empty in a healthy run: a labelled counter has no series
# before its first increment, and nothing goes wrong here.
MAY_STAY_EMPTY: Final = frozenset({"Worker errors per second, by reason"})

# The operator's metrics served from its own module (definitions and exposition as the
# operator has them), fed as a reconciling operator would: running the real operator
# needs a ReplayJob reconciled against the API server, which tests/integration/
# test_operator.py covers.
OPERATOR_STAND_IN: Final = """
import sys, time
from prometheus_client import start_http_server
from hftpipe_operator import metrics
book = metrics.PhaseBook()
book.set("stack-test", "replay", "Running")
book.export()
start_http_server(int(sys.argv[1]), addr="127.0.0.1")
while True:
    with metrics.RECONCILE_SECONDS.time():
        time.sleep(0.01)
    metrics.RECONCILIATIONS.labels(result="success").inc()
    time.sleep(0.5)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def minute_bars_with_bad_rows(path: Path, rows: int) -> Path:
    """Two symbols of minute bars (over one 4 MiB read block, so the producer's progress
    gauge moves during the run), with a bar every 500 whose high is below its low."""
    with path.open("w") as out:
        out.write("timestamp,symbol,open,high,low,close,volume\n")
        for i in range(rows):
            minute = i // 2
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_709_251_200 + 60 * minute))
            price = 100.0 + (minute % 97) * 0.25 + (i % 2) * 50
            high, low = (price + 1, price - 1) if i % 500 else (price - 1, price + 1)
            out.write(f"{stamp},SYM{i % 2},{price},{high},{low},{price + 0.1},{1 + i % 7}\n")
    return path


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - 127.0.0.1
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer 200 within {timeout} s")
        time.sleep(0.3)


def dashboard_queries() -> dict[str, str]:
    """refId-qualified panel title -> PromQL, Grafana's variables substituted."""
    data = json.loads(DASHBOARD.read_text())
    rate_interval = f"{10 * SCRAPE_SECONDS}s"  # Grafana: at least four scrape intervals
    out = {}
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            out[f"{panel['title']} [{target['refId']}]"] = re.sub(r"\$\{?\w+\}?", ".*", expr)
    return out


def query(prometheus: str, promql: str) -> list[Any]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - 127.0.0.1
        body = json.loads(response.read())
    assert body["status"] == "success", body
    result: list[Any] = body["data"]["result"]
    return result


@pytest.mark.slow
def test_prometheus_answers_every_dashboard_query(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        pytest.fail("'prometheus' is not on PATH: install Debian's prometheus (make system-deps)")
    job = f"dash-{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in ("producer", "processor", "loader", "operator", "web")}
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [
            {
                "job_name": "hftpipe",
                # As the PodMonitors do: the workers' own job label wins.
                "honor_labels": True,
                "static_configs": [
                    {
                        "targets": [
                            f"127.0.0.1:{ports[n]}"
                            for n in ("producer", "processor", "loader", "operator")
                        ],
                        "labels": {"namespace": NAMESPACE_LABEL},
                    }
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    source = minute_bars_with_bad_rows(tmp_path / "bars.csv", rows=90_000)
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, env=subprocess_env, **quiet)
        procs.append(proc)
        return proc

    produce = [*CLI, "produce", str(source), "--job", job, "--rate", "2500"]
    process = [*CLI, "process", "--job", job]
    load = [*CLI, "load", "--job", job, "--warehouse", f"duckdb:///{tmp_path / 'w.duckdb'}"]
    try:
        start(
            [
                prometheus_bin,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{ports['web']}",
                "--log.level=warn",
            ]
        )
        start([sys.executable, "-c", OPERATOR_STAND_IN, str(ports["operator"])])
        producer = start([*produce, "--metrics-port", str(ports["producer"])])
        wait_for(f"http://127.0.0.1:{ports['producer']}/healthz")
        start([*process, "--metrics-port", str(ports["processor"])])
        wait_for(f"http://127.0.0.1:{ports['processor']}/readyz")
        start([*load, "--metrics-port", str(ports["loader"])])
        prometheus = f"http://127.0.0.1:{ports['web']}"
        wait_for(f"{prometheus}/-/ready")

        # Collected while the replay runs: a query counts once it has returned data.
        queries = dashboard_queries()
        answered: set[str] = set()
        deadline, ended = time.monotonic() + 240, float("inf")
        while set(queries) - answered and time.monotonic() < min(deadline, ended + 20):
            for name, promql in queries.items():
                if name not in answered and query(prometheus, promql):
                    answered.add(name)
            if producer.poll() is not None:
                ended = min(ended, time.monotonic())
            time.sleep(1)
        assert producer.wait(timeout=120) == 0
        missing = {
            name
            for name in set(queries) - answered
            if name.rsplit(" [", 1)[0] not in MAY_STAY_EMPTY
        }
        assert not missing, f"no data for: {sorted(missing)}"
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
