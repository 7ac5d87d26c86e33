"""The kopf handlers of the ReplayJob operator: thin edges around the pure modules.

- create/resume/update: build every child (:mod:`.builders`), adopt it, and create or
  patch it only where it differs (:func:`.reconcile.plan`);
- a timer: observe the children and Kafka, roll the status up (:mod:`.status`), post
  an Event per phase transition, stop the workers once the job succeeded or failed;
- delete: children go with the job (owner references, the garbage collector); a
  finalizer is added only when ``spec.cleanup`` asks to delete topics or Redis keys,
  and that clean-up gives up after a short timeout rather than block the deletion.

Run with ``kopf run -m hftpipe_operator.handlers`` or ``python -m hftpipe_operator.handlers``.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import kopf
import redis
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import DynamicApiError
from prometheus_client import start_http_server
from pydantic import ValidationError

from hftpipe_workers.contract import RedisKeys

from . import builders, crd, labels, metrics
from .kafka_facts import ClientConfig, KafkaUnavailable, delete_topics, read_offsets
from .kube import Kube, Manifest, load_api_client
from .naming import Names
from .reconcile import (
    FINAL_PHASES,
    KafkaReading,
    credentials_condition,
    job_patch,
    kafka_condition,
    phase_event,
    plan,
    reconciled_annotations,
    reconciled_generation,
    reconciled_spec,
    stamp,
    status_changed,
    with_condition,
)
from .settings import OperatorSettings
from .spec import ReplayJob, ReplayJobSpec
from .status import (
    READY,
    Observed,
    OffsetFacts,
    ProducerFacts,
    ReplayJobStatus,
    WorkerFacts,
    backoff_delay,
    roll_up,
)

Log = logging.Logger | logging.LoggerAdapter[Any]

SETTINGS: Final = OperatorSettings()
RESOURCE: Final = (crd.GROUP, crd.VERSION, crd.PLURAL)
PODMONITOR_CRD: Final = "podmonitors.monitoring.coreos.com"
KAFKATOPIC_CRD: Final = "kafkatopics.kafka.strimzi.io"
JOB_GONE_TIMEOUT: Final = 30.0
"""Seconds to wait for a replaced producer Job to be gone before creating the new one."""

PHASES: Final = metrics.PhaseBook()
_metrics_served: set[int] = set()


# --------------------------------------------------------------------------- start-up


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Operator start -> kopf settings, the API client, the metrics endpoint."""
    # Without timeouts a watch that the network silently drops is never renewed and
    # the operator stalls (kopf's docs, "Configuration: API timeouts").
    settings.watching.server_timeout = SETTINGS.watch_server_timeout
    settings.watching.client_timeout = SETTINGS.watch_client_timeout
    settings.watching.connect_timeout = 10
    # kopf's bookkeeping goes to annotations, so status holds only the ReplayJob's own.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=labels.DOMAIN)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=labels.DOMAIN, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{labels.DOMAIN}/cleanup"
    if SETTINGS.namespace_list:
        # Named namespaces need no scanning: without this, kopf lists all namespaces
        # (and CRDs) at start-up, which the least-privilege RBAC (rbac.py) does not
        # allow, and it retries for about 90 s before falling back to the names given.
        settings.scanning.disabled = True
    settings.posting.enabled = SETTINGS.post_events
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = labels.MANAGER
    if SETTINGS.replicas > 1:
        settings.peering.name = SETTINGS.peering_name
        settings.peering.mandatory = True
        settings.peering.standalone = False
    memo.kube = Kube(load_api_client())
    port = SETTINGS.metrics_port
    if port and port not in _metrics_served:  # once per process (a restart in tests)
        start_http_server(port)
        _metrics_served.add(port)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Operator start -> credentials: the pod's service account, else ``$KUBECONFIG``."""
    # kopf's default login through the kubernetes client reads the kubeconfig path
    # the client fixed when it was imported, not $KUBECONFIG as set now.
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
        **kwargs
    ) or kopf.login_with_kubeconfig(**kwargs)
    return info


def _kube(memo: Any) -> Kube:
    kube = getattr(memo, "kube", None)
    if not isinstance(kube, Kube):
        raise kopf.TemporaryError("the API client is not set up yet", delay=1)
    return kube


def _job(body: kopf.Body) -> ReplayJob:
    try:
        return ReplayJob.from_body(body)
    except (ValidationError, ValueError) as exc:
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        raise kopf.PermanentError(f"invalid ReplayJob: {exc}") from exc


def _refuse_immutable_changes(body: kopf.Body, old: Any, job: ReplayJob) -> None:
    """An update that changes what the job's data is -> refused, children left as they
    are, and every later edit refused too until that one is reverted.

    The CRD's transition rules refuse such an update at admission; this holds where the
    installed CRD predates them (Helm never upgrades a chart's crds/).

    The spec is compared with the one last reconciled (:data:`.reconcile.RECONCILED_SPEC`),
    not with kopf's ``old``: kopf stores the spec of a handler that failed permanently as
    handled, so the next edit's ``old`` was the refused spec, and a harmless edit then
    carried the refused change to the children (issue 10, point 8); an operator restart
    did the same, a resume being compared with that diffbase too. Raising TemporaryError
    instead would keep kopf's diffbase, but at the price of retrying for ever a change
    only its author can undo, and of a refusal that rests on when kopf writes its own
    bookkeeping. ``old`` serves only a job last reconciled before that annotation existed.
    """
    meta = body.get("metadata") or {}
    old_spec: Any = reconciled_spec(meta)
    if old_spec is None and isinstance(old, Mapping):
        old_spec = old.get("spec")
    if not old_spec:
        return
    try:
        before = ReplayJobSpec.model_validate(old_spec)
    except ValidationError:
        return  # the last reconciled spec no longer parses: nothing to compare it with
    refused = ReplayJobSpec.transition_violations(before, job.spec)
    if refused:
        generation = reconciled_generation(meta)
        message = "; ".join(refused) + (
            f" (the job runs on as generation {generation} defined it; no other edit "
            "applies until this one is reverted)"
            if generation is not None
            else ""
        )
        kopf.warn(body, reason="ImmutableFieldChanged", message=message)
        raise kopf.PermanentError(message)


def _previous(status: kopf.Status) -> ReplayJobStatus | None:
    try:
        return ReplayJobStatus.model_validate(dict(status)) if status else None
    except ValidationError:
        return None


# -------------------------------------------------------------------------- children


def _desired(
    job: ReplayJob, body: kopf.Body, kube: Kube, *, complete: bool, failed: bool = False
) -> list[Manifest]:
    """Every child to have, adopted where the job owns it."""
    out = []
    for manifest in builders.build_all(job, complete=complete, failed=failed):
        kind = manifest["kind"]
        if kind == "PodMonitor" and not kube.crd_exists(PODMONITOR_CRD):
            continue
        if kind == "KafkaTopic" and not kube.crd_exists(KAFKATOPIC_CRD):
            kopf.warn(
                body,
                reason="NoStrimzi",
                message=f"kafka.strimziCluster is set but {KAFKATOPIC_CRD} is not installed",
            )
            continue
        owned = manifest["metadata"]["namespace"] == job.namespace
        if kind == "PersistentVolumeClaim":
            # The DuckDB file outlives its job unless cleanup.deleteWarehouse says otherwise.
            owned = job.spec.cleanup.delete_warehouse
        elif kind == "KafkaTopic":
            # An owned KafkaTopic goes with the job (the garbage collector), and Strimzi's
            # Topic Operator then deletes the topic: only with cleanup.deleteTopics. Turned
            # off later, the server-side apply drops the owner reference it had set.
            owned = owned and job.spec.cleanup.delete_topics
        if owned:
            kopf.adopt(manifest, owner=body)
        out.append(stamp(manifest))
    return out


def _wait_gone(kube: Kube, manifest: Manifest) -> None:
    deadline = time.monotonic() + JOB_GONE_TIMEOUT
    while kube.read(manifest) is not None:
        if time.monotonic() > deadline:
            # Retried by kopf: the next ensure() sees the object still deleting and waits.
            raise kopf.TemporaryError(f"{manifest['metadata']['name']} is still deleting", delay=5)
        time.sleep(0.5)


def ensure(kube: Kube, desired: Manifest, logger: Log) -> str:
    """Make one child as ``desired`` says; the action taken."""
    existing = kube.read(desired)
    action = plan(existing, desired)
    name = f"{desired['kind']} {desired['metadata']['name']}"
    if action == "create":
        kube.create(desired)
    elif action == "replace":
        # A Job's pod template is immutable: a changed one means a new Job (the
        # producer resumes after the last row already in Kafka). Foreground: the old
        # Job stays until the garbage collector has deleted its pods (the Job
        # controller marks them blockOwnerDeletion), so waiting for the Job to be gone
        # waits for its producer to have ended; with Background the Job went at once
        # and the new producer started beside the old one (issue 10, point 9).
        if not (existing or {}).get("metadata", {}).get("deletionTimestamp"):
            kube.delete(desired, propagation="Foreground")
        _wait_gone(kube, desired)
        kube.create(desired)
    elif action == "apply":
        if desired["kind"] == "Job":
            kube.merge_patch(desired, job_patch(desired))
        else:
            kube.apply(desired)
    if action != "keep":
        logger.info(f"{name}: {action}")
    return action


@contextmanager
def _measured() -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    except kopf.TemporaryError:
        metrics.RECONCILIATIONS.labels(result="retry").inc()
        raise
    except Exception:
        metrics.RECONCILIATIONS.labels(result="error").inc()
        raise
    else:
        metrics.RECONCILIATIONS.labels(result="success").inc()
    finally:
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
def reconcile(
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: Any,
    logger: Log,
    retry: int,
    old: Any = None,
    **_: Any,
) -> None:
    """ReplayJob created, changed or seen at start -> every child created or patched, and
    the generation recorded as reconciled."""
    with _measured():
        job = _job(body)
        _refuse_immutable_changes(body, old, job)
        kube = _kube(memo)
        # A job that succeeded or failed runs no worker again, whatever the edit.
        phase = status.get("phase")
        problems = secret_problems(kube, job)
        if problems:
            # No worker may mount a Secret nobody opted in (see labels.SECRET_OPT_IN);
            # retried with the job's backoff, so labelling the Secret starts the job.
            delay = backoff_delay(job.spec.restart_policy, retry)
            if retry == 0:
                kopf.warn(body, reason="SecretNotOptedIn", message="; ".join(problems))
            raise kopf.TemporaryError("; ".join(problems), delay=delay)
        try:
            desired = _desired(
                job, body, kube, complete=phase == "Succeeded", failed=phase == "Failed"
            )
            for manifest in desired:
                ensure(kube, manifest, logger)
        except (ApiException, DynamicApiError) as exc:
            # The API refused a child (RBAC, a quota, admission): retry with the
            # job's own backoff (restartPolicy.backoffSeconds, doubling, capped)
            # rather than kopf's fixed 60 s; the Event says what was refused.
            delay = backoff_delay(job.spec.restart_policy, retry)
            reason = getattr(exc, "reason", None) or type(exc).__name__
            summary = getattr(exc, "summary", None)
            detail = summary() if callable(summary) else str(exc).splitlines()[0]
            raise kopf.TemporaryError(
                f"{reason}: {detail} (attempt {retry + 1}, next in {delay:.0f} s)", delay=delay
            ) from exc
        # Only now, every child being as this generation wants it (see RECONCILED_GENERATION).
        generation = int(meta.get("generation") or 0)
        for key, value in reconciled_annotations(generation, dict(body.get("spec") or {})).items():
            patch.metadata.annotations[key] = value


# --------------------------------------------------------------------------- observe


def secret_problems(kube: Kube, job: ReplayJob) -> list[str]:
    """Why each Secret the job names cannot be used (missing, or not opted in)."""
    found = (
        kube.secret_problem(job.namespace, name, fields)
        for name, fields in builders.named_secrets(job.spec).items()
    )
    return [problem for problem in found if problem is not None]


def kafka_config(job: ReplayJob, kube: Kube, ca_file: str | None) -> ClientConfig:
    """librdkafka settings to reach the job's Kafka as its workers do."""
    out: dict[str, str | int | float | bool] = {
        "bootstrap.servers": builders.bootstrap_servers_for_operator(job),
        "security.protocol": builders.security_protocol(job.spec),
    }
    credentials = job.spec.kafka.credentials
    if credentials is not None:
        ref = credentials.secret_ref
        out["sasl.mechanism"] = ref.mechanism
        out["sasl.username"] = credentials.username or kube.secret_value(
            job.namespace, ref.name, ref.username_key
        )
        out["sasl.password"] = kube.secret_value(job.namespace, ref.name, ref.password_key)
    if ca_file is not None:
        out["ssl.ca.location"] = ca_file
    return out


@contextmanager
def _kafka(job: ReplayJob, kube: Kube) -> Iterator[ClientConfig]:
    """The job's Kafka client settings, with its CA bundle in a temporary file if TLS."""
    tls = job.spec.kafka.tls
    if tls is None:
        yield kafka_config(job, kube, None)
        return
    ca = kube.secret_value(job.namespace, tls.ca_secret_ref.name, tls.ca_secret_ref.key)
    with tempfile.NamedTemporaryFile("w", suffix=".crt") as handle:
        handle.write(ca)
        handle.flush()
        yield kafka_config(job, kube, handle.name)


def _offsets(job: ReplayJob, kube: Kube) -> tuple[OffsetFacts | None, KafkaReading]:
    try:
        with _kafka(job, kube) as config:
            offsets = read_offsets(config, job.job_id, SETTINGS.kafka_timeout)
    except (KafkaUnavailable, KeyError) as exc:
        return None, KafkaReading(ok=False, message=f"cannot read the job's offsets: {exc}")
    return offsets, KafkaReading(ok=True, message="end offsets and group commits read")


def _worker(kube: Kube, job: ReplayJob, name: str, worker: labels.Worker) -> WorkerFacts:
    deployment = kube.get("apps/v1", "Deployment", job.namespace, name)
    pods = kube.list("v1", "Pod", job.namespace, labels.selector_labels(job.name, worker))
    return WorkerFacts.from_deployment(deployment, pods)


def observe(kube: Kube, job: ReplayJob, generation: int | None) -> tuple[Observed, KafkaReading]:
    """The facts about a job's children and its Kafka topics, now (``generation``: the
    last one reconciled, which those children are of)."""
    names = Names(job.name)
    offsets, reading = _offsets(job, kube)
    # Rows in the source and rows read: the producer's progress record in Kafka.
    progress = offsets.producer_progress if offsets is not None else None
    observed = Observed(
        now=datetime.now(UTC),
        generation=generation,
        producer=ProducerFacts.from_job(
            kube.get("batch/v1", "Job", job.namespace, names.producer),
            rows_total=progress.rows_total if progress is not None else None,
            rows_read=progress.rows_read if progress is not None else None,
            pods=kube.list(
                "v1", "Pod", job.namespace, labels.selector_labels(job.name, "producer")
            ),
        ),
        processor=_worker(kube, job, names.processor, "processor"),
        loader=_worker(kube, job, names.loader, "loader"),
        offsets=offsets,
    )
    return observed, reading


@kopf.timer(*RESOURCE, interval=SETTINGS.status_interval, initial_delay=1.0)
def update_status(
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: Any,
    patch: kopf.Patch,
    logger: Log,
    **_: Any,
) -> None:
    """Every few seconds -> status rolled up from the children and Kafka; Events on change."""
    job = _job(body)
    kube = _kube(memo)
    previous = _previous(status)
    observed, reading = observe(kube, job, reconciled_generation(meta))
    new = roll_up(job, observed, previous, pending_timeout=SETTINGS.pending_timeout)
    new = with_condition(new, kafka_condition(reading, observed.now, observed.generation, previous))
    # Judged on the current spec (possibly not reconciled yet): its own generation.
    current = int(meta.get("generation") or 0)
    new = with_condition(
        new, credentials_condition(secret_problems(kube, job), observed.now, current, previous)
    )
    phase = new.phase or "Pending"
    PHASES.set(job.namespace, job.name, phase)
    PHASES.export()
    ready = new.condition(READY)
    was = previous.condition(READY) if previous else None
    if (
        ready is not None
        and ready.reason == "PendingTooLong"
        and (was is None or was.reason != "PendingTooLong")
    ):
        kopf.warn(body, reason="PendingTooLong", message=ready.message or "")
    event = phase_event(previous.phase if previous else None, phase)
    if event is not None:
        warning, text = event
        ready = new.condition(READY)
        if warning and new.last_failure is not None:
            text = f"{text}: {new.last_failure.message}"
        elif ready is not None and phase == "Pending":
            text = f"{text}: {ready.message}"
        (kopf.warn if warning else kopf.info)(body, reason=phase, message=text)
    if new.phase in FINAL_PHASES:
        stop_for_good(kube, job, observed, failed=new.phase == "Failed", logger=logger)
    if status_changed(previous, new):
        for key, value in new.to_patch().items():
            patch.status[key] = value


def stop_for_good(
    kube: Kube, job: ReplayJob, observed: Observed, *, failed: bool, logger: Log
) -> None:
    """A job that succeeded or failed -> its Deployments at 0 replicas and, failed, its
    producer Job suspended: only what still runs is patched.

    Succeeded, nothing is left to consume. Failed (a worker past restartPolicy.maxRestarts,
    or the producer Job past its backoffLimit), the workers would crash-loop on, or go on
    with a pipeline missing a stage (issue 10, point 5). Only these fields are patched,
    not the children rebuilt from the spec: the spec may hold an edit that was refused (an
    immutable field, a Secret not opted in), which must not reach a child this way. Any
    later reconcile builds them stopped too (``builders.build_all``: complete, failed)."""
    stops = (
        (
            observed.processor.desired > 0,
            builders.build_processor_deployment(job),
            {"spec": {"replicas": 0}},
        ),
        (
            observed.loader.desired > 0,
            builders.build_loader_deployment(job),
            {"spec": {"replicas": 0}},
        ),
        (
            failed and observed.producer.exists and not observed.producer.suspended,
            builders.build_producer_job(job),
            {"spec": {"suspend": True}},
        ),
    )
    for running, manifest, patch in stops:
        if running:
            kube.merge_patch(manifest, patch)
            logger.info(f"{manifest['kind']} {manifest['metadata']['name']}: stopped")


def _gone(event: kopf.RawEvent, **_: Any) -> bool:
    return event.get("type") == "DELETED"


@kopf.on.event(*RESOURCE, when=_gone)
def forget(name: str | None, namespace: str | None, **_: Any) -> None:
    """ReplayJob gone -> dropped from the jobs-by-phase metric."""
    if name and namespace:
        PHASES.forget(namespace, name)
        PHASES.export()


# ---------------------------------------------------------------------------- delete


def _cleanup_wanted(spec: kopf.Spec, **_: Any) -> bool:
    cleanup = spec.get("cleanup") or {}
    return bool(cleanup.get("deleteTopics", True) or cleanup.get("deleteRedisKeys", False))


def _delete_redis_keys(job: ReplayJob, kube: Kube) -> int:
    spec = job.spec.redis
    username = password = None
    if spec.credentials is not None:
        ref = spec.credentials.secret_ref
        password = kube.secret_value(job.namespace, ref.name, ref.password_key)
        if ref.username_key is not None:
            username = kube.secret_value(job.namespace, ref.name, ref.username_key)
    timeout = SETTINGS.cleanup_timeout
    client = redis.Redis.from_url(
        builders.redis_url_for_operator(job),
        username=username,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    try:
        keys = list(client.scan_iter(match=RedisKeys(job.job_id).pattern, count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def _stop_workers(job: ReplayJob, kube: Kube) -> int:
    """Delete the job's producer Job and worker Deployments; how many of its pods are left."""
    for workload in (
        builders.build_producer_job(job),
        builders.build_processor_deployment(job),
        builders.build_loader_deployment(job),
    ):
        kube.delete(workload)
    return len(kube.list("v1", "Pod", job.namespace, labels.selector_labels(job.name)))


@kopf.on.delete(*RESOURCE, when=_cleanup_wanted)
def cleanup(body: kopf.Body, memo: Any, logger: Log, runtime: timedelta, **_: Any) -> None:
    """ReplayJob deleted with cleanup.deleteTopics/deleteRedisKeys -> workers stopped, then
    topics and keys deleted, or a warning: a clean-up that cannot finish never holds the
    deletion."""
    job = _job(body)
    kube = _kube(memo)
    # Workers first: the owner references would stop them only after the job is gone, and
    # until then a processor writes keys (and a worker may create topics) again.
    try:
        left = _stop_workers(job, kube)
    except Exception as exc:  # noqa: BLE001 - any failure: report it and clean up anyway
        kopf.warn(body, reason="CleanupFailed", message=f"workers not stopped: {exc}")
        left = 0
    if left:
        waited = runtime.total_seconds()
        if waited < SETTINGS.workers_stop_timeout:
            raise kopf.TemporaryError(
                f"waiting for {left} pods of the job to end before deleting its data", delay=2
            )
        kopf.warn(
            body,
            reason="CleanupUnsafe",
            message=f"{left} pods still running after {waited:.0f}s: deleting the topics and "
            "keys anyway; a worker still running may write some again",
        )
    if job.spec.cleanup.delete_topics:
        try:
            if job.spec.kafka.strimzi_cluster is not None:
                for topic in builders.build_topic_kafkatopics(job):
                    kube.delete(topic)
            else:
                with _kafka(job, kube) as config:
                    deleted = delete_topics(config, job.job_id, SETTINGS.cleanup_timeout)
                logger.info(f"deleted topics {deleted}")
        except Exception as exc:  # noqa: BLE001 - any failure: report it and let the job go
            kopf.warn(body, reason="CleanupFailed", message=f"topics not deleted: {exc}")
    if job.spec.cleanup.delete_redis_keys:
        try:
            count = _delete_redis_keys(job, kube)
            logger.info(f"deleted {count} Redis keys")
        except Exception as exc:  # noqa: BLE001 - any failure: report it and let the job go
            kopf.warn(body, reason="CleanupFailed", message=f"Redis keys not deleted: {exc}")


# ------------------------------------------------------------------------------ main


def main() -> None:
    """Run the operator in the namespaces of ``HFTPIPE_OPERATOR_NAMESPACES`` (or all)."""
    namespaces = SETTINGS.namespace_list
    # What `kopf run` sets up for its CLI: log lines with the object they are about.
    kopf.configure(verbose=SETTINGS.verbose, log_format=kopf.LogFormat.FULL)
    kopf.run(
        standalone=SETTINGS.replicas == 1,
        peering_name=SETTINGS.peering_name if SETTINGS.replicas > 1 else None,
        # Replicas of equal priority all pause (kopf's docs, "Peering"): each takes its own.
        priority=SETTINGS.peering_priority
        if SETTINGS.peering_priority is not None
        else secrets.randbelow(2**15),
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=SETTINGS.liveness_endpoint or None,
    )


if __name__ == "__main__":
    main()
