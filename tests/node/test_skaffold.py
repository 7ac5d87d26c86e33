"""skaffold's ``local-node`` profile on the real node: ``skaffold run`` builds both images
with our buildah builder, imports them into the node's containerd and installs both
charts with helm; the operator rolls out with the very image skaffold built, and
``skaffold delete`` takes both releases away.

The releases are the README's (hftpipe-stack in ``default``, hftpipe-operator in
``hftpipe-system``), the ones test_replayjob.py installs: the operator chart's
cluster-scoped objects (the ReplayJob CRD, which ``helm uninstall`` keeps and only a
release of the same name and namespace can adopt again, and the ClusterRole named after
the release) rule out a second copy beside them. So either order works in one session:
run first, this test leaves only what test_replayjob's ``helm install`` adopts (the
kept CRD) or ignores; run after it, ``skaffold run`` upgrades its releases, and
``skaffold delete`` removes them once that test is done with them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hftpipe_devstack import images, skaffold
from hftpipe_devstack.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NS = "hftpipe-system"
RELEASES = {("hftpipe-stack", "default"), ("hftpipe-operator", OPERATOR_NS)}


@pytest.fixture(scope="session")
def skaffold_binary() -> Path:
    """Built (or found in the cache) before the cluster starts: cold it is a ~7 min build."""
    return skaffold.ensure_skaffold()


def _skaffold(cluster: Cluster, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hftpipe_devstack.skaffold", *args],
        cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _releases(cluster: Cluster) -> set[tuple[str, str]]:
    listed: list[dict[str, Any]] = json.loads(cluster.run("helm", "list", "-A", "-o", "json"))
    return {(r["name"], r["namespace"]) for r in listed if r.get("status") == "deployed"}


def deployed_tags(output: str) -> dict[str, str]:
    """What skaffold run reports it deployed: its ``Tags used in deployment:`` lines,
    `` - <image> -> <reference>`` (``--file-output`` is ``skaffold build``'s alone)."""
    _, _, after = output.partition("Tags used in deployment:")
    return dict(re.findall(r"^ - (\S+) -> (\S+)$", after, re.M))


def _tail(done: subprocess.CompletedProcess[str], lines: int = 60) -> str:
    return "\n".join((done.stdout + done.stderr).splitlines()[-lines:])


@pytest.mark.timeout(1800)
def test_skaffold_run_local_node_deploys_the_operator_it_built(
    skaffold_binary: Path, cluster: Cluster
) -> None:
    assert skaffold_binary.is_file()
    started = time.monotonic()
    try:
        done = _skaffold(cluster, "run", "-p", "local-node", timeout=1200)
        took = time.monotonic() - started
        print(f"skaffold run -p local-node: {took:.0f} s")
        # What skaffold said (its build and deploy steps and timings), for a look afterwards.
        (REPO / "tests/node/.last-skaffold-run.txt").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, _tail(done)

        built = deployed_tags(done.stdout)
        assert set(built) == {"hftpipe-operator", "hftpipe-workers"}, built
        # With local.push false skaffold deploys <name>:<image ID>, the ID the
        # containerd-backed Docker API reported for the image the build command imported.
        tag = built["hftpipe-operator"]
        name, _, image_id = tag.rpartition(":")
        assert name == "hftpipe-operator", tag
        assert re.fullmatch(r"[0-9a-f]{64}", image_id), tag
        assert _releases(cluster) >= RELEASES

        cluster.kubectl(
            "rollout", "status", "-n", OPERATOR_NS, "deploy/hftpipe-operator", "--timeout=180s"
        )
        deployment = cluster.get("deploy", "hftpipe-operator", "-n", OPERATOR_NS)
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == tag
        pods = [
            p
            for p in cluster.get(
                "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/instance=hftpipe-operator"
            )["items"]
            if p["metadata"].get("deletionTimestamp") is None
        ]
        assert pods, "no operator pod"
        for pod in pods:
            assert pod["spec"]["containers"][0]["image"] == tag
            statuses = pod["status"]["containerStatuses"]
            assert all(s["ready"] for s in statuses), statuses
        # What runs is that image: the running container's image in the CRI is the ID
        # skaffold named the tag after.
        running = [
            c
            for c in json.loads(cluster.crictl("ps", "-o", "json"))["containers"]
            if c["labels"].get("io.kubernetes.pod.namespace") == OPERATOR_NS
            and c["labels"].get("io.kubernetes.pod.name") in {p["metadata"]["name"] for p in pods}
        ]
        assert running, cluster.crictl("ps")
        for container in running:
            assert container["imageRef"] == f"sha256:{image_id}", container
        # The workers image is also in containerd under the name ReplayJobs run by
        # default (spec.images.workers), so k8s/replayjob.yaml runs what skaffold built.
        workers_id = built["hftpipe-workers"].rpartition(":")[2]
        status = json.loads(cluster.crictl("inspecti", "-o", "json", images.WORKERS_IMAGE))
        assert status["status"]["id"] == f"sha256:{workers_id}"
    finally:
        deleted = _skaffold(cluster, "delete", "-p", "local-node", timeout=600)
    assert deleted.returncode == 0, _tail(deleted)
    assert not RELEASES & _releases(cluster)
