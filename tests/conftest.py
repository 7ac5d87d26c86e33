"""Shared fixtures: the real local stack, started once per test session.

Tiers are set by directory: ``tests/unit`` needs nothing, ``tests/integration``
and ``tests/e2e`` get the ``integration``/``e2e`` marker and a running stack
(real Kafka, Redis, etcd, kube-apiserver, kube-controller-manager). The stack
is tied to the pytest process: if pytest dies, the kernel kills the servers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hftpipe_devstack.stack import Stack, ephemeral_stack

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by tier from their directory, so ``-m`` selects tiers."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts[0] == "integration":
            item.add_marker(pytest.mark.integration)
        elif parts[0] == "e2e":
            item.add_marker(pytest.mark.e2e)


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
