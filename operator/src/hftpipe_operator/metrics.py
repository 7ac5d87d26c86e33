"""The operator's Prometheus metrics, defined once: reconciliations, their duration, jobs."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Final, Literal

from prometheus_client import Counter, Gauge, Histogram

from .status import Phase

Result = Literal["success", "retry", "error"]

RECONCILIATIONS: Final = Counter(
    "hftpipe_operator_reconciliations",
    "ReplayJob reconciliations (create, resume, update), by result",
    ["result"],
)
RECONCILE_SECONDS: Final = Histogram(
    "hftpipe_operator_reconcile_duration_seconds",
    "Time to reconcile a ReplayJob's children",
)
JOBS: Final = Gauge("hftpipe_operator_jobs", "ReplayJobs by phase", ["phase"])

PHASES: Final[tuple[Phase, ...]] = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


class PhaseBook:
    """The last phase seen of each job, counted per phase (what :data:`JOBS` shows)."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], Phase] = {}

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
        """Set :data:`JOBS` from the book."""
        for phase, count in self.counts().items():
            JOBS.labels(phase=phase).set(count)
