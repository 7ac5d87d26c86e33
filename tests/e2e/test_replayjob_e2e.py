"""End to end without containers: ``kubectl apply`` a ReplayJob, and the pods the operator
creates run as local processes until the job is Complete.

Everything real but the container runtime: the API server and controller-manager of
the local stack (Job, ReplicaSet, Deployment and garbage-collector controllers), the
operator as its own process under a service account bound to exactly the chart's
RBAC (:mod:`hftpipe_operator.rbac`), Kafka and Redis. :class:`LocalKubelet` binds the
job's pods to a local Node and runs each container's command, arguments and
environment (resolved from the real ConfigMap and Secret) as a process. So what the
operator writes into its pods is what runs, and nothing else does.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import duckdb
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
import redis
import yaml
from confluent_kafka.admin import AdminClient
from oracle import assert_close, oracle, redis_history

from hftpipe_devstack.kubelet import KubeRest, LocalKubelet
from hftpipe_devstack.procs import ProcessTable, free_port, tail
from hftpipe_devstack.testing import s3_endpoint, wait_for
from hftpipe_operator import crd, labels, rbac
from hftpipe_operator.naming import Names
from hftpipe_workers.contract import RedisKeys, Topics, job_id

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SAMPLE = REPO / "workers/src/hftpipe_workers/sample_data/btcusdt_1h_binance.csv.gz"
OPERATOR_NAMESPACE = "hftpipe-system"
WINDOWS = ["1h", "4h", "1d"]


def _kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["kubectl", *args], env=env, input=stdin, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _apply(env: dict[str, str], docs: list[dict[str, Any]]) -> None:
    _kubectl(env, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(docs))


def _token_kubeconfig(admin: Path, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the service account (a bound token)."""
    kube = KubeRest(admin)
    try:
        issued = kube.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": 3600}},
        )  # fmt: skip
    finally:
        kube.close()
    config = yaml.safe_load(admin.read_text())
    cluster = config["clusters"][0]
    config.update(
        {
            "users": [{"name": account, "user": {"token": issued["status"]["token"]}}],
            "contexts": [
                {"name": account, "context": {"cluster": cluster["name"], "user": account}}
            ],
            "current-context": account,
        }
    )
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def namespace(stack_env: dict[str, str]) -> str:
    """The namespace the operator watches, with the CRDs and RBAC in place."""
    env = {**os.environ, **stack_env}
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    _apply(env, [crd.build_crd(), *crd.build_peering_crds()])
    _kubectl(env, "wait", "--for=condition=Established", f"crd/{crd.NAME}", "--timeout=60s")
    for ns in (name, OPERATOR_NAMESPACE):
        _apply(env, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    _apply(env, rbac.build_rbac(namespace=OPERATOR_NAMESPACE, watch_namespaces=[name]))
    return name


@pytest.fixture(scope="module")
def operator(
    namespace: str, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessTable]:
    """``hftpipe-operator`` as its own process, as its service account, watching ``namespace``."""
    root = tmp_path_factory.mktemp("operator")
    token_config = _token_kubeconfig(
        kubeconfig, OPERATOR_NAMESPACE, labels.MANAGER, root / "kubeconfig"
    )
    table = ProcessTable(root, tie_to_parent=True)
    env = {
        "PATH": os.environ["PATH"],
        "KUBECONFIG": str(token_config),
        "HFTPIPE_OPERATOR_NAMESPACES": namespace,
        "HFTPIPE_OPERATOR_STATUS_INTERVAL": "2",
        "HFTPIPE_OPERATOR_METRICS_PORT": str(free_port()),
        "HFTPIPE_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
    }
    table.start("operator", [str(VENV_BIN / "hftpipe-operator")], env=env, inherit_env=False)
    yield table
    table.stop_all(grace=15)


@pytest.fixture(scope="module")
def kubelet(
    namespace: str, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalKubelet]:
    """The local Node: the job's pods run here as processes."""
    with LocalKubelet(
        kubeconfig,
        tmp_path_factory.mktemp("kubelet"),
        namespaces=[namespace],
        binaries={"hftpipe": str(VENV_BIN / "hftpipe")},
    ) as running:
        yield running


SOURCE: dict[str, Any] = {
    "url": f"/data/{SAMPLE.name}",
    "volume": {"claimName": "bars"},
    "symbol": "BTCUSDT",
}
"""The jobs' source: the sample on a PersistentVolumeClaim mounted at /data, as on a
cluster. (A host path would do only outside /tmp: pods mount their own /tmp, so in a
checkout under /tmp the producer would look for the file in its pod's /tmp.)"""


@pytest.fixture(scope="module", autouse=True)
def bars_claim(namespace: str, kubelet: LocalKubelet, stack_env: dict[str, str]) -> Path:
    """The claim of :data:`SOURCE` with the sample on it (the local Node's claim directory)."""
    _apply(
        {**os.environ, **stack_env},
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "bars", "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        ],
    )
    directory = kubelet.root / "claims" / namespace / "bars"
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE, directory / SAMPLE.name)
    return directory


def _without_password(url: str) -> tuple[str, str]:
    """``redis://default:pw@host:port/0`` -> (``redis://host:port/0``, ``pw``)."""
    parts = urlsplit(url)
    netloc = f"{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), parts.password or ""


@pytest.fixture(scope="module")
def redis_secret(namespace: str, stack_env: dict[str, str], redis_url: str) -> str:
    """A Secret with the Redis password (a ReplayJob's spec never holds one)."""
    _, password = _without_password(redis_url)
    _apply(
        {**os.environ, **stack_env},
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "redis", "namespace": namespace},
                "stringData": {"password": password},
            }
        ],
    )
    return "redis"


@dataclass(frozen=True)
class E2E:
    """The running scene every test submits its ReplayJob into: the namespace the
    operator watches, the operator, the local Node, and the stack's Kafka and Redis."""

    env: dict[str, str]
    namespace: str
    operator: ProcessTable
    kubelet: LocalKubelet
    kafka_bootstrap: str
    redis_url: str
    redis_secret: str

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return _kubectl(self.env, *args, stdin=stdin)

    def spec(self, **overrides: Any) -> dict[str, Any]:
        """The jobs' spec (the sample at max speed), with ``overrides`` of its fields."""
        url, _ = _without_password(self.redis_url)
        spec: dict[str, Any] = {
            "source": dict(SOURCE),
            "pacing": {"max": True},
            "kafka": {"bootstrapServers": self.kafka_bootstrap, "topic": {"partitions": 3}},
            "processing": {"windows": WINDOWS, "replicas": 2},
            "redis": {
                "url": url,
                "credentials": {
                    "secretRef": {"name": self.redis_secret, "passwordKey": "password"}
                },
            },
        }
        spec.update(overrides)
        return spec

    def submit(self, job: str, spec: dict[str, Any]) -> None:
        _apply(
            self.env,
            [
                {
                    "apiVersion": crd.API_VERSION,
                    "kind": crd.KIND,
                    "metadata": {"name": job, "namespace": self.namespace},
                    "spec": spec,
                }
            ],
        )

    def patch(self, job: str, spec: dict[str, Any]) -> None:
        self.kubectl("patch", "replayjob", job, "-n", self.namespace, "--type=merge",
                     "-p", json.dumps({"spec": spec}))  # fmt: skip

    def status(self, job: str) -> dict[str, Any]:
        found = json.loads(
            self.kubectl("get", "replayjob", job, "-n", self.namespace, "-o", "json")
        )
        status: dict[str, Any] = found.get("status") or {}
        return status

    def progress(self, job: str) -> dict[str, Any]:
        progress: dict[str, Any] = self.status(job).get("progress") or {}
        return progress

    def wait(self, job: str, condition: str, timeout: int = 240) -> None:
        """``kubectl wait --for=condition=<condition>``; on time-out, say everything we know."""
        timeout = int(os.environ.get("HFTPIPE_E2E_TIMEOUT", timeout))
        try:
            self.kubectl(
                "wait", f"--for=condition={condition}", f"replayjob/{job}", "-n", self.namespace,
                f"--timeout={timeout}s",
            )  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nstatus: {self.status(job)}\nkubelet errors: {self.kubelet.errors}\n"
                f"{self.kubelet.logs(self.namespace, job)}\n==> operator <==\n"
                f"{tail(self.operator.log_dir / 'operator.log', 60)}"
            ) from exc

    def pods(self, job: str) -> list[str]:
        listed = json.loads(
            self.kubectl("get", "pods", "-n", self.namespace, "-l", f"{labels.JOB}={job}",
                         "-o", "json")
        )  # fmt: skip
        return [p["metadata"]["name"] for p in listed["items"]]


@pytest.fixture(scope="module")
def e2e(
    namespace: str,
    operator: ProcessTable,
    kubelet: LocalKubelet,
    stack_env: dict[str, str],
    kafka_bootstrap: str,
    redis_url: str,
    redis_secret: str,
) -> E2E:
    return E2E(
        env={**os.environ, **stack_env},
        namespace=namespace,
        operator=operator,
        kubelet=kubelet,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        redis_secret=redis_secret,
    )


def test_a_replayjob_runs_to_complete_from_the_operators_pod_specs(e2e: E2E) -> None:
    job = f"btc-{uuid.uuid4().hex[:6]}"
    e2e.submit(job, e2e.spec())
    e2e.wait(job, "Complete")

    with gzip.open(SAMPLE) as f:
        frame = pd.read_csv(f, usecols=["date", "high", "low", "close", "volume"])
    rows = len(frame)

    # The status, as a user sees it (the issue's resolution quotes this output).
    status = e2e.status(job)
    (REPO / "tests/e2e/.last-status.yaml").write_text(
        e2e.kubectl("get", "replayjob", job, "-n", e2e.namespace, "-o", "yaml")
    )
    assert status["phase"] == "Succeeded"
    progress = status["progress"]
    # Rows in the source and rows read: the producer's record in the job's progress topic.
    assert progress["rowsTotal"] == rows
    assert progress["rowsRead"] == rows
    assert progress["rowsProduced"] == rows
    assert progress["rowsProcessed"] == rows
    assert progress["rowsLoaded"] == rows
    assert progress["lag"] == 0
    assert progress["percent"] == "100%"
    assert status["restarts"] == 0, e2e.kubelet.logs(e2e.namespace)
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Complete"] == "True"
    # Where the data is: named by <namespace>.<name>, so a same-named job elsewhere is apart.
    ident = job_id(job, e2e.namespace)
    assert status["outputs"] == {
        "jobId": ident,
        "barsTopic": Topics.for_job(ident).bars,
        "metricsTopic": Topics.for_job(ident).metrics,
        "deadLetterTopic": Topics.for_job(ident).deadletter,
        "redisKeyPrefix": f"hftpipe:{ident}:",
    }
    assert conditions.get("Failed", "False") == "False"
    printed = e2e.kubectl("get", "replayjobs", "-n", e2e.namespace)
    (REPO / "tests/e2e/.last-get.txt").write_text(
        printed + e2e.kubectl("get", "replayjobs", "-n", e2e.namespace, "-o", "wide")
    )
    assert printed.split()[:5] == ["NAME", "PHASE", "PROGRESS", "LAG", "AGE"], printed

    # Redis holds the right metrics for every bar, against an independent pandas oracle.
    frame["time"] = pd.to_datetime(frame.pop("date"), utc=True)
    frame["symbol"] = "BTCUSDT"
    client = redis.Redis.from_url(e2e.redis_url)
    docs = pd.DataFrame(redis_history(client, ident))
    assert len(docs) == rows
    docs["time"] = pd.to_datetime(docs["ts_ns"], utc=True)
    got = docs.sort_values("time").reset_index(drop=True)
    for window in WINDOWS:
        expected = oracle(frame, window).sort_values("time").reset_index(drop=True)
        metrics = got["windows"].map(lambda w, k=window: w[k])
        for name in ("vwap", "sma", "std"):
            assert_close(
                metrics.map(lambda m, n=name: np.nan if m[n] is None else m[n]),
                expected[name],
                f"e2e {window} {name}",
            )
    latest = client.hgetall(RedisKeys(ident).latest("BTCUSDT"))
    assert int(latest[b"seq"]) == int(got["seq"].max())

    # Complete: the processors and the loader are scaled down and their pods are gone. This
    # comes before reading the warehouse: DuckDB lets one process open a file for writing and
    # nobody else, even read-only, so the file is readable once the loader has exited (the
    # condition flips when the loader has caught up, its pod ends a moment later).
    kube = KubeRest(Path(e2e.env["KUBECONFIG"]))
    try:

        def workers_gone() -> bool:
            pods = kube.request("GET", f"/api/v1/namespaces/{e2e.namespace}/pods") or {}
            return not [
                p
                for p in pods.get("items", [])
                if p["metadata"]["name"].startswith((f"{job}-processor", f"{job}-loader"))
            ]

        wait_for(workers_gone, 60, "the processor and loader pods to go after Complete")
    finally:
        kube.close()

    # The warehouse on the loader's volume has each bar once.
    claim = e2e.kubelet.root / "claims" / e2e.namespace / Names(job).warehouse
    files = list(claim.glob("*.duckdb"))
    assert len(files) == 1, f"no DuckDB file on the loader's volume {claim}"
    with duckdb.connect(str(files[0]), read_only=True) as db:
        count, distinct = db.execute(
            "select count(*), count(distinct bar_time) from bars where job = ?", [ident]
        ).fetchone() or (0, 0)
    assert (count, distinct) == (rows, rows)
    assert e2e.operator.exited("operator") is None, "the operator exited"
    assert not e2e.kubelet.errors


def test_suspend_stops_every_pod_and_resume_continues_without_loss_or_duplicates(e2e: E2E) -> None:
    job = f"pause-{uuid.uuid4().hex[:6]}"
    # Paced, so the replay is still going when it is suspended (~14 s of bars).
    spec = e2e.spec(pacing={"rate": 4000})
    e2e.submit(job, spec)
    wait_for(
        lambda: (e2e.progress(job).get("rowsProduced") or 0) > 4000,
        120,
        "the replay to be under way",
    )
    e2e.patch(job, {"suspend": True})
    e2e.wait(job, "Suspended", timeout=60)
    wait_for(lambda: not e2e.pods(job), 90, "every pod of the job to stop")
    paused = e2e.progress(job)["rowsProduced"]
    with gzip.open(SAMPLE) as f:
        rows = sum(1 for _ in f) - 1
    assert 0 < paused < rows, "suspended before the end, after the start"
    assert e2e.status(job)["phase"] == "Suspended"

    e2e.patch(job, {"suspend": False})
    e2e.wait(job, "Complete")
    progress = e2e.progress(job)
    assert (progress["rowsProduced"], progress["rowsProcessed"], progress["rowsLoaded"]) == (
        rows,
        rows,
        rows,
    ), "every row exactly once in Kafka, processed and loaded"
    client = redis.Redis.from_url(e2e.redis_url)
    history = redis_history(client, job_id(job, e2e.namespace))
    assert len(history) == rows
    assert len({doc["seq"] for doc in history}) == rows


def test_a_missing_source_file_fails_the_job_with_the_reason(e2e: E2E) -> None:
    job = f"broken-{uuid.uuid4().hex[:6]}"
    spec = e2e.spec(
        source={**SOURCE, "url": "/data/no-such-dir/bars.csv.gz"},
        restartPolicy={"maxRestarts": 1, "backoffSeconds": 1, "maxBackoffSeconds": 2},
    )
    e2e.submit(job, spec)
    e2e.wait(job, "Failed", timeout=180)
    status = e2e.status(job)
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert "producer" in failed["message"], failed
    # The producer's own error, from its pod's termination message (its log's tail).
    assert "/no-such-dir/bars.csv.gz" in failed["message"], failed
    assert "completionTime" not in status, "only a Complete job has a completion time"


def test_deleting_a_running_job_stops_its_workers_before_deleting_their_data(e2e: E2E) -> None:
    job = f"gone-{uuid.uuid4().hex[:6]}"
    cleanup = {"deleteTopics": True, "deleteRedisKeys": True}
    # Paced, so the processor is still writing to Redis when the job is deleted.
    spec = e2e.spec(pacing={"rate": 2000}, cleanup=cleanup)
    e2e.submit(job, spec)
    wait_for(
        lambda: (e2e.progress(job).get("rowsProcessed") or 0) > 2000,
        120,
        "the processor to be under way",
    )
    e2e.kubectl("delete", "replayjob", job, "-n", e2e.namespace, "--timeout=150s")
    # The owner references would end the pods only now, after the job is gone: a processor
    # still running would have written the keys again after the clean-up deleted them.
    assert e2e.pods(job) == [], "the job went before its pods"
    ident = job_id(job, e2e.namespace)
    client = redis.Redis.from_url(e2e.redis_url)
    assert list(client.scan_iter(match=RedisKeys(ident).pattern)) == []
    admin = AdminClient({"bootstrap.servers": e2e.kafka_bootstrap})
    left = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"hftpipe.{ident}.")]
    assert left == [], "the job's topics outlived it"
    assert not e2e.kubelet.errors


def test_an_s3_source_is_read_with_the_endpoint_and_keys_of_the_spec(e2e: E2E) -> None:
    """An S3-compatible store (moto's server on 127.0.0.1: no S3 account is reachable);
    the producer's pod gets the endpoint from the spec and the keys from a Secret."""
    url = "s3://market-data/btc/btcusdt_1h.csv.gz"
    with s3_endpoint({url: SAMPLE}) as aws:
        keys = {k: aws[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque"}
        _apply(e2e.env, [{**secret, "metadata": {"name": "s3", "namespace": e2e.namespace},
                          "stringData": keys}])  # fmt: skip
        job = f"s3-{uuid.uuid4().hex[:6]}"
        source = {
            "url": url,
            "symbol": "BTCUSDT",
            "s3": {
                "endpointUrl": aws["AWS_ENDPOINT_URL"],
                "region": aws["AWS_DEFAULT_REGION"],
                "credentials": {"secretRef": {"name": "s3"}},
            },
        }
        e2e.submit(job, e2e.spec(source=source))
        e2e.wait(job, "Complete")
    progress = e2e.progress(job)
    assert (progress["rowsTotal"], progress["rowsProduced"], progress["rowsLoaded"]) == (
        55_765,
        55_765,
        55_765,
    ), progress
    assert not e2e.kubelet.errors
