"""The operator's own settings: pydantic-settings, ``HFTPIPE_OPERATOR_*`` variables.

Every setting has a default that works against a local API server; the
handlers read them once, at import (decorator arguments) and at startup
(kopf's settings).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """How the ReplayJob operator watches, observes and reports."""

    model_config = SettingsConfigDict(env_prefix="HFTPIPE_OPERATOR_", use_attribute_docstrings=True)

    namespaces: str = ""
    """Comma-separated namespaces to watch; empty watches the whole cluster."""

    replicas: int = Field(default=1, ge=1)
    """Operator replicas; above 1 they elect one active replica by peering."""

    peering_name: str = "hftpipe-operator"
    """Name of the KopfPeering object the replicas share (used when replicas > 1)."""

    peering_priority: int | None = Field(default=None, ge=0)
    """This replica's peering priority (the highest active one works); unset picks a
    random one, so replicas never tie (tied replicas all pause)."""

    watch_server_timeout: int = Field(default=300, ge=1)
    """Seconds the API server keeps a watch open; kopf then re-lists (without it a
    silently dropped connection stalls the operator)."""

    watch_client_timeout: int = Field(default=330, ge=1)
    """Seconds kopf waits on a watch before it gives up on it (above the server's)."""

    post_events: bool = True
    """Post Kubernetes Events for phase transitions and failures."""

    status_interval: float = Field(default=10.0, gt=0)
    """Seconds between two observations of a job (its status updates)."""

    pending_timeout: float = Field(default=300.0, gt=0)
    """Seconds a job may stay Pending before its status says it is stuck, and why
    (unschedulable pods, a missing Secret, an image that cannot be pulled)."""

    kafka_timeout: float = Field(default=3.0, gt=0)
    """Seconds each Kafka request of an observation or clean-up may take."""

    cleanup_timeout: float = Field(default=10.0, gt=0)
    """Seconds the deletion clean-up (topics, Redis keys) may take before it gives up."""

    workers_stop_timeout: float = Field(default=90.0, ge=0)
    """Seconds the deletion clean-up waits for the job's pods to end before it deletes
    the topics and Redis keys anyway (a running processor would write keys again)."""

    liveness_endpoint: str = ""
    """kopf's liveness probe URL, e.g. ``http://0.0.0.0:8080/healthz``; empty serves none."""

    verbose: bool = False
    """Log kopf's debug messages too (every API call and handler step)."""

    metrics_port: int = Field(default=8000, ge=0, le=65535)
    """Port of the operator's Prometheus ``/metrics``; 0 serves none."""

    @property
    def namespace_list(self) -> list[str]:
        """:attr:`namespaces` as a list (empty: cluster-wide)."""
        return [n.strip() for n in self.namespaces.split(",") if n.strip()]
