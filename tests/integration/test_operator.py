"""The ReplayJob operator's handlers, run by kopf against the real kube-apiserver 1.34.

kube-controller-manager runs too (Deployments make ReplicaSets, the garbage
collector deletes what a deleted job owned), but no scheduler or kubelet: pods
never start, so a job stays Pending and says why.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import REGISTRY

from hftpipe_devstack.testing import wait_for
from hftpipe_operator import crd, labels, workerapi
from hftpipe_operator.naming import Names
from hftpipe_operator.reconcile import RECONCILED_GENERATION
from hftpipe_workers.contract import RedisKeys, job_id

# Read by the operator's settings when kopf imports the handlers (once per session).
os.environ.setdefault("HFTPIPE_OPERATOR_STATUS_INTERVAL", "2")
os.environ.setdefault("HFTPIPE_OPERATOR_METRICS_PORT", "0")

SUCCESSES = "hftpipe_operator_reconciliations_total"


@pytest.fixture(scope="module")
def installed(api: client.ApiClient) -> None:
    """The ReplayJob CRD, installed (or replaced) and served."""
    ext = client.ApiextensionsV1Api(api)
    body = crd.build_crd()
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(crd.NAME)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(crd.NAME, body)
    objects = client.CustomObjectsApi(api)

    def serves() -> bool:
        try:
            objects.list_cluster_custom_object(crd.GROUP, crd.VERSION, crd.PLURAL)
        except ApiException:
            return False
        return True

    wait_for(serves, 30, "the replayjobs endpoint to serve")


@pytest.fixture
def namespace(api: client.ApiClient, installed: None) -> Iterator[str]:
    """A fresh namespace for one test."""
    core = client.CoreV1Api(api)
    name = f"op-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def operator_cmd(namespace: str, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ``kopf run`` command line of the operator, watching the test's namespace."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    return [
        "run",
        "--standalone",
        f"--namespace={namespace}",
        "--verbose",
        "-m",
        "hftpipe_operator.handlers",
    ]


@contextmanager
def _operator(cmd: list[str]) -> Iterator[KopfRunner]:
    with KopfRunner(cmd, timeout=120) as runner:
        yield runner
    assert runner.exit_code == 0, runner.output


def _spec(kafka_bootstrap: str) -> dict[str, Any]:
    return {
        "source": {"url": "https://example.com/bars.csv.gz"},
        "kafka": {"bootstrapServers": kafka_bootstrap, "topic": {"partitions": 2}},
        "redis": {"url": "redis://127.0.0.1:6379/0"},
        # A claim of the user's own: the operator creates no PersistentVolumeClaim.
        "warehouse": {"duckdb": {"claimName": "warehouse"}},
    }


def _create_job(api: client.ApiClient, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": f"rj-{uuid.uuid4().hex[:6]}"},
        "spec": spec,
    }
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        crd.GROUP, crd.VERSION, namespace, crd.PLURAL, body
    )
    return created


def _get_job(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
            crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return found


def _patch_spec(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name, {"spec": spec}
    )


def _children(api: client.ApiClient, namespace: str, job: str) -> dict[str, dict[str, Any]]:
    """The job's children by ``Kind/name`` (as plain dicts)."""
    selector = f"{labels.JOB}={job}"
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    listings = {
        "ConfigMap": core.list_namespaced_config_map,
        "Service": core.list_namespaced_service,
        "PersistentVolumeClaim": core.list_namespaced_persistent_volume_claim,
        "Deployment": apps.list_namespaced_deployment,
        "Job": batch.list_namespaced_job,
    }
    out = {}
    for kind, listing in listings.items():
        for item in listing(namespace, label_selector=selector).items:
            out[f"{kind}/{item.metadata.name}"] = api.sanitize_for_serialization(item)
    return out


def _expected(job: str) -> set[str]:
    names = Names(job)
    return {
        f"ConfigMap/{names.settings}",
        f"Job/{names.producer}",
        f"Deployment/{names.processor}",
        f"Deployment/{names.loader}",
        f"Service/{names.metrics}",
    }


def _versions(children: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in children.items()}


def _settled(api: client.ApiClient, namespace: str, job: str) -> dict[str, dict[str, Any]]:
    """The children once their controllers have stopped updating them (same versions 2 s apart)."""

    def same() -> dict[str, dict[str, Any]] | None:
        before = _children(api, namespace, job)
        time.sleep(2)
        after = _children(api, namespace, job)
        return after if _versions(before) == _versions(after) else None

    settled: dict[str, dict[str, Any]] = wait_for(same, 60, "the children to settle")
    return settled


def _all_children(api: client.ApiClient, namespace: str, job: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = wait_for(
        lambda: (c := _children(api, namespace, job)) and set(c) == _expected(job) and c,
        60,
        "the job's children",
    )
    return found


def test_create_makes_exactly_the_children_owned_by_the_job(
    api: client.ApiClient, namespace: str, operator_cmd: list[str], kafka_bootstrap: str
) -> None:
    with _operator(operator_cmd):
        rj = _create_job(api, namespace, _spec(kafka_bootstrap))
        name, uid = rj["metadata"]["name"], rj["metadata"]["uid"]
        children = _all_children(api, namespace, name)
        for key, obj in children.items():
            (owner,) = obj["metadata"]["ownerReferences"]
            assert owner["uid"] == uid, key
            assert owner["kind"] == crd.KIND
            assert owner["controller"] is True
        # Pods never run here: the job is Pending and says why.
        status = wait_for(
            lambda: (
                ((_get_job(api, namespace, name) or {}).get("status") or {}).get("phase")
                and _get_job(api, namespace, name)
            ),
            30,
            "a status",
        )["status"]
        assert status["phase"] == "Pending"
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Ready"]["status"] == "False"
        assert conditions["Ready"]["reason"] == "WorkersNotReady"
        assert "processor 0/1 ready" in conditions["Ready"]["message"]
        assert conditions["KafkaObserved"]["status"] == "True"
        assert status["progress"]["rowsProduced"] == 0
        # kopf's bookkeeping is in annotations, not in the status the schema prunes.
        assert "kopf" not in status
        # The transition to Pending is an Event on the ReplayJob...
        events = wait_for(
            lambda: [
                e
                for e in client.CoreV1Api(api)
                .list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
                .items
                if e.reason == "Pending"
            ],
            30,
            "the Pending event",
        )
        assert "phase none -> Pending" in events[0].message
        # ...and the reconciliation is counted (the runner is in this process).
        assert (REGISTRY.get_sample_value(SUCCESSES, {"result": "success"}) or 0) > 0
        # No more children than expected appear later either.
        time.sleep(3)
        assert set(_children(api, namespace, name)) == _expected(name)


def test_update_of_replicas_changes_only_the_processor(
    api: client.ApiClient, namespace: str, operator_cmd: list[str], kafka_bootstrap: str
) -> None:
    with _operator(operator_cmd):
        name = _create_job(api, namespace, _spec(kafka_bootstrap))["metadata"]["name"]
        _all_children(api, namespace, name)
        before = _versions(_settled(api, namespace, name))
        _patch_spec(api, namespace, name, {"processing": {"replicas": 2}})
        processor = f"Deployment/{Names(name).processor}"
        wait_for(
            lambda: _children(api, namespace, name)[processor]["spec"]["replicas"] == 2,
            30,
            "the processor to scale to 2",
        )
        after = _versions(_settled(api, namespace, name))
        changed = {key for key in before if before[key] != after[key]}
        assert changed == {processor}


def test_suspend_scales_to_zero_and_resume_scales_back(
    api: client.ApiClient, namespace: str, operator_cmd: list[str], kafka_bootstrap: str
) -> None:
    names_of: Callable[[str], Names] = Names
    with _operator(operator_cmd):
        name = _create_job(api, namespace, _spec(kafka_bootstrap))["metadata"]["name"]
        names = names_of(name)
        job_uid = _all_children(api, namespace, name)[f"Job/{names.producer}"]["metadata"]["uid"]

        def state() -> tuple[int, int, bool]:
            c = _children(api, namespace, name)
            return (
                c[f"Deployment/{names.processor}"]["spec"]["replicas"],
                c[f"Deployment/{names.loader}"]["spec"]["replicas"],
                c[f"Job/{names.producer}"]["spec"]["suspend"],
            )

        _patch_spec(api, namespace, name, {"suspend": True})
        wait_for(lambda: state() == (0, 0, True), 30, "the workers to stop")
        wait_for(
            lambda: (
                ((_get_job(api, namespace, name) or {}).get("status") or {}).get("phase")
                == "Suspended"
            ),
            30,
            "phase Suspended",
        )
        _patch_spec(api, namespace, name, {"suspend": False})
        wait_for(lambda: state() == (1, 1, False), 30, "the workers to come back")
        children = _children(api, namespace, name)
        # Suspending is a patch of the Job, never a new Job.
        assert children[f"Job/{names.producer}"]["metadata"]["uid"] == job_uid


def test_a_changed_producer_template_replaces_the_job(
    api: client.ApiClient, namespace: str, operator_cmd: list[str], kafka_bootstrap: str
) -> None:
    with _operator(operator_cmd):
        name = _create_job(api, namespace, _spec(kafka_bootstrap))["metadata"]["name"]
        key = f"Job/{Names(name).producer}"
        old_uid = _all_children(api, namespace, name)[key]["metadata"]["uid"]
        # Pacing reaches the producer only: its Job is replaced (a Job's template is
        # immutable); the source itself may not change (spec.source is immutable).
        _patch_spec(api, namespace, name, {"pacing": {"max": None, "speed": "10x"}})

        def new_job() -> bool:
            job = _children(api, namespace, name).get(key)
            return job is not None and job["metadata"]["uid"] != old_uid

        wait_for(new_job, 60, "a new producer Job")
        assert set(_children(api, namespace, name)) == _expected(name)


def test_restarting_the_operator_creates_no_duplicates(
    api: client.ApiClient, namespace: str, operator_cmd: list[str], kafka_bootstrap: str
) -> None:
    with _operator(operator_cmd):
        name = _create_job(api, namespace, _spec(kafka_bootstrap))["metadata"]["name"]
        _all_children(api, namespace, name)
    before = _settled(api, namespace, name)
    with _operator(operator_cmd):
        # Wait for the resumed job's next status observation: the resume handler ran.
        time.sleep(6)
        after = _children(api, namespace, name)
    assert set(after) == _expected(name)
    assert {k: v["metadata"]["uid"] for k, v in after.items()} == {
        k: v["metadata"]["uid"] for k, v in before.items()
    }
    assert _versions(after) == _versions(before)


def test_deleting_the_job_deletes_every_child_through_the_garbage_collector(
    api: client.ApiClient, namespace: str, operator_cmd: list[str], kafka_bootstrap: str
) -> None:
    with _operator(operator_cmd):
        name = _create_job(api, namespace, _spec(kafka_bootstrap))["metadata"]["name"]
        _all_children(api, namespace, name)
        # cleanup.deleteTopics is on by default: the operator holds a finalizer...
        finalizers = wait_for(
            lambda: (_get_job(api, namespace, name) or {}).get("metadata", {}).get("finalizers"),
            30,
            "the clean-up finalizer",
        )
        assert finalizers == [f"{labels.DOMAIN}/cleanup"]
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name
        )
        # ...and lets go of it once the (missing) topics are dealt with.
        wait_for(lambda: _get_job(api, namespace, name) is None, 30, "the ReplayJob to go")
    wait_for(lambda: not _children(api, namespace, name), 60, "the garbage collector")


def test_unreachable_kafka_is_a_condition_and_does_not_hold_the_deletion(
    api: client.ApiClient, namespace: str, operator_cmd: list[str]
) -> None:
    with _operator(operator_cmd):
        # Nothing listens on port 1: every Kafka request of the operator times out.
        name = _create_job(api, namespace, _spec("127.0.0.1:1"))["metadata"]["name"]

        def kafka_condition() -> dict[str, Any] | None:
            status = (_get_job(api, namespace, name) or {}).get("status") or {}
            return next(
                (c for c in status.get("conditions") or () if c["type"] == "KafkaObserved"), None
            )

        condition = wait_for(kafka_condition, 60, "the KafkaObserved condition")
        assert condition["status"] == "False"
        assert condition["reason"] == "KafkaUnreachable"
        status = (_get_job(api, namespace, name) or {})["status"]
        assert status["phase"] == "Pending"
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name
        )
        # The topic clean-up gives up after its timeout and lets the job go.
        wait_for(lambda: _get_job(api, namespace, name) is None, 60, "the ReplayJob to go")


@pytest.fixture
def podmonitor_crd(api: client.ApiClient) -> Iterator[None]:
    """A stand-in for the Prometheus Operator's PodMonitor CRD (schema-less), removed after."""
    ext = client.ApiextensionsV1Api(api)
    name = "podmonitors.monitoring.coreos.com"
    body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": "PodMonitor", "plural": "podmonitors", "singular": "podmonitor"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        yield  # installed by someone else: leave it
        return
    objects = client.CustomObjectsApi(api)

    def serves() -> bool:
        try:
            objects.list_cluster_custom_object("monitoring.coreos.com", "v1", "podmonitors")
        except ApiException:
            return False
        return True

    wait_for(serves, 30, "the podmonitors endpoint to serve")
    yield
    ext.delete_custom_resource_definition(name)


def test_a_podmonitor_is_made_only_where_prometheus_operator_is_installed(
    api: client.ApiClient,
    namespace: str,
    operator_cmd: list[str],
    kafka_bootstrap: str,
    podmonitor_crd: None,
) -> None:
    objects = client.CustomObjectsApi(api)

    def podmonitors() -> list[dict[str, Any]]:
        found = objects.list_namespaced_custom_object(
            "monitoring.coreos.com", "v1", namespace, "podmonitors"
        )
        items: list[dict[str, Any]] = found["items"]
        return items

    with _operator(operator_cmd):
        watched = _create_job(api, namespace, _spec(kafka_bootstrap))
        unwatched = _create_job(
            api, namespace, {**_spec(kafka_bootstrap), "monitoring": {"podMonitor": False}}
        )
        (monitor,) = wait_for(podmonitors, 30, "the PodMonitor")
        assert monitor["metadata"]["name"] == Names(watched["metadata"]["name"]).pod_monitor
        assert monitor["metadata"]["ownerReferences"][0]["uid"] == watched["metadata"]["uid"]
        _all_children(api, namespace, unwatched["metadata"]["name"])
        assert len(podmonitors()) == 1


def test_deleting_a_job_with_delete_redis_keys_deletes_its_keys(
    api: client.ApiClient,
    namespace: str,
    operator_cmd: list[str],
    kafka_bootstrap: str,
    redis_url: str,
) -> None:
    url = urlsplit(redis_url)
    password = url.password or ""
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "redis", "labels": {labels.SECRET_OPT_IN: "true"}},
            "stringData": {"password": password},
        },
    )
    spec = {
        **_spec(kafka_bootstrap),
        "redis": {
            "url": f"redis://{url.hostname}:{url.port}/0",
            "credentials": {"secretRef": {"name": "redis"}},
        },
        "cleanup": {"deleteTopics": False, "deleteRedisKeys": True},
    }
    store = redis.Redis.from_url(redis_url)
    with _operator(operator_cmd):
        name = _create_job(api, namespace, spec)["metadata"]["name"]
        keys = RedisKeys(job_id(name, namespace))
        store.hset(keys.latest("BTCUSDT"), mapping={"close": "1"})
        store.sadd(keys.symbols, "BTCUSDT")
        # Keys of a same-named job elsewhere (another namespace, or run by hand) stay.
        others = [RedisKeys(job_id(name, f"{namespace}-x")), RedisKeys(name)]
        for other in others:
            store.sadd(other.symbols, "BTCUSDT")
        _all_children(api, namespace, name)
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name
        )
        wait_for(lambda: _get_job(api, namespace, name) is None, 30, "the ReplayJob to go")
    assert list(store.scan_iter(match=keys.pattern)) == []
    assert [store.smembers(other.symbols) for other in others] == [{b"BTCUSDT"}] * 2
    store.delete(*(other.symbols for other in others))


@contextmanager
def _capturing_server() -> Iterator[tuple[int, Callable[[], bytes]]]:
    """A TCP server on 127.0.0.1 that records whatever clients send and never answers:
    the server a ReplayJob's author chose, to see what the operator would tell it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        conns: list[socket.socket] = []
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                conn.setblocking(False)
                conns.append(conn)
            except TimeoutError:
                pass
            for conn in conns:
                try:
                    chunk = conn.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    received.append(chunk)
        for conn in conns:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], lambda: b"".join(received)
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _condition(
    api: client.ApiClient, namespace: str, name: str, kind: str
) -> dict[str, Any] | None:
    status = (_get_job(api, namespace, name) or {}).get("status") or {}
    return next((c for c in status.get("conditions") or () if c["type"] == kind), None)


def test_a_job_cannot_make_the_operator_use_a_secret_nobody_opted_in(
    api: client.ApiClient, namespace: str, operator_cmd: list[str], kafka_bootstrap: str
) -> None:
    """Issue 10, point 10 (confused deputy). A user who may create ReplayJobs but not read
    Secrets names someone else's Secret as the job's Redis password and points the job at
    a server of their own. The operator must neither send it there (its Redis clean-up
    on delete did) nor start workers that carry it (their pods mount what a job names)."""
    core = client.CoreV1Api(api)
    password = f"victim-{uuid.uuid4().hex}"
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "db"}, "stringData": {"password": password}}
    )
    with _capturing_server() as (port, received), _operator(operator_cmd):
        spec = {
            **_spec(kafka_bootstrap),
            "redis": {
                "url": f"redis://127.0.0.1:{port}/0",
                "credentials": {"secretRef": {"name": "db"}},
            },
            "cleanup": {"deleteTopics": False, "deleteRedisKeys": True},
        }
        name = _create_job(api, namespace, spec)["metadata"]["name"]
        wait_for(lambda: _condition(api, namespace, name, "Ready"), 60, "a status")
        time.sleep(3)  # time enough for children, were any to be made
        refused = _condition(api, namespace, name, "CredentialsAllowed")
        children = _children(api, namespace, name)
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name
        )
        wait_for(lambda: _get_job(api, namespace, name) is None, 60, "the ReplayJob to go")
        assert password.encode() not in received(), "the operator sent the Secret away"
        assert not [k for k in children if k.startswith(("Deployment/", "Job/"))], children
        assert refused is not None, "no CredentialsAllowed condition"
        assert refused["status"] == "False", refused
        assert refused["reason"] == "SecretNotOptedIn"
        assert "Secret db" in refused["message"]
        assert "redis.credentials.secretRef" in refused["message"]
        assert labels.SECRET_OPT_IN in refused["message"]

        # Once a namespace admin opts the Secret in, the same job starts.
        core.patch_namespaced_secret(
            "db", namespace, {"metadata": {"labels": {labels.SECRET_OPT_IN: "true"}}}
        )
        name = _create_job(api, namespace, spec)["metadata"]["name"]
        _all_children(api, namespace, name)
        allowed = wait_for(
            lambda: (
                (c := _condition(api, namespace, name, "CredentialsAllowed"))
                and c["status"] == "True"
                and c
            ),
            60,
            "CredentialsAllowed True",
        )
        assert allowed["reason"] == "SecretsOptedIn"


# ------------------------------------------------- issue 10, point 9: three lifecycle bugs


def _status_of(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = (_get_job(api, namespace, name) or {}).get("status") or {}
    return status


def _generations(status: dict[str, Any]) -> dict[str, Any]:
    """``observedGeneration`` of the status and of each condition, by condition type."""
    out = {"status": status.get("observedGeneration")}
    for condition in status.get("conditions") or ():
        out[condition["type"]] = condition.get("observedGeneration")
    return out


def test_observed_generation_advances_only_when_a_generation_was_reconciled(
    api: client.ApiClient, namespace: str, operator_cmd: list[str], kafka_bootstrap: str
) -> None:
    """Issue 10, point 9. A generation the operator refuses (here: it names a Secret that
    has not opted in, so no child is made or patched) must not show as observed: the
    status says the last generation whose children exist, as kstatus, Argo CD and
    ``kubectl rollout``-like tools read it. CredentialsAllowed is the exception, by
    design: it is evaluated against the current spec, and says why that is refused."""
    core = client.CoreV1Api(api)
    for secret in ("redis", "redis-new"):
        core.create_namespaced_secret(
            namespace, {"metadata": {"name": secret}, "stringData": {"password": "pw"}}
        )
    spec = {
        **_spec(kafka_bootstrap),
        "redis": {
            "url": "redis://127.0.0.1:6379/0",
            "credentials": {"secretRef": {"name": "redis"}},
        },
        # Retry a refused reconcile every second or two, not after 10 s doubling.
        "restartPolicy": {"backoffSeconds": 1, "maxBackoffSeconds": 2},
        "cleanup": {"deleteTopics": False},
    }
    opt_in = {"metadata": {"labels": {labels.SECRET_OPT_IN: "true"}}}

    def credentials(generation: int, value: str) -> dict[str, Any] | None:
        found = _condition(api, namespace, name, "CredentialsAllowed")
        ok = found and found["status"] == value and found["observedGeneration"] == generation
        return found if ok else None

    def observed(generation: int) -> dict[str, Any] | None:
        status = _status_of(api, namespace, name)
        generations = _generations(status)
        return status if set(generations.values()) == {generation} else None

    with _operator(operator_cmd):
        name = _create_job(api, namespace, spec)["metadata"]["name"]
        processor = f"Deployment/{Names(name).processor}"
        # Generation 1 is refused: no child, so no generation is observed.
        wait_for(lambda: credentials(1, "False"), 60, "CredentialsAllowed False for gen 1")
        time.sleep(4)  # two more status observations
        status = _status_of(api, namespace, name)
        assert not _children(api, namespace, name)
        generations = _generations(status)
        assert generations.pop("CredentialsAllowed") == 1
        assert set(generations.values()) == {None}, (
            f"no child was made for generation 1, yet the status says {generations}"
        )

        # Opted in: generation 1 is reconciled, and says so.
        core.patch_namespaced_secret("redis", namespace, opt_in)
        _all_children(api, namespace, name)
        wait_for(lambda: observed(1), 60, "observedGeneration 1 everywhere")

        # Generation 2 names another Secret that has not opted in: refused, so the
        # status still describes generation 1, whose children are left as they were.
        _patch_spec(
            api,
            namespace,
            name,
            {"redis": {"credentials": {"secretRef": {"name": "redis-new"}}}},
        )
        assert (_get_job(api, namespace, name) or {})["metadata"]["generation"] == 2
        wait_for(lambda: credentials(2, "False"), 60, "CredentialsAllowed False for gen 2")
        time.sleep(4)
        generations = _generations(_status_of(api, namespace, name))
        assert generations.pop("CredentialsAllowed") == 2
        assert set(generations.values()) == {1}, (
            f"generation 2 was refused, yet the status says {generations}"
        )
        assert "redis-new" not in str(_children(api, namespace, name)[processor])

        # Opted in: generation 2 is reconciled and observed.
        core.patch_namespaced_secret("redis-new", namespace, opt_in)
        wait_for(lambda: observed(2), 60, "observedGeneration 2 everywhere")
        assert "redis-new" in str(_children(api, namespace, name)[processor])


def _kafkatopics(api: client.ApiClient, namespace: str, job: str) -> list[dict[str, Any]]:
    found = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "kafka.strimzi.io", "v1", namespace, "kafkatopics", label_selector=f"{labels.JOB}={job}"
    )
    items: list[dict[str, Any]] = found["items"]
    return items


def test_kafkatopics_outlive_their_job_when_delete_topics_is_false(
    api: client.ApiClient,
    namespace: str,
    operator_cmd: list[str],
    crds_installed: list[dict[str, Any]],
) -> None:
    """Issue 10, point 9. With Strimzi's real KafkaTopic CRD installed and a job on a
    Strimzi cluster in its own namespace, ``cleanup.deleteTopics: false`` must keep the
    KafkaTopics (and so, through the Topic Operator, the topics) when the job is
    deleted: owned by the job, the garbage collector deleted them with it. Also when
    the setting is turned off on a running job."""
    strimzi = {"strimziCluster": {"name": "events"}, "topic": {"partitions": 2}}
    base = {**_spec("unused:9092"), "kafka": strimzi}
    keep = {**base, "cleanup": {"deleteTopics": False}}
    objects = client.CustomObjectsApi(api)

    def topics_of(job: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = wait_for(
            lambda: len(t := _kafkatopics(api, namespace, job)) == 4 and t,
            60,
            f"the KafkaTopics of {job}",
        )
        return found

    def delete_and_collect(job: str) -> None:
        objects.delete_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, job)
        wait_for(lambda: _get_job(api, namespace, job) is None, 60, f"{job} to go")
        wait_for(lambda: not _children(api, namespace, job), 60, "the garbage collector")
        time.sleep(3)  # the collector handles the dependents of one owner together

    with _operator(operator_cmd):
        # Kept from the start.
        kept = _create_job(api, namespace, keep)["metadata"]["name"]
        topics_of(kept)
        _all_children(api, namespace, kept)
        delete_and_collect(kept)
        left = _kafkatopics(api, namespace, kept)
        assert len(left) == 4, f"deleteTopics is false, yet {4 - len(left)} KafkaTopics went"
        assert not [t for t in left if t["metadata"].get("deletionTimestamp")]
        assert not [t for t in left if t["metadata"].get("ownerReferences")]

        # Deleted by default (owned, and the clean-up deletes them)... until turned off.
        flipped = _create_job(api, namespace, base)["metadata"]["name"]
        owned = topics_of(flipped)
        uid = (_get_job(api, namespace, flipped) or {})["metadata"]["uid"]
        assert [[o["uid"] for o in t["metadata"]["ownerReferences"]] for t in owned] == [[uid]] * 4
        _all_children(api, namespace, flipped)
        _patch_spec(api, namespace, flipped, {"cleanup": {"deleteTopics": False}})
        wait_for(
            lambda: (
                not [
                    t
                    for t in _kafkatopics(api, namespace, flipped)
                    if t["metadata"].get("ownerReferences")
                ]
            ),
            60,
            "the KafkaTopics to be released by the job",
        )
        delete_and_collect(flipped)
        assert len(_kafkatopics(api, namespace, flipped)) == 4


HOLD: str = "tests.hftpipe.io/hold"
"""A finalizer the test puts on a pod, to keep it in existence while it looks."""


def _set_hold(core: client.CoreV1Api, namespace: str, pod: str, hold: bool) -> None:
    """Add or remove :data:`HOLD` on a pod (gone already is fine)."""
    for _ in range(10):
        try:
            found = core.read_namespaced_pod(pod, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        finalizers = [f for f in found.metadata.finalizers or () if f != HOLD]
        if hold:
            finalizers.append(HOLD)
        version = found.metadata.resource_version
        try:
            # A JSON patch that tests the version: a finalizer the Job controller
            # added or removed in between is never lost.
            core.patch_namespaced_pod(
                pod,
                namespace,
                [
                    {"op": "test", "path": "/metadata/resourceVersion", "value": version},
                    {"op": "add", "path": "/metadata/finalizers", "value": finalizers},
                ],
            )
        except ApiException as exc:
            if exc.status in (404, 409, 422):
                continue
            raise
        return
    raise AssertionError(f"could not {'add' if hold else 'remove'} {HOLD} on pod {pod}")


def test_a_replaced_producer_job_starts_only_once_the_old_pods_are_gone(
    api: client.ApiClient, namespace: str, operator_cmd: list[str], kafka_bootstrap: str
) -> None:
    """Issue 10, point 9. A changed producer template means a new Job; the old Job's
    pods must be gone before it is created, or two producers of one job run at once
    (94,143 duplicate records in the fault probe). No kubelet runs here, but the
    controller-manager makes the old Job's Pod object: a finalizer on it stands for a
    producer still shutting down, and no new Job may appear while it exists."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    with _operator(operator_cmd):
        name = _create_job(api, namespace, _spec(kafka_bootstrap))["metadata"]["name"]
        producer = Names(name).producer
        old_uid = _all_children(api, namespace, name)[f"Job/{producer}"]["metadata"]["uid"]

        def old_pods() -> list[str]:
            selector = f"batch.kubernetes.io/controller-uid={old_uid}"
            return [
                p.metadata.name
                for p in core.list_namespaced_pod(namespace, label_selector=selector).items
            ]

        def producer_job() -> Any:
            try:
                return batch.read_namespaced_job(producer, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        pods = wait_for(old_pods, 30, "the producer Job's pod")
        try:
            for pod in pods:
                _set_hold(core, namespace, pod, True)
            _patch_spec(api, namespace, name, {"pacing": {"max": None, "speed": "10x"}})
            wait_for(
                lambda: (
                    (j := producer_job()) is None
                    or j.metadata.deletion_timestamp is not None
                    or j.metadata.uid != old_uid
                ),
                30,
                "the operator to replace the producer Job",
            )
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                job = producer_job()
                assert job is None or job.metadata.uid == old_uid, (
                    f"a new producer Job was created while the old one's pods {old_pods()} exist"
                )
                time.sleep(0.5)
            assert old_pods() == pods
        finally:
            for pod in pods:
                _set_hold(core, namespace, pod, False)
        new = wait_for(
            lambda: (j := producer_job()) is not None and j.metadata.uid != old_uid and j,
            90,
            "the new producer Job",
        )
        assert not old_pods()
        assert new.metadata.deletion_timestamp is None
        assert set(_children(api, namespace, name)) == _expected(name)


# ------------------------------------------- issue 10, point 5: Failed means what it says


def _pods_of(core: client.CoreV1Api, namespace: str, job: str, worker: str) -> list[Any]:
    selector = f"{labels.JOB}={job},{labels.COMPONENT}={worker}"
    return list(core.list_namespaced_pod(namespace, label_selector=selector).items)


def _kubelet_says_restarted(core: client.CoreV1Api, namespace: str, pod: Any) -> None:
    """Stand in for the kubelet (none runs here): the pod's container crashed and was
    restarted once, as a worker that exits with an error is."""
    container = pod.spec.containers[0]
    status = {
        "name": container.name,
        "image": container.image,
        "imageID": "",
        "ready": False,
        "started": False,
        "restartCount": 1,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
        "lastState": {
            "terminated": {
                "exitCode": 1,
                "reason": "Error",
                "startedAt": "2026-01-01T00:00:00Z",
                "finishedAt": "2026-01-01T00:00:01Z",
            }
        },
    }
    core.patch_namespaced_pod_status(
        pod.metadata.name, namespace, {"status": {"containerStatuses": [status]}}
    )


def _kubelet_says_failed(core: client.CoreV1Api, namespace: str, pod: Any) -> None:
    """Stand in for the kubelet: the pod's only container exited 1 (the Job counts a
    failed pod towards its backoffLimit)."""
    container = pod.spec.containers[0]
    status = {
        "phase": "Failed",
        "containerStatuses": [
            {
                "name": container.name,
                "image": container.image,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "message": "boom",
                        "startedAt": "2026-01-01T00:00:00Z",
                        "finishedAt": "2026-01-01T00:00:01Z",
                    }
                },
            }
        ],
    }
    core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": status})


@pytest.mark.parametrize(
    ("failing", "reason"),
    [("processor", "RestartLimitExceeded"), ("producer", "BackoffLimitExceeded")],
)
def test_a_failed_job_stops_its_workers_and_stays_failed(
    api: client.ApiClient,
    namespace: str,
    operator_cmd: list[str],
    kafka_bootstrap: str,
    failing: str,
    reason: str,
) -> None:
    """Issue 10, point 5. A worker that failed for good (restarted more than
    ``restartPolicy.maxRestarts`` times, or a producer Job past its backoffLimit) makes
    the job Failed; then the workers must stop (the Deployments at 0, the producer Job
    suspended) instead of crash-looping on, and the phase must stay Failed once their
    pods are gone, also across a later edit of how the job runs."""
    core = client.CoreV1Api(api)
    spec = {**_spec(kafka_bootstrap), "restartPolicy": {"maxRestarts": 0}}
    stopped = (0, 0, True)
    with _operator(operator_cmd):
        name = _create_job(api, namespace, spec)["metadata"]["name"]
        names = Names(name)
        _all_children(api, namespace, name)

        def state() -> tuple[int, int, bool]:
            c = _children(api, namespace, name)
            return (
                c[f"Deployment/{names.processor}"]["spec"]["replicas"],
                c[f"Deployment/{names.loader}"]["spec"]["replicas"],
                bool(c[f"Job/{names.producer}"]["spec"].get("suspend")),
            )

        def phase() -> str | None:
            found: str | None = _status_of(api, namespace, name).get("phase")
            return found

        (pod, *_) = wait_for(
            lambda: _pods_of(core, namespace, name, failing), 30, f"the {failing}'s pod"
        )
        if failing == "producer":
            _kubelet_says_failed(core, namespace, pod)
        else:
            _kubelet_says_restarted(core, namespace, pod)
        wait_for(lambda: phase() == "Failed", 60, "phase Failed")
        failure = _status_of(api, namespace, name)["lastFailure"]
        assert (failure["component"], failure["reason"]) == (failing, reason), failure

        deadline = time.monotonic() + 30
        while state() != stopped and time.monotonic() < deadline:
            time.sleep(0.5)
        assert state() == stopped, (
            f"the job is Failed, yet its workers are not stopped: (processor replicas, "
            f"loader replicas, producer suspended) = {state()}"
        )

        # No kubelet: pods never scheduled go as soon as their controllers delete them
        # (a failed producer pod stays, ended, as a finished Job keeps its pods).
        def live_pods() -> list[str]:
            found = core.list_namespaced_pod(namespace, label_selector=f"{labels.JOB}={name}")
            return [p.metadata.name for p in found.items if p.status.phase != "Failed"]

        wait_for(lambda: not live_pods(), 60, "every live pod of the job to be gone")
        # The restarts that made it Failed went with the pods: the phase must not.
        for _ in range(4):  # two observations or more (status interval 2 s)
            time.sleep(1.5)
            assert phase() == "Failed", _status_of(api, namespace, name)
        conditions = {c["type"]: c for c in _status_of(api, namespace, name)["conditions"]}
        assert conditions["Failed"]["status"] == "True", conditions["Failed"]
        assert _status_of(api, namespace, name)["lastFailure"] == failure

        # An edit of how the job runs is applied, and brings no worker back.
        _patch_spec(api, namespace, name, {"processing": {"replicas": 2}})
        wait_for(
            lambda: (
                ((_get_job(api, namespace, name) or {})["metadata"].get("annotations") or {}).get(
                    RECONCILED_GENERATION
                )
                == "2"
            ),
            30,
            "generation 2 to be reconciled",
        )
        time.sleep(3)
        assert state() == stopped
        assert phase() == "Failed"


# ------------------- issue 10, point 8: the operator's own refusal of immutable-field edits


def _without_transition_rules(schema: Any) -> Any:
    """``schema`` without the CEL rules that compare with ``oldSelf`` (as a CRD installed
    before those rules existed: Helm never upgrades a chart's crds/)."""
    if isinstance(schema, list):
        return [_without_transition_rules(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key != "x-kubernetes-validations":
            out[key] = _without_transition_rules(value)
        elif kept := [rule for rule in value if "oldSelf" not in rule["rule"]]:
            out[key] = kept
    return out


def _replace_crd(api: client.ApiClient, body: dict[str, Any]) -> None:
    ext = client.ApiextensionsV1Api(api)
    current = ext.read_custom_resource_definition(crd.NAME)
    body = {**body, "metadata": {**body["metadata"]}}
    body["metadata"]["resourceVersion"] = current.metadata.resource_version
    ext.replace_custom_resource_definition(crd.NAME, body)


def _source_edit_accepted(api: client.ApiClient, namespace: str) -> bool:
    """Whether the API server now lets a ReplayJob's ``source.url`` change (a probe job,
    created and deleted while no operator runs)."""
    objects = client.CustomObjectsApi(api)
    name = _create_job(api, namespace, _spec("unused:9092"))["metadata"]["name"]
    try:
        _patch_spec(api, namespace, name, {"source": {"url": "https://example.com/b.csv"}})
    except ApiException as exc:
        if exc.status != 422:
            raise
        return False
    finally:
        objects.delete_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name)
    return True


@pytest.fixture
def crd_without_transition_rules(
    api: client.ApiClient, installed: None, namespace: str
) -> Iterator[None]:
    """The ReplayJob CRD without its transition rules for one test, the full one after."""
    _replace_crd(api, _without_transition_rules(crd.build_crd()))
    wait_for(lambda: _source_edit_accepted(api, namespace), 30, "the rules to be gone")
    try:
        yield
    finally:
        _replace_crd(api, crd.build_crd())
        wait_for(lambda: not _source_edit_accepted(api, namespace), 30, "the rules to be back")


def _events(api: client.ApiClient, namespace: str, name: str, reason: str) -> list[Any]:
    found = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return [e for e in found.items if e.reason == reason]


def test_an_immutable_field_edit_stays_refused_until_reverted(
    api: client.ApiClient,
    crd_without_transition_rules: None,
    namespace: str,
    operator_cmd: list[str],
    kafka_bootstrap: str,
) -> None:
    """Issue 10, point 8. Where the installed CRD lacks the transition rules, the operator
    refuses an edit of ``source`` itself. kopf then records the refused spec as handled,
    so the next harmless edit (pacing) was compared with the refused spec, not with what
    the children are of, and carried the new source to the producer: the refusal had to
    hold until the edit is reverted."""
    spec = _spec(kafka_bootstrap)
    original, other = spec["source"]["url"], "https://example.com/other-bars.csv.gz"
    speed = workerapi.cli_envvar("produce", "speed")

    def reconciled() -> str | None:
        meta = (_get_job(api, namespace, name) or {}).get("metadata") or {}
        found: str | None = (meta.get("annotations") or {}).get(RECONCILED_GENERATION)
        return found

    def producer_command() -> list[str]:
        job = _children(api, namespace, name)[f"Job/{Names(name).producer}"]
        command: list[str] = job["spec"]["template"]["spec"]["containers"][0]["command"]
        return command

    def settings() -> dict[str, str]:
        found: dict[str, str] = _children(api, namespace, name)[
            f"ConfigMap/{Names(name).settings}"
        ]["data"]
        return found

    with _operator(operator_cmd):
        name = _create_job(api, namespace, spec)["metadata"]["name"]
        _all_children(api, namespace, name)
        wait_for(lambda: reconciled() == "1", 30, "generation 1 to be reconciled")
        before = _versions(_settled(api, namespace, name))
        assert producer_command()[-1] == original

        # Generation 2: the source changes. Refused: a warning, the children untouched.
        _patch_spec(api, namespace, name, {"source": {"url": other}})
        (refused,) = wait_for(
            lambda: _events(api, namespace, name, "ImmutableFieldChanged"),
            30,
            "the ImmutableFieldChanged event",
        )
        assert "source is immutable" in refused.message
        time.sleep(3)
        assert _versions(_children(api, namespace, name)) == before
        assert reconciled() == "1"

        # Generation 3: a harmless edit, with the refused source still in the spec.
        _patch_spec(api, namespace, name, {"pacing": {"max": None, "speed": "10x"}})
        wait_for(
            lambda: (
                len(_events(api, namespace, name, "ImmutableFieldChanged")) >= 2
                or reconciled() == "3"
            ),
            60,
            "the pacing edit to be refused or reconciled",
        )
        time.sleep(3)
        command = producer_command()
        assert command[-1] == original, (
            f"the refused source.url reached the producer with a later edit: {command}"
        )
        assert settings().get(speed) != "10x"
        assert reconciled() == "1"
        assert _versions(_children(api, namespace, name)) == before

        # Generation 4: the source is back as it was; the pacing edit now applies.
        _patch_spec(api, namespace, name, {"source": {"url": original}})
        wait_for(lambda: reconciled() == "4", 60, "generation 4 to be reconciled")
        assert settings()[speed] == "10x"
        assert producer_command()[-1] == original
