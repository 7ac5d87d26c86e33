"""``cluster-down`` leaves nothing on the machine. Named to run last in this tier
(pytest runs a directory's files in name order): it takes the session's cluster down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hftpipe_devstack import node
from hftpipe_devstack.cluster import Cluster
from hftpipe_devstack.procs import port_open


def test_cluster_down_leaves_no_process_mount_interface_rule_or_cgroup(
    cluster: Cluster,
) -> None:
    node_dir = Path(cluster.stack.env["HFTPIPE_NODE_DIR"])
    before = node.leftovers(node_dir)
    # The check sees every kind of thing a node makes while it runs, so its empty
    # answer afterwards means something.
    for kind, found in before.items():
        assert found, f"a running node shows no {kind}: the leftover check cannot see them"
    ports = [p for r in cluster.stack.table().records() for p in r.ports]
    # What `make cluster-down` runs.
    done = subprocess.run(
        [sys.executable, "-m", "hftpipe_devstack", "--dir", str(cluster.stack.state_dir), "down"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert node.leftovers(node_dir) == {kind: [] for kind in before}
    assert [p for p in ports if port_open(p)] == []
    assert node.node_owner() is None
