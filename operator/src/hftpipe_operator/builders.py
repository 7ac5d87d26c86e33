"""Pure builders of a ReplayJob's Kubernetes objects: ``build_<component>_<kind>(job)``.

Each returns a plain manifest (a dict) named after the job (:class:`~.naming.Names`)
and labelled with :mod:`.labels`; none calls the API or sets an owner: the
handlers adopt (``kopf.adopt``) and create or patch what these return.

The workers are configured the way they are on a laptop: the settings go into
a ConfigMap of ``HFTPIPE_*`` variables (names read from the workers' CLI and
settings classes by :mod:`.workerapi`) that every worker loads with
``envFrom``; credentials come as ``secretKeyRef`` variables, each only in the
workers that need it. Every pod runs as the image's user 10001 under the
``restricted`` Pod Security Standard, with a read-only root file system.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from hftpipe_workers.contract import JOB_TOPIC_CONFIG, PROGRESS_TOPIC_CONFIG, Topics
from hftpipe_workers.settings import KafkaSettings, RedisSettings
from hftpipe_workers.snowflake_settings import SnowflakeSettings

from . import labels
from .labels import Component, Worker
from .naming import Names
from .spec import ReplayJob, ReplayJobSpec, window_seconds
from .workerapi import COMMANDS, METRICS_PORTS, cli_envvar, settings_envvar

STRIMZI_API_VERSION: Final = "kafka.strimzi.io/v1"
"""Strimzi 0.49 added the ``v1`` API to every Strimzi CRD and 1.0 serves nothing else,
so ``v1`` works with every Strimzi release from 0.49 on (``v1beta2`` stops at 0.5x)."""

POD_MONITOR_API_VERSION: Final = "monitoring.coreos.com/v1"

RUN_AS: Final = 10001
"""The workers image's user and group (``workers/Dockerfile``)."""

TMP_MOUNT: Final = "/tmp"  # noqa: S108 - a private emptyDir, not a shared /tmp
WAREHOUSE_MOUNT: Final = "/var/lib/hftpipe"
KAFKA_CA_MOUNT: Final = "/etc/hftpipe/kafka-ca"
KAFKA_CA_FILE: Final = "ca.crt"
METRICS_PORT_NAME: Final = "metrics"

POD_SECURITY_CONTEXT: Final[dict[str, Any]] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,  # the DuckDB volume must be writable by the worker
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: Final[dict[str, Any]] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

USAGE_ERROR_EXIT_CODE: Final = 2
"""``hftpipe produce`` exits 2 for a bad option, an unknown layout or a missing file:
retrying cannot help, so the Job fails at once instead of using up its backoffLimit."""


# ------------------------------------------------------------------- worker settings


def in_namespace(host: str, namespace: str) -> str:
    """``host`` as the job's pods resolve it, for a client in another namespace (pure).

    A pod's first DNS search domain is ``<its namespace>.svc.<cluster domain>``, so a
    dotless name in a ReplayJob (``kafka-kafka-bootstrap``, ``redis``) means a Service in
    the job's namespace. The operator runs in its own namespace, where the same name
    would mean another Service or none: it uses ``<host>.<namespace>.svc``. Qualified
    names, IP addresses and ``localhost`` mean the same from anywhere.
    """
    if "." in host or ":" in host or host in {"", "localhost"}:
        return host
    return f"{host}.{namespace}.svc"


def bootstrap_servers_for_operator(job: ReplayJob) -> str:
    """:func:`bootstrap_servers` as the operator, in its own namespace, must dial them.

    The spec's pattern makes each entry ``host:port`` with no other colon."""
    servers = (s.rpartition(":") for s in bootstrap_servers(job).split(","))
    return ",".join(f"{in_namespace(host, job.namespace)}:{port}" for host, _, port in servers)


def redis_url_for_operator(job: ReplayJob) -> str:
    """``redis.url`` with its host as the operator, in its own namespace, must dial it."""
    # The spec refuses credentials in the URL, so its netloc is host[:port].
    parts = urlsplit(job.spec.redis.url)
    host = parts.hostname or ""
    netloc = parts.netloc.replace(host, in_namespace(host, job.namespace), 1)
    return urlunsplit(parts._replace(netloc=netloc))


def bootstrap_servers(job: ReplayJob) -> str:
    """``kafka.bootstrapServers``, or the bootstrap Service of the Strimzi cluster."""
    kafka = job.spec.kafka
    if kafka.bootstrap_servers is not None:
        return kafka.bootstrap_servers
    cluster = kafka.strimzi_cluster
    if cluster is None:  # the spec's rules forbid it; keep mypy and readers sure
        raise ValueError("kafka needs exactly one of bootstrapServers or strimziCluster")
    namespace = cluster.namespace or job.namespace
    return f"{cluster.name}-kafka-bootstrap.{namespace}.svc:{cluster.port}"


def security_protocol(spec: ReplayJobSpec) -> str:
    """Kafka ``security.protocol`` implied by ``credentials`` and ``tls``."""
    sasl, tls = spec.kafka.credentials is not None, spec.kafka.tls is not None
    return {
        (False, False): "PLAINTEXT",
        (False, True): "SSL",
        (True, False): "SASL_PLAINTEXT",
        (True, True): "SASL_SSL",
    }[(sasl, tls)]


def warehouse_url(spec: ReplayJobSpec) -> str:
    """The loader's ``--warehouse``: the DuckDB file on its volume, or ``snowflake://``."""
    if spec.warehouse.type == "snowflake":
        return "snowflake://"
    return f"duckdb:///{WAREHOUSE_MOUNT}/{spec.warehouse.duckdb.path}"


def worker_settings(job: ReplayJob) -> dict[str, str]:
    """The non-secret ``HFTPIPE_*`` variables of every worker (the ConfigMap's data)."""
    spec = job.spec
    kafka, pacing, source = spec.kafka, spec.pacing, spec.source
    env = {
        cli_envvar("produce", "job"): job.name,
        cli_envvar("produce", "namespace"): job.namespace,
        cli_envvar("produce", "log_json"): "true",
        cli_envvar("produce", "profile"): kafka.profile,
        # With Strimzi the operator creates the topics as KafkaTopics; a worker that
        # created one itself would race the Topic Operator.
        cli_envvar("produce", "create_topics"): "false" if kafka.strimzi_cluster else "true",
        cli_envvar("produce", "partitions"): str(kafka.topic.partitions),
        # A set: in one order (by length), so that reordering them changes no pod.
        cli_envvar("process", "windows"): ",".join(
            sorted(spec.processing.windows, key=window_seconds)
        ),
        cli_envvar("load", "warehouse"): warehouse_url(spec),
        settings_envvar(KafkaSettings, "bootstrap_servers"): bootstrap_servers(job),
        settings_envvar(KafkaSettings, "security_protocol"): security_protocol(spec),
        settings_envvar(RedisSettings, "url"): spec.redis.url,
        settings_envvar(RedisSettings, "history_limit"): str(spec.redis.history_limit),
    }
    if kafka.topic.replicas is not None:
        env[cli_envvar("produce", "replication")] = str(kafka.topic.replicas)
    if pacing.speed is not None:
        env[cli_envvar("produce", "speed")] = pacing.speed
    elif pacing.rate is not None:
        env[cli_envvar("produce", "rate")] = repr(pacing.rate)
    else:
        env[cli_envvar("produce", "speed")] = "max"
    for param, value in (
        ("symbol", source.symbol),
        ("symbol_from_filename", source.symbol_from_filename),
        ("start", source.start),
        ("end", source.end),
        ("mapping", source.mapping),
        ("layout", None if source.layout == "auto" else source.layout),
        ("delimiter", None if source.delimiter == "auto" else source.delimiter),
        ("columns", ",".join(source.columns) if source.columns else None),
        ("time_format", source.time_format),
        ("timezone", source.timezone),
        ("bars", source.bars),
    ):
        if value is not None:
            env[cli_envvar("produce", param)] = value
    if kafka.credentials is not None:
        env[settings_envvar(KafkaSettings, "sasl_mechanism")] = (
            kafka.credentials.secret_ref.mechanism
        )
        if kafka.credentials.username is not None:
            env[settings_envvar(KafkaSettings, "sasl_username")] = kafka.credentials.username
    if kafka.tls is not None:
        env[settings_envvar(KafkaSettings, "ssl_ca_location")] = f"{KAFKA_CA_MOUNT}/{KAFKA_CA_FILE}"
    snowflake = spec.warehouse.snowflake
    if spec.warehouse.type == "snowflake" and snowflake is not None:
        for field, value in (
            ("account", snowflake.account),
            ("user", snowflake.user),
            ("database", snowflake.database),
            ("schema_", snowflake.schema_),
            ("warehouse", snowflake.warehouse),
            ("role", snowflake.role),
        ):
            if value is not None:
                env[settings_envvar(SnowflakeSettings, field)] = value
    return dict(sorted(env.items()))


def config_hash(settings: dict[str, str]) -> str:
    """Short hash of the settings, put on pod templates so a change rolls the pods."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _secret_var(name: str, secret: str, key: str) -> dict[str, Any]:
    # optional: false: a missing Secret or key stops the pod with an error that
    # names them (CreateContainerConfigError) instead of a worker without credentials.
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": False}},
    }


def s3_env(spec: ReplayJobSpec) -> list[dict[str, Any]]:
    """The producer's AWS SDK variables for an ``s3://`` source (read by s3fs/botocore).

    In the producer's container only, never in the shared ConfigMap: an endpoint
    there would redirect the loader's Snowflake stage uploads too.
    """
    s3 = spec.source.s3
    if s3 is None:
        return []
    env: list[dict[str, Any]] = []
    if s3.endpoint_url is not None:
        env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint_url})
    if s3.region is not None:
        env.append({"name": "AWS_DEFAULT_REGION", "value": s3.region})
    if s3.credentials is not None:
        ref = s3.credentials.secret_ref
        env += [
            _secret_var("AWS_ACCESS_KEY_ID", ref.name, ref.access_key_id_key),
            _secret_var("AWS_SECRET_ACCESS_KEY", ref.name, ref.secret_access_key_key),
        ]
    return env


def secret_env(spec: ReplayJobSpec, worker: Worker) -> list[dict[str, Any]]:
    """The credentials ``worker`` needs, as ``secretKeyRef`` variables (values never copied)."""
    env: list[dict[str, Any]] = []
    if spec.kafka.credentials is not None:
        ref = spec.kafka.credentials.secret_ref
        if spec.kafka.credentials.username is None:  # else a plain setting (worker_settings)
            env.append(
                _secret_var(
                    settings_envvar(KafkaSettings, "sasl_username"), ref.name, ref.username_key
                )
            )
        env.append(
            _secret_var(settings_envvar(KafkaSettings, "sasl_password"), ref.name, ref.password_key)
        )
    if worker == "processor" and spec.redis.credentials is not None:
        redis_ref = spec.redis.credentials.secret_ref
        if redis_ref.username_key is not None:
            env.append(
                _secret_var(
                    settings_envvar(RedisSettings, "username"),
                    redis_ref.name,
                    redis_ref.username_key,
                )
            )
        env.append(
            _secret_var(
                settings_envvar(RedisSettings, "password"), redis_ref.name, redis_ref.password_key
            )
        )
    snowflake = spec.warehouse.snowflake
    if worker == "loader" and spec.warehouse.type == "snowflake" and snowflake is not None:
        sf_ref = snowflake.secret_ref
        for field, key in (
            ("password", sf_ref.password_key),
            ("private_key", sf_ref.private_key_key),
            ("private_key_passphrase", sf_ref.private_key_passphrase_key),
        ):
            if key is not None:
                env.append(_secret_var(settings_envvar(SnowflakeSettings, field), sf_ref.name, key))
    return env


def named_secrets(spec: ReplayJobSpec) -> dict[str, list[str]]:
    """Every Secret the job names, with the fields that name it (pure).

    What the operator checks for :data:`.labels.SECRET_OPT_IN` before it reads one or
    starts a worker that mounts one; a unit test holds it equal to the Secrets the
    built manifests reference.
    """
    uses: list[tuple[str, str]] = []
    if spec.kafka.credentials is not None:
        uses.append((spec.kafka.credentials.secret_ref.name, "kafka.credentials.secretRef"))
    if spec.kafka.tls is not None:
        uses.append((spec.kafka.tls.ca_secret_ref.name, "kafka.tls.caSecretRef"))
    if spec.redis.credentials is not None:
        uses.append((spec.redis.credentials.secret_ref.name, "redis.credentials.secretRef"))
    if spec.warehouse.type == "snowflake" and spec.warehouse.snowflake is not None:
        uses.append((spec.warehouse.snowflake.secret_ref.name, "warehouse.snowflake.secretRef"))
    if spec.source.s3 is not None and spec.source.s3.credentials is not None:
        uses.append((spec.source.s3.credentials.secret_ref.name, "source.s3.credentials.secretRef"))
    for i, name in enumerate(spec.images.pull_secrets or ()):
        uses.append((name, f"images.pullSecrets[{i}]"))
    out: dict[str, list[str]] = {}
    for name, field in uses:
        out.setdefault(name, []).append(field)
    return out


# ---------------------------------------------------------------------------- pods


def _metadata(
    job: ReplayJob, name: str, component: Component, namespace: str | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace or job.namespace,
        "labels": labels.labels(job.name, component),
    }


def _volumes(job: ReplayJob, worker: Worker) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) of a worker's pod."""
    spec = job.spec
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "512Mi"}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": TMP_MOUNT}]
    if spec.kafka.tls is not None:
        ca = spec.kafka.tls.ca_secret_ref
        volumes.append(
            {
                "name": "kafka-ca",
                "secret": {
                    "secretName": ca.name,
                    "items": [{"key": ca.key, "path": KAFKA_CA_FILE}],
                },
            }
        )
        mounts.append({"name": "kafka-ca", "mountPath": KAFKA_CA_MOUNT, "readOnly": True})
    source_volume = spec.source.volume
    if worker == "producer" and source_volume is not None:
        if source_volume.claim_name is not None:
            volume_source: dict[str, Any] = {
                "persistentVolumeClaim": {"claimName": source_volume.claim_name, "readOnly": True}
            }
        else:
            volume_source = (
                source_volume.volume_source.to_api() if source_volume.volume_source else {}
            )
        volumes.append({"name": "source", **volume_source})
        mounts.append({"name": "source", "mountPath": spec.source.mount_path, "readOnly": True})
    if worker == "loader" and spec.warehouse.type == "duckdb":
        claim = spec.warehouse.duckdb.claim_name or Names(job.name).warehouse
        volumes.append({"name": "warehouse", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": "warehouse", "mountPath": WAREHOUSE_MOUNT})
    return volumes, mounts


def _container(job: ReplayJob, worker: Worker) -> dict[str, Any]:
    spec = job.spec
    port = METRICS_PORTS[worker]
    args = spec.source.all_urls if worker == "producer" else []
    _, mounts = _volumes(job, worker)
    return {
        "name": worker,
        "image": spec.images.workers,
        "imagePullPolicy": spec.images.pull_policy,
        "command": ["hftpipe", COMMANDS[worker], *args],
        "envFrom": [{"configMapRef": {"name": Names(job.name).settings}}],
        "env": [
            {"name": cli_envvar(COMMANDS[worker], "metrics_port"), "value": str(port)},
            # The image's user has no home directory; libraries that cache there
            # (Snowflake's OCSP cache) get the writable /tmp instead.
            {"name": "HOME", "value": TMP_MOUNT},
            *secret_env(spec, worker),
            *(s3_env(spec) if worker == "producer" else []),
        ],
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": METRICS_PORT_NAME},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": METRICS_PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "resources": getattr(spec.resources, worker).to_api(),
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        # A worker that exits with an error leaves the tail of its log as the
        # container's termination message: the operator quotes it in the status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


def _pod_template(job: ReplayJob, worker: Worker, restart_policy: str) -> dict[str, Any]:
    volumes, _ = _volumes(job, worker)
    pod: dict[str, Any] = {
        "containers": [_container(job, worker)],
        "restartPolicy": restart_policy,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        # Workers never call the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # SIGTERM makes a worker finish and commit its batch before it exits.
        "terminationGracePeriodSeconds": 60,
        "volumes": volumes,
    }
    if job.spec.images.pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in job.spec.images.pull_secrets]
    return {
        "metadata": {
            "labels": labels.labels(job.name, worker),
            "annotations": {labels.CONFIG_HASH: config_hash(worker_settings(job))},
        },
        "spec": pod,
    }


# ------------------------------------------------------------------------ builders


def build_settings_configmap(job: ReplayJob) -> dict[str, Any]:
    """ConfigMap ``<job>-settings``: the workers' ``HFTPIPE_*`` settings, no secrets."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, Names(job.name).settings, "settings"),
        "data": worker_settings(job),
    }


def build_producer_job(job: ReplayJob, *, failed: bool = False) -> dict[str, Any]:
    """Job ``<job>-producer``: ``hftpipe produce <source>``, once to completion.

    Failed pods are retried ``restartPolicy.maxRestarts`` times (the producer
    resumes after the last row in Kafka); usage errors fail the Job at once, and
    evictions do not count. ``spec.suspend`` suspends the Job, and so does the job
    having ``failed`` (a processor or loader past its restarts: nothing would
    consume what the producer sends).
    """
    settings_hash = config_hash(worker_settings(job))
    metadata = _metadata(job, Names(job.name).producer, "producer")
    # The pod template of a Job cannot change: the handler compares this hash to
    # decide when to replace the Job.
    metadata["annotations"] = {labels.CONFIG_HASH: settings_hash}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": job.spec.restart_policy.max_restarts,
            "completions": 1,
            "parallelism": 1,
            "suspend": job.spec.suspend or failed,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "producer",
                            "operator": "In",
                            "values": [USAGE_ERROR_EXIT_CODE],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": _pod_template(job, "producer", restart_policy="Never"),
        },
    }


def _deployment(
    job: ReplayJob, worker: Worker, name: str, replicas: int, strategy: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(job, name, worker),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels.selector_labels(job.name, worker)},
            "strategy": strategy,
            "revisionHistoryLimit": 3,
            "template": _pod_template(job, worker, restart_policy="Always"),
        },
    }


def build_processor_deployment(
    job: ReplayJob, *, complete: bool = False, failed: bool = False
) -> dict[str, Any]:
    """Deployment ``<job>-processor``: ``processing.replicas`` processors, 0 when the job is
    suspended, complete or failed."""
    stopped = job.spec.suspend or complete or failed
    return _deployment(
        job,
        "processor",
        Names(job.name).processor,
        0 if stopped else job.spec.processing.replicas,
        # Surplus processors during a rollout are harmless (Redis fencing), gaps are not.
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    )


def build_loader_deployment(
    job: ReplayJob, *, complete: bool = False, failed: bool = False
) -> dict[str, Any]:
    """Deployment ``<job>-loader``: one loader, 0 when the job is suspended, complete or
    failed."""
    stopped = job.spec.suspend or complete or failed
    return _deployment(
        job,
        "loader",
        Names(job.name).loader,
        0 if stopped else 1,
        # One writer at a time: DuckDB allows one, and its volume is ReadWriteOnce.
        {"type": "Recreate"},
    )


def build_metrics_service(job: ReplayJob) -> dict[str, Any]:
    """Headless Service ``<job>-metrics``: every worker's metrics port, one DNS name per pod."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, Names(job.name).metrics, "metrics"),
        "spec": {
            "clusterIP": "None",
            "selector": labels.selector_labels(job.name),
            # A worker that is not ready is the one whose metrics matter most.
            "publishNotReadyAddresses": True,
            "ports": [
                {"name": worker, "port": port, "targetPort": port, "protocol": "TCP"}
                for worker, port in METRICS_PORTS.items()
            ],
        },
    }


def build_workers_podmonitor(job: ReplayJob) -> dict[str, Any]:
    """PodMonitor ``<job>-workers``: Prometheus scrapes every worker's ``metrics`` port."""
    return {
        "apiVersion": POD_MONITOR_API_VERSION,
        "kind": "PodMonitor",
        "metadata": _metadata(job, Names(job.name).pod_monitor, "metrics"),
        "spec": {
            "selector": {"matchLabels": labels.selector_labels(job.name)},
            "podTargetLabels": [labels.JOB, labels.COMPONENT],
            "podMetricsEndpoints": [
                {
                    "port": METRICS_PORT_NAME,
                    "path": "/metrics",
                    "interval": job.spec.monitoring.interval,
                    # The workers label their series job=<ReplayJob>; keep that over
                    # Prometheus' own job label, which dashboards do not query.
                    "honorLabels": True,
                }
            ],
        },
    }


def build_topic_kafkatopics(job: ReplayJob) -> list[dict[str, Any]]:
    """Strimzi KafkaTopics of the job's topics, when ``kafka.strimziCluster`` is set.

    Named like the topics themselves (valid Kubernetes names, Strimzi's
    recommendation), in the cluster's namespace, where its Topic Operator looks.
    The dead-letter and progress topics have one partition, as the producer creates
    them; the progress topic is compacted (only the producer's latest record matters).
    """
    cluster = job.spec.kafka.strimzi_cluster
    if cluster is None:
        return []
    topics = Topics.for_job(job.job_id)
    partitions, replicas = job.spec.kafka.topic.partitions, job.spec.kafka.topic.replicas
    out = []
    durable = dict(JOB_TOPIC_CONFIG)
    if replicas is not None:
        durable["min.insync.replicas"] = str(min(2, replicas))
    for topic, count, config in (
        (topics.bars, partitions, None),
        (topics.metrics, partitions, None),
        (topics.deadletter, 1, None),
        (topics.progress, 1, PROGRESS_TOPIC_CONFIG),
    ):
        metadata = _metadata(job, topic, "topic", namespace=cluster.namespace or job.namespace)
        metadata["labels"][labels.STRIMZI_CLUSTER] = cluster.name
        spec: dict[str, Any] = {"partitions": count, "config": {**durable, **(config or {})}}
        if replicas is not None:  # else Strimzi uses the cluster's default.replication.factor
            spec["replicas"] = replicas
        out.append(
            {
                "apiVersion": STRIMZI_API_VERSION,
                "kind": "KafkaTopic",
                "metadata": metadata,
                "spec": spec,
            }
        )
    return out


def build_warehouse_pvc(job: ReplayJob) -> dict[str, Any]:
    """PersistentVolumeClaim ``<job>-warehouse`` for the DuckDB file (used when
    ``warehouse.duckdb.claimName`` is unset)."""
    duckdb = job.spec.warehouse.duckdb
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(duckdb.size)}},
    }
    if duckdb.storage_class_name is not None:
        spec["storageClassName"] = duckdb.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(job, Names(job.name).warehouse, "warehouse"),
        "spec": spec,
    }


def build_all(
    job: ReplayJob, *, complete: bool = False, failed: bool = False
) -> list[dict[str, Any]]:
    """Every object the job needs, in creation order (settings and storage first);
    ``complete`` or ``failed`` (the job's final phases): no worker runs."""
    spec = job.spec
    objects = [build_settings_configmap(job)]
    if spec.warehouse.type == "duckdb" and spec.warehouse.duckdb.claim_name is None:
        objects.append(build_warehouse_pvc(job))
    objects += build_topic_kafkatopics(job)
    objects += [
        build_producer_job(job, failed=failed),
        build_processor_deployment(job, complete=complete, failed=failed),
        build_loader_deployment(job, complete=complete, failed=failed),
        build_metrics_service(job),
    ]
    if spec.monitoring.pod_monitor:
        objects.append(build_workers_podmonitor(job))
    return objects
