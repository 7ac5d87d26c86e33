"""skaffold.yaml's ``local-node`` profile and hftpipe_devstack.skaffold, without a node.

The profile is checked against what the node runs (the Redis stand-in, the README's
releases) and the containerd-backed Docker API is spoken to over its unix socket with
a fake image store; tests/node/test_skaffold.py runs the whole thing for real.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hftpipe_devstack import images, skaffold
from hftpipe_devstack.install import InstallError

REPO = Path(__file__).resolve().parents[2]
ID = "sha256:" + "ab" * 32


def _config() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    return doc


def _profile() -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in _config()["profiles"] if p["name"] == "local-node"]
    assert len(found) == 1
    return found[0]


# ------------------------------------------------------------------------ profile


def test_the_profile_builds_the_same_images_with_the_custom_builder_and_pushes_nothing() -> None:
    top, profile = _config()["build"], _profile()["build"]
    assert profile["local"]["push"] is False
    assert profile["tagPolicy"] == top["tagPolicy"]
    assert [a["image"] for a in profile["artifacts"]] == [a["image"] for a in top["artifacts"]]
    for mine, theirs in zip(profile["artifacts"], top["artifacts"], strict=True):
        dockerfile = theirs["docker"]["dockerfile"]
        command = shlex.split(mine["custom"]["buildCommand"])
        assert command[1:] == [
            "-m", "hftpipe_devstack.skaffold", "custom-build", "--dockerfile", dockerfile,
        ]  # fmt: skip
        assert mine["custom"]["dependencies"]["dockerfile"]["path"] == dockerfile
        assert (REPO / dockerfile).is_file()


def test_the_profile_installs_the_readmes_two_releases_with_the_nodes_overrides() -> None:
    top = {r["name"]: r for r in _config()["deploy"]["helm"]["releases"]}
    releases = {r["name"]: r for r in _profile()["deploy"]["helm"]["releases"]}
    assert list(releases) == ["hftpipe-stack", "hftpipe-operator"]
    for name, release in releases.items():
        assert release["namespace"] == top[name]["namespace"]
        assert release["valuesFiles"] == top[name]["valuesFiles"]
    stack, operator = releases["hftpipe-stack"], releases["hftpipe-operator"]
    assert stack["chartPath"] == "{{." + skaffold.STACK_CHART_ENV + "}}"
    assert stack["skipBuildDependencies"] is True
    repository, tag = images.REDIS_IMAGE.rsplit(":", 1)
    assert stack["setValues"] == {
        "kafka.enabled": False,
        "redis.image.repository": repository,
        "redis.image.tag": tag,
    }
    assert operator["chartPath"] == top["hftpipe-operator"]["chartPath"]
    assert operator["setValueTemplates"] == top["hftpipe-operator"]["setValueTemplates"]


# ---------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("ref", "normalized"),
    [
        ("hftpipe-operator:0.1.0", "docker.io/library/hftpipe-operator:0.1.0"),
        ("hftpipe-operator", "docker.io/library/hftpipe-operator:latest"),
        ("someone/tool:1", "docker.io/someone/tool:1"),
        ("localhost/hftpipe-standin/redis:7.0", "localhost/hftpipe-standin/redis:7.0"),
        ("127.0.0.1:5000/x:1", "127.0.0.1:5000/x:1"),
        (f"x@{ID}", f"docker.io/library/x@{ID}"),
    ],
)
def test_normalize_ref_names_images_as_containerd_does(ref: str, normalized: str) -> None:
    assert skaffold.normalize_ref(ref) == normalized


def test_custom_build_refuses_to_push_and_needs_skaffolds_and_the_nodes_env() -> None:
    with pytest.raises(InstallError, match="no registry"):
        skaffold.custom_build("operator/Dockerfile", {"PUSH_IMAGE": "true"})
    with pytest.raises(InstallError, match="CONTAINERD_ADDRESS"):
        skaffold.custom_build("operator/Dockerfile", {"IMAGE": "x:1", "BUILD_CONTEXT": "."})


def test_skaffold_env_points_at_the_api_the_stack_chart_copy_and_the_nodes_tools(
    tmp_path: Path,
) -> None:
    env = skaffold.skaffold_env(
        {"PATH": "/usr/bin", "HELM": "/opt/helm/bin/helm", "KUBECTL": "/opt/kube/kubectl"},
        "unix:///x.sock",
        tmp_path,
    )
    assert env["DOCKER_HOST"] == "unix:///x.sock"
    assert env["PATH"] == "/opt/helm/bin:/opt/kube:/usr/bin"
    # Relative to the repository root: skaffold puts that before a relative chartPath.
    chart = REPO / env[skaffold.STACK_CHART_ENV]
    assert not Path(env[skaffold.STACK_CHART_ENV]).is_absolute()
    assert (chart / "Chart.yaml").is_file()
    # The copy with stand-ins for the two dependencies helm insists on.
    assert {p.name for p in (chart / "charts").iterdir()} >= {
        "strimzi-kafka-operator",
        "kube-prometheus-stack",
    }
    assert "update-check: false" in Path(env["SKAFFOLD_CONFIG"]).read_text()


# -------------------------------------------------------------- the Docker API


class FakeStore:
    def __init__(self) -> None:
        self.tags: list[tuple[str, str]] = []

    def inspect(self, ref_or_id: str) -> dict[str, Any] | None:
        if ref_or_id in (ID, "hftpipe-operator:0.1.0"):
            return {"id": ID, "repoTags": ["docker.io/library/hftpipe-operator:0.1.0"], "size": 7}
        return None

    def tag(self, source: str, target: str) -> None:
        self.tags.append((source, target))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Path, FakeStore]]:
    store = FakeStore()
    # A short path: a unix socket's is limited to 107 bytes, and tmp_path can be longer.
    sock = Path(f"/tmp/hftpipe-docker-{os.getpid()}.sock")
    with skaffold.docker_api(store, sock) as host:
        assert host == f"unix://{sock}"
        yield sock, store
    assert not sock.exists()


def test_the_api_answers_ping_and_version_as_dockers_client_negotiates(
    api: tuple[Path, FakeStore],
) -> None:
    sock, _ = api
    assert skaffold.unix_http(sock, "GET", "/_ping") == (200, b"OK")
    assert skaffold.unix_http(sock, "HEAD", "/_ping")[0] == 200
    status, body = skaffold.unix_http(sock, "GET", f"/v{skaffold.DOCKER_API_VERSION}/version")
    assert status == 200
    assert json.loads(body)["ApiVersion"] == skaffold.DOCKER_API_VERSION


def test_the_api_inspects_by_name_and_id_and_says_no_such_image(
    api: tuple[Path, FakeStore],
) -> None:
    sock, _ = api
    for name in ("hftpipe-operator:0.1.0", ID):
        status, body = skaffold.unix_http(sock, "GET", f"/v1.41/images/{name}/json")
        assert status == 200
        assert json.loads(body)["Id"] == ID
    status, body = skaffold.unix_http(sock, "GET", "/v1.41/images/nope:1/json")
    assert status == 404
    assert "No such image" in json.loads(body)["message"]


def test_the_api_tags_in_the_store_by_the_images_own_name(api: tuple[Path, FakeStore]) -> None:
    sock, store = api
    status, _ = skaffold.unix_http(
        sock, "POST", f"/v1.41/images/{ID}/tag?repo=hftpipe-operator&tag=abc"
    )
    assert status == 201
    assert store.tags == [
        ("docker.io/library/hftpipe-operator:0.1.0", "docker.io/library/hftpipe-operator:abc")
    ]
    assert skaffold.unix_http(sock, "POST", "/v1.41/images/nope/tag?repo=x&tag=y")[0] == 404


def test_the_api_refuses_what_it_does_not_serve(api: tuple[Path, FakeStore]) -> None:
    sock, _ = api
    status, body = skaffold.unix_http(sock, "GET", "/v1.41/containers/json")
    assert status == 501
    assert "not served" in json.loads(body)["message"]
