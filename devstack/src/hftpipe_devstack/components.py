"""The stack's components: how each is configured, started and proven ready.

Readiness is proven with the real protocol, never with a sleep: Kafka by a
produce/consume round-trip through a fresh topic, Redis by an authenticated
PING, the API server by ``/readyz`` and the controller-manager by ``/healthz``.
"""

from __future__ import annotations

import base64
import secrets
import ssl
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

from . import install, pki
from .node import KUBERNETES_SERVICE_IP, NODE_IP, NODE_NAME, SERVICE_CIDR
from .procs import ProcessTable, StartError, free_port, port_open, tail

# --------------------------------------------------------------------------- Kafka

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


SCRAM_MECHANISM: Final = "SCRAM-SHA-512"
"""The SASL mechanism of Strimzi's ``scram-sha-512`` KafkaUsers (the production values')."""

STANDARD_AUTHORIZER: Final = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
"""KRaft's ACL authorizer (ACLs live in the cluster metadata; ZooKeeper's AclAuthorizer
is gone from Kafka 4)."""


@dataclass(frozen=True)
class KafkaScram:
    """A broker that authenticates and authorizes as production does: SASL/SCRAM-SHA-512
    on the client listener and ACLs enforced, no ACL meaning no access.

    ``admin`` is the broker's own principal (to itself and to its controller) and the one
    super user; its SCRAM credentials are written at format time, so the broker can
    authenticate to itself before any client could have created them. Other users are
    made with the Admin API (see :mod:`hftpipe_devstack.kafkauser`).
    """

    admin: str = "admin"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    def client_config(self) -> dict[str, str]:
        """librdkafka settings of a client that authenticates as the super user."""
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": self.admin,
            "sasl.password": self.password,
        }

    def format_args(self) -> list[str]:
        """``kafka-storage format`` options that store the super user's SCRAM credentials."""
        # URL-safe base64 has neither ',' nor '=' nor ']', which would end the value.
        return [f"--add-scram={SCRAM_MECHANISM}=[name={self.admin},password={self.password}]"]

    def server_properties(self, sasl_listeners: list[str]) -> dict[str, str]:
        """What turns authentication and ACLs on (pure): SCRAM on ``sasl_listeners`` (the
        first is the inter-broker one), PLAIN on the controller listener."""
        scram_login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{self.admin}" password="{self.password}";'
        )
        # SCRAM credentials live in the metadata log that the controller serves: the
        # broker logs in to its controller before it has read any, so that listener uses
        # PLAIN, against the one user this JAAS entry declares.
        plain_login = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{self.admin}" password="{self.password}" '
            f'user_{self.admin}="{self.password}";'
        )
        mechanism = SCRAM_MECHANISM.lower()
        props = {
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain_login,
            "authorizer.class.name": STANDARD_AUTHORIZER,
            "super.users": f"User:{self.admin}",
            # Kafka's default, stated: a resource without an ACL is refused to everyone
            # but the super user, as on a Strimzi cluster with `simple` authorization.
            "allow.everyone.if.no.acl.found": "false",
        }
        for listener in sasl_listeners:
            props[f"listener.name.{listener.lower()}.{mechanism}.sasl.jaas.config"] = scram_login
        return props


def kafka_server_properties(
    *,
    port: int,
    controller_port: int,
    log_dir: Path,
    pod_listener: str | None = None,
    scram: KafkaScram | None = None,
) -> str:
    """server.properties for one combined broker+controller node in KRaft mode (pure).

    ``pod_listener`` (``host:port``) adds a listener for the real node's pods, on the
    node's IP and advertised as such: a client that bootstraps through the
    ``<cluster>-kafka-bootstrap`` Service is then told an address it can reach.
    ``scram`` makes every listener authenticate (SASL_PLAINTEXT) and turns ACLs on.
    """
    # The client listener is named after its protocol, as in Kafka's own examples; with
    # authentication every listener speaks SASL, the controller's included.
    client = "SASL_PLAINTEXT" if scram else "PLAINTEXT"
    listeners = [f"{client}://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{controller_port}"]
    advertised = [f"{client}://127.0.0.1:{port}"]
    protocols = [f"CONTROLLER:{client}", f"{client}:{client}"]
    sasl_listeners = [client]
    if pod_listener is not None:
        listeners.append(f"PODS://{pod_listener}")
        advertised.append(f"PODS://{pod_listener}")
        protocols.append(f"PODS:{client}")
        sasl_listeners.append("PODS")
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": client,
        "listener.security.protocol.map": ",".join(protocols),
        "log.dirs": str(log_dir),
        # Code must create its topics: a typo in a topic name fails loudly instead
        # of silently creating a one-partition topic.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # One node: no point waiting for more group members to join.
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.hours": "-1",
        "log.segment.bytes": str(256 * 1024 * 1024),
        **(scram.server_properties(sasl_listeners) if scram else {}),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def scram_env(client: Mapping[str, str]) -> dict[str, str]:
    """The workers' environment variables (``HFTPIPE_KAFKA_SASL_*``...) for the SASL
    settings in ``client`` (librdkafka names), so that ``source .stack/env`` or a test's
    worker authenticates as ``client`` does."""
    from hftpipe_workers.settings import KafkaSettings, env_names  # noqa: PLC0415

    fields = {
        "security.protocol": "security_protocol",
        "sasl.mechanism": "sasl_mechanism",
        "sasl.username": "sasl_username",
        "sasl.password": "sasl_password",
    }
    return {env_names(KafkaSettings, fields[k])[0]: v for k, v in client.items() if k in fields}


def kafka_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def kafka_roundtrip(
    bootstrap: str, *, timeout: float = 10.0, client: Mapping[str, str] | None = None
) -> bool:
    """Create a topic, produce one record and consume it back: the broker really works.

    ``client`` adds librdkafka settings (a broker with authentication: its credentials)."""
    from confluent_kafka import Consumer, Producer  # noqa: PLC0415
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

    topic = f"__hftpipe_ready_{uuid.uuid4().hex[:8]}"
    quiet: dict[str, str | int | float | bool] = {
        "bootstrap.servers": bootstrap,
        "log_level": 3,
        **(client or {}),
    }  # errors only, while polling
    admin = AdminClient(quiet)
    for fut in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        fut.result(timeout=timeout)
    payload = uuid.uuid4().bytes
    producer = Producer({**quiet, "acks": "all"})
    producer.produce(topic, payload)
    if producer.flush(timeout) != 0:
        return False
    consumer = Consumer(
        {
            **quiet,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        msg = None
        for _ in range(int(timeout * 2)):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                break
        ok = msg is not None and msg.error() is None and msg.value() == payload
    finally:
        consumer.close()
    for fut in admin.delete_topics([topic]).values():
        fut.result(timeout=timeout)
    return ok


@dataclass
class Kafka:
    """A single-node Kafka 4.x broker+controller in KRaft mode."""

    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    pod_address: str | None = None
    """The real node's IP, when pods must reach the broker (``make cluster-up``)."""
    pod_port: int = field(default_factory=free_port)
    scram: KafkaScram | None = None
    """SASL/SCRAM and ACLs (:class:`KafkaScram`); None: plaintext, everyone allowed."""

    @property
    def pod_bootstrap(self) -> str | None:
        """``bootstrap.servers`` for pods (the node's IP), or None without a node."""
        return None if self.pod_address is None else f"{self.pod_address}:{self.pod_port}"

    @property
    def bootstrap(self) -> str:
        """The ``bootstrap.servers`` value clients use."""
        return f"127.0.0.1:{self.port}"

    def start(self, table: ProcessTable, workdir: Path) -> dict[str, str]:
        """Format storage, start the broker, wait for a round-trip; return env vars."""
        libs = install.ensure_kafka() / "libs"
        java = install.java()
        workdir.mkdir(parents=True, exist_ok=True)
        props = workdir / "server.properties"
        props.write_text(
            kafka_server_properties(
                port=self.port,
                controller_port=self.controller_port,
                log_dir=workdir / "data",
                pod_listener=self.pod_bootstrap,
                scram=self.scram,
            )
        )
        props.chmod(0o600)  # with authentication, it holds the super user's password
        log4j = workdir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=table.log_dir / "kafka-server.log"))
        jvm = [
            java,
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{libs}/*",
        ]
        fmt_log = table.log_dir / "kafka-format.log"
        with fmt_log.open("wb") as out:
            fmt = subprocess.run(
                [
                    *jvm,
                    "kafka.tools.StorageTool",
                    "format",
                    # One token: a base64 id starts with "-" one time in 64, and
                    # argparse then took it for an option ("--cluster-id: expected
                    # one argument"; seen failing a whole test session's stack).
                    f"--cluster-id={kafka_cluster_id()}",
                    f"--config={props}",
                    *(self.scram.format_args() if self.scram else []),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if fmt.returncode != 0:
            raise StartError(
                f"kafka: formatting KRaft storage failed (exit {fmt.returncode})."
                f"\n--- last lines of {fmt_log} ---\n{tail(fmt_log)}"
            )
        table.start(
            "kafka", [*jvm, "kafka.Kafka", str(props)], ports=[self.port, self.controller_port]
        )
        table.wait_until(
            "kafka",
            lambda: port_open(self.port),
            timeout=120,
            what=f"broker listening on {self.bootstrap}",
        )
        table.wait_until(
            "kafka",
            lambda: kafka_roundtrip(
                self.bootstrap, client=self.scram.client_config() if self.scram else None
            ),
            timeout=120,
            what="produce/consume round-trip",
            interval=1.0,
        )
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "KAFKA_LIBS": str(libs)}
        if self.pod_bootstrap is not None:
            env["KAFKA_POD_BOOTSTRAP_SERVERS"] = self.pod_bootstrap
        if self.scram is not None:
            env.update(scram_env(self.scram.client_config()))
        return env


# --------------------------------------------------------------------------- Redis


@dataclass
class Redis:
    """redis-server with a password (clients must authenticate)."""

    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    @property
    def url(self) -> str:
        """``redis://default:password@127.0.0.1:port/0`` (redis-cli needs the user name)."""
        return f"redis://default:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, table: ProcessTable, workdir: Path) -> dict[str, str]:
        """Start redis-server, wait for an authenticated PING; return env vars."""
        import redis  # noqa: PLC0415

        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "redis.conf"
        conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\nprotected-mode yes\n"
            f"requirepass {self.password}\ndir {workdir}\n"
            # An append-only file, as the stack chart's Redis has: the processor's
            # exactly-once state lives here, and a Redis that comes back empty after a
            # crash makes it rebuild every job from its topics (or refuse to).
            'save ""\nappendonly yes\nappendfsync everysec\ndaemonize no\nlogfile ""\n'
        )
        conf.chmod(0o600)
        table.start("redis", [install.redis_server(), str(conf)], ports=[self.port])
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        table.wait_until(
            "redis", lambda: bool(client.ping()), timeout=30, what="authenticated PING"
        )
        client.close()
        return {"REDIS_URL": self.url}


# ---------------------------------------------------------------------- Kubernetes


def _https_ok(url: str, *, ca: Path | None, cert: pki.CertFiles | None, expect: str = "ok") -> bool:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl.create_default_context()
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    response = httpx.get(url, verify=ctx, timeout=3)
    return response.status_code == 200 and response.text.strip() == expect


@dataclass
class KubeControlPlane:
    """etcd + kube-apiserver + kube-controller-manager, client-cert auth, RBAC on."""

    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    kcm_port: int = field(default_factory=free_port)
    with_node: bool = False
    """Serve a real node: reachable from pods at the node's IP (through the
    ``kubernetes`` Service), the Node authorizer on, kubelet client certificates."""
    certs: pki.ControlPlanePki | None = None
    """Set by :meth:`start`: the node needs the CA and its certificates."""

    @property
    def server(self) -> str:
        """The API server URL."""
        return f"https://127.0.0.1:{self.apiserver_port}"

    def start(self, table: ProcessTable, workdir: Path) -> dict[str, str]:
        """Start the three processes in order, each proven ready; return env vars."""
        kube_bin = install.ensure_kubernetes()
        workdir.mkdir(parents=True, exist_ok=True)
        certs = pki.generate(
            workdir / "pki",
            server_ips=("127.0.0.1", NODE_IP, KUBERNETES_SERVICE_IP),
            node_name=NODE_NAME,
            node_ip=NODE_IP,
        )
        self.certs = certs
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            pki.kubeconfig(self.server, certs.ca.cert, certs.admin, user="hftpipe-admin")
        )
        kcm_kubeconfig = workdir / "controller-manager.kubeconfig"
        kcm_kubeconfig.write_text(
            pki.kubeconfig(
                self.server,
                certs.ca.cert,
                certs.controller_manager,
                user="system:kube-controller-manager",
            )
        )

        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        table.start(
            "etcd",
            [
                install.etcd(),
                "--name",
                "hftpipe",
                "--data-dir",
                str(workdir / "etcd"),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"hftpipe={peer_url}",
                "--quota-backend-bytes",
                str(2 * 1024**3),
            ],
            ports=[self.etcd_port, self.etcd_peer_port],
        )
        table.wait_until(
            "etcd",
            lambda: httpx.get(f"{etcd_url}/health", timeout=2).json().get("health") == "true",
            timeout=30,
            what="GET /health",
        )

        if self.with_node:
            # Pods reach the API server through the `kubernetes` Service, whose
            # endpoint is the advertised address: the node's IP (0.0.0.0 binds it and
            # 127.0.0.1). The kubelet authenticates as system:node:<name>, which the
            # Node authorizer and NodeRestriction admission are for.
            where = [
                "--bind-address=0.0.0.0",
                f"--advertise-address={NODE_IP}",
                "--endpoint-reconciler-type=lease",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={certs.kubelet_client.cert}",
                f"--kubelet-client-key={certs.kubelet_client.key}",
                f"--kubelet-certificate-authority={certs.ca.cert}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            # One API server, no kubelets: no lease-based endpoint reconciling.
            where = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                "--authorization-mode=RBAC",
            ]
        table.start(
            "kube-apiserver",
            [
                str(kube_bin / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                *where,
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={certs.apiserver.cert}",
                f"--tls-private-key-file={certs.apiserver.key}",
                f"--client-ca-file={certs.ca.cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={certs.service_account_pub}",
                f"--service-account-signing-key-file={certs.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                # No priority-and-fairness bookkeeping to slow a 2-core machine down.
                "--enable-priority-and-fairness=false",
                "--profiling=false",
            ],
            ports=[self.apiserver_port],
        )
        table.wait_until(
            "kube-apiserver",
            lambda: _https_ok(f"{self.server}/readyz", ca=certs.ca.cert, cert=certs.admin),
            timeout=180,
            what="GET /readyz",
            interval=0.5,
        )

        table.start(
            "kube-controller-manager",
            [
                str(kube_bin / "kube-controller-manager"),
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.kcm_port}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={certs.service_account_key}",
                f"--root-ca-file={certs.ca.cert}",
                f"--cluster-signing-cert-file={certs.ca.cert}",
                f"--cluster-signing-key-file={certs.ca.key}",
                # Garbage collection, Deployment -> ReplicaSet -> Pod, Jobs, namespaces
                # and service accounts are what the operator relies on.
                "--controllers=*",
            ],
            ports=[self.kcm_port],
        )
        table.wait_until(
            "kube-controller-manager",
            lambda: _https_ok(f"https://127.0.0.1:{self.kcm_port}/healthz", ca=None, cert=None),
            timeout=120,
            what="GET /healthz",
            interval=0.5,
        )
        return {
            "KUBECONFIG": str(kubeconfig),
            "KUBE_API_SERVER": self.server,
            "KUBECTL": str(kube_bin / "kubectl"),
        }
