"""Shared fixtures: the real local stack, started once per test session.

Tiers are set by directory: ``tests/unit`` needs nothing, ``tests/integration``
gets the ``integration`` marker and a running stack (real Kafka, Redis, etcd,
kube-apiserver, kube-controller-manager); ``tests/node`` brings its own cluster with a
real node (its conftest). The stack is tied to the pytest process: if pytest dies, the
kernel kills the servers.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from hftpipe_devstack.stack import Stack, ephemeral_stack

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by tier from their directory, so ``-m`` selects tiers."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts[0] == "integration":
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The whole local stack, up for the session."""
    with ephemeral_stack() as running:
        yield running


@pytest.fixture(scope="session")
def stack_env(stack: Stack) -> dict[str, str]:
    """The env file's variables (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, KUBECONFIG, tools)."""
    return dict(stack.env)


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_env: dict[str, str]) -> str:
    """``bootstrap.servers`` of the real broker."""
    return stack_env["KAFKA_BOOTSTRAP_SERVERS"]


@pytest.fixture(scope="session")
def redis_url(stack_env: dict[str, str]) -> str:
    """``redis://default:<password>@127.0.0.1:<port>/0``."""
    return stack_env["REDIS_URL"]


@pytest.fixture(scope="session")
def kubeconfig(stack_env: dict[str, str]) -> Path:
    """Admin kubeconfig of the real API server."""
    return Path(stack_env["KUBECONFIG"])


@pytest.fixture(scope="session")
def api(kubeconfig: Path) -> Any:
    """A Kubernetes API client (kubernetes.client.ApiClient) with the admin kubeconfig."""
    from kubernetes import config  # noqa: PLC0415 - only the integration tiers need it

    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture
def subprocess_env(stack_env: dict[str, str]) -> dict[str, str]:
    """os.environ plus the stack's variables, for running CLIs against the stack."""
    return {**os.environ, **stack_env}


# ------------------------------------------- third-party CRDs, schemas, validation

Manifests = Sequence[Mapping[str, Any]] | str
"""Kubernetes objects as dicts, or YAML text (``helm template`` output as it comes)."""


def _manifest_text(docs: Manifests) -> str:
    if isinstance(docs, str):
        text = docs
        # Composed, not loaded: only counts the objects (and a bare '=' scalar, which
        # some CRD-based manifests hold, would not load with PyYAML's safe loader).
        count = sum(1 for node in yaml.compose_all(docs) if node.tag != "tag:yaml.org,2002:null")
    else:
        text = yaml.safe_dump_all([dict(d) for d in docs], sort_keys=False)
        count = len(docs)
    if count == 0:
        # kubeconform and kubectl both pass an empty input: that proves nothing.
        raise ValueError("no Kubernetes objects to validate")
    return text


@pytest.fixture(scope="session")
def crds_installed(stack_env: dict[str, str], kubeconfig: Path) -> list[dict[str, Any]]:
    """Our ReplayJob CRD plus every Strimzi and Prometheus Operator CRD, Established.

    Installed once per session into the session API server (server-side apply)
    and never removed: a test that creates a stand-in for one of these CRDs
    must accept that it may already be there (409). Returns the CRD bodies.
    """
    from hftpipe_devstack import thirdparty  # noqa: PLC0415 - integration tiers only
    from hftpipe_operator.crd import build_crd  # noqa: PLC0415

    crds = [build_crd(), *thirdparty.thirdparty_crds()]
    thirdparty.install_crds(stack_env["KUBECTL"], kubeconfig, crds)
    return crds


@pytest.fixture(scope="session")
def kube_schemas(
    stack_env: dict[str, str],
    kubeconfig: Path,
    crds_installed: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """kubeconform schema directory of every kind the session API server serves.

    Built-in kinds at the server's version plus every kind of ``crds_installed``
    (``kafka.strimzi.io/kafka_v1.json`` ...); use with
    ``hftpipe_devstack.kubeschemas.kubeconform_args(kube_schemas)``.
    """
    from hftpipe_devstack import kubeschemas  # noqa: PLC0415

    directory = tmp_path_factory.mktemp("kube-schemas")
    kubeschemas.write_from_server(
        stack_env["KUBECTL"],
        kubeconfig,
        directory,
        expect=kubeschemas.crd_schema_paths(crds_installed),
    )
    return directory


@pytest.fixture(scope="session")
def kubeconform(stack_env: dict[str, str], kube_schemas: Path) -> Callable[[Manifests], str]:
    """``validate(docs)``: kubeconform ``-strict -summary`` against ``kube_schemas``.

    Raises AssertionError with kubeconform's output if any object is invalid or
    of a kind without a schema; returns that output (its summary) otherwise.
    """
    from hftpipe_devstack import kubeschemas  # noqa: PLC0415

    def validate(docs: Manifests) -> str:
        proc = subprocess.run(
            [stack_env["KUBECONFORM"], *kubeschemas.kubeconform_args(kube_schemas), "-"],
            input=_manifest_text(docs),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"kubeconform rejected the manifests:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    return validate


@pytest.fixture(scope="session")
def server_dry_run(
    stack_env: dict[str, str], kubeconfig: Path, crds_installed: list[dict[str, Any]]
) -> Callable[[Manifests], str]:
    """``dry_run(docs)``: ``kubectl apply --server-side --dry-run=server --validate=strict``.

    The API server runs its full admission (schemas, CEL rules, defaulting) and
    stores nothing. Raises AssertionError with kubectl's output on any rejection;
    returns kubectl's output otherwise. Namespaced objects without a namespace
    land in ``default``; a namespace they name must exist.
    """

    def dry_run(docs: Manifests) -> str:
        proc = subprocess.run(
            [
                stack_env["KUBECTL"],
                "--kubeconfig",
                str(kubeconfig),
                "apply",
                "--server-side",
                "--dry-run=server",
                "--validate=strict",
                "--field-manager=hftpipe-tests",
                "-f",
                "-",
            ],
            input=_manifest_text(docs),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"the API server rejected the manifests:\n{proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    return dry_run
