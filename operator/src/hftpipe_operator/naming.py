"""Names of the objects of one ReplayJob, derived from the job's name, defined once.

The job's name also names its Kafka topics and Redis keys (see
:mod:`hftpipe_workers.contract`), so it must be a DNS label; and since
``<job>-processor`` and the other derived names must be DNS labels too (a
Service name must even start with a letter), it is shorter than 63 characters:
:data:`MAX_JOB_NAME_LENGTH`. The CRD enforces :data:`JOB_NAME_PATTERN`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from hftpipe_workers.contract import check_job_name

SUFFIXES: Final = (
    "-settings",
    "-producer",
    "-processor",
    "-loader",
    "-metrics",
    "-workers",
    "-warehouse",
)
"""Suffixes of the derived names (see :class:`Names`)."""

MAX_JOB_NAME_LENGTH: Final = 63 - max(len(s) for s in SUFFIXES)
"""Longest job name whose derived names are all DNS labels."""

JOB_NAME_PATTERN: Final = rf"^[a-z]([-a-z0-9]{{0,{MAX_JOB_NAME_LENGTH - 2}}}[a-z0-9])?$"
"""A DNS label of at most :data:`MAX_JOB_NAME_LENGTH` characters that starts with a letter."""

JOB_NAME_MESSAGE: Final = (
    f"metadata.name must be at most {MAX_JOB_NAME_LENGTH} lowercase letters, digits and '-', "
    "starting with a letter and ending with a letter or digit: it names the job's Kafka "
    "topics, Redis keys and Kubernetes objects (<name>-processor...)"
)


def check_name(name: str) -> str:
    """``name`` if it can name a ReplayJob, else ValueError with :data:`JOB_NAME_MESSAGE`."""
    if not re.match(JOB_NAME_PATTERN, name):
        raise ValueError(f"{name!r}: {JOB_NAME_MESSAGE}")
    return check_job_name(name)


@dataclass(frozen=True)
class Names:
    """The Kubernetes object names of one job."""

    job: str

    def __post_init__(self) -> None:
        check_name(self.job)

    @property
    def settings(self) -> str:
        """ConfigMap of the worker settings."""
        return f"{self.job}-settings"

    @property
    def producer(self) -> str:
        """Job of the producer."""
        return f"{self.job}-producer"

    @property
    def processor(self) -> str:
        """Deployment of the processor."""
        return f"{self.job}-processor"

    @property
    def loader(self) -> str:
        """Deployment of the loader."""
        return f"{self.job}-loader"

    @property
    def metrics(self) -> str:
        """Headless Service in front of the workers' metrics ports."""
        return f"{self.job}-metrics"

    @property
    def pod_monitor(self) -> str:
        """PodMonitor that has Prometheus scrape every worker."""
        return f"{self.job}-workers"

    @property
    def warehouse(self) -> str:
        """PersistentVolumeClaim of the DuckDB file, when the operator creates it."""
        return f"{self.job}-warehouse"
