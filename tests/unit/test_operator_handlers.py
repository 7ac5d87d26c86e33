"""The pure parts behind the operator's handlers: child plans, status writes, settings, metrics."""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest

from hftpipe_operator import builders, crd, metrics
from hftpipe_operator.kube import Kube
from hftpipe_operator.naming import Names
from hftpipe_operator.reconcile import (
    APPLIED_HASH,
    KAFKA_OBSERVED,
    RECONCILED_GENERATION,
    RECONCILED_SPEC,
    TEMPLATE_HASH,
    KafkaReading,
    credentials_condition,
    job_patch,
    kafka_condition,
    object_path,
    phase_event,
    plan,
    reconciled_annotations,
    reconciled_generation,
    reconciled_spec,
    stamp,
    status_changed,
    with_condition,
)
from hftpipe_operator.settings import OperatorSettings
from hftpipe_operator.spec import ReplayJob, ReplayJobSpec
from hftpipe_operator.status import Observed, ReplayJobStatus, roll_up
from hftpipe_operator.workerapi import cli_envvar

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "source": {"url": "https://example.com/bars.csv.gz"},
    "kafka": {"bootstrapServers": "kafka:9092", "topic": {"partitions": 2}},
    "redis": {"url": "redis://redis:6379/0"},
}


def _job(**changes: Any) -> ReplayJob:
    return ReplayJob("btc", "ns", ReplayJobSpec.model_validate({**SPEC, **changes}))


def _annotations(manifest: dict[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = manifest["metadata"]["annotations"]
    return annotations


# ------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("api_version", "kind", "name", "path"),
    [
        ("v1", "ConfigMap", "a", "/api/v1/namespaces/ns/configmaps/a"),
        ("batch/v1", "Job", "a", "/apis/batch/v1/namespaces/ns/jobs/a"),
        ("apps/v1", "Deployment", None, "/apis/apps/v1/namespaces/ns/deployments"),
        (
            "monitoring.coreos.com/v1",
            "PodMonitor",
            "a",
            "/apis/monitoring.coreos.com/v1/namespaces/ns/podmonitors/a",
        ),
    ],
)
def test_object_path_should_address_core_and_group_kinds(
    api_version: str, kind: str, name: str | None, path: str
) -> None:
    assert object_path(api_version, kind, "ns", name) == path


def test_object_path_should_refuse_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="Ingress"):
        object_path("networking.k8s.io/v1", "Ingress", "ns", "a")


# --------------------------------------------------------------------------- plan


def test_stamp_should_be_stable_and_leave_the_input_alone() -> None:
    manifest = builders.build_metrics_service(_job())
    stamped = stamp(manifest)
    assert "annotations" not in manifest["metadata"]
    assert stamp(stamped) == stamped  # re-stamping a stamped manifest changes nothing
    assert TEMPLATE_HASH not in _annotations(stamped)


def test_stamp_should_hash_a_job_template_without_suspend() -> None:
    running = stamp(builders.build_producer_job(_job()))
    suspended = stamp(builders.build_producer_job(_job(suspend=True)))
    assert _annotations(running)[APPLIED_HASH] != _annotations(suspended)[APPLIED_HASH]
    assert _annotations(running)[TEMPLATE_HASH] == _annotations(suspended)[TEMPLATE_HASH]


def test_plan_should_create_a_missing_child() -> None:
    assert plan(None, stamp(builders.build_settings_configmap(_job()))) == "create"


def test_plan_should_keep_an_unchanged_child_whatever_the_server_added() -> None:
    desired = stamp(builders.build_processor_deployment(_job()))
    stored = {**desired, "status": {"readyReplicas": 0}}
    stored["metadata"] = {**desired["metadata"], "resourceVersion": "42", "uid": "u"}
    assert plan(stored, desired) == "keep"


def test_plan_should_apply_a_changed_deployment() -> None:
    stored = stamp(builders.build_processor_deployment(_job()))
    desired = stamp(builders.build_processor_deployment(_job(processing={"replicas": 2})))
    assert plan(stored, desired) == "apply"


def test_plan_should_patch_a_job_whose_only_change_is_suspend() -> None:
    stored = stamp(builders.build_producer_job(_job()))
    desired = stamp(builders.build_producer_job(_job(suspend=True)))
    assert plan(stored, desired) == "apply"
    patch = job_patch(desired)
    assert patch["spec"] == {"suspend": True}
    assert patch["metadata"]["annotations"][APPLIED_HASH] == _annotations(desired)[APPLIED_HASH]


def test_plan_should_replace_a_job_whose_pod_template_changed() -> None:
    stored = stamp(builders.build_producer_job(_job()))
    desired = stamp(
        builders.build_producer_job(_job(source={**SPEC["source"], "symbol": "ETHUSDT"}))
    )
    assert plan(stored, desired) == "replace"


def test_plan_should_replace_a_child_being_deleted_whatever_its_hash() -> None:
    # The edit that started a producer Job's replacement was reverted: the deleting
    # Job's hash is the desired one again, yet it is going and must be made anew.
    desired = stamp(builders.build_producer_job(_job()))
    deleting = {**desired, "metadata": {**desired["metadata"], "deletionTimestamp": "x"}}
    assert plan(deleting, desired) == "replace"


@pytest.mark.parametrize(
    ("annotations", "generation"),
    [
        ({RECONCILED_GENERATION: "7"}, 7),
        ({}, None),
        (None, None),
        ({RECONCILED_GENERATION: "seven"}, None),
        ({RECONCILED_GENERATION: "-1"}, None),
    ],
)
def test_reconciled_generation_should_read_only_a_generation(
    annotations: dict[str, str] | None, generation: int | None
) -> None:
    meta = {"generation": 9} if annotations is None else {"annotations": annotations}
    assert reconciled_generation(meta) == generation


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        ('{"suspend":true}', {"suspend": True}),
        (None, None),
        ("{not json", None),
        ("[1]", None),
    ],
)
def test_reconciled_spec_should_read_only_a_recorded_spec(
    value: str | None, spec: dict[str, Any] | None
) -> None:
    meta = {"annotations": {} if value is None else {RECONCILED_SPEC: value}}
    assert reconciled_spec(meta) == spec


def test_reconciled_annotations_should_round_trip() -> None:
    annotations = reconciled_annotations(4, SPEC)
    assert reconciled_generation({"annotations": annotations}) == 4
    assert reconciled_spec({"annotations": annotations}) == SPEC


class _AllCrds:
    """The one call :func:`handlers._desired` makes: every CRD is installed."""

    def crd_exists(self, name: str) -> bool:
        return True


@pytest.mark.parametrize(("delete_topics", "owned"), [(True, 4), (False, 0)])
def test_kafkatopics_should_be_owned_only_when_the_job_deletes_its_topics(
    delete_topics: bool, owned: int
) -> None:
    """Issue 10, point 9: an owned KafkaTopic goes with the job (the garbage collector),
    and Strimzi then deletes the topic, whatever cleanup.deleteTopics says."""
    from hftpipe_operator import handlers  # noqa: PLC0415 - kopf registers on import

    job = _job(
        kafka={"strimziCluster": {"name": "events"}},
        cleanup={"deleteTopics": delete_topics},
    )
    body = {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": "btc", "namespace": "ns", "uid": "u-1"},
    }
    desired = handlers._desired(job, body, _AllCrds(), complete=False)  # type: ignore[arg-type]
    topics = [m for m in desired if m["kind"] == "KafkaTopic"]
    assert len(topics) == 4
    assert sum(bool(t["metadata"].get("ownerReferences")) for t in topics) == owned
    # The workers and their settings go with the job either way.
    others = [m for m in desired if m["kind"] not in ("KafkaTopic", "PersistentVolumeClaim")]
    assert all(m["metadata"]["ownerReferences"][0]["uid"] == "u-1" for m in others)


# ------------------------------------------------------------------------- status


def _status(job: ReplayJob, now: datetime, previous: ReplayJobStatus | None) -> ReplayJobStatus:
    return roll_up(job, Observed(now=now, generation=1), previous)


def test_kafka_condition_should_keep_its_transition_time_while_unchanged() -> None:
    job = _job()
    down = KafkaReading(ok=False, message="no broker answered")
    first = with_condition(_status(job, NOW, None), kafka_condition(down, NOW, 1, None))
    later = NOW + timedelta(minutes=1)
    second = kafka_condition(down, later, 1, first)
    assert second.last_transition_time == "2026-01-01T00:00:00Z"
    assert second.reason == "KafkaUnreachable"
    up = kafka_condition(KafkaReading(ok=True, message="ok"), later, 1, first)
    assert (up.status, up.reason, up.last_transition_time) == (
        "True",
        "OffsetsRead",
        "2026-01-01T00:01:00Z",
    )


def test_credentials_condition_should_name_every_secret_that_cannot_be_used() -> None:
    problems = ["Secret db (named by redis.credentials.secretRef) is not labelled ...", "x"]
    refused = credentials_condition(problems, NOW, 3, None)
    assert (refused.status, refused.reason, refused.observed_generation) == (
        "False",
        "SecretNotOptedIn",
        3,
    )
    assert refused.message == "; ".join(problems)
    status = with_condition(_status(_job(), NOW, None), refused)
    later = NOW + timedelta(minutes=1)
    allowed = credentials_condition([], later, 3, status)
    assert (allowed.status, allowed.reason, allowed.last_transition_time) == (
        "True",
        "SecretsOptedIn",
        "2026-01-01T00:01:00Z",
    )


def test_with_condition_should_replace_the_condition_of_its_type() -> None:
    job = _job()
    status = _status(job, NOW, None)
    reading = KafkaReading(ok=True, message="ok")
    once = with_condition(status, kafka_condition(reading, NOW, 1, None))
    twice = with_condition(once, kafka_condition(reading, NOW, 1, once))
    types = [c.type for c in twice.conditions or ()]
    assert types.count(KAFKA_OBSERVED) == 1
    assert len(types) == len(status.conditions or ()) + 1


def test_status_changed_should_ignore_a_fresher_observation_time_alone() -> None:
    job = _job()
    first = _status(job, NOW, None)
    again = _status(job, NOW + timedelta(seconds=10), first)
    assert not status_changed(first, again)
    assert status_changed(None, first)
    suspended = _status(_job(suspend=True), NOW + timedelta(seconds=20), first)
    assert status_changed(first, suspended)


@pytest.mark.parametrize(
    ("before", "after", "event"),
    [
        (None, "Pending", (False, "phase none -> Pending")),
        ("Pending", "Pending", None),
        ("Running", "Failed", (True, "phase Running -> Failed")),
        ("Running", "Succeeded", (False, "phase Running -> Succeeded")),
    ],
)
def test_phase_event_should_speak_only_of_transitions(
    before: str | None, after: str, event: tuple[bool, str] | None
) -> None:
    assert phase_event(before, after) == event


# ----------------------------------------------------------------- settings, metrics


def test_settings_should_read_the_operator_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFTPIPE_OPERATOR_NAMESPACES", " a, b ,,")
    monkeypatch.setenv("HFTPIPE_OPERATOR_STATUS_INTERVAL", "2.5")
    settings = OperatorSettings()
    assert settings.namespace_list == ["a", "b"]
    assert settings.status_interval == 2.5


def test_settings_should_default_to_cluster_wide() -> None:
    assert OperatorSettings(namespaces="").namespace_list == []


def test_phase_book_should_count_the_last_phase_of_each_job() -> None:
    book = metrics.PhaseBook()
    book.set("ns", "a", "Pending")
    book.set("ns", "a", "Running")
    book.set("ns", "b", "Running")
    book.set("other", "a", "Failed")
    book.forget("ns", "b")
    counts = book.counts()
    assert counts["Running"] == 1
    assert counts["Failed"] == 1
    assert counts["Pending"] == 0
    assert set(counts) == set(metrics.PHASES)


# ------------------------------------------- the operator reaches what the job names


@pytest.mark.parametrize(
    ("servers", "seen_by_operator"),
    [
        # A dotless host is a Service in the job's namespace, as the job's pods resolve it
        # (their first search domain); the operator runs in its own namespace.
        ("kafka-kafka-bootstrap:9092", "kafka-kafka-bootstrap.ns.svc:9092"),
        ("a:9092,b:9093", "a.ns.svc:9092,b.ns.svc:9093"),
        # Qualified names and addresses are the same from anywhere.
        ("kafka.other.svc:9092", "kafka.other.svc:9092"),
        ("10.1.2.3:9092", "10.1.2.3:9092"),
        ("localhost:9092", "localhost:9092"),
    ],
)
def test_the_operator_resolves_the_jobs_kafka_in_the_jobs_namespace(
    servers: str, seen_by_operator: str
) -> None:
    from hftpipe_operator import handlers  # noqa: PLC0415 - kopf registers on import

    job = _job(kafka={"bootstrapServers": servers})
    config = handlers.kafka_config(job, None, None)  # type: ignore[arg-type]
    assert config["bootstrap.servers"] == seen_by_operator
    # The workers run in the job's namespace: they get the names as the user wrote them.
    assert builders.bootstrap_servers(job) == servers


@pytest.mark.parametrize(
    ("url", "seen_by_operator"),
    [
        ("redis://redis:6379/0", "redis://redis.ns.svc:6379/0"),
        ("rediss://redis:6380/1", "rediss://redis.ns.svc:6380/1"),
        ("redis://redis.other.svc:6379/0", "redis://redis.other.svc:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_the_operator_resolves_the_jobs_redis_in_the_jobs_namespace(
    url: str, seen_by_operator: str
) -> None:
    job = _job(redis={"url": url})
    assert builders.redis_url_for_operator(job) == seen_by_operator


# --------------------------------------- the reconcile handler, run against a fake API


class _FakeKube(Kube):
    """The calls :func:`handlers.reconcile` makes, answered from a dict: applied
    manifests are stored as given (no server defaults, no controllers)."""

    def __init__(self) -> None:  # no API client: nothing is sent anywhere
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        return self.objects.get((kind, name))

    def apply(self, manifest: Any) -> Any:
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = manifest
        return manifest

    def merge_patch(self, manifest: Any, patch: Any) -> Any:
        stored = self.objects[(manifest["kind"], manifest["metadata"]["name"])]
        stored["metadata"].setdefault("annotations", {}).update(
            patch.get("metadata", {}).get("annotations") or {}
        )
        stored["spec"].update(patch.get("spec") or {})
        return stored

    def delete(self, manifest: Any, propagation: str = "Background") -> None:
        self.objects.pop((manifest["kind"], manifest["metadata"]["name"]), None)

    def crd_exists(self, name: str) -> bool:
        return False


class _Operator:
    """One ReplayJob as kopf hands it to :func:`handlers.reconcile`: the body, the
    diffbase kopf keeps (``old``: the last spec it considers handled, also when a
    handler failed permanently) and the annotations the handler's patches wrote."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any]) -> None:
        from hftpipe_operator import handlers  # noqa: PLC0415 - kopf registers on import

        self.handlers = handlers
        self.kube = _FakeKube()
        self.warnings: list[str] = []
        monkeypatch.setattr(
            kopf, "warn", lambda body, *, reason, message: self.warnings.append(reason)
        )
        self.body: dict[str, Any] = {
            "apiVersion": crd.API_VERSION,
            "kind": crd.KIND,
            "metadata": {"name": "btc", "namespace": "ns", "uid": "u-1", "generation": 0},
            "spec": {},
            "status": {},
        }
        self.old: dict[str, Any] | None = None
        self.edit(spec)

    def edit(self, spec: dict[str, Any]) -> None:
        """A new spec (a new generation), then the handler as kopf runs it."""
        self.body["metadata"]["generation"] += 1
        self.body["spec"] = copy.deepcopy(spec)
        old, self.old = self.old, {"spec": copy.deepcopy(spec)}
        patch = kopf.Patch()
        body = kopf.Body(cast("kopf.RawBody", copy.deepcopy(self.body)))
        # Called as kopf calls it: with keywords (the decorator's type asks for them all).
        reconcile: Any = self.handlers.reconcile
        try:
            reconcile(
                body=body,
                meta=body.meta,
                status=body.status,
                patch=patch,
                memo=SimpleNamespace(kube=self.kube),
                logger=logging.getLogger("test"),
                retry=0,
                old=old,
            )
        finally:
            # Success or PermanentError: kopf stores the new spec as handled, and
            # applies what the handler patched.
            annotations = (patch.get("metadata") or {}).get("annotations") or {}
            self.body["metadata"].setdefault("annotations", {}).update(annotations)

    def child(self, kind: str, name: str) -> dict[str, Any]:
        return self.kube.objects[(kind, name)]


def _producer_url(operator: _Operator) -> str:
    job = operator.child("Job", Names("btc").producer)
    url: str = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    return url


def test_a_refused_edit_should_stay_refused_when_kopf_recorded_it_as_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 10, point 8. The operator refuses a change of ``source`` (where the CRD lacks
    the transition rules) with a PermanentError; kopf then keeps the refused spec as the
    last handled one, and hands it as ``old`` to the next edit's handler. Compared with
    that, a later harmless edit changed nothing immutable, and the refused source
    reached the producer. It must be compared with what was last reconciled."""
    original = SPEC["source"]["url"]
    refused = {**SPEC, "source": {"url": "https://example.com/other.csv.gz"}}
    operator = _Operator(monkeypatch, SPEC)
    assert _producer_url(operator) == original
    with pytest.raises(kopf.PermanentError, match="source is immutable"):
        operator.edit(refused)
    # A harmless edit, the refused source still in the spec.
    with pytest.raises(kopf.PermanentError, match="source is immutable"):
        operator.edit({**refused, "pacing": {"speed": "10x"}})
    assert _producer_url(operator) == original
    assert operator.warnings == ["ImmutableFieldChanged", "ImmutableFieldChanged"]
    # Reverted: the harmless edit applies, with the source the job always had.
    operator.edit({**SPEC, "pacing": {"speed": "10x"}})
    assert _producer_url(operator) == original
    settings = operator.child("ConfigMap", Names("btc").settings)["data"]
    assert settings[cli_envvar("produce", "speed")] == "10x"
    assert reconciled_generation(operator.body["metadata"]) == 4


def test_a_failed_job_should_get_its_workers_stopped_by_any_later_reconcile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 10, point 5. Once Failed, an edit of how the job runs (or the operator's
    restart, which reconciles every job again) must not start the workers again."""
    operator = _Operator(monkeypatch, SPEC)
    names = Names("btc")
    assert operator.child("Deployment", names.processor)["spec"]["replicas"] == 1
    operator.body["status"] = {"phase": "Failed"}
    operator.edit({**SPEC, "processing": {"replicas": 2}})
    assert operator.child("Deployment", names.processor)["spec"]["replicas"] == 0
    assert operator.child("Deployment", names.loader)["spec"]["replicas"] == 0
    assert operator.child("Job", names.producer)["spec"]["suspend"] is True
