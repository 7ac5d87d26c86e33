"""A real Kubernetes node on this machine: containerd + runc, CNI, kubelet, kube-proxy.

The local stack's control plane (etcd, kube-apiserver, kube-controller-manager) gets
what a kind node has: ``kube-scheduler``, a ``kubelet`` that runs pods in real
containers through containerd's CRI plugin and ``runc`` (own namespaces and cgroups),
pod networking by the standard CNI plugins (``bridge`` + ``host-local`` + ``portmap``),
``kube-proxy`` in iptables mode, CoreDNS as the cluster DNS and rancher's
local-path-provisioner for PersistentVolumeClaims. The images come from
:mod:`.images` (our Dockerfiles, built by buildah, and labelled stand-ins for the
bases no registry can give us here).

One node per machine: the bridge, the iptables chains and the cgroup tree are
machine-wide, so :func:`claim_node` refuses a second one. Everything the node makes is
undone by :func:`teardown` (``make cluster-down``, and the pytest fixture's end):
pods stopped through the CRI, shims killed, mounts under the node's directory
unmounted, network namespaces, veths and the bridge deleted, kube-proxy's and CNI's
iptables rules removed, the kubelet's cgroups removed. A test checks that nothing
is left.

Addresses come from ranges no host network uses: RFC 2544's benchmarking block
198.18.0.0/15 is reserved for tests like these and never routed on the Internet.
The host is the node: its IP is the pod bridge's gateway, so pods reach the host's
Kafka and API server there, and the host reaches pods and Services directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from . import install, pki
from .procs import ProcessTable, StartError, free_port, port_open

NODE_NAME: Final = "hftpipe-node"
BRIDGE: Final = "hftpipe0"
POD_CIDR: Final = "198.18.0.0/24"
NODE_IP: Final = "198.18.0.1"
"""The node's IP: the pod bridge's gateway address, on the host."""
SERVICE_CIDR: Final = "198.19.0.0/24"
KUBERNETES_SERVICE_IP: Final = "198.19.0.1"
"""First IP of the service range: ``kubernetes.default``, in the API server's certificate."""
DNS_SERVICE_IP: Final = "198.19.0.10"
CLUSTER_DOMAIN: Final = "cluster.local"
CNI_BIN_DIR: Final = Path("/usr/lib/cni")
"""Debian's ``containernetworking-plugins``."""
NETNS_DIR: Final = Path("/var/run/netns")
"""Where containerd 1.6's CRI plugin mounts pod network namespaces (not configurable)."""
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
KUBEPODS_CGROUP: Final = "kubepods"
_OWNER_FILE: Final = Path("/run/hftpipe-node.owner")

_APT_HINT = (
    "Install Debian's packages: apt-get install -y --no-install-recommends containerd runc "
    "containernetworking-plugins iptables conntrack buildah debootstrap busybox-static "
    "(or run: make system-deps)."
)


# ------------------------------------------------------------------ pure configs


def containerd_config(*, root: Path, state: Path, socket: Path, cni_conf_dir: Path) -> str:
    """containerd 1.6's config.toml (version 2) for the kubelet's CRI (pure).

    No registry is reachable, so nothing may be pulled: the sandbox (pause) image is
    imported beforehand and named here.
    """
    from .images import PAUSE_IMAGE  # noqa: PLC0415 - images imports this module's names

    return f"""\
version = 2
root = "{root}"
state = "{state}"
oom_score = 0

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_selinux = false
  # Lowering an oom_score_adj needs CAP_SYS_RESOURCE, which root lacks on this VM (and in
  # rootless or nested setups): runc fails "can't get final child's PID from pipe" on the
  # pause container's -998. Clamp scores to containerd's own instead, as rootless does.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's container state beside containerd's, not in /run/containerd/runc.
        Root = "{state}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"""


def cni_conflist(*, ipam_dir: Path) -> dict[str, Any]:
    """The pod network: one Linux bridge, host-local IPAM, portmap for hostPorts (pure).

    No IP masquerade: pods talk to the host and to each other only (nothing outside
    is reachable here), so there is no NAT rule to leave behind but kube-proxy's.
    """
    return {
        "cniVersion": "1.0.0",
        "name": "hftpipe",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    *,
    ca: Path,
    serving: pki.CertFiles,
    runtime_socket: Path,
    port: int,
    healthz_port: int,
    resolv_conf: Path,
    pod_logs: Path,
) -> dict[str, Any]:
    """KubeletConfiguration for a cgroup v1 host with the cgroupfs driver (pure).

    Image garbage collection is off: an image removed here cannot be pulled again.
    Eviction thresholds are low: the machine's disk is shared and sometimes nearly
    full, and an evicted test pod proves nothing.
    """
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv_conf),
        "podLogsDir": str(pod_logs),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "serializeImagePulls": False,
        "registerNode": True,
        "maxPods": 110,
        # The host's sysctls are set by the kubelet itself (it owns this throwaway VM's).
        "protectKernelDefaults": False,
        "failCgroupV1": False,
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(*, kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    """KubeProxyConfiguration in iptables mode (pure)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # Leave the host's conntrack table size alone.
        "conntrack": {"maxPerCore": 0, "min": 0},
        "iptables": {"masqueradeAll": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        "nodePortAddresses": [f"{NODE_IP}/32"],
    }


# ------------------------------------------------------------------- host helpers


def _run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise StartError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def require_root() -> None:
    """The node needs root: namespaces, cgroups, bridges and iptables."""
    if os.geteuid() != 0:
        raise StartError(
            "the real node needs root (containers, cgroups, a bridge and iptables rules); "
            "run 'make cluster-up' as root, or use 'make stack-up' for the control plane only"
        )


def claim_node(state_dir: Path, still_running: bool) -> None:
    """Record that the stack in ``state_dir`` owns this machine's node, or refuse.

    The claim outlives ``make cluster-up`` (which exits once the node is up), so it
    is a file naming the owner, not a lock held by a process: a claim whose stack has
    no process left is stale and taken over.
    """
    if _OWNER_FILE.exists():
        owner = Path(_OWNER_FILE.read_text().strip())
        if owner != state_dir and still_running:
            raise StartError(
                f"another hftpipe node runs on this machine (state in {owner}); "
                f"stop it first: python -m hftpipe_devstack --dir {owner} down"
            )
    _OWNER_FILE.parent.mkdir(parents=True, exist_ok=True)
    _OWNER_FILE.write_text(f"{state_dir}\n")


def node_owner() -> Path | None:
    """The state directory of the stack that claimed the node, if any."""
    return Path(_OWNER_FILE.read_text().strip()) if _OWNER_FILE.exists() else None


def release_node(state_dir: Path) -> None:
    """Drop the claim if ``state_dir`` holds it."""
    if node_owner() == state_dir:
        _OWNER_FILE.unlink(missing_ok=True)


def bridge_up() -> None:
    """Create the pod bridge with the node's IP, before anything binds that address."""
    if _run(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    prefix = POD_CIDR.split("/")[1]
    addrs = _run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    if f"{NODE_IP}/{prefix}" not in addrs:
        _run(["ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    # Bridged pod-to-pod traffic must pass iptables for Service DNAT to be undone on
    # the way back (the classic br_netfilter requirement); forwarding for routed traffic.
    for key in ("net/bridge/bridge-nf-call-iptables", "net/ipv4/ip_forward"):
        Path("/proc/sys", key).write_text("1\n")


def _mounts_under(root: Path) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    return points


def unmount_under(root: Path) -> None:
    """Unmount everything below ``root``, deepest first (containers' rootfs, volumes)."""
    for _ in range(5):
        points = _mounts_under(root)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            _run(["umount", "-l", point], check=False)


def _processes_mentioning(needle: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
    return pids


def _cgroup_pids(subtree: Path) -> list[int]:
    pids: list[int] = []
    if not subtree.exists():
        return pids
    for procs in subtree.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def remove_cgroups() -> None:
    """Kill what is left in the kubelet's cgroups and remove them, leaves first."""
    for hierarchy in CGROUP_ROOT.iterdir():
        tree = hierarchy / KUBEPODS_CGROUP
        for pid in _cgroup_pids(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    for hierarchy in CGROUP_ROOT.iterdir():
        tree = hierarchy / KUBEPODS_CGROUP
        if not tree.exists():
            continue
        for directory in sorted(
            (d for d in tree.rglob("*") if d.is_dir()), key=lambda p: -len(p.parts)
        ):
            while directory.exists():
                try:
                    directory.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
        with contextlib.suppress(OSError):
            tree.rmdir()


def leftovers(workdir: Path) -> dict[str, list[str]]:
    """What a node would leave on the machine: empty lists after :func:`teardown`."""
    links = _run(["ip", "-o", "link", "show"], check=False).stdout
    iptables = "\n".join(
        _run(["iptables-save", "-t", table], check=False).stdout for table in ("nat", "filter")
    )
    return {
        "processes": [
            str(p)
            for p in _processes_mentioning(str(workdir)) + _processes_mentioning("containerd-shim")
            if _is_ours(p, workdir)
        ],
        "mounts": _mounts_under(workdir),
        "netns": sorted(p.name for p in NETNS_DIR.glob("cni-*")) if NETNS_DIR.exists() else [],
        "interfaces": [
            m.group(1)
            for m in re.finditer(r"^\d+: ([^:@]+)[@:].*$", links, re.M)
            if m.group(1) == BRIDGE or f"master {BRIDGE}" in m.group(0)
        ],
        "iptables": [
            line
            for line in iptables.splitlines()
            if re.search(r"KUBE-|CNI-|hftpipe", line) and not line.startswith("#")
        ],
        "cgroups": [
            str(h / KUBEPODS_CGROUP)
            for h in CGROUP_ROOT.iterdir()
            if (h / KUBEPODS_CGROUP).exists()
        ],
    }


def _is_ours(pid: int, workdir: Path) -> bool:
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return str(workdir).encode() in cmdline
    return False


def teardown(
    workdir: Path, table: ProcessTable | None = None, *, kubectl: list[str] | None = None
) -> None:
    """Undo everything a node made. Safe to run twice, and after a crash.

    Order matters: pods first (through the API while the kubelet still runs, so CNI's
    DEL runs for each sandbox and releases veths, IPs and hostPort rules), then the
    node processes, then whatever a crash left (shims, mounts, namespaces, links,
    chains, cgroups).
    """
    if kubectl is not None:
        _run(
            [
                *kubectl,
                "delete",
                "pods",
                "--all",
                "--all-namespaces",
                "--grace-period=5",
                "--wait=true",
                "--timeout=60s",
            ],
            check=False,
        )
    socket = workdir / "containerd" / "containerd.sock"
    crictl = _crictl()
    if crictl and socket.exists():
        endpoint = f"unix://{socket}"
        _run(
            [
                crictl,
                "--runtime-endpoint",
                endpoint,
                "--timeout",
                "30s",
                "stopp",
                *_pod_ids(crictl, endpoint),
            ],
            check=False,
        )
        _run(
            [crictl, "--runtime-endpoint", endpoint, "--timeout", "30s", "rmp", "-fa"], check=False
        )
    if table is not None:
        table.stop_all(grace=10)
    # Shims outlive containerd by design (they re-parent to init): kill ours.
    for pid in _processes_mentioning(str(workdir)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    remove_cgroups()
    unmount_under(workdir)
    if NETNS_DIR.exists():
        for ns in NETNS_DIR.glob("cni-*"):
            _run(["umount", "-l", str(ns)], check=False)
            with contextlib.suppress(OSError):
                ns.unlink()
    links = _run(["ip", "-o", "link", "show", "master", BRIDGE], check=False).stdout
    for name in re.findall(r"^\d+: ([^:@]+)", links, re.M):
        _run(["ip", "link", "delete", name], check=False)
    _run(["ip", "link", "delete", BRIDGE], check=False)
    kube_bin = install.built_kubernetes()
    if kube_bin is not None:
        _run([str(kube_bin / "kube-proxy"), "--cleanup"], check=False)
    _flush_chains()


def _flush_chains() -> None:
    """Delete every KUBE-* and CNI-* chain and the rules that jump to them."""
    for table in ("nat", "filter", "mangle"):
        dump = _run(["iptables-save", "-t", table], check=False).stdout
        rules = [
            line[3:]
            for line in dump.splitlines()
            if line.startswith("-A ") and re.search(r"-j (KUBE-|CNI-)|^-A (KUBE-|CNI-)", line)
        ]
        for rule in rules:
            _run(["iptables", "-t", table, "-D", *_split_rule(rule)], check=False)
        chains = re.findall(r"^:((?:KUBE|CNI)-\S+)", dump, re.M)
        for chain in chains:
            _run(["iptables", "-t", table, "-F", chain], check=False)
        for chain in chains:
            _run(["iptables", "-t", table, "-X", chain], check=False)


def _split_rule(rule: str) -> list[str]:
    import shlex  # noqa: PLC0415

    return shlex.split(rule)


def _crictl() -> str | None:
    path = install.completed(f"crictl-{CRICTL.version}")
    return str(path / "bin" / "crictl") if path else None


def _pod_ids(crictl: str, endpoint: str) -> list[str]:
    out = _run([crictl, "--runtime-endpoint", endpoint, "pods", "-q"], check=False).stdout
    return out.split()


CRICTL = install.GoTool("crictl", "sigs.k8s.io/cri-tools/cmd/crictl", "v1.34.0")


# ------------------------------------------------------------------- the node


@dataclass
class Node:
    """containerd, kubelet, kube-proxy and kube-scheduler for one control plane."""

    kubelet_port: int = field(default_factory=free_port)
    kubelet_healthz_port: int = field(default_factory=free_port)
    proxy_healthz_port: int = field(default_factory=free_port)
    proxy_metrics_port: int = field(default_factory=free_port)
    scheduler_port: int = field(default_factory=free_port)

    def start(
        self,
        table: ProcessTable,
        workdir: Path,
        *,
        server: str,
        certs: pki.ControlPlanePki,
        admin_kubeconfig: Path,
        repo_root: Path,
    ) -> dict[str, str]:
        """Start the node's processes, load the images, install the add-ons; env vars."""
        from . import addons, images  # noqa: PLC0415

        require_root()
        containerd = install.require_tool("containerd", _APT_HINT)
        install.require_tool("runc", _APT_HINT)
        install.require_tool("iptables", _APT_HINT)
        if not (CNI_BIN_DIR / "bridge").exists():
            raise StartError(f"no CNI plugins in {CNI_BIN_DIR}. {_APT_HINT}")
        kube_bin = install.ensure_kubernetes()
        crictl = CRICTL.ensure()
        archives = images.ensure_cluster_images(repo_root)

        workdir.mkdir(parents=True, exist_ok=True)
        cd = workdir / "containerd"
        socket = cd / "containerd.sock"
        cni_conf = workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-hftpipe.conflist").write_text(
            json.dumps(cni_conflist(ipam_dir=workdir / "cni" / "ipam"), indent=2)
        )
        config = cd / "config.toml"
        cd.mkdir(parents=True, exist_ok=True)
        config.write_text(
            containerd_config(
                root=cd / "root", state=cd / "state", socket=socket, cni_conf_dir=cni_conf
            )
        )
        table.start("containerd", [containerd, "--config", str(config)])
        endpoint = f"unix://{socket}"
        table.wait_until(
            "containerd",
            lambda: (
                _run(
                    [str(crictl), "--runtime-endpoint", endpoint, "version"], check=False
                ).returncode
                == 0
            ),
            timeout=60,
            what="CRI version over its socket",
        )
        images.import_images(archives, socket)

        def kubeconfig(name: str, client: pki.CertFiles, user: str) -> Path:
            path = workdir / f"{name}.kubeconfig"
            path.write_text(pki.kubeconfig(server, certs.ca.cert, client, user=user))
            return path

        kubelet_dir = workdir / "kubelet"
        kubelet_dir.mkdir(parents=True, exist_ok=True)
        resolv = workdir / "resolv.conf"
        # No upstream DNS exists here; pods with dnsPolicy Default get none.
        resolv.write_text("")
        kubelet_cfg = workdir / "kubelet-config.yaml"
        kubelet_cfg.write_text(
            yaml.safe_dump(
                kubelet_config(
                    ca=certs.ca.cert,
                    serving=certs.node_serving,
                    runtime_socket=socket,
                    port=self.kubelet_port,
                    healthz_port=self.kubelet_healthz_port,
                    resolv_conf=resolv,
                    pod_logs=workdir / "pod-logs",
                )
            )
        )
        table.start(
            "kubelet",
            [
                str(kube_bin / "kubelet"),
                f"--config={kubelet_cfg}",
                f"--kubeconfig={kubeconfig('kubelet', certs.node, f'system:node:{NODE_NAME}')}",
                f"--root-dir={kubelet_dir}",
                f"--cert-dir={workdir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
            ports=[self.kubelet_port, self.kubelet_healthz_port],
        )
        table.wait_until(
            "kubelet",
            lambda: port_open(self.kubelet_healthz_port),
            timeout=120,
            what="healthz port open",
        )
        proxy_cfg = workdir / "kube-proxy-config.yaml"
        proxy_cfg.write_text(
            yaml.safe_dump(
                kube_proxy_config(
                    kubeconfig=kubeconfig("kube-proxy", certs.kube_proxy, "system:kube-proxy"),
                    healthz_port=self.proxy_healthz_port,
                    metrics_port=self.proxy_metrics_port,
                )
            )
        )
        table.start(
            "kube-proxy",
            [str(kube_bin / "kube-proxy"), f"--config={proxy_cfg}", "--v=1"],
            ports=[self.proxy_healthz_port, self.proxy_metrics_port],
        )
        sched_kc = kubeconfig("scheduler", certs.scheduler, "system:kube-scheduler")
        table.start(
            "kube-scheduler",
            [
                str(kube_bin / "kube-scheduler"),
                f"--kubeconfig={sched_kc}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.scheduler_port}",
                "--leader-elect=false",
            ],
            ports=[self.scheduler_port],
        )
        kubectl = [str(kube_bin / "kubectl"), f"--kubeconfig={admin_kubeconfig}"]
        table.wait_until(
            "kubelet",
            lambda: _node_ready(kubectl),
            timeout=180,
            what=f"node {NODE_NAME} Ready",
            interval=1.0,
        )
        addons.install(kubectl, table, workdir)
        return {
            "CONTAINERD_ADDRESS": str(socket),
            "CONTAINER_RUNTIME_ENDPOINT": endpoint,
            "CRICTL": str(crictl),
            "HFTPIPE_NODE_DIR": str(workdir),
            "HFTPIPE_NODE_IP": NODE_IP,
        }


def kafka_bootstrap_service(
    kubectl: list[str], cluster: str, namespace: str, ip: str, port: int
) -> None:
    """``<cluster>-kafka-bootstrap`` in ``namespace``: the Service Strimzi would create,
    here selector-less with an EndpointSlice to the host's broker, so a ReplayJob that
    names a Strimzi cluster resolves exactly as on a Strimzi install (port 9092)."""
    from .addons import apply  # noqa: PLC0415 - addons imports this module

    name = f"{cluster}-kafka-bootstrap"
    labels = {
        "strimzi.io/cluster": cluster,
        "strimzi.io/kind": "Kafka",
        "hftpipe.io/stand-in": "true",
    }
    apply(
        kubectl,
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {
                    "ports": [
                        {"name": "tcp-clients", "port": 9092, "targetPort": port, "protocol": "TCP"}
                    ]
                },
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-host",
                    "namespace": namespace,
                    "labels": {**labels, "kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "tcp-clients", "port": port, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            },
        ],
    )


def _node_ready(kubectl: list[str]) -> bool:
    out = _run(
        [
            *kubectl,
            "get",
            "node",
            NODE_NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        ],
        check=False,
    ).stdout
    return out.strip() == "True"
