"""The local stack as one object: bring components up in parallel, write the env file, stop.

``make stack-up`` / ``make stack-down`` and the pytest fixtures share this code,
so what a developer pokes at by hand is exactly what the tests run against.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import install, node
from .components import Kafka, KafkaScram, KubeControlPlane, Redis
from .procs import ProcessTable, StartError, alive

ALL_COMPONENTS = ("kafka", "redis", "kube")
"""What ``make stack-up`` starts: processes on 127.0.0.1, no root needed."""
CLUSTER_COMPONENTS = ("kafka", "kube", "node")
"""What ``make cluster-up`` starts: a real node (root) whose pods reach Kafka and the API
server at the node's IP. Redis comes from the stack chart's StatefulSet, in a pod."""
KNOWN_COMPONENTS = ("kafka", "redis", "kube", "node")
_OWNER_FILE = "owner.pid"
STRIMZI_CLUSTER = "kafka"
"""The Strimzi cluster name the kind values and the sample ReplayJob use."""


def repo_root() -> Path:
    """The checkout this package runs from (the images are built from its Dockerfiles)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "workers" / "Dockerfile").exists():
        raise StartError(
            f"{root} is not an hftpipe checkout (no workers/Dockerfile): the real node "
            "builds its images from the repository, so run it from a clone"
        )
    return root


def _tool_env(components: Iterable[str]) -> dict[str, str]:
    """helm, kubeconform and promtool, for what runs against the Kubernetes API (the
    charts' checks): only a stack with ``kube`` gets them, since a cold helm and
    kubeconform are minutes of ``go install`` that a Kafka-and-Redis stack (``make demo``,
    the benchmarks) never uses."""
    if "kube" not in components:
        return {}
    return {
        "HELM": str(install.HELM.ensure()),
        "KUBECONFORM": str(install.KUBECONFORM.ensure()),
        "PROMTOOL": install.promtool(),
    }


@dataclass
class Stack:
    """A set of running components whose state lives in ``state_dir``."""

    state_dir: Path
    components: tuple[str, ...] = ALL_COMPONENTS
    tie_to_parent: bool = False
    kafka_scram: bool = False
    """Kafka with SASL/SCRAM-SHA-512 and ACLs (:class:`KafkaScram`): the env file then
    authenticates as its super user."""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def env_file(self) -> Path:
        """``<state_dir>/env``: ``export KEY=value`` lines, to ``source``."""
        return self.state_dir / "env"

    def table(self) -> ProcessTable:
        """The process table of this stack."""
        return ProcessTable(self.state_dir, tie_to_parent=self.tie_to_parent)

    def env_from_file(self) -> dict[str, str]:
        """The variables of the env file a running stack wrote (``PATH`` left out)."""
        env = {}
        for line in self.env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            if key != "PATH":
                env[key] = shlex.split(value)[0] if value else ""
        return env

    def running(self) -> list[str]:
        """Names of this stack's processes that are alive."""
        return [r.name for r in self.table().records() if alive(r)]

    def up(self) -> dict[str, str]:
        """Start every component (in parallel), prove each ready, write the env file.

        If any component fails, everything already started is stopped again and
        the error (which names the component and shows its log) is raised.
        """
        unknown = set(self.components) - set(KNOWN_COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; known: {KNOWN_COMPONENTS}")
        with_node = "node" in self.components
        if with_node and not {"kube", "kafka"} <= set(self.components):
            raise ValueError("the node needs the 'kube' and 'kafka' components too")
        if self.running():
            raise StartError(
                f"a stack is already running from {self.state_dir} ({', '.join(self.running())})"
                "; stop it first with 'make stack-down'"
            )
        # Install first, one at a time: installs are long and print progress, and
        # a failed install should not leave half the servers running.
        env = _tool_env(self.components)
        if "kafka" in self.components:
            install.ensure_kafka()
        if "kube" in self.components:
            install.ensure_kubernetes()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if with_node:
            node.require_root()
            owner = node.node_owner()
            node.claim_node(
                self.state_dir,
                still_running=owner is not None
                and any(alive(r) for r in ProcessTable(owner, tie_to_parent=False).records()),
            )
            if owner is not None and owner != self.state_dir:
                # A crashed run's node: undo what it left before making ours.
                node.teardown(owner / "node")
            node.teardown(self.state_dir / "node")
            node.bridge_up()
        # Every 'up' starts from empty data: the stack is throwaway, and stale KRaft
        # metadata or etcd data from an earlier run would clash with new ids.
        for name in KNOWN_COMPONENTS:
            shutil.rmtree(self.state_dir / name, ignore_errors=True)
        shutil.rmtree(self.state_dir / "logs", ignore_errors=True)
        (self.state_dir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        table = self.table()
        kafka = Kafka(
            pod_address=node.NODE_IP if with_node else None,
            scram=KafkaScram() if self.kafka_scram else None,
        )
        kube = KubeControlPlane(with_node=with_node)
        starters: dict[str, Callable[[], dict[str, str]]] = {
            "kafka": lambda: kafka.start(table, self.state_dir / "kafka"),
            "redis": lambda: Redis().start(table, self.state_dir / "redis"),
            "kube": lambda: kube.start(table, self.state_dir / "kube"),
        }
        servers = [c for c in self.components if c in starters]
        try:
            with ThreadPoolExecutor(max_workers=len(servers)) as pool:
                futures = {n: pool.submit(starters[n]) for n in servers}
                for name in servers:
                    env.update(futures[name].result())
            if with_node:
                assert kube.certs is not None
                assert kafka.pod_bootstrap is not None
                env.update(
                    node.Node().start(
                        table,
                        self.state_dir / "node",
                        server=kube.server,
                        certs=kube.certs,
                        admin_kubeconfig=Path(env["KUBECONFIG"]),
                        repo_root=repo_root(),
                    )
                )
                kubectl = [env["KUBECTL"], f"--kubeconfig={env['KUBECONFIG']}"]
                node.kafka_bootstrap_service(
                    kubectl, STRIMZI_CLUSTER, "default", kafka.pod_address or "", kafka.pod_port
                )
        except BaseException:
            self._stop(table)
            raise
        env["HFTPIPE_STACK_DIR"] = str(self.state_dir)
        self.env = env
        # Put the stack's own kubectl, helm and kubeconform first on PATH, so that
        # plain `kubectl` after `source .stack/env` matches the server's version.
        tool_dirs = sorted(
            {str(Path(env[k]).parent) for k in ("KUBECTL", "HELM", "KUBECONFORM") if k in env}
        )
        self.env_file.write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
            + f'export PATH={shlex.quote(":".join(tool_dirs))}:"$PATH"\n'
        )
        return env

    def _stop(self, table: ProcessTable) -> list[str]:
        node_dir = self.state_dir / "node"
        if node_dir.exists():
            kube = self.state_dir / "kube" / "kubeconfig"
            kube_bin = install.built_kubernetes()
            apiserver_up = any(r.name == "kube-apiserver" and alive(r) for r in table.records())
            kubectl = (
                [str(kube_bin / "kubectl"), f"--kubeconfig={kube}"]
                if kube_bin and kube.exists() and apiserver_up
                else None
            )
            # Pods first, through the kubelet, while it still runs; then everything.
            node.teardown(node_dir, table, kubectl=kubectl)
            node.release_node(self.state_dir)
        return table.stop_all(grace=5 if node_dir.exists() else 20)

    def down(self) -> list[str]:
        """Stop every process of this stack (and undo its node); return the names that
        needed SIGKILL."""
        killed = self._stop(self.table())
        self.env_file.unlink(missing_ok=True)
        return killed


def reap_stale(root: Path) -> list[Path]:
    """Stop and delete stacks under ``root`` whose owning process has died.

    PR_SET_PDEATHSIG already kills a dead test run's servers; this catches what
    it cannot (a server that was mid-start, or a machine where the guard failed).
    """
    reaped = []
    for owner in root.glob(f"*/{_OWNER_FILE}"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(owner.read_text().strip())
            if Path(f"/proc/{pid}").exists():
                continue
        Stack(owner.parent).down()
        shutil.rmtree(owner.parent, ignore_errors=True)
        reaped.append(owner.parent)
    return reaped


@contextlib.contextmanager
def ephemeral_stack(
    components: Iterable[str] = ALL_COMPONENTS, *, kafka_scram: bool = False
) -> Iterator[Stack]:
    """A stack in a fresh temporary directory, tied to this process, removed after."""
    root = Path(tempfile.gettempdir()) / "hftpipe-stacks"
    root.mkdir(exist_ok=True)
    reap_stale(root)
    stack = Stack(
        Path(tempfile.mkdtemp(prefix="stack-", dir=root)),
        tuple(components),
        tie_to_parent=True,
        kafka_scram=kafka_scram,
    )
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        shutil.rmtree(stack.state_dir, ignore_errors=True)
