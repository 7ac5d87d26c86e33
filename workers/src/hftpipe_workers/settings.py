"""Typed settings of the workers, read from the environment (and CLI options).

One env prefix, ``HFTPIPE_``; the few variables the local stack writes
(``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``) are accepted as aliases so
``source .stack/env`` is enough to point a worker at it. Every default works
against the local stack. Secrets are ``SecretStr``: never logged, never echoed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .contract import check_job_name

KafkaProfile = Literal["throughput", "latency"]

# librdkafka settings pull throughput and latency in opposite directions: larger
# batches and longer lingering/fetch waits amortise per-request costs, but every
# millisecond a record waits in a batch is a millisecond of end-to-end latency.
_PRODUCER_PROFILES: dict[str, dict[str, str | int | float | bool]] = {
    "throughput": {
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "batch.num.messages": 100_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    },
    "latency": {
        "linger.ms": 0,
        "batch.size": 65_536,
        "compression.type": "none",
    },
}
_CONSUMER_PROFILES: dict[str, dict[str, str | int | float | bool]] = {
    "throughput": {
        "fetch.wait.max.ms": 100,
        "fetch.min.bytes": 65_536,
        "queued.min.messages": 200_000,
    },
    "latency": {
        "fetch.wait.max.ms": 1,
        "fetch.min.bytes": 1,
    },
}


class KafkaSettings(BaseSettings):
    """How to reach Kafka (``HFTPIPE_KAFKA_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="HFTPIPE_KAFKA_",
        extra="ignore",
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("HFTPIPE_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    """Comma-separated ``host:port`` list (also read from ``KAFKA_BOOTSTRAP_SERVERS``)."""

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka ``security.protocol``."""

    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism when the protocol is SASL_*: SCRAM for Strimzi ``KafkaUser``s."""

    sasl_username: str | None = None
    """SASL user name."""

    sasl_password: SecretStr | None = None
    """SASL password (from a Secret in Kubernetes)."""

    ssl_ca_location: str | None = None
    """CA bundle path for SSL listeners (Strimzi's cluster CA)."""

    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    """Consumer group session timeout: how soon a dead worker's partitions move."""

    profile: KafkaProfile = "throughput"
    """``throughput`` (batching, lz4) or ``latency`` (no lingering, tiny fetch waits)."""

    def common(self) -> dict[str, str | int | float | bool]:
        """librdkafka settings shared by producers, consumers and admin clients."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        return config

    def producer(self) -> dict[str, str | int | float | bool]:
        """Idempotent producer (no duplicates or reordering on retries), acks from all ISRs."""
        return {
            **self.common(),
            "enable.idempotence": True,
            "acks": "all",
            **_PRODUCER_PROFILES[self.profile],
        }

    def consumer(self, group: str) -> dict[str, str | int | float | bool]:
        """Consumer in ``group`` that never auto-commits: workers commit where they write."""
        return {
            **self.common(),
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            # A crashed pod's partitions move after this long (the broker's minimum
            # is 6 s); the default 45 s would stall a restarted job for that long.
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(1000, self.session_timeout_ms // 3),
            **_CONSUMER_PROFILES[self.profile],
        }


class RedisSettings(BaseSettings):
    """How to reach Redis and how much history to keep (``HFTPIPE_REDIS_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="HFTPIPE_REDIS_",
        extra="ignore",
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("HFTPIPE_REDIS_URL", "REDIS_URL"),
    )
    """``redis://[user:password@]host:port/db`` or ``rediss://`` for TLS (also ``REDIS_URL``)."""

    username: str | None = None
    """ACL user name, if not in the URL."""

    password: SecretStr | None = None
    """Password, if not in the URL (from a Secret in Kubernetes)."""

    tls_ca_file: str | None = None
    """CA bundle for ``rediss://`` URLs."""

    history_limit: int = Field(default=100_000, ge=0)
    """Bars of per-symbol history kept in Redis (older ones are trimmed); 0 keeps none."""


class JobSettings(BaseSettings):
    """Which replay job a worker belongs to (``HFTPIPE_JOB``)."""

    model_config = SettingsConfigDict(
        env_prefix="HFTPIPE_", extra="ignore", use_attribute_docstrings=True
    )

    job: str = "demo"
    """Job name: names the topics, consumer groups and Redis keys (a DNS label)."""

    @field_validator("job")
    @classmethod
    def _valid_job(cls, value: str) -> str:
        return check_job_name(value)
