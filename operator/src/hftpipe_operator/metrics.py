"""The operator's Prometheus metrics, defined once: reconciliations, their duration, jobs.

:data:`JOB_PHASE` labels its series ``namespace`` and ``job`` with the ReplayJob's, as
the workers label theirs, so alert rules can join the two; the operator's scrape
config must honour those labels (``honorLabels``), as the workers' does.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Final, Literal, get_args

from prometheus_client import Counter, Gauge, Histogram

from .status import Phase

Result = Literal["success", "retry", "error"]

RECONCILIATIONS: Final = Counter(
    "hftpipe_operator_reconciliations",
    "ReplayJob reconciliations (create, resume, update), by result",
    ["result"],
)
# Every result's series exists from the start, at 0: increase() sees a first error only
# as a step from an existing series (the reconcile-errors alert).
for _result in get_args(Result):
    RECONCILIATIONS.labels(result=_result)
RECONCILE_SECONDS: Final = Histogram(
    "hftpipe_operator_reconcile_duration_seconds",
    "Time to reconcile a ReplayJob's children",
)
JOBS: Final = Gauge("hftpipe_operator_jobs", "ReplayJobs by phase", ["phase"])
JOB_PHASE: Final = Gauge(
    "hftpipe_operator_job_phase",
    "1 for the ReplayJob's current phase, 0 for the other phases (gone with the job)",
    ["namespace", "job", "phase"],
)

PHASES: Final[tuple[Phase, ...]] = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


class PhaseBook:
    """The last phase seen of each job: counted per phase (:data:`JOBS`) and per job
    (:data:`JOB_PHASE`)."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], Phase] = {}
        self._exported: set[tuple[str, str]] = set()

    def set(self, namespace: str, name: str, phase: Phase) -> None:
        """Record the job's phase."""
        self._phases[namespace, name] = phase

    def forget(self, namespace: str, name: str) -> None:
        """The job is gone."""
        self._phases.pop((namespace, name), None)

    def counts(self) -> dict[Phase, int]:
        """Jobs per phase, every phase present (0 when none)."""
        tally = Tally(self._phases.values())
        return {phase: tally[phase] for phase in PHASES}

    def export(self) -> None:
        """Set :data:`JOBS` and :data:`JOB_PHASE` from the book; drop the series of jobs
        forgotten since the last export."""
        for phase, count in self.counts().items():
            JOBS.labels(phase=phase).set(count)
        for namespace, name in self._exported - self._phases.keys():
            for phase in PHASES:
                JOB_PHASE.remove(namespace, name, phase)
        for (namespace, name), current in self._phases.items():
            for phase in PHASES:
                JOB_PHASE.labels(namespace=namespace, job=name, phase=phase).set(
                    1 if phase == current else 0
                )
        self._exported = set(self._phases)
