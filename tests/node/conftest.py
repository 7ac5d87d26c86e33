"""The real-node tier: a one-node cluster whose pods run in real containers.

The session's cluster is ``make cluster-up``'s code (:data:`CLUSTER_COMPONENTS`):
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a kubelet with
containerd + runc, CNI bridge networking, kube-proxy (iptables), CoreDNS and the
local-path provisioner, with the images built from our Dockerfiles. It needs root.
Run as its own pytest invocation (``make test`` does), so the other tiers' stack is
not up beside it on a 2-core machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hftpipe_devstack.cluster import Cluster
from hftpipe_devstack.stack import CLUSTER_COMPONENTS, ephemeral_stack

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.node)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The real one-node cluster, up for the session, torn down after."""
    if os.geteuid() != 0:
        pytest.fail("the real-node tier needs root (containers, cgroups, bridge, iptables)")
    with ephemeral_stack(CLUSTER_COMPONENTS) as running:
        yield Cluster(running)
