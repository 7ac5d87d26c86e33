"""The README's path on a real node: helm install both charts, ``kubectl apply -f
k8s/replayjob.yaml`` as shipped, ``kubectl wait`` for Complete.

Every pod runs in a container of an image built from our Dockerfiles (the operator,
the producer Job, the processors, the loader), Redis in the stack chart's StatefulSet
(a labelled Debian stand-in image: no registry is reachable), its data and the
loader's DuckDB on claims the local-path provisioner binds. Kafka is the stack's
broker on the host behind the ``kafka-kafka-bootstrap`` Service that Strimzi would
create (Strimzi's own pods have no image here). The ``default`` namespace enforces
the restricted Pod Security Standard through the real admission plugin.

Overrides this environment forces, each said where it is applied: the stack chart's
Strimzi objects are off (no Strimzi operator can run: its images cannot be pulled),
and its Redis image is the stand-in.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
import redis
import yaml
from oracle import assert_close, oracle, redis_history

from hftpipe_devstack import charts, images
from hftpipe_devstack.cluster import Cluster
from hftpipe_devstack.testing import wait_for
from hftpipe_operator.naming import Names
from hftpipe_workers.contract import job_id

REPO = Path(__file__).resolve().parents[2]
SAMPLE_JOB = REPO / "k8s" / "replayjob.yaml"
SAMPLE_DATA = REPO / "workers/src/hftpipe_workers/sample_data/btcusdt_1h_binance.csv.gz"
OPERATOR_NS = "hftpipe-system"
NS = "default"


def _helm(cluster: Cluster, verb: str, release: str, chart: Path, *args: str) -> None:
    done = charts.helm_chart(verb, chart, *args, release=release, env=cluster.env)
    assert done.returncode == 0, f"helm {verb} {release}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Cluster:
    """Both charts installed as the README says, into a restricted ``default``."""
    cluster.kubectl(
        "label", "namespace", NS, "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
    )  # fmt: skip
    _helm(
        cluster, "install", "hftpipe-stack", REPO / "charts/hftpipe-stack",
        "-n", NS, "-f", str(REPO / "charts/hftpipe-stack/values-kind.yaml"),
        # Forced here: no Strimzi operator runs (its images cannot be pulled), so no
        # Kafka/KafkaNodePool objects; the stack's broker stands behind the same Service.
        "--set", "kafka.enabled=false",
        # Forced here: the official redis image cannot be pulled; a labelled stand-in.
        "--set", f"redis.image.repository={images.REDIS_IMAGE.rsplit(':', 1)[0]}",
        "--set", f"redis.image.tag={images.REDIS_IMAGE.rsplit(':', 1)[1]}",
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    _helm(
        cluster, "install", "hftpipe-operator", REPO / "charts/hftpipe-operator",
        "-n", OPERATOR_NS, "--create-namespace",
        "-f", str(REPO / "charts/hftpipe-operator/values-kind.yaml"),
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    return cluster


def _redis(cluster: Cluster) -> redis.Redis:
    """The chart's Redis through its Service's cluster IP (kube-proxy routes the host too)."""
    secret = cluster.get("secret", "redis", "-n", NS)
    import base64  # noqa: PLC0415

    password = base64.b64decode(secret["data"]["password"]).decode()
    ip = cluster.get("service", "redis", "-n", NS)["spec"]["clusterIP"]
    return redis.Redis(host=ip, port=6379, password=password, socket_timeout=10)


def _pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get("pods", "-n", namespace)["items"]
    return items


@pytest.mark.timeout(1200)
def test_the_shipped_sample_runs_to_complete_in_real_pods(installed: Cluster) -> None:
    cluster = installed
    cluster.kubectl("apply", "-f", str(SAMPLE_JOB))
    seen: dict[str, dict[str, Any]] = {}
    containers: dict[str, dict[str, Any]] = {}

    def note_pods() -> None:
        # Worker pods go when the job is Complete: record what ran while they are there,
        # as the API saw it and as the runtime ran it (the OCI spec runc was given).
        for pod in _pods(cluster, NS):
            seen[pod["metadata"]["name"]] = pod
        for item in json.loads(cluster.crictl("ps", "-o", "json"))["containers"]:
            if (
                item["id"] not in containers
                and item["labels"].get("io.kubernetes.pod.namespace") == NS
            ):
                inspected = json.loads(cluster.crictl("inspect", item["id"]))
                containers[item["id"]] = {"ps": item, "info": inspected.get("info", {})}

    done = subprocess.Popen(
        ["kubectl", "wait", "replayjob/btc", "--for=condition=Complete", "--timeout=600s"],
        env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    while done.poll() is None:
        note_pods()
        time.sleep(1)
    output = done.stdout.read() if done.stdout else ""
    status = cluster.get("replayjob", "btc", "-n", NS).get("status", {})
    operator_log = cluster.kubectl(
        "logs", "-n", OPERATOR_NS, "deploy/hftpipe-operator", "--tail=40", check=False
    )
    assert done.returncode == 0, (
        f"{output}\nstatus: {json.dumps(status, indent=1)}\n"
        f"{cluster.kubectl('get', 'pods', '-A', '-o', 'wide')}\n{operator_log}"
    )
    (REPO / "tests/node/.last-pods.txt").write_text(
        cluster.kubectl("get", "pods", "-A", "-o", "wide")
    )
    (REPO / "tests/node/.last-status.yaml").write_text(
        cluster.kubectl("get", "replayjob", "btc", "-n", NS, "-o", "yaml")
    )
    (REPO / "tests/node/.last-images.txt").write_text(cluster.crictl("images"))

    with gzip.open(SAMPLE_DATA) as f:
        frame = pd.read_csv(f, usecols=["date", "high", "low", "close", "volume"])
    frame["time"] = pd.to_datetime(frame.pop("date"), utc=True)
    frame = frame[frame["time"] >= pd.Timestamp("2019-01-01", tz="UTC")].reset_index(drop=True)
    rows = len(frame)
    spec = yaml.safe_load(SAMPLE_JOB.read_text())["spec"]
    progress = status["progress"]
    assert status["phase"] == "Succeeded"
    assert progress["rowsProduced"] == rows, progress
    assert progress["rowsProcessed"] == rows, progress
    assert progress["rowsLoaded"] == rows, progress
    assert progress["lag"] == 0
    assert status["restarts"] == 0

    # Redis equals the oracle, read through the chart's Service.
    ident = job_id("btc", NS)
    client = _redis(cluster)
    docs = pd.DataFrame(redis_history(client, ident))
    assert len(docs) == rows
    docs["time"] = pd.to_datetime(docs["ts_ns"], utc=True)
    got = docs.sort_values("time").reset_index(drop=True)
    frame["symbol"] = spec["source"]["symbol"]
    for window in spec["processing"]["windows"]:
        expected = oracle(frame, window).sort_values("time").reset_index(drop=True)
        metrics = got["windows"].map(lambda w, k=window: w[k])
        for name in ("vwap", "sma", "std"):
            assert_close(
                metrics.map(lambda m, n=name: np.nan if m[n] is None else m[n]),
                expected[name],
                f"node {window} {name}",
            )

    # The warehouse, on the loader's claim, once the loader has exited (DuckDB's lock).
    wait_for(
        lambda: (
            not [p for p in _pods(cluster, NS) if p["metadata"]["name"].startswith("btc-loader")]
        ),
        90,
        "the loader pod to go after Complete",
    )
    claim = cluster.get("pvc", Names("btc").warehouse, "-n", NS)
    volume = cluster.get("pv", claim["spec"]["volumeName"])
    path = Path(volume["spec"].get("hostPath", volume["spec"].get("local", {}))["path"])
    files = list(path.glob("*.duckdb"))
    assert len(files) == 1, f"no DuckDB file on the loader's volume {path}"
    with duckdb.connect(str(files[0]), read_only=True) as db:
        count, distinct = db.execute(
            "select count(*), count(distinct bar_time) from bars where job = ?", [ident]
        ).fetchone() or (0, 0)
    assert (count, distinct) == (rows, rows)

    # What ran: our images, as uid 10001, read-only root, probes run by the kubelet.
    ours = {images.OPERATOR_IMAGE, images.WORKERS_IMAGE}
    ran = [p for p in seen.values() if p["metadata"]["name"].startswith("btc-")]
    assert {"producer", "processor", "loader"} <= {
        p["metadata"].get("labels", {}).get("hftpipe.io/component") for p in ran
    }, sorted(seen)
    for pod in ran:
        for container in pod["status"].get("containerStatuses", []):
            assert f"docker.io/library/{container['image']}" in ours or container["image"] in ours
    workers = [
        c for c in containers.values()
        if c["ps"]["labels"]["io.kubernetes.pod.name"].startswith("btc-")
    ]  # fmt: skip
    names = {c["ps"]["labels"]["io.kubernetes.container.name"] for c in workers}
    assert {"producer", "processor", "loader"} <= names, names
    for c in workers:
        spec = c["info"]["runtimeSpec"]
        assert spec["process"]["user"]["uid"] == 10001, c["ps"]
        assert spec["root"].get("readonly") is True, c["ps"]
        assert c["ps"]["image"]["image"].startswith("sha256:") or c["ps"]["imageRef"]
    assert _probes_ran(cluster) > 0


def _probes_ran(cluster: Cluster) -> int:
    """Successful liveness + readiness probes of the job's workers, from the kubelet's
    own metrics (``prober_probe_total``), read through the API server's node proxy."""
    text = cluster.kubectl("get", "--raw", "/api/v1/nodes/hftpipe-node/proxy/metrics")
    total = 0
    for line in text.splitlines():
        if line.startswith("prober_probe_total{") and all(
            part in line for part in ('namespace="default"', 'result="successful"', 'pod="btc-')
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total
