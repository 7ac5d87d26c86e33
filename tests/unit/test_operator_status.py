"""The status roll-up: phase, conditions and progress from observed facts, pure."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hftpipe_operator import crd
from hftpipe_operator.spec import ReplayJob, ReplayJobSpec, RestartPolicy
from hftpipe_operator.status import (
    CONDITION_TYPES,
    Observed,
    OffsetFacts,
    ProducerFacts,
    ReplayJobStatus,
    WorkerFacts,
    backoff_delay,
    done_fraction,
    is_complete,
    roll_up,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "source": {"url": "/data/btc.csv"},
    "kafka": {"bootstrapServers": "kafka:9092", "topic": {"partitions": 2}},
    "processing": {"replicas": 2},
    "redis": {"url": "redis://redis:6379/0"},
    "restartPolicy": {"maxRestarts": 3},
}
STATUS_SCHEMA = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
    "status"
]


def job(**changes: Any) -> ReplayJob:
    return ReplayJob("btc", "markets", ReplayJobSpec.model_validate({**SPEC, **changes}))


RUNNING_PRODUCER = ProducerFacts(
    exists=True, active=1, start_time="2024-05-01T11:59:00Z", rows_total=1000, rows_read=500
)
DONE_PRODUCER = ProducerFacts(exists=True, succeeded=True, rows_total=1000, rows_read=1000)
READY = WorkerFacts(exists=True, desired=2, ready=2)
LOADER_READY = WorkerFacts(exists=True, desired=1, ready=1)


def offsets(
    end: int, processed: int, loaded: int, metrics_loaded: int | None = None
) -> OffsetFacts:
    """Two partitions, half of everything in each."""

    def half(n: int) -> dict[int, int]:
        return {0: n // 2, 1: n - n // 2}

    return OffsetFacts(
        bars_end=half(end),
        metrics_end=half(processed),
        processor=half(processed),
        loader_bars=half(loaded),
        loader_metrics=half(processed if metrics_loaded is None else metrics_loaded),
    )


def observe(
    now: datetime = T0,
    producer: ProducerFacts = RUNNING_PRODUCER,
    processor: WorkerFacts = READY,
    loader: WorkerFacts = LOADER_READY,
    kafka: OffsetFacts | None = None,
    generation: int = 1,
) -> Observed:
    return Observed(
        now=now,
        generation=generation,
        producer=producer,
        processor=processor,
        loader=loader,
        offsets=kafka if kafka is not None else offsets(400, 300, 200),
    )


def _declared(schema: dict[str, Any], value: Any, path: str = "status") -> None:
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        for key, sub in value.items():
            assert key in schema["properties"], f"{path}.{key} is not in the CRD"
            _declared(schema["properties"][key], sub, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            _declared(schema["items"], item, f"{path}[]")


# ------------------------------------------------------------------- facts


def test_producer_facts_from_a_job() -> None:
    assert ProducerFacts.from_job(None) == ProducerFacts()
    running = ProducerFacts.from_job(
        {"status": {"active": 1, "startTime": "2024-05-01T11:00:00Z"}}, rows_total=10, rows_read=3
    )
    assert (running.exists, running.active, running.succeeded, running.failed) == (
        True,
        1,
        False,
        False,
    )
    assert (running.rows_total, running.rows_read) == (10, 3)
    done = ProducerFacts.from_job(
        {
            "status": {
                "succeeded": 1,
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True"},
                    {"type": "Complete", "status": "True"},
                ],
            }
        }
    )
    assert done.succeeded
    failed = ProducerFacts.from_job(
        {
            "status": {
                "failed": 4,
                "conditions": [
                    {"type": "FailureTarget", "status": "True"},
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    },
                ],
            }
        }
    )
    assert (failed.failed, failed.failed_pods, failed.failure_reason) == (
        True,
        4,
        "BackoffLimitExceeded",
    )
    # Only terminal conditions count: FailureTarget alone is not yet a failure.
    target = ProducerFacts.from_job(
        {"status": {"conditions": [{"type": "FailureTarget", "status": "True"}]}}
    )
    assert not target.failed


def test_worker_facts_count_restarts_of_every_container() -> None:
    pods: list[dict[str, Any]] = [
        {"status": {"containerStatuses": [{"restartCount": 2}]}},
        {"status": {"containerStatuses": [{"restartCount": 1}]}},
        {"status": {}},
    ]
    facts = WorkerFacts.from_deployment(
        {"spec": {"replicas": 2}, "status": {"readyReplicas": 1}}, pods
    )
    assert facts == WorkerFacts(exists=True, desired=2, ready=1, restarts=3)
    assert not facts.all_ready
    assert WorkerFacts.from_deployment(None) == WorkerFacts()
    assert not WorkerFacts(exists=True, desired=0, ready=0).all_ready


def test_offsets_lag_and_counts() -> None:
    facts = OffsetFacts(
        bars_end={0: 100, 1: 50},
        metrics_end={0: 90, 1: 50},
        processor={0: 90, 1: 50},
        loader_bars={0: 100},  # nothing committed yet on partition 1
        loader_metrics={0: -1001, 1: 50},  # Kafka's "no offset" sentinel
    )
    assert facts.rows_produced == 150
    assert facts.rows_processed == 140
    assert facts.rows_loaded == 100
    assert facts.processor_lag == 10
    assert facts.loader_lag == 50 + 90
    assert facts.lag == 150


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"rows_total": None, "rows_read": None}, None),
        ({"rows_total": 0, "rows_read": 0}, None),  # not counted yet
        ({"rows_total": 1000, "rows_read": 500}, 0.5 * 200 / 400),
        ({"rows_total": 1000, "rows_read": 1000, "producer_succeeded": True}, 0.5),
        ({"rows_total": None, "rows_read": None, "producer_succeeded": True}, 0.5),
    ],
)
def test_done_fraction(kwargs: dict[str, Any], expected: float | None) -> None:
    fraction = done_fraction(rows_produced=400, rows_processed=300, rows_loaded=200, **kwargs)
    assert fraction == expected


def test_nothing_produced_yet_means_downstream_is_not_behind() -> None:
    assert (
        done_fraction(
            rows_total=100, rows_read=10, rows_produced=0, rows_processed=0, rows_loaded=0
        )
        == 0.1
    )


# ------------------------------------------------------------------- phases


def test_pending_before_anything_runs() -> None:
    status = roll_up(
        job(),
        Observed(now=T0, generation=1, producer=ProducerFacts(), offsets=None),
    )
    assert status.phase == "Pending"
    assert status.progress is None
    assert [c.type for c in status.conditions or ()] == list(CONDITION_TYPES)
    ready = status.condition("Ready")
    assert ready is not None
    assert ready.status == "False"
    assert ready.reason == "WorkersNotReady"
    assert "processor 0/0 ready" in ready.message
    assert status.start_time is None


def test_a_job_never_reconciled_observes_no_generation() -> None:
    """Issue 10, point 9: the generation comes from what was reconciled; before the
    first reconcile (e.g. a Secret not opted in) none is observed, and the merge patch
    removes a stale one."""
    status = roll_up(job(), Observed(now=T0, generation=None, producer=ProducerFacts()))
    assert status.observed_generation is None
    assert {c.observed_generation for c in status.conditions or ()} == {None}
    assert status.to_patch()["observedGeneration"] is None


def test_pending_while_a_processor_is_not_ready() -> None:
    status = roll_up(job(), observe(processor=WorkerFacts(exists=True, desired=2, ready=1)))
    assert status.phase == "Pending"


def test_running_with_progress() -> None:
    status = roll_up(job(), observe())
    assert status.phase == "Running"
    assert status.observed_generation == 1
    assert status.start_time == "2024-05-01T11:59:00Z"  # the producer Job's
    progress = status.progress
    assert progress is not None
    assert (progress.rows_produced, progress.rows_processed, progress.rows_loaded) == (
        400,
        300,
        200,
    )
    assert progress.lag == 100 + 200  # processor on bars, loader on bars (metrics: none left)
    assert progress.percent == "25.0%"
    assert progress.eta_seconds is None  # needs a previous observation
    assert progress.updated_at == "2024-05-01T12:00:00Z"
    ready = status.condition("Ready")
    assert ready is not None
    assert ready.status == "True"


def test_outputs_say_where_the_data_is_by_namespace_and_name() -> None:
    outputs = roll_up(job(), observe()).outputs
    assert outputs is not None
    assert outputs.model_dump(by_alias=True) == {
        "jobId": "markets.btc",
        "barsTopic": "hftpipe.markets.btc.bars",
        "metricsTopic": "hftpipe.markets.btc.metrics",
        "deadLetterTopic": "hftpipe.markets.btc.deadletter",
        "redisKeyPrefix": "hftpipe:markets.btc:",
    }
    other = ReplayJob("btc", "research", job().spec)
    assert roll_up(other, observe()).outputs != outputs


def test_eta_from_the_pace_since_the_previous_observation() -> None:
    first = roll_up(job(), observe())  # 25%
    later = roll_up(
        job(),
        observe(
            now=T0 + timedelta(seconds=60),
            producer=ProducerFacts(exists=True, active=1, rows_total=1000, rows_read=600),
            kafka=offsets(600, 600, 500),
        ),
        first,
    )
    progress = later.progress
    assert progress is not None
    assert progress.percent == "50.0%"  # 0.6 * 500/600
    assert progress.eta_seconds == 120  # 25% a minute, 50% to go
    stalled = roll_up(
        job(),
        observe(
            now=T0 + timedelta(seconds=120),
            kafka=offsets(600, 600, 500),
            producer=ProducerFacts(exists=True, active=1, rows_total=1000, rows_read=600),
        ),
        later,
    )
    assert stalled.progress is not None
    assert stalled.progress.eta_seconds is None


def test_progress_never_reads_100_percent_before_complete() -> None:
    status = roll_up(job(), observe(producer=DONE_PRODUCER, kafka=offsets(400, 400, 400)))
    assert status.phase == "Running"
    assert status.progress is not None
    assert status.progress.percent == "99.9%"


def test_complete_needs_lag_zero_twice_in_a_row() -> None:
    caught_up = offsets(400, 400, 400)
    first = roll_up(job(), observe(producer=DONE_PRODUCER, kafka=caught_up))
    assert first.phase == "Running"
    complete = first.condition("Complete")
    assert complete is not None
    assert complete.status == "False"

    second = roll_up(
        job(),
        observe(now=T0 + timedelta(seconds=10), producer=DONE_PRODUCER, kafka=caught_up),
        first,
    )
    assert second.phase == "Succeeded"
    assert second.completion_time == "2024-05-01T12:00:10Z"
    assert second.progress is not None
    assert second.progress.percent == "100%"
    assert second.progress.eta_seconds == 0
    for type_, value in (("Complete", "True"), ("Ready", "False"), ("Failed", "False")):
        condition = second.condition(type_)
        assert condition is not None
        assert condition.status == value, type_
    ready = second.condition("Ready")
    assert ready is not None
    assert ready.reason == "Complete"

    # Terminal: scaled-down workers and later observations keep it Succeeded.
    third = roll_up(
        job(),
        observe(
            now=T0 + timedelta(seconds=20),
            producer=DONE_PRODUCER,
            processor=WorkerFacts(exists=True),
            loader=WorkerFacts(exists=True),
            kafka=caught_up,
        ),
        second,
    )
    assert third.phase == "Succeeded"
    assert third.completion_time == second.completion_time


@pytest.mark.parametrize(
    ("producer", "kafka", "previous_lag", "expected"),
    [
        (DONE_PRODUCER, offsets(400, 400, 400), 0, True),
        (RUNNING_PRODUCER, offsets(400, 400, 400), 0, False),  # producer not done
        (DONE_PRODUCER, offsets(400, 399, 400), 0, False),  # processor lag 1
        (DONE_PRODUCER, offsets(400, 400, 399), 0, False),  # loader lag on bars
        (DONE_PRODUCER, offsets(400, 400, 400, metrics_loaded=399), 0, False),  # on metrics
        (DONE_PRODUCER, offsets(400, 400, 400), 5, False),  # first time caught up
        (DONE_PRODUCER, offsets(401, 401, 401), 0, False),  # more rows since
    ],
)
def test_complete_rule(
    producer: ProducerFacts, kafka: OffsetFacts, previous_lag: int, expected: bool
) -> None:
    previous = roll_up(job(), observe(producer=producer, kafka=offsets(400, 400, 400)))
    assert previous.progress is not None
    before = previous.progress.model_copy(update={"lag": previous_lag})
    assert is_complete(producer, kafka, before) is expected
    assert is_complete(producer, None, before) is False
    assert is_complete(producer, kafka, None) is False


def test_producer_failure_fails_the_job() -> None:
    producer = ProducerFacts(
        exists=True,
        failed=True,
        failed_pods=1,
        failure_reason="PodFailurePolicy",
        failure_message="Container producer for pod markets/btc-producer-x failed with exit code 2",
    )
    status = roll_up(job(), observe(producer=producer))
    assert status.phase == "Failed"
    assert status.last_failure is not None
    assert status.last_failure.component == "producer"
    assert status.last_failure.reason == "PodFailurePolicy"
    failed = status.condition("Failed")
    assert failed is not None
    assert failed.status == "True"
    assert "exit code 2" in failed.message
    again = roll_up(job(), observe(now=T0 + timedelta(minutes=1), producer=producer), status)
    assert again.last_failure == status.last_failure  # same failure, same time


def test_too_many_restarts_fail_the_job_and_say_where_to_look() -> None:
    status = roll_up(
        job(), observe(loader=WorkerFacts(exists=True, desired=1, ready=0, restarts=4))
    )
    assert status.phase == "Failed"
    assert status.last_failure is not None
    assert status.last_failure.component == "loader"
    assert status.last_failure.reason == "RestartLimitExceeded"
    assert "restartPolicy.maxRestarts (3)" in status.last_failure.message
    assert "hftpipe.io/component=loader" in status.last_failure.message
    assert status.restarts == 4
    within = roll_up(
        job(), observe(loader=WorkerFacts(exists=True, desired=1, ready=1, restarts=3))
    )
    assert within.phase == "Running"


STOPPED = observe(
    producer=ProducerFacts(exists=True, start_time="2024-05-01T11:59:00Z"),
    processor=WorkerFacts(exists=True),
    loader=WorkerFacts(exists=True),
)
"""What the operator sees once a failed job's workers are stopped: no pod, no restart."""


@pytest.mark.parametrize(
    ("failing", "reason"),
    [
        (
            observe(loader=WorkerFacts(exists=True, desired=1, ready=0, restarts=4)),
            "RestartLimitExceeded",
        ),
        (
            observe(
                producer=ProducerFacts(
                    exists=True, failed=True, failure_reason="BackoffLimitExceeded"
                )
            ),
            "BackoffLimitExceeded",
        ),
    ],
)
def test_failed_stays_failed_once_the_workers_are_stopped(failing: Observed, reason: str) -> None:
    """Issue 10, point 5: the restarts that made a job Failed go with its pods (and a
    suspended producer Job is no longer failed); the phase, its condition and the
    failure must not go with them, whatever is observed or edited later."""
    failed = roll_up(job(), failing)
    assert failed.phase == "Failed"
    for later, spec in (
        (STOPPED, job()),
        (observe(), job()),  # even were the workers seen running again
        (STOPPED, job(suspend=True)),
        (observe(producer=DONE_PRODUCER, kafka=offsets(400, 400, 400)), job()),
    ):
        after = roll_up(spec, replace(later, now=T0 + timedelta(minutes=1)), failed)
        assert after.phase == "Failed", (later, after.phase)
        assert after.last_failure == failed.last_failure
        condition, before = after.condition("Failed"), failed.condition("Failed")
        assert condition is not None
        assert before is not None
        assert (condition.status, condition.reason) == ("True", reason)
        assert condition.last_transition_time == before.last_transition_time
        ready = after.condition("Ready")
        assert ready is not None
        assert ready.status == "False"
        assert after.completion_time is None


def test_suspended() -> None:
    status = roll_up(
        job(suspend=True),
        observe(
            producer=ProducerFacts(exists=True),
            processor=WorkerFacts(exists=True),
            loader=WorkerFacts(exists=True),
        ),
    )
    assert status.phase == "Suspended"
    for type_, value in (("Suspended", "True"), ("Ready", "False")):
        condition = status.condition(type_)
        assert condition is not None
        assert condition.status == value
    ready = status.condition("Ready")
    assert ready is not None
    assert ready.reason == "Suspended"


def test_last_transition_time_moves_only_when_the_status_changes() -> None:
    first = roll_up(job(), observe())
    same = roll_up(job(), observe(now=T0 + timedelta(seconds=30), generation=2), first)
    ready_before, ready_after = first.condition("Ready"), same.condition("Ready")
    assert ready_before is not None
    assert ready_after is not None
    assert ready_after.last_transition_time == ready_before.last_transition_time
    assert ready_after.observed_generation == 2
    broken = roll_up(
        job(),
        observe(now=T0 + timedelta(seconds=60), processor=WorkerFacts(exists=True, desired=2)),
        same,
    )
    ready_broken = broken.condition("Ready")
    assert ready_broken is not None
    assert ready_broken.status == "False"
    assert ready_broken.last_transition_time == "2024-05-01T12:01:00Z"


def test_restarts_never_go_down_when_pods_are_replaced() -> None:
    first = roll_up(
        job(), observe(processor=WorkerFacts(exists=True, desired=2, ready=2, restarts=2))
    )
    second = roll_up(job(), observe(), first)
    assert (first.restarts, second.restarts) == (2, 2)


def test_progress_is_kept_when_kafka_cannot_be_asked() -> None:
    first = roll_up(job(), observe())
    blind = roll_up(
        job(),
        Observed(
            now=T0 + timedelta(seconds=5),
            generation=1,
            producer=RUNNING_PRODUCER,
            processor=READY,
            loader=LOADER_READY,
        ),
        first,
    )
    assert blind.progress == first.progress


# -------------------------------------------------------------- the status dict


def test_status_uses_only_fields_the_crd_declares() -> None:
    previous = roll_up(job(), observe(producer=DONE_PRODUCER, kafka=offsets(4, 4, 4)))
    for status in (
        roll_up(job(), observe()),
        roll_up(job(), observe(producer=DONE_PRODUCER, kafka=offsets(4, 4, 4)), previous),
        roll_up(job(), observe(producer=ProducerFacts(exists=True, failed=True))),
    ):
        _declared(STATUS_SCHEMA, status.to_api())
        _declared(STATUS_SCHEMA, status.to_patch())


def test_patch_clears_stale_fields_and_leaves_kopf_alone() -> None:
    status = roll_up(job(), observe())
    patch = status.to_patch()
    assert "kopf" not in patch
    assert patch["completionTime"] is None  # merge patch: removes a stale value
    assert patch["progress"]["etaSeconds"] is None
    stored = ReplayJobStatus.model_validate({**status.to_api(), "kopf": {"progress": {"x": 1}}})
    assert stored.kopf == {"progress": {"x": 1}}


@pytest.mark.parametrize(("attempt", "delay"), [(0, 10), (1, 20), (3, 80), (5, 300), (50, 300)])
def test_backoff_doubles_up_to_the_cap(attempt: int, delay: float) -> None:
    policy = RestartPolicy(backoff_seconds=10, max_backoff_seconds=300)
    assert backoff_delay(policy, attempt) == delay


# ------------------------------------------------- why a job does not move


def _pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def test_pod_problems_name_the_pod_and_kubernetes_reason() -> None:
    pods = [
        _pod("p-1", conditions=[{"type": "PodScheduled", "status": "False",
                                 "reason": "Unschedulable", "message": "0/3 nodes: cpu"}]),
        _pod("p-2", containerStatuses=[{"state": {"waiting": {
            "reason": "CreateContainerConfigError", "message": 'secret "redis" not found'}}}]),
        _pod("p-3", containerStatuses=[{"state": {"waiting": {"reason": "ContainerCreating"}}}]),
    ]  # fmt: skip
    facts = WorkerFacts.from_deployment({"spec": {"replicas": 3}, "status": {}}, pods)
    assert facts.problems == (
        "pod p-1: Unschedulable: 0/3 nodes: cpu",
        'pod p-2: CreateContainerConfigError: secret "redis" not found',
    )


def test_a_failed_producer_quotes_the_exit_code_and_last_log_line() -> None:
    failed_job = {
        "status": {
            "failed": 2,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ],
        }
    }
    pods = [
        _pod("old", containerStatuses=[{"state": {"terminated": {
            "exitCode": 1, "finishedAt": "2024-05-01T11:00:00Z", "message": "old error"}}}]),
        _pod("new", containerStatuses=[{"state": {"terminated": {
            "exitCode": 2, "finishedAt": "2024-05-01T11:05:00Z",
            "message": "starting\nerror: no such file: /data/btc.csv"}}}]),
    ]  # fmt: skip
    producer = ProducerFacts.from_job(failed_job, pods=pods)
    assert producer.last_exit == "exit code 2: error: no such file: /data/btc.csv"
    status = roll_up(job(), observe(producer=producer))
    assert status.phase == "Failed"
    failed = status.condition("Failed")
    assert failed is not None
    assert failed.reason == "BackoffLimitExceeded"
    assert "last pod: exit code 2: error: no such file: /data/btc.csv" in (failed.message or "")
    progressing = status.condition("Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("False", "Failed")


def test_progressing_while_running_and_not_once_complete() -> None:
    running = roll_up(job(), observe())
    progressing = running.condition("Progressing")
    assert progressing is not None
    assert (running.phase, progressing.status, progressing.reason) == (
        "Running", "True", "Replaying",
    )  # fmt: skip
    assert "lag" in (progressing.message or "")


def test_a_job_pending_too_long_says_why() -> None:
    stuck_pod = _pod("btc-processor-1", containerStatuses=[{"state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "pull access denied"}}}])  # fmt: skip
    processor = WorkerFacts.from_deployment(
        {"spec": {"replicas": 2}, "status": {"readyReplicas": 0}}, [stuck_pod]
    )
    first = roll_up(job(), observe(processor=processor), pending_timeout=300)
    assert first.phase == "Pending"
    ready = first.condition("Ready")
    assert ready is not None
    assert ready.reason == "WorkersNotReady"
    assert "ImagePullBackOff: pull access denied" in (ready.message or "")
    progressing = first.condition("Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("True", "Starting")

    later = roll_up(
        job(), observe(now=T0 + timedelta(seconds=301), processor=processor), first,
        pending_timeout=300,
    )  # fmt: skip
    ready = later.condition("Ready")
    progressing = later.condition("Progressing")
    assert ready is not None
    assert progressing is not None
    assert ready.reason == "PendingTooLong"
    assert "Pending for more than 300 s" in (ready.message or "")
    assert "ImagePullBackOff" in (ready.message or "")
    assert (progressing.status, progressing.reason) == ("False", "PendingTooLong")
