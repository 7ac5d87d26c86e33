"""The manifest builders: names, labels, pods that pass the restricted profile, and
settings that the workers really read.

Variable names are never compared with a list typed here: the workers' own
typer commands parse the ConfigMap (click's ``make_context``), their settings
classes are instantiated from it, and a variable counts as read only if
removing it changes what a command or settings class ends up with.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import ValidationError, model_validator
from typer.testing import CliRunner

from hftpipe_operator import builders, labels
from hftpipe_operator.naming import Names
from hftpipe_operator.reconcile import template_hash
from hftpipe_operator.spec import ReplayJob, ReplayJobSpec
from hftpipe_operator.workerapi import cli_envvar
from hftpipe_workers import cli
from hftpipe_workers.contract import Topics
from hftpipe_workers.pacing import Pacing
from hftpipe_workers.settings import JobSettings, KafkaSettings, RedisSettings
from hftpipe_workers.warehouse import SnowflakeSettings, parse_target


class _PartialSnowflakeSettings(SnowflakeSettings):
    """SnowflakeSettings without the completeness check (same fields and variables), so
    a pod without the Snowflake password still shows which variables it reads."""

    @model_validator(mode="after")
    def _complete(self) -> _PartialSnowflakeSettings:
        return self


SETTINGS = (JobSettings, KafkaSettings, RedisSettings, _PartialSnowflakeSettings)
COMMANDS = {"producer": "produce", "processor": "process", "loader": "load"}
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

BASE: dict[str, Any] = {
    "source": {
        "url": "s3://market-data/btc.csv.gz",
        "symbol": "BTCUSDT",
        "start": "2020-01-01T00:00:00Z",
        "end": "2021-01-01T00:00:00Z",
    },
    "pacing": {"speed": "60x"},
    "kafka": {
        "bootstrapServers": "kafka-0.kafka:9092,kafka-1.kafka:9092",
        "topic": {"partitions": 4, "replicas": 2},
        "credentials": {"secretRef": {"name": "kafka-user", "mechanism": "SCRAM-SHA-256"}},
    },
    "processing": {"windows": ["5m", "1h"], "replicas": 3},
    "redis": {
        "url": "redis://redis:6379/0",
        "credentials": {"secretRef": {"name": "redis-auth", "usernameKey": "user"}},
        "historyLimit": 500,
    },
}
SNOWFLAKE: dict[str, Any] = {
    "type": "snowflake",
    "snowflake": {
        "secretRef": {"name": "sf", "privateKeyKey": "key.pem", "privateKeyPassphraseKey": "pp"},
        "account": "org-acct",
        "user": "LOADER",
        "database": "MARKET",
        "warehouse": "LOAD_WH",
        "role": "LOADER",
    },
}


def make_job(name: str = "btc", namespace: str = "markets", **changes: Any) -> ReplayJob:
    """A ReplayJob from BASE with top-level spec sections replaced."""
    spec = copy.deepcopy(BASE)
    spec.update(changes)
    return ReplayJob(name, namespace, ReplayJobSpec.model_validate(spec))


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = manifest["spec"]["template"]
    return template


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod(manifest)["spec"]["containers"]
    return dict(container)


def _workloads(job: ReplayJob) -> dict[str, dict[str, Any]]:
    return {
        "producer": builders.build_producer_job(job),
        "processor": builders.build_processor_deployment(job),
        "loader": builders.build_loader_deployment(job),
    }


def _click(command: str) -> Any:
    """``hftpipe <command>`` as the click command typer builds (typer vendors click)."""
    return getattr(typer.main.get_command(cli.app), "commands")[command]  # noqa: B009


def _env_of(job: ReplayJob, worker: str) -> dict[str, str]:
    """What a worker's process sees: the ConfigMap, then its own env (secrets as stand-ins)."""
    env = dict(builders.build_settings_configmap(job)["data"])
    for var in _container(_workloads(job)[worker])["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = f"from-{ref['name']}-{ref['key']}"
    return env


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No HFTPIPE_* (or the stack's aliases) from the test runner's own environment."""
    for var in list(os.environ):
        if var.startswith("HFTPIPE_") or var in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
            monkeypatch.delenv(var)
    return monkeypatch


def _outcomes() -> list[str]:
    out = []
    for settings in SETTINGS:
        try:
            out.append(repr(settings().model_dump()))
        except (ValidationError, ValueError) as exc:
            out.append(f"error: {exc}")
    return out


# ------------------------------------------------------------------- objects


def test_build_all_names_kinds_and_labels() -> None:
    job = make_job()
    objects = builders.build_all(job)
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ConfigMap", "btc-settings"),
        ("PersistentVolumeClaim", "btc-warehouse"),
        ("Job", "btc-producer"),
        ("Deployment", "btc-processor"),
        ("Deployment", "btc-loader"),
        ("Service", "btc-metrics"),
        ("PodMonitor", "btc-workers"),
    ]
    for obj in objects:
        meta = obj["metadata"]
        assert DNS_LABEL.match(meta["name"]), meta["name"]
        assert meta["namespace"] == "markets"
        assert "ownerReferences" not in meta  # the handlers adopt
        assert meta["labels"][labels.JOB] == "btc"
        assert meta["labels"][labels.APP_INSTANCE] == "btc"
        assert meta["labels"][labels.APP_MANAGED_BY] == labels.MANAGER
        assert meta["labels"][labels.COMPONENT] == meta["labels"][labels.APP_COMPONENT]


def test_longest_job_name_gives_valid_names() -> None:
    from hftpipe_operator.naming import MAX_JOB_NAME_LENGTH  # noqa: PLC0415

    name = "a" * MAX_JOB_NAME_LENGTH
    for obj in builders.build_all(make_job(name)):
        assert DNS_LABEL.match(obj["metadata"]["name"]), obj["metadata"]["name"]
        assert all(len(v) <= 63 for v in obj["metadata"]["labels"].values())


@pytest.mark.parametrize("worker", ["producer", "processor", "loader"])
def test_every_pod_is_probed_restricted_and_sized(worker: str) -> None:
    job = make_job()
    manifest = _workloads(job)[worker]
    pod = _pod(manifest)
    container = _container(manifest)
    port_default = next(p for p in _click(COMMANDS[worker]).params if p.name == "metrics_port")
    assert container["ports"] == [
        {"name": "metrics", "containerPort": port_default.default, "protocol": "TCP"}
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["command"][:2] == ["hftpipe", COMMANDS[worker]]
    assert container["image"] == job.spec.images.workers
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["envFrom"] == [{"configMapRef": {"name": "btc-settings"}}]
    assert container["resources"] == getattr(job.spec.resources, worker).to_api()
    assert container["resources"]["requests"]["memory"]

    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["automountServiceAccountToken"] is False

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert set(mounts.values()) == set(volumes)
    assert pod["metadata"]["labels"] == labels.labels("btc", worker)  # type: ignore[arg-type]
    assert pod["metadata"]["annotations"][labels.CONFIG_HASH] == builders.config_hash(
        builders.worker_settings(job)
    )


def test_selectors_pick_the_pods() -> None:
    job = make_job()
    pods = {w: _pod(m)["metadata"]["labels"] for w, m in _workloads(job).items()}
    for worker in ("processor", "loader"):
        selector = _workloads(job)[worker]["spec"]["selector"]["matchLabels"]
        matched = [w for w, pod_labels in pods.items() if selector.items() <= pod_labels.items()]
        assert matched == [worker]
    service = builders.build_metrics_service(job)["spec"]["selector"]
    monitor = builders.build_workers_podmonitor(job)["spec"]["selector"]["matchLabels"]
    for selector in (service, monitor):
        assert all(selector.items() <= pod_labels.items() for pod_labels in pods.values())


# --------------------------------------------------------- settings are real


@pytest.mark.parametrize(
    "changes",
    [{}, {"warehouse": SNOWFLAKE}, {"kafka": {"strimziCluster": {"name": "kc"}}}],
    ids=["duckdb", "snowflake", "strimzi"],
)
@pytest.mark.parametrize("worker", ["producer", "processor", "loader"])
def test_every_variable_a_worker_gets_is_read_by_it(
    worker: str, changes: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    job = make_job(**changes)
    env = _env_of(job, worker)
    assert {v for v in env if not v.startswith("HFTPIPE_")} == {"HOME"}
    # The ConfigMap is shared: its variables must be read by some worker; what a
    # container gets on its own (ports, credentials) must be read by that worker.
    shared = set(builders.build_settings_configmap(job)["data"])

    def envvars(command: str) -> set[str]:
        return {
            v
            for p in _click(command).params
            for v in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])
        }

    own_vars = envvars(COMMANDS[worker])
    command_vars = set().union(*(envvars(c) for c in COMMANDS.values()))
    for var, value in env.items():
        clean_env.setenv(var, value)
    unread = []
    for var in sorted(v for v in env if v.startswith("HFTPIPE_")):
        if var in own_vars or (var in shared and var in command_vars):
            continue
        # Read by a settings class if its value matters: unset or garbled, the
        # outcome changes (a default-valued variable only shows the second way).
        before = _outcomes()
        clean_env.delenv(var)
        unset = _outcomes()
        clean_env.setenv(var, "not-a-valid-value")
        garbled = _outcomes()
        clean_env.setenv(var, env[var])
        if before == unset == garbled:
            unread.append(var)
    assert unread == []


def test_many_source_files_and_their_symbol_pattern_reach_the_producer(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """Issue 11, point 5: ``source.urls`` are the producer's arguments, in order, and
    ``source.symbolFromFilename`` its ``--symbol-from-filename``."""
    urls = ["s3://dumps/2024/BTC-1m-*.csv.gz", "s3://dumps/2025/"]
    job = make_job(source={"urls": urls, "symbolFromFilename": "{symbol}-1m-*.csv.gz"})
    for var, value in _env_of(job, "producer").items():
        clean_env.setenv(var, value)
    args = _container(_workloads(job)["producer"])["command"][2:]
    assert args == urls
    params = _click("produce").make_context("produce", list(args)).params
    assert params["source"] == urls
    assert params["symbol_from_filename"] == "{symbol}-1m-*.csv.gz"


def test_the_commands_parse_the_settings_into_the_spec(clean_env: pytest.MonkeyPatch) -> None:
    job = make_job()

    def params(worker: str) -> dict[str, Any]:
        for var in [*builders.worker_settings(job), "HFTPIPE_METRICS_PORT"]:
            clean_env.delenv(var, raising=False)
        for var, value in _env_of(job, worker).items():
            clean_env.setenv(var, value)
        args = _container(_workloads(job)[worker])["command"][2:]
        ctx = _click(COMMANDS[worker]).make_context(COMMANDS[worker], list(args))
        return dict(ctx.params)

    produce = params("producer")
    assert produce["source"] == ["s3://market-data/btc.csv.gz"]
    assert produce["job"] == "btc"
    # Topics, groups, Redis keys and warehouse rows are named by <namespace>.<name>.
    assert produce["namespace"] == "markets"
    assert produce["speed"] == "60x"
    assert produce["rate"] is None
    assert produce["symbol"] == "BTCUSDT"
    assert produce["start"] == "2020-01-01T00:00:00Z"
    assert produce["end"] == "2021-01-01T00:00:00Z"
    assert produce["partitions"] == 4
    assert produce["replication"] == 2
    assert produce["create_topics"] is True
    assert produce["metrics_port"] == 9100
    assert produce["log_json"] is True
    assert produce["profile"] == "throughput"
    kafka = KafkaSettings()
    assert kafka.bootstrap_servers == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert kafka.security_protocol == "SASL_PLAINTEXT"
    assert kafka.sasl_mechanism == "SCRAM-SHA-256"
    assert kafka.sasl_username == "from-kafka-user-username"

    process = params("processor")
    assert process["windows"] == "5m,1h"
    assert (process["job"], process["namespace"]) == ("btc", "markets")
    assert process["metrics_port"] == 9101
    redis_settings = RedisSettings()
    assert redis_settings.url == "redis://redis:6379/0"
    assert redis_settings.history_limit == 500
    assert redis_settings.username == "from-redis-auth-user"
    assert redis_settings.password is not None
    assert redis_settings.password.get_secret_value() == "from-redis-auth-password"

    load = params("loader")
    assert load["metrics_port"] == 9102
    assert (load["job"], load["namespace"]) == ("btc", "markets")
    assert parse_target(load["warehouse"]) == Path(builders.WAREHOUSE_MOUNT) / "hftpipe.duckdb"


@pytest.mark.parametrize(
    ("pacing", "expected"),
    [
        ({"speed": "60x"}, Pacing("speed", 60.0)),
        ({"rate": 2500.5}, Pacing("rate", 2500.5)),
        ({"max": True}, Pacing("max")),
    ],
)
def test_pacing_reaches_the_producer(
    pacing: dict[str, Any], expected: Pacing, clean_env: pytest.MonkeyPatch
) -> None:
    env = _env_of(make_job(pacing=pacing), "producer")
    for var, value in env.items():
        clean_env.setenv(var, value)
    ctx = _click("produce").make_context("produce", ["x.csv"])
    assert Pacing.parse(ctx.params["speed"], ctx.params["rate"]) == expected


def test_snowflake_settings_reach_the_loader_only(clean_env: pytest.MonkeyPatch) -> None:
    job = make_job(warehouse=SNOWFLAKE)
    for var, value in _env_of(job, "loader").items():
        clean_env.setenv(var, value)
    settings = SnowflakeSettings()
    assert (settings.account, settings.user, settings.database) == ("org-acct", "LOADER", "MARKET")
    assert (settings.schema_, settings.warehouse, settings.role) == ("PUBLIC", "LOAD_WH", "LOADER")
    assert settings.private_key is not None
    assert settings.private_key.get_secret_value() == "from-sf-key.pem"
    assert settings.private_key_passphrase is not None
    assert builders.worker_settings(job)["HFTPIPE_WAREHOUSE"] == "snowflake://"
    loader_pod = _pod(builders.build_loader_deployment(job))["spec"]
    assert "warehouse" not in {v["name"] for v in loader_pod["volumes"]}
    for worker in ("producer", "processor"):
        names = {v["name"] for v in _container(_workloads(job)[worker])["env"]}
        assert not any("SNOWFLAKE" in n for n in names)


def test_credentials_are_references_in_the_workers_that_need_them() -> None:
    job = make_job(warehouse=SNOWFLAKE)
    needed = {
        "producer": {"kafka-user"},
        "processor": {"kafka-user", "redis-auth"},
        "loader": {"kafka-user", "sf"},
    }
    for worker, manifest in _workloads(job).items():
        secrets = set()
        for var in _container(manifest)["env"]:
            if re.search("PASSWORD|USERNAME|PRIVATE_KEY|PASSPHRASE", var["name"]):
                assert "value" not in var, var
                secrets.add(var["valueFrom"]["secretKeyRef"]["name"])
                assert var["valueFrom"]["secretKeyRef"]["optional"] is False
        assert secrets == needed[worker]
    data = builders.build_settings_configmap(job)["data"]
    assert not [k for k in data if re.search("PASSWORD|USERNAME|PRIVATE_KEY|PASSPHRASE", k)]


def test_a_strimzi_kafkauser_secret_with_the_user_name_in_the_spec(
    clean_env: pytest.MonkeyPatch,
) -> None:
    # A Strimzi KafkaUser's Secret holds `password` and `sasl.jaas.config`, no user name.
    credentials = {"username": "replay", "secretRef": {"name": "replay"}}
    job = make_job(kafka={**BASE["kafka"], "credentials": credentials})
    settings = builders.worker_settings(job)
    assert settings["HFTPIPE_KAFKA_SASL_USERNAME"] == "replay"
    for worker in ("producer", "processor", "loader"):
        env = {v["name"]: v for v in _container(_workloads(job)[worker])["env"]}
        assert "HFTPIPE_KAFKA_SASL_USERNAME" not in env  # the ConfigMap's value holds
        assert env["HFTPIPE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "replay",
            "key": "password",
            "optional": False,
        }
        for var, value in _env_of(job, worker).items():
            clean_env.setenv(var, value)
        kafka = KafkaSettings()
        assert kafka.sasl_username == "replay"
        assert kafka.sasl_password is not None


# -------------------------------------------------------------------- workloads


def test_producer_job(clean_env: pytest.MonkeyPatch) -> None:
    job = make_job(restartPolicy={"maxRestarts": 7})
    manifest = builders.build_producer_job(job)
    spec = manifest["spec"]
    assert manifest["apiVersion"] == "batch/v1"
    assert spec["backoffLimit"] == 7
    assert spec["suspend"] is False
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert _container(manifest)["command"] == ["hftpipe", "produce", "s3://market-data/btc.csv.gz"]
    (fail_fast, evictions) = spec["podFailurePolicy"]["rules"]
    assert fail_fast["onExitCodes"]["values"] == [builders.USAGE_ERROR_EXIT_CODE]
    assert fail_fast["onExitCodes"]["containerName"] == _container(manifest)["name"]
    assert evictions["action"] == "Ignore"
    assert manifest["metadata"]["annotations"][labels.CONFIG_HASH]
    assert builders.build_producer_job(make_job(suspend=True))["spec"]["suspend"] is True

    # The exit code the Job fails fast on is what the CLI uses for a usage error.
    result = CliRunner().invoke(
        cli.app, ["produce", "x.csv", "--rate", "-1", "--metrics-port", "-1"]
    )
    assert result.exit_code == builders.USAGE_ERROR_EXIT_CODE


def test_processor_replicas_follow_spec_suspend_and_completion() -> None:
    assert builders.build_processor_deployment(make_job())["spec"]["replicas"] == 3
    suspended = make_job(suspend=True)
    assert builders.build_processor_deployment(suspended)["spec"]["replicas"] == 0
    assert builders.build_processor_deployment(make_job(), complete=True)["spec"]["replicas"] == 0
    assert builders.build_loader_deployment(make_job())["spec"]["replicas"] == 1
    assert builders.build_loader_deployment(suspended)["spec"]["replicas"] == 0
    assert builders.build_loader_deployment(make_job(), complete=True)["spec"]["replicas"] == 0
    assert builders.build_loader_deployment(make_job())["spec"]["strategy"] == {"type": "Recreate"}


def test_a_failed_job_runs_no_worker() -> None:
    """Issue 10, point 5: Failed stops every worker, as suspend does, without a new Job."""
    job = make_job()
    children = {m["kind"] + "/" + m["metadata"]["name"]: m for m in builders.build_all(job)}
    failed = {
        m["kind"] + "/" + m["metadata"]["name"]: m for m in builders.build_all(job, failed=True)
    }
    names = Names(job.name)
    assert failed[f"Deployment/{names.processor}"]["spec"]["replicas"] == 0
    assert failed[f"Deployment/{names.loader}"]["spec"]["replicas"] == 0
    producer, stopped = children[f"Job/{names.producer}"], failed[f"Job/{names.producer}"]
    assert (producer["spec"]["suspend"], stopped["spec"]["suspend"]) == (False, True)
    # Suspending is a patch of the Job (its pod template is unchanged), never a new one.
    assert template_hash(producer) == template_hash(stopped)
    assert set(failed) == set(children)


def test_duckdb_on_a_claim() -> None:
    job = make_job()
    pod = _pod(builders.build_loader_deployment(job))["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["warehouse"]["persistentVolumeClaim"] == {"claimName": "btc-warehouse"}
    pvc = builders.build_warehouse_pvc(job)
    assert pvc["metadata"]["name"] == Names("btc").warehouse
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"

    own = make_job(warehouse={"duckdb": {"claimName": "ticks", "path": "db/x.duckdb"}})
    assert "PersistentVolumeClaim" not in [o["kind"] for o in builders.build_all(own)]
    pod = _pod(builders.build_loader_deployment(own))["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["warehouse"]["persistentVolumeClaim"] == {"claimName": "ticks"}
    target = parse_target(builders.worker_settings(own)["HFTPIPE_WAREHOUSE"])
    assert target == Path("/var/lib/hftpipe/db/x.duckdb")


@pytest.mark.parametrize(
    ("volume", "expected"),
    [
        ({"claimName": "bars"}, {"persistentVolumeClaim": {"claimName": "bars", "readOnly": True}}),
        (
            {"volumeSource": {"nfs": {"server": "nas", "path": "/x"}}},
            {"nfs": {"server": "nas", "path": "/x"}},
        ),
    ],
)
def test_source_volume_is_mounted_read_only_in_the_producer(
    volume: dict[str, Any], expected: dict[str, Any]
) -> None:
    job = make_job(source={"url": "/data/btc.csv", "volume": volume})
    producer = builders.build_producer_job(job)
    volumes = {v["name"]: v for v in _pod(producer)["spec"]["volumes"]}
    assert volumes["source"] == {"name": "source", **expected}
    assert {"name": "source", "mountPath": "/data", "readOnly": True} in _container(producer)[
        "volumeMounts"
    ]
    processor = builders.build_processor_deployment(job)
    assert "source" not in {v["name"] for v in _pod(processor)["spec"]["volumes"]}


def test_kafka_tls_mounts_the_ca_where_the_setting_points() -> None:
    kafka = {**BASE["kafka"], "tls": {"caSecretRef": {"name": "cluster-ca"}}}
    job = make_job(kafka=kafka)
    settings = builders.worker_settings(job)
    assert settings["HFTPIPE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    for manifest in _workloads(job).values():
        volumes = {v["name"]: v for v in _pod(manifest)["spec"]["volumes"]}
        mount = next(m for m in _container(manifest)["volumeMounts"] if m["name"] == "kafka-ca")
        item = volumes["kafka-ca"]["secret"]["items"][0]
        assert volumes["kafka-ca"]["secret"]["secretName"] == "cluster-ca"
        assert item["key"] == "ca.crt"
        assert settings["HFTPIPE_KAFKA_SSL_CA_LOCATION"] == f"{mount['mountPath']}/{item['path']}"


def test_security_protocols() -> None:
    plain = make_job(kafka={"bootstrapServers": "k:9092"})
    tls = make_job(kafka={"bootstrapServers": "k:9093", "tls": {"caSecretRef": {"name": "ca"}}})
    assert builders.security_protocol(plain.spec) == "PLAINTEXT"
    assert builders.security_protocol(tls.spec) == "SSL"
    literal = KafkaSettings.model_fields["security_protocol"].annotation
    assert builders.security_protocol(tls.spec) in literal.__args__  # type: ignore[union-attr]


def test_resources_pull_secrets_and_image_from_the_spec() -> None:
    job = make_job(
        resources={"loader": {"requests": {"cpu": 1, "memory": "2Gi"}}},
        images={
            "workers": "registry.local/hftpipe-workers:dev",
            "pullPolicy": "Always",
            "pullSecrets": ["regcred"],
        },
    )
    loader = builders.build_loader_deployment(job)
    assert _container(loader)["resources"] == {"requests": {"cpu": 1, "memory": "2Gi"}}
    assert _container(loader)["image"] == "registry.local/hftpipe-workers:dev"
    assert _container(loader)["imagePullPolicy"] == "Always"
    assert _pod(loader)["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    producer = builders.build_producer_job(job)
    assert _container(producer)["resources"]["limits"] == {"memory": "512Mi"}


def test_settings_hash_changes_with_the_settings() -> None:
    one = builders.worker_settings(make_job())
    two = builders.worker_settings(make_job(processing={"windows": ["1m"], "replicas": 1}))
    assert builders.config_hash(one) == builders.config_hash(dict(reversed(one.items())))
    assert builders.config_hash(one) != builders.config_hash(two)


def test_windows_in_another_order_change_no_pod() -> None:
    """The windows are a set (issue 10, point 8): reordering them is the same job."""
    jobs = [
        make_job(processing={"windows": windows, "replicas": 1})
        for windows in (["1h", "5m", "1d"], ["5m", "1d", "1h"])
    ]
    first, second = (builders.build_all(job, complete=False) for job in jobs)
    assert first == second
    settings = builders.worker_settings(jobs[0])
    assert settings[cli_envvar("process", "windows")] == "5m,1h,1d"


# ------------------------------------------------------------ metrics, topics


def test_metrics_service_exposes_each_workers_default_port() -> None:
    service = builders.build_metrics_service(make_job())
    defaults = {
        worker: next(p for p in _click(cmd).params if p.name == "metrics_port").default
        for worker, cmd in COMMANDS.items()
    }
    assert defaults == {"producer": 9100, "processor": 9101, "loader": 9102}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == defaults
    assert service["spec"]["clusterIP"] == "None"


def test_pod_monitor_scrapes_the_metrics_port() -> None:
    job = make_job(monitoring={"interval": "30s"})
    monitor = builders.build_workers_podmonitor(job)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == _container(builders.build_loader_deployment(job))["ports"][0]["name"]
    assert endpoint["interval"] == "30s"
    assert endpoint["path"] == "/metrics"
    off = make_job(monitoring={"podMonitor": False})
    assert "PodMonitor" not in [o["kind"] for o in builders.build_all(off)]


def test_strimzi_cluster_gets_kafkatopics_and_its_bootstrap_service() -> None:
    kafka = {"strimziCluster": {"name": "events", "namespace": "kafka"}, "topic": {"partitions": 6}}
    job = make_job(kafka=kafka)
    topics = builders.build_topic_kafkatopics(job)
    names = Topics.for_job("markets.btc")  # <namespace>.<name>: see the test below
    assert [(t["metadata"]["name"], t["spec"]["partitions"]) for t in topics] == [
        (names.bars, 6),
        (names.metrics, 6),
        (names.deadletter, 1),
        (names.progress, 1),
    ]
    # Every topic keeps its records (issue 10, point 6); the progress topic is compacted.
    durable = {"retention.ms": "-1", "retention.bytes": "-1"}
    assert topics[-1]["spec"]["config"] == {**durable, "cleanup.policy": "compact"}
    for topic in topics:
        assert topic["apiVersion"] == "kafka.strimzi.io/v1"
        assert topic["kind"] == "KafkaTopic"
        assert topic["metadata"]["namespace"] == "kafka"
        assert topic["metadata"]["labels"][labels.STRIMZI_CLUSTER] == "events"
        # No replicas asked for: Strimzi takes the cluster's default.replication.factor.
        assert "replicas" not in topic["spec"]
        assert topic["spec"]["config"].items() >= durable.items()
    three = builders.build_topic_kafkatopics(
        make_job(kafka={**kafka, "topic": {"partitions": 6, "replicas": 3}})
    )
    assert {t["spec"]["replicas"] for t in three} == {3}
    assert {t["spec"]["config"]["min.insync.replicas"] for t in three} == {"2"}
    settings = builders.worker_settings(job)
    assert settings["HFTPIPE_KAFKA_BOOTSTRAP_SERVERS"] == "events-kafka-bootstrap.kafka.svc:9092"
    assert settings["HFTPIPE_CREATE_TOPICS"] == "false"
    assert [o["kind"] for o in builders.build_all(job)].count("KafkaTopic") == 4

    same_namespace = make_job(kafka={"strimziCluster": {"name": "events", "port": 9093}})
    assert builders.bootstrap_servers(same_namespace) == "events-kafka-bootstrap.markets.svc:9093"
    assert builders.build_topic_kafkatopics(make_job()) == []


class _Secrets:
    """A stand-in for :class:`hftpipe_operator.kube.Kube`'s Secret reads (no cluster here)."""

    def __init__(self, data: dict[tuple[str, str], dict[str, str]]) -> None:
        self.data = data

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        found = self.data.get((namespace, name), {})
        if key not in found:
            raise KeyError(f"Secret {namespace}/{name} has no key {key!r}")
        return found[key]


def test_the_operator_reads_kafka_as_its_workers_do() -> None:
    from hftpipe_operator.handlers import kafka_config  # noqa: PLC0415 - imports kopf

    kube = _Secrets({("markets", "replay"): {"password": "pw", "sasl.jaas.config": "..."}})
    strimzi_user = {"username": "replay", "secretRef": {"name": "replay"}}
    job = make_job(kafka={**BASE["kafka"], "credentials": strimzi_user})
    config = kafka_config(job, kube, None)  # type: ignore[arg-type]
    assert (config["sasl.username"], config["sasl.password"]) == ("replay", "pw")
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"

    keyed = make_job()  # the user name under `usernameKey` ("username") of the Secret
    kube.data["markets", "kafka-user"] = {"username": "u", "password": "p"}
    config = kafka_config(keyed, kube, None)  # type: ignore[arg-type]
    assert (config["sasl.username"], config["sasl.password"]) == ("u", "p")
    with pytest.raises(KeyError, match="markets/replay has no key 'username'"):
        kafka_config(
            make_job(kafka={**BASE["kafka"], "credentials": {"secretRef": {"name": "replay"}}}),
            kube,  # type: ignore[arg-type]
            None,
        )


def test_an_s3_source_gets_endpoint_region_and_keys_in_the_producer_only() -> None:
    s3 = {
        "endpointUrl": "http://minio.storage:9000",
        "region": "eu-west-1",
        "credentials": {"secretRef": {"name": "minio"}},
    }
    job = make_job(source={**BASE["source"], "s3": s3})
    producer = {v["name"]: v for v in _container(_workloads(job)["producer"])["env"]}
    assert producer["AWS_ENDPOINT_URL"] == {
        "name": "AWS_ENDPOINT_URL",
        "value": "http://minio.storage:9000",
    }
    assert producer["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert producer[var]["valueFrom"]["secretKeyRef"] == {
            "name": "minio",
            "key": var,
            "optional": False,
        }
    for worker in ("processor", "loader"):  # the loader's Snowflake client reads AWS_* too
        env = _container(_workloads(job)[worker])["env"]
        assert not [v for v in env if v["name"].startswith("AWS_")]
    assert not [k for k in builders.build_settings_configmap(job)["data"] if "AWS" in k]
    with pytest.raises(ValueError, match=r"source\.s3 is for an s3:// source\.url"):
        make_job(source={"url": "https://example.com/bars.csv", "s3": s3})


def _referenced_secrets(value: Any) -> set[str]:
    """Names of the Secrets a manifest makes the kubelet read: env secretKeyRefs, secret
    volumes, image pull secrets, anywhere in it."""
    found: set[str] = set()
    if isinstance(value, dict):
        if "secretKeyRef" in value:
            found.add(value["secretKeyRef"]["name"])
        if "secret" in value and isinstance(value["secret"], dict):
            found.add(value["secret"]["secretName"])
        for ref in value.get("imagePullSecrets") or ():
            found.add(ref["name"])
        for item in value.values():
            found |= _referenced_secrets(item)
    elif isinstance(value, list):
        for item in value:
            found |= _referenced_secrets(item)
    return found


def test_named_secrets_are_every_secret_the_manifests_reference() -> None:
    """The opt-in check (labels.SECRET_OPT_IN) sees every Secret a worker could mount."""
    job = make_job(
        kafka={
            **BASE["kafka"],
            "tls": {"caSecretRef": {"name": "kafka-ca"}},
        },
        warehouse=SNOWFLAKE,
        source={
            "url": "s3://bars/btc.csv",
            "s3": {"credentials": {"secretRef": {"name": "s3-keys"}}},
        },
        images={"pullSecrets": ["registry", "kafka-user"]},
    )
    named = builders.named_secrets(job.spec)
    assert named == {
        "kafka-user": ["kafka.credentials.secretRef", "images.pullSecrets[1]"],
        "kafka-ca": ["kafka.tls.caSecretRef"],
        "redis-auth": ["redis.credentials.secretRef"],
        "sf": ["warehouse.snowflake.secretRef"],
        "s3-keys": ["source.s3.credentials.secretRef"],
        "registry": ["images.pullSecrets[0]"],
    }
    assert _referenced_secrets(builders.build_all(job, complete=False)) == set(named)
    assert builders.named_secrets(make_job(kafka={"bootstrapServers": "k:9092"}).spec) == {
        "redis-auth": ["redis.credentials.secretRef"]
    }
