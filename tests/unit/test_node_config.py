"""The real node's configuration files, as data: what each setting is there for."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

from hftpipe_devstack import addons, images, node, pki


def test_containerd_config_names_the_local_pause_image_and_clamps_oom_scores(
    tmp_path: Path,
) -> None:
    text = node.containerd_config(
        root=tmp_path / "root", state=tmp_path / "state", socket=tmp_path / "c.sock",
        cni_conf_dir=tmp_path / "net.d",
    )  # fmt: skip
    config = tomllib.loads(text)
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    # Nothing can be pulled: the sandbox image is the one imported beforehand.
    assert cri["sandbox_image"] == images.PAUSE_IMAGE
    # Root here lacks CAP_SYS_RESOURCE: runc cannot set the pause container's -998.
    assert cri["restrict_oom_score_adj"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is False  # cgroup v1, cgroupfs, no systemd
    # Every path of the node is under its own directory, so cluster-down can find it.
    assert runc["options"]["Root"].startswith(str(tmp_path))
    assert config["grpc"]["address"] == str(tmp_path / "c.sock")
    assert cri["cni"]["conf_dir"] == str(tmp_path / "net.d")


def test_the_networks_cannot_collide_with_each_other_or_the_usual_host_ranges() -> None:
    pods = ipaddress.IPv4Network(node.POD_CIDR)
    services = ipaddress.IPv4Network(node.SERVICE_CIDR)
    assert not pods.overlaps(services)
    benchmarking = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544: for tests like these
    assert pods.subnet_of(benchmarking)
    assert services.subnet_of(benchmarking)
    assert ipaddress.ip_address(node.NODE_IP) in pods
    assert ipaddress.ip_address(node.KUBERNETES_SERVICE_IP) == next(services.hosts())
    assert ipaddress.ip_address(node.DNS_SERVICE_IP) in services


def test_cni_config_is_one_bridge_with_the_node_as_gateway(tmp_path: Path) -> None:
    config = node.cni_conflist(ipam_dir=tmp_path)
    bridge, portmap = config["plugins"]
    assert bridge["bridge"] == node.BRIDGE
    assert bridge["ipam"]["ranges"] == [[{"subnet": node.POD_CIDR, "gateway": node.NODE_IP}]]
    assert bridge["ipMasq"] is False  # no NAT rule to leave behind
    assert portmap["type"] == "portmap"


def test_kubelet_never_garbage_collects_images_that_cannot_be_pulled_again(
    tmp_path: Path,
) -> None:
    files = pki.CertFiles(tmp_path / "c", tmp_path / "k")
    config = node.kubelet_config(
        ca=tmp_path / "ca", serving=files, runtime_socket=tmp_path / "s", port=1,
        healthz_port=2, resolv_conf=tmp_path / "r", pod_logs=tmp_path / "logs",
    )  # fmt: skip
    assert config["imageGCHighThresholdPercent"] == 100
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["clusterDNS"] == [node.DNS_SERVICE_IP]
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["address"] == node.NODE_IP


def test_coredns_answers_the_cluster_domain_and_forwards_nowhere() -> None:
    manifests = {m["kind"]: m for m in addons.coredns_manifests(images.COREDNS_IMAGE)}
    assert manifests["Service"]["spec"]["clusterIP"] == node.DNS_SERVICE_IP
    corefile = manifests["ConfigMap"]["data"]["Corefile"]
    assert f"kubernetes {node.CLUSTER_DOMAIN}" in corefile
    assert "forward" not in corefile  # nothing outside is reachable: fail fast
    container = manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == images.COREDNS_IMAGE
    assert container["securityContext"]["runAsNonRoot"] is True


def test_the_default_storage_class_is_kinds() -> None:
    manifests = addons.local_path_manifests(
        images.LOCAL_PATH_IMAGE, images.BUSYBOX_IMAGE, Path("/x")
    )
    (storage_class,) = [m for m in manifests if m["kind"] == "StorageClass"]
    assert storage_class["metadata"]["name"] == "standard"
    annotations = storage_class["metadata"]["annotations"]
    assert annotations["storageclass.kubernetes.io/is-default-class"] == "true"
    assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"
