"""The node is a real one: pods get IPs in containers, Services route, DNS resolves,
claims bind, and the real PodSecurity admission refuses what restricted forbids."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from hftpipe_devstack import images
from hftpipe_devstack.cluster import Cluster
from hftpipe_devstack.node import DNS_SERVICE_IP, NODE_NAME, POD_CIDR

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _namespace(cluster: Cluster, level: str = "restricted") -> str:
    name = f"node-{uuid.uuid4().hex[:6]}"
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "labels": {"pod-security.kubernetes.io/enforce": level},
                },
            }
        ]
    )
    return name


def test_one_node_is_ready(cluster: Cluster) -> None:
    printed = cluster.kubectl("get", "nodes")
    lines = printed.strip().splitlines()
    assert len(lines) == 2, printed
    assert lines[1].split()[:2] == [NODE_NAME, "Ready"], printed
    node = cluster.get("node", NODE_NAME)
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://"), info
    assert info["kubeletVersion"] == "v1.34.4", info


def test_pods_get_ips_services_route_and_dns_resolves(cluster: Cluster) -> None:
    ns = _namespace(cluster)
    labels = {"app": "web"}
    # The workers image's own Python serves HTTP: the image we built, run as our user.
    server = {
        "name": "web",
        "image": images.WORKERS_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["python3", "-m", "http.server", "8080", "--directory", "/opt/venv"],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        "securityContext": RESTRICTED,
    }
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web", "namespace": ns, "labels": labels},
                "spec": {"containers": [server]},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": ns},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        ]
    )
    cluster.kubectl("wait", "-n", ns, "pod/web", "--for=condition=Ready", "--timeout=120s")
    ip = cluster.get("pod", "web", "-n", ns)["status"]["podIP"]
    assert ip.startswith(POD_CIDR.rsplit(".", 2)[0]), ip
    # A second pod reaches the first by Service name (CoreDNS, then kube-proxy's DNAT).
    # Retried as any client would: the Service's endpoints reach CoreDNS's cache and
    # kube-proxy's rules a moment after the server pod turns Ready.
    client = f"""
import socket, time, urllib.request
for attempt in range(30):
    try:
        addr = socket.gethostbyname("web.{ns}.svc.cluster.local")
        body = urllib.request.urlopen("http://web/bin/", timeout=3).read().decode()
        break
    except OSError as exc:
        print("retry", attempt, exc, flush=True)
        time.sleep(1)
resolv = open("/etc/resolv.conf").read()
print(addr, "hftpipe" in body, "{DNS_SERVICE_IP}" in resolv)
"""
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "client", "namespace": ns},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "client",
                            "image": images.WORKERS_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["python3", "-c", client],
                            "securityContext": RESTRICTED,
                        }
                    ],
                },
            }
        ]
    )
    waited = cluster.kubectl(
        "wait", "-n", ns, "pod/client", "--for=jsonpath={.status.phase}=Succeeded",
        "--timeout=180s", check=False,
    )  # fmt: skip
    assert "condition met" in waited, cluster.kubectl(
        "logs", "-n", ns, "client", check=False
    ) + cluster.kubectl("get", "pods,endpointslices", "-A", "-o", "wide", check=False)
    service_ip = cluster.get("service", "web", "-n", ns)["spec"]["clusterIP"]
    logs = cluster.kubectl("logs", "-n", ns, "client")
    assert logs.splitlines()[-1].split() == [service_ip, "True", "True"], logs
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_restricted_pod_security_is_enforced(cluster: Cluster) -> None:
    ns = _namespace(cluster)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root", "namespace": ns},
        "spec": {
            "containers": [
                {
                    "name": "root",
                    "image": images.WORKERS_IMAGE,
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }
    done = subprocess.run(
        ["kubectl", "apply", "-f", "-"], input=json.dumps(pod), env=cluster.env,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode != 0, done.stdout
    assert 'violates PodSecurity "restricted:latest"' in done.stderr, done.stderr
    assert "privileged" in done.stderr, done.stderr
    assert not cluster.kubectl("get", "pods", "-n", ns, "-o", "name").strip()
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_a_claim_is_provisioned_and_written_by_a_pod(cluster: Cluster) -> None:
    ns = _namespace(cluster)
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "namespace": ns},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "10Mi"}},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "writer", "namespace": ns},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"fsGroup": 10001},
                    "containers": [
                        {
                            "name": "writer",
                            "image": images.WORKERS_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["python3", "-c",
                                        "open('/data/x', 'w').write('kept')"],
                            "securityContext": RESTRICTED,
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                },
            },
        ]
    )  # fmt: skip
    cluster.kubectl(
        "wait", "-n", ns, "pod/writer", "--for=jsonpath={.status.phase}=Succeeded",
        "--timeout=120s",
    )  # fmt: skip
    claim = cluster.get("pvc", "data", "-n", ns)
    assert claim["status"]["phase"] == "Bound"
    volume = cluster.get("pv", claim["spec"]["volumeName"])
    assert volume["spec"]["storageClassName"] == "standard"
    path = volume["spec"].get("hostPath", volume["spec"].get("local", {}))["path"]
    assert Path(path, "x").read_text() == "kept"
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
