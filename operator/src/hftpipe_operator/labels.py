"""The label vocabulary of everything the operator creates, defined once.

``hftpipe.io/job`` and ``hftpipe.io/component`` select (Deployments, the
Service, the PodMonitor); the ``app.kubernetes.io/*`` labels are the
recommended ones every Kubernetes tool understands. Never spell these strings
elsewhere: import them.
"""

from __future__ import annotations

from typing import Final, Literal

DOMAIN: Final = "hftpipe.io"
"""API group of the ReplayJob and prefix of the project's own labels and annotations."""

JOB: Final = f"{DOMAIN}/job"
"""Name of the ReplayJob an object belongs to."""

COMPONENT: Final = f"{DOMAIN}/component"
"""What the object is within its job (see :data:`Component`)."""

CONFIG_HASH: Final = f"{DOMAIN}/config-hash"
"""Pod-template annotation: hash of the worker settings, so a settings change rolls the pods."""

SECRET_OPT_IN: Final = f"{DOMAIN}/replayjob-access"
"""Label (value ``"true"``) by which a namespace admin lets ReplayJobs use a Secret.

A ReplayJob names Secrets (Kafka, Redis, Snowflake, S3 credentials, a CA, image pull
secrets) that its workers mount and that the operator itself reads. Without this
opt-in, anyone who may create a ReplayJob could have the operator send any Secret of
the namespace to a server of their choosing: the operator would be a confused deputy.
So it uses, and starts workers with, only Secrets that carry this label."""

APP_NAME: Final = "app.kubernetes.io/name"
APP_INSTANCE: Final = "app.kubernetes.io/instance"
APP_COMPONENT: Final = "app.kubernetes.io/component"
APP_PART_OF: Final = "app.kubernetes.io/part-of"
APP_MANAGED_BY: Final = "app.kubernetes.io/managed-by"

APP: Final = "hftpipe"
"""Value of ``app.kubernetes.io/name`` and ``part-of``."""

MANAGER: Final = "hftpipe-operator"
"""Value of ``app.kubernetes.io/managed-by``."""

STRIMZI_CLUSTER: Final = "strimzi.io/cluster"
"""Label by which Strimzi's Topic Operator picks the KafkaTopics of its cluster."""

Worker = Literal["producer", "processor", "loader"]
"""The three data-plane workers: ``hftpipe produce | process | load``."""

WORKERS: Final[tuple[Worker, ...]] = ("producer", "processor", "loader")

Component = Literal["producer", "processor", "loader", "settings", "metrics", "topic", "warehouse"]
"""Value of ``hftpipe.io/component``: a worker, or a supporting object."""


def selector_labels(job: str, component: Component | None = None) -> dict[str, str]:
    """Labels that select a job's objects (all of them, or one component's).

    Deployment selectors are immutable, so these stay minimal: only what
    identifies the pods.
    """
    labels = {JOB: job}
    if component is not None:
        labels[COMPONENT] = component
    return labels


def labels(job: str, component: Component) -> dict[str, str]:
    """Every label of an object of ``job``."""
    return {
        **selector_labels(job, component),
        APP_NAME: APP,
        APP_INSTANCE: job,
        APP_COMPONENT: component,
        APP_PART_OF: APP,
        APP_MANAGED_BY: MANAGER,
    }
