"""The ReplayJob's ``status``: its models (the CRD's status schema) and the pure roll-up.

The handlers gather facts (the producer Job, the Deployments and their pods'
restarts, the Kafka end offsets and the consumer groups' committed offsets, the
producer's row counts from its progress record in Kafka) into an :class:`Observed`;
:func:`roll_up` turns them and the previous status into the new one. Nothing
here talks to Kubernetes or Kafka, so every rule is unit-tested.

The rules:

- **Succeeded** (terminal) when the producer Job succeeded and the processor and
  loader groups have consumed every record of the bars (and metrics) topics, at
  this observation and the previous one with the same row counts: the
  processor publishes metrics asynchronously after committing a batch, so one
  observation with lag 0 could precede its last metrics.
- **Failed** (terminal) when the producer Job failed, or a processor or loader
  container restarted more than ``restartPolicy.maxRestarts`` times. The operator
  then stops the workers (issue 10, point 5), so the restarts that made it Failed
  go with their pods: the phase, its condition and ``lastFailure`` stay as they
  were, whatever is observed or edited later.
- **Suspended** when ``spec.suspend``.
- **Running** when the producer runs (or is done) and every processor and the
  loader are ready; **Pending** before that.

Progress is the share of the source that has gone all the way through:
(rows the producer read / rows in the file) x (rows processed and loaded /
rows produced), with the ETA from its change since the previous observation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field, StringConstraints

from hftpipe_workers.contract import ProducerProgress, RedisKeys, Topics

from . import labels
from .apimodel import ApiModel, Crd, Timestamp, parse_timestamp
from .labels import Worker
from .spec import ReplayJob, RestartPolicy

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
ConditionStatus = Literal["True", "False", "Unknown"]
FailedComponent = Literal["producer", "processor", "loader", "operator"]

READY: Final = "Ready"
"""Every worker that should run is running and ready."""
COMPLETE: Final = "Complete"
"""The whole file has been replayed, processed and loaded."""
PROGRESSING: Final = "Progressing"
"""The job is starting or replaying: it is expected to move forward on its own."""
PENDING_TIMEOUT: Final = 300.0
"""Seconds a job may stay Pending before its Ready condition says it is stuck, and why."""
FAILED: Final = "Failed"
"""A worker failed for good (see ``lastFailure``)."""
SUSPENDED: Final = "Suspended"
"""``spec.suspend`` stopped the workers."""
CONDITION_TYPES: Final = (READY, PROGRESSING, COMPLETE, FAILED, SUSPENDED)


class StatusModel(ApiModel):
    """Status parts: unknown fields in a stored status are ignored, not an error."""

    model_config = ConfigDict(extra="ignore")


class Condition(StatusModel):
    """A standard condition (the shape of Kubernetes' ``metav1.Condition``)."""

    type: Annotated[
        str,
        StringConstraints(
            min_length=1,
            max_length=316,
            pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        ),
    ]
    """Ready, Complete, Failed or Suspended."""

    status: ConditionStatus
    """True, False or Unknown."""

    reason: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
        ),
    ]
    """Why, in one CamelCase word."""

    message: Annotated[str, StringConstraints(max_length=32_768)]
    """Why, for humans."""

    last_transition_time: Timestamp
    """When the status last changed."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The spec generation the condition describes: the last one reconciled (for
    CredentialsAllowed, the current one, which it judges)."""


class Progress(StatusModel):
    """How far the replay is: bars counted by the producer, and how far behind the
    processor and loader groups are on the bars topic."""

    rows_total: int | None = Field(default=None, ge=0)
    """Data rows in the source file, once the producer has counted them."""

    rows_read: int | None = Field(default=None, ge=0)
    """Source rows the producer has handled (sent, set aside or out of range)."""

    rows_produced: int | None = Field(default=None, ge=0)
    """Bars in the bars topic (the producer's own count, committed with them)."""

    rows_processed: int | None = Field(default=None, ge=0)
    """Bars the processors have committed: rowsProduced less their lag (low by a few
    while they run, exact once they are done)."""

    rows_loaded: int | None = Field(default=None, ge=0)
    """Bars the loader has committed to the warehouse: rowsProduced less its lag."""

    rows_set_aside: int | None = Field(default=None, ge=0)
    """Source rows the producer set aside to the dead-letter topic (unreadable or invalid)."""

    rows_out_of_range: int | None = Field(default=None, ge=0)
    """Source rows outside the replay's time range (`spec.start` / `spec.end`)."""

    lag: int | None = Field(default=None, ge=0)
    """Offsets of the job's topics not yet committed by the processor and loader groups,
    summed. The producer's transaction markers take offsets too: 0 once both groups
    are past the end, a few more than the bars left while they run."""

    percent: (
        Annotated[str, StringConstraints(max_length=8, pattern=r"^(100|[0-9]{1,2}\.[0-9])%$")]
        | None
    ) = None
    """Share of the source through the whole pipeline, e.g. `42.5%`."""

    eta_seconds: int | None = Field(default=None, ge=0)
    """Estimated seconds to completion, from the progress since the last observation."""

    updated_at: Timestamp | None = None
    """When these numbers were observed."""


_SOURCE_TEXT: Final = 512
"""Longest text of a :class:`SourceStatus` field (longer is cut, with an ellipsis)."""


class SourceStatus(StatusModel):
    """How the producer reads the source and the span of event times it has read, from
    its progress record (what ``hftpipe inspect`` prints)."""

    format: Annotated[str, StringConstraints(max_length=_SOURCE_TEXT)] | None = None
    """How the file is read, e.g. `CSV text (utf-8), ';'-separated, a header line`."""

    layout: Annotated[str, StringConstraints(max_length=_SOURCE_TEXT)] | None = None
    """The layout: which column is which."""

    time: Annotated[str, StringConstraints(max_length=_SOURCE_TEXT)] | None = None
    """The time column and the format its values are read with."""

    time_zone: Annotated[str, StringConstraints(max_length=_SOURCE_TEXT)] | None = None
    """The zone of times written without an offset."""

    first_event_time: Timestamp | None = None
    """The earliest event time read so far."""

    last_event_time: Timestamp | None = None
    """The latest event time read so far."""

    @classmethod
    def of(cls, record: ProducerProgress | None) -> SourceStatus | None:
        """From the producer's progress record; None when it says nothing of the source
        (no record yet, or a producer older than these fields)."""
        if record is None or not (record.format or record.first_event):
            return None

        def cut(text: str) -> str | None:
            # The producer's words are bounded here, so that a long layout never makes
            # the status patch invalid.
            if not text:
                return None
            return text if len(text) <= _SOURCE_TEXT else text[: _SOURCE_TEXT - 1] + "…"

        def moment(text: str) -> str | None:
            try:
                return text if text and parse_timestamp(text) else None
            except ValueError:
                return None  # not a time: left out rather than failing the status patch

        return cls(
            format=cut(record.format),
            layout=cut(record.layout),
            time=cut(record.time),
            time_zone=cut(record.time_zone),
            first_event_time=moment(record.first_event),
            last_event_time=moment(record.last_event),
        )


class Failure(StatusModel):
    """What failed last."""

    time: Timestamp
    """When it was seen."""

    component: FailedComponent
    """What failed."""

    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """Why, in one word."""

    message: Annotated[str, StringConstraints(max_length=32_768)]
    """Why, and what to look at."""


class Outputs(StatusModel):
    """Where the job's data is: its Kafka topics, its Redis keys and its warehouse rows.

    Named by the job id ``<namespace>.<name>``, so that same-named jobs in two
    namespaces sharing a Kafka cluster, a Redis or a warehouse stay apart.
    """

    job_id: str
    """The value of the warehouse tables' `job` column."""

    bars_topic: str
    """Kafka topic of the replayed bars."""

    metrics_topic: str
    """Kafka topic of each bar's metrics."""

    dead_letter_topic: str
    """Kafka topic of the rows set aside, with file, line and reason."""

    redis_key_prefix: str
    """Every Redis key of the job starts with it, e.g. `<prefix>latest:<symbol>`."""

    @classmethod
    def of(cls, job: ReplayJob) -> Outputs:
        """The outputs of a job (pure: from its name and namespace)."""
        topics = Topics.for_job(job.job_id)
        return cls(
            job_id=job.job_id,
            bars_topic=topics.bars,
            metrics_topic=topics.metrics,
            dead_letter_topic=topics.deadletter,
            redis_key_prefix=f"{RedisKeys(job.job_id).base}:",
        )


class ReplayJobStatus(StatusModel):
    """Observed state of a ReplayJob, written by the operator."""

    phase: Phase | None = None
    """Pending, Running, Succeeded, Failed or Suspended."""

    conditions: (
        Annotated[
            list[Condition],
            Field(max_length=16),
            Crd({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
        ]
        | None
    ) = None
    """Ready, Complete, Failed and Suspended."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The last spec generation reconciled: every child made or patched for it. Behind
    `metadata.generation` while an edit is being applied or was refused (see the
    conditions and Events)."""

    start_time: Timestamp | None = None
    """When the replay started running."""

    completion_time: Timestamp | None = None
    """When it succeeded."""

    restarts: int | None = Field(default=None, ge=0)
    """Worker restarts seen (failed producer pods and container restarts)."""

    last_failure: Failure | None = None
    """The latest failure."""

    progress: Progress | None = None
    """Row counts, lag, percent and ETA."""

    source: SourceStatus | None = None
    """How the producer reads the source (format, layout, time format and zone) and the
    first and last event time it has read."""

    outputs: Outputs | None = None
    """Where the job's topics, Redis keys and warehouse rows are."""

    kopf: dict[str, Any] | None = None
    """kopf's own bookkeeping (handler progress); kept as kopf writes it."""

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, if set."""
        return next((c for c in self.conditions or () if c.type == type_), None)

    def to_patch(self) -> dict[str, Any]:
        """A merge patch for ``/status``: unset fields are ``null`` (removed), kopf's are left."""
        return self.model_dump(mode="json", by_alias=True, exclude={"kopf"})


# --------------------------------------------------------------------------- facts


_NORMAL_WAITING: Final = frozenset({"ContainerCreating", "PodInitializing"})


def pod_problems(pods: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """Why pods are not running, in Kubernetes' own words: unschedulable pods and
    containers waiting for a reason other than being created (a missing Secret, an
    image that cannot be pulled, a crash loop)."""
    problems: list[str] = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        for condition in status.get("conditions") or ():
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                problems.append(
                    f"pod {name}: {condition.get('reason') or 'Unschedulable'}: "
                    f"{condition.get('message') or 'not scheduled'}"
                )
        for container in status.get("containerStatuses") or ():
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason and reason not in _NORMAL_WAITING:
                message = waiting.get("message") or ""
                problems.append(f"pod {name}: {reason}" + (f": {message}" if message else ""))
    return tuple(problems)


def last_exit(pods: Iterable[Mapping[str, Any]]) -> str:
    """The newest failed container's exit code and termination message (its log tail)."""
    newest: tuple[str, str] = ("", "")
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or ():
            for state in (container.get("state") or {}, container.get("lastState") or {}):
                terminated = state.get("terminated") or {}
                if terminated.get("exitCode") not in (None, 0):
                    finished = str(terminated.get("finishedAt") or "")
                    text = (terminated.get("message") or "").strip().splitlines()
                    detail = f"exit code {terminated['exitCode']}" + (
                        f": {text[-1][:300]}" if text else ""
                    )
                    newest = max(newest, (finished, detail))
    return newest[1]


@dataclass(frozen=True)
class ProducerFacts:
    """The producer's Job and the row counts of its progress record (the progress topic)."""

    exists: bool = False
    active: int = 0
    succeeded: bool = False
    failed: bool = False
    failed_pods: int = 0
    suspended: bool = False
    """``spec.suspend`` of the Job (its pods are deleted, none is created)."""
    failure_reason: str = ""
    failure_message: str = ""
    start_time: str | None = None
    rows_total: int | None = None
    """Data rows in the source (0 or None until counted): the progress record's ``rows_total``."""
    rows_read: int | None = None
    """Source rows the producer has handled: the progress record's ``rows_read``."""
    problems: tuple[str, ...] = ()
    """Why its pod does not run (see :func:`pod_problems`)."""
    last_exit: str = ""
    """Exit code and last log line of its newest failed pod."""

    @classmethod
    def from_job(
        cls,
        job: Mapping[str, Any] | None,
        *,
        rows_total: int | None = None,
        rows_read: int | None = None,
        pods: Iterable[Mapping[str, Any]] = (),
    ) -> ProducerFacts:
        """From a ``batch/v1`` Job as the API returns it (``None``: not created yet) and
        the row counts of the producer's progress record (``None``: no record)."""
        if job is None:
            return cls(rows_total=rows_total, rows_read=rows_read)
        status = job.get("status") or {}
        # Only the terminal conditions count; SuccessCriteriaMet/FailureTarget precede them.
        true = {c["type"]: c for c in status.get("conditions") or () if c.get("status") == "True"}
        failed = true.get("Failed")
        return cls(
            exists=True,
            active=int(status.get("active") or 0),
            succeeded="Complete" in true,
            failed=failed is not None,
            failed_pods=int(status.get("failed") or 0),
            suspended=bool((job.get("spec") or {}).get("suspend")),
            failure_reason=(failed or {}).get("reason") or "",
            failure_message=(failed or {}).get("message") or "",
            start_time=status.get("startTime"),
            rows_total=rows_total,
            rows_read=rows_read,
            problems=pod_problems(pods := list(pods)),
            last_exit=last_exit(pods),
        )


@dataclass(frozen=True)
class WorkerFacts:
    """A Deployment (processor or loader) and its pods' restarts."""

    exists: bool = False
    desired: int = 0
    ready: int = 0
    restarts: int = 0
    problems: tuple[str, ...] = ()
    """Why its pods do not run (see :func:`pod_problems`)."""

    @classmethod
    def from_deployment(
        cls, deployment: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]] = ()
    ) -> WorkerFacts:
        """From an ``apps/v1`` Deployment and its pods as the API returns them."""
        if deployment is None:
            return cls()
        pods = list(pods)
        restarts = sum(
            int(cs.get("restartCount") or 0)
            for pod in pods
            for cs in (pod.get("status") or {}).get("containerStatuses") or ()
        )
        return cls(
            exists=True,
            desired=int((deployment.get("spec") or {}).get("replicas") or 0),
            ready=int((deployment.get("status") or {}).get("readyReplicas") or 0),
            restarts=restarts,
            problems=pod_problems(pods),
        )

    @property
    def all_ready(self) -> bool:
        """Wanted, and every wanted replica ready."""
        return self.desired > 0 and self.ready >= self.desired


def _consumed(end: Mapping[int, int], committed: Mapping[int, int]) -> int:
    # A group with no commit on a partition has consumed nothing of it; Kafka's
    # "no offset" sentinels are negative.
    return sum(min(max(committed.get(p, 0), 0), e) for p, e in end.items())


def _lag(end: Mapping[int, int], committed: Mapping[int, int]) -> int:
    return sum(e for e in end.values()) - _consumed(end, committed)


@dataclass(frozen=True)
class OffsetFacts:
    """End offsets of the job's topics and committed offsets of its groups, per partition.

    The topics start at offset 0 (no retention deletes on a replay's topics).
    """

    bars_end: Mapping[int, int] = field(default_factory=dict)
    metrics_end: Mapping[int, int] = field(default_factory=dict)
    processor: Mapping[int, int] = field(default_factory=dict)
    """Committed offsets of the processor group on the bars topic."""
    loader_bars: Mapping[int, int] = field(default_factory=dict)
    """Committed offsets of the loader group on the bars topic."""
    loader_metrics: Mapping[int, int] = field(default_factory=dict)
    """Committed offsets of the loader group on the metrics topic."""
    producer_progress: ProducerProgress | None = None
    """The producer's latest record in the progress topic; None when there is none."""

    @property
    def rows_produced(self) -> int:
        """Bars in the bars topic. The producer writes in transactions, and each one
        leaves a commit marker per partition, which takes an offset: end offsets
        overcount. Its progress record (committed with the bars it counts) says how
        many there are; end offsets only stand in when there is none."""
        if self.producer_progress is not None:
            return self.producer_progress.produced
        return sum(self.bars_end.values())

    def _rows_after(self, lag: int) -> int:
        # Rows consumed = rows produced minus the lag (in offsets: markers still ahead
        # of a group count too, so this errs low mid-run and is exact at the end).
        return max(0, self.rows_produced - lag)

    @property
    def rows_processed(self) -> int:
        return self._rows_after(self.processor_lag)

    @property
    def rows_loaded(self) -> int:
        return self._rows_after(_lag(self.bars_end, self.loader_bars))

    @property
    def processor_lag(self) -> int:
        return _lag(self.bars_end, self.processor)

    @property
    def loader_lag(self) -> int:
        return _lag(self.bars_end, self.loader_bars) + _lag(self.metrics_end, self.loader_metrics)

    @property
    def lag(self) -> int:
        return self.processor_lag + self.loader_lag


@dataclass(frozen=True)
class Observed:
    """Everything the roll-up needs to know about the cluster, at one moment."""

    now: datetime
    generation: int | None
    """The last generation reconciled (its children made), ``None`` before the first."""
    producer: ProducerFacts = ProducerFacts()
    processor: WorkerFacts = WorkerFacts()
    loader: WorkerFacts = WorkerFacts()
    offsets: OffsetFacts | None = None
    """``None`` when Kafka could not be asked: progress stays as it was."""


# ------------------------------------------------------------------------- roll-up


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, to the second (as Kubernetes writes times)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def done_fraction(
    *,
    rows_total: int | None,
    rows_read: int | None,
    rows_produced: int,
    rows_processed: int,
    rows_loaded: int,
    producer_succeeded: bool = False,
) -> float | None:
    """Share of the source through the whole pipeline, or ``None`` while unknown."""
    if producer_succeeded:
        read = 1.0
    elif rows_total and rows_read is not None:
        read = min(1.0, rows_read / rows_total)
    else:
        return None
    through = min(rows_processed, rows_loaded)
    downstream = min(1.0, through / rows_produced) if rows_produced else 1.0
    return read * downstream


def _fraction_of(progress: Progress) -> float | None:
    if progress.rows_produced is None:
        return None
    return done_fraction(
        rows_total=progress.rows_total,
        rows_read=progress.rows_read,
        rows_produced=progress.rows_produced,
        rows_processed=progress.rows_processed or 0,
        rows_loaded=progress.rows_loaded or 0,
    )


def eta_seconds(fraction: float | None, now: datetime, previous: Progress | None) -> int | None:
    """Seconds until the fraction reaches 1 at the pace since ``previous``."""
    if fraction is None or previous is None or previous.updated_at is None:
        return None
    before = _fraction_of(previous)
    if before is None:
        return None
    seconds = (now - parse_timestamp(previous.updated_at)).total_seconds()
    gained = fraction - before
    if seconds <= 0 or gained <= 0:
        return None
    return math.ceil((1.0 - fraction) * seconds / gained)


def _percent(fraction: float | None, complete: bool) -> str | None:
    if complete:
        return "100%"
    if fraction is None:
        return None
    # Never 100% before Complete: the last rows may still be on their way.
    return f"{min(99.9, math.floor(fraction * 1000) / 10):.1f}%"


def is_complete(
    producer: ProducerFacts, offsets: OffsetFacts | None, previous: Progress | None
) -> bool:
    """The producer succeeded and both groups have consumed everything, twice in a row."""
    if not producer.succeeded or offsets is None or offsets.lag != 0:
        return False
    return (
        previous is not None
        and previous.lag == 0
        and previous.rows_produced == offsets.rows_produced
        and previous.rows_loaded == offsets.rows_loaded
    )


def _progress(observed: Observed, previous: Progress | None, complete: bool) -> Progress | None:
    offsets, producer = observed.offsets, observed.producer
    if offsets is None:
        return previous
    record = offsets.producer_progress
    fraction = done_fraction(
        rows_total=producer.rows_total,
        rows_read=producer.rows_read,
        rows_produced=offsets.rows_produced,
        rows_processed=offsets.rows_processed,
        rows_loaded=offsets.rows_loaded,
        producer_succeeded=producer.succeeded,
    )
    return Progress(
        rows_total=producer.rows_total or None,
        rows_read=producer.rows_read,
        rows_produced=offsets.rows_produced,
        rows_processed=offsets.rows_processed,
        rows_loaded=offsets.rows_loaded,
        rows_set_aside=record.dead_lettered if record is not None else None,
        rows_out_of_range=record.out_of_range if record is not None else None,
        lag=offsets.lag,
        percent=_percent(fraction, complete),
        eta_seconds=0 if complete else eta_seconds(fraction, observed.now, previous),
        updated_at=timestamp(observed.now),
    )


def _failure(job: ReplayJob, observed: Observed) -> tuple[FailedComponent, str, str] | None:
    """(component, reason, message) of a failure that ends the job, if any."""
    producer = observed.producer
    if producer.failed:
        return (
            "producer",
            producer.failure_reason or "JobFailed",
            (
                producer.failure_message
                or f"the producer Job failed after {producer.failed_pods} failed pod(s)"
            )
            + (f"; last pod: {producer.last_exit}" if producer.last_exit else ""),
        )
    limit = job.spec.restart_policy.max_restarts
    workers: tuple[tuple[Worker, WorkerFacts], ...] = (
        ("processor", observed.processor),
        ("loader", observed.loader),
    )
    for worker, facts in workers:
        if facts.restarts > limit:
            return (
                worker,
                "RestartLimitExceeded",
                f"the {worker} restarted {facts.restarts} times, more than "
                f"restartPolicy.maxRestarts ({limit}); see its logs: kubectl logs -n "
                f"{job.namespace} -l {labels.JOB}={job.name},{labels.COMPONENT}={worker} "
                "--previous",
            )
    return None


def _failed_before(previous: ReplayJobStatus | None) -> tuple[FailedComponent, str, str] | None:
    """(component, reason, message) of the failure a Failed ``previous`` status names."""
    if previous is None or previous.phase != "Failed":
        return None
    last = previous.last_failure
    if last is not None:
        return last.component, last.reason, last.message
    condition = previous.condition(FAILED)
    if condition is not None and condition.status == "True":
        return "operator", condition.reason, condition.message
    return "operator", "Failed", "the job failed"


def _readiness(observed: Observed) -> tuple[bool, str]:
    producer = observed.producer
    parts = [
        "producer "
        + ("done" if producer.succeeded else "running" if producer.active else "not running"),
        f"processor {observed.processor.ready}/{observed.processor.desired} ready",
        f"loader {observed.loader.ready}/{observed.loader.desired} ready",
    ]
    ready = (
        (producer.active > 0 or producer.succeeded)
        and observed.processor.all_ready
        and observed.loader.all_ready
    )
    return ready, ", ".join(parts)


def _ready_reason(*, ready: bool, complete: bool, failed: bool, suspended: bool) -> str:
    if complete:
        return "Complete"
    if failed:
        return "Failed"
    if suspended:
        return "Suspended"
    return "WorkersReady" if ready else "WorkersNotReady"


def _condition(
    previous: ReplayJobStatus | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    observed: Observed,
) -> Condition:
    value: ConditionStatus = "True" if status else "False"
    before = previous.condition(type_) if previous else None
    # lastTransitionTime moves only when the status does (as kubectl wait and humans expect).
    since = (
        before.last_transition_time
        if before is not None and before.status == value
        else timestamp(observed.now)
    )
    return Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=observed.generation,
    )


def _pending_since(previous: ReplayJobStatus | None) -> datetime | None:
    ready = previous.condition(READY) if previous else None
    if ready is None or ready.status != "False" or ready.last_transition_time is None:
        return None
    return parse_timestamp(ready.last_transition_time)


def _explain(
    phase: Phase,
    ready_reason: str,
    readiness: str,
    failure: tuple[FailedComponent, str, str] | None,
    progress: Progress | None,
    observed: Observed,
    previous: ReplayJobStatus | None,
    pending_timeout: float,
) -> tuple[str, str, tuple[bool, str, str]]:
    """(Ready reason, Ready message, Progressing (status, reason, message)).

    A Pending job says why its pods do not run, and after ``pending_timeout``
    seconds that it is stuck (PendingTooLong) rather than still starting.
    """
    problems = observed.producer.problems + observed.processor.problems + observed.loader.problems
    if problems and phase == "Pending":
        readiness = f"{readiness}; " + "; ".join(problems[:3])
    since = _pending_since(previous)
    stuck = (
        phase == "Pending"
        and since is not None
        and (observed.now - since).total_seconds() > pending_timeout
    )
    if stuck:
        ready_reason = "PendingTooLong"
        readiness = f"Pending for more than {pending_timeout:.0f} s: {readiness}"

    if phase == "Succeeded":
        progressing = (False, "Complete", "every row went through the pipeline")
    elif failure is not None:
        progressing = (False, "Failed", f"{failure[0]}: {failure[2]}")
    elif phase == "Suspended":
        progressing = (False, "Suspended", "spec.suspend is true")
    elif stuck:
        progressing = (False, "PendingTooLong", readiness)
    elif phase == "Running":
        done = progress.percent if progress and progress.percent else "?"
        lag = progress.lag if progress and progress.lag is not None else "?"
        progressing = (True, "Replaying", f"{done} through the pipeline, lag {lag}")
    else:
        progressing = (True, "Starting", readiness)

    return ready_reason, readiness, progressing


def roll_up(
    job: ReplayJob,
    observed: Observed,
    previous: ReplayJobStatus | None = None,
    *,
    pending_timeout: float = PENDING_TIMEOUT,
) -> ReplayJobStatus:
    """The status that ``observed`` and the previous status imply (pure)."""
    before = previous.progress if previous else None
    # Succeeded and Failed are final: once either, nothing observed later changes it
    # (a Failed job's workers are stopped, so what made it fail is gone with them).
    failed_before = _failed_before(previous)
    complete = failed_before is None and (
        (previous is not None and previous.phase == "Succeeded")
        or is_complete(observed.producer, observed.offsets, before)
    )
    progress = _progress(observed, before, complete)
    failure = None if complete else failed_before or _failure(job, observed)
    ready, readiness = _readiness(observed)
    suspended = job.spec.suspend and not complete

    phase: Phase
    if complete:
        phase = "Succeeded"
    elif failure:
        phase = "Failed"
    elif suspended:
        phase = "Suspended"
    elif ready:
        phase = "Running"
    else:
        phase = "Pending"

    ready_reason, readiness, progressing = _explain(
        phase,
        _ready_reason(
            ready=ready, complete=complete, failed=failure is not None, suspended=suspended
        ),
        readiness,
        failure,
        progress,
        observed,
        previous,
        pending_timeout,
    )

    last_failure = previous.last_failure if previous else None
    if failure is not None:
        component, reason, message = failure
        same = last_failure is not None and (
            (last_failure.component, last_failure.reason, last_failure.message) == failure
        )
        if not same:
            last_failure = Failure(
                time=timestamp(observed.now),
                component=component,
                reason=reason,
                message=message,
            )

    conditions = [
        _condition(
            previous,
            READY,
            ready and not complete and not suspended and failure is None,
            ready_reason,
            readiness,
            observed,
        ),
        _condition(previous, PROGRESSING, *progressing, observed),
        _condition(
            previous,
            COMPLETE,
            complete,
            "CaughtUp" if complete else "Replaying",
            "the producer finished and the processor and loader consumed every record"
            if complete
            else "the replay is not finished",
            observed,
        ),
        _condition(
            previous,
            FAILED,
            failure is not None,
            failure[1] if failure else "NoFailure",
            f"{failure[0]}: {failure[2]}" if failure else "no worker failed for good",
            observed,
        ),
        _condition(
            previous,
            SUSPENDED,
            suspended,
            "SuspendedBySpec" if suspended else "NotSuspended",
            "spec.suspend is true: the workers are stopped" if suspended else "",
            observed,
        ),
    ]

    restarts = (
        observed.producer.failed_pods + observed.processor.restarts + observed.loader.restarts
    )
    start_time = (previous.start_time if previous else None) or observed.producer.start_time
    if start_time is None and phase == "Running":
        start_time = timestamp(observed.now)
    completion_time = previous.completion_time if previous else None
    if complete and completion_time is None:
        completion_time = timestamp(observed.now)

    return ReplayJobStatus(
        phase=phase,
        conditions=conditions,
        observed_generation=observed.generation,
        start_time=start_time,
        completion_time=completion_time,
        # Pod restart counts reset when pods are replaced: never let the total go down.
        restarts=max(restarts, (previous.restarts or 0) if previous else 0),
        last_failure=last_failure,
        progress=progress,
        # Kafka not asked this time (offsets None): what the last reading said.
        source=(
            SourceStatus.of(observed.offsets.producer_progress)
            if observed.offsets is not None
            else (previous.source if previous else None)
        ),
        outputs=Outputs.of(job),
    )


def backoff_delay(policy: RestartPolicy, attempt: int) -> float:
    """Seconds before retry ``attempt`` (0-based): doubling from backoffSeconds, capped."""
    return float(min(policy.backoff_seconds * 2 ** max(attempt, 0), policy.max_backoff_seconds))
