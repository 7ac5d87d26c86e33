"""The node's cluster add-ons, as kind ships them: CoreDNS and a default StorageClass.

- CoreDNS answers ``cluster.local`` from the API (the ``kubernetes`` plugin) at the
  ``kube-dns`` Service's IP, which the kubelet writes into every pod's resolv.conf.
  There is no upstream resolver to forward to (nothing outside is reachable), so it
  has no ``forward`` block: a name outside the cluster fails at once instead of
  timing out.
- rancher's local-path-provisioner provisions PersistentVolumeClaims as directories
  under the node's directory, through its ``standard`` StorageClass (kind's name and
  provisioner), so ``volumeClaimTemplates`` and the operator's PVCs bind as on kind.

The manifests are built here as data (pure functions, unit-tested) and applied with
the stack's kubectl.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from .node import CLUSTER_DOMAIN, DNS_SERVICE_IP
from .procs import ProcessTable, StartError

Manifest = dict[str, Any]
DNS_PORT = 1053
"""CoreDNS listens above 1024 so it runs as non-root without NET_BIND_SERVICE; the
Service maps 53 to it."""

COREFILE = f"""\
.:{DNS_PORT} {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loop
    loadbalance
}}
"""

_RESTRICTED_CONTAINER: Manifest = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def coredns_manifests(image: str) -> list[Manifest]:
    """ServiceAccount, RBAC, Corefile, Deployment and the ``kube-dns`` Service (pure)."""
    ns = "kube-system"
    labels = {"k8s-app": "kube-dns"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "coredns", "namespace": ns},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": ns}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": ns},
            "data": {"Corefile": COREFILE},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": ns, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": DNS_PORT, "protocol": "UDP"},
                                    {
                                        "name": "dns-tcp",
                                        "containerPort": DNS_PORT,
                                        "protocol": "TCP",
                                    },
                                ],
                                "livenessProbe": {
                                    "httpGet": {"path": "/health", "port": 8080},
                                    "periodSeconds": 10,
                                },
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 2,
                                },
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "32Mi"},
                                    "limits": {"memory": "128Mi"},
                                },
                                "securityContext": _RESTRICTED_CONTAINER,
                                "volumeMounts": [
                                    {
                                        "name": "config",
                                        "mountPath": "/etc/coredns",
                                        "readOnly": True,
                                    }
                                ],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": ns, "labels": labels},
            "spec": {
                "clusterIP": DNS_SERVICE_IP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": DNS_PORT, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": DNS_PORT, "protocol": "TCP"},
                ],
            },
        },
    ]


def local_path_manifests(image: str, helper_image: str, path: Path) -> list[Manifest]:
    """local-path-provisioner in ``local-path-storage`` and the default ``standard`` class (pure).

    Its helper pods create and delete each volume's directory on the node through a
    hostPath, so their namespace is privileged; workloads' namespaces stay restricted.
    """
    ns = "local-path-storage"
    labels = {"app": "local-path-provisioner"}
    config = {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(path)]}]}
    helper_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "helper-pod"},
        "spec": {
            "priorityClassName": "system-node-critical",
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {"name": "helper-pod", "image": helper_image, "imagePullPolicy": "Never"}
            ],
        },
    }
    setup = '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n'
    teardown = '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n'
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "local-path-provisioner", "namespace": ns},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "local-path-provisioner"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": [
                        "nodes",
                        "persistentvolumeclaims",
                        "configmaps",
                        "pods",
                        "pods/log",
                    ],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["persistentvolumes"],
                    "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"],
                },
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete"]},
                {
                    "apiGroups": ["storage.k8s.io"],
                    "resources": ["storageclasses"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "local-path-provisioner"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "local-path-provisioner",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": "local-path-provisioner", "namespace": ns}
            ],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "local-path-config", "namespace": ns},
            "data": {
                "config.json": __import__("json").dumps(config),
                "setup": setup,
                "teardown": teardown,
                "helperPod.yaml": yaml.safe_dump(helper_pod),
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "local-path-provisioner", "namespace": ns, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "local-path-provisioner",
                        "containers": [
                            {
                                "name": "local-path-provisioner",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "command": [
                                    "local-path-provisioner",
                                    "--debug",
                                    "start",
                                    "--config",
                                    "/etc/config/config.json",
                                    "--service-account-name",
                                    "local-path-provisioner",
                                    "--provisioner-name",
                                    "rancher.io/local-path",
                                    "--helper-image",
                                    helper_image,
                                    "--configmap-name",
                                    "local-path-config",
                                ],
                                "env": [
                                    {
                                        "name": "POD_NAMESPACE",
                                        "valueFrom": {
                                            "fieldRef": {"fieldPath": "metadata.namespace"}
                                        },
                                    },
                                    {"name": "CONFIG_MOUNT_PATH", "value": "/etc/config/"},
                                ],
                                "securityContext": _RESTRICTED_CONTAINER,
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/config/"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "local-path-config"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": "standard",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "rancher.io/local-path",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        },
    ]


def _kubectl(kubectl: list[str], *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [*kubectl, *args], input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise StartError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def apply(kubectl: list[str], manifests: list[Manifest]) -> None:
    """``kubectl apply`` a list of objects (server-side, so re-applying is idempotent)."""
    _kubectl(
        kubectl,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(manifests),
    )


def install(kubectl: list[str], table: ProcessTable, workdir: Path) -> None:
    """Apply CoreDNS and the provisioner, and wait until both are rolled out."""
    from . import images  # noqa: PLC0415

    del table
    storage = workdir / "local-path"
    storage.mkdir(parents=True, exist_ok=True)
    apply(kubectl, coredns_manifests(images.COREDNS_IMAGE))
    apply(
        kubectl,
        local_path_manifests(images.LOCAL_PATH_IMAGE, images.BUSYBOX_IMAGE, storage),
    )
    for ns, name in (("kube-system", "coredns"), ("local-path-storage", "local-path-provisioner")):
        try:
            _kubectl(kubectl, "-n", ns, "rollout", "status", f"deployment/{name}", "--timeout=180s")
        except StartError as exc:
            # Say why: the pods' state and the node's events name the image or the probe.
            described = subprocess.run(
                [*kubectl, "-n", ns, "describe", "pods"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            raise StartError(
                f"{exc}\n--- kubectl -n {ns} describe pods ---\n{described[-4000:]}"
            ) from None
