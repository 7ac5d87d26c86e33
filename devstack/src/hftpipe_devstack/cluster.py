"""Talking to a running real-node cluster as a user does: kubectl, helm, crictl; and the
two releases ``make cluster-up`` installs on it, as the README's helm commands would."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import charts, images
from .stack import Stack

NAMESPACE = "default"
"""Where the stack chart, the sample ReplayJob and its Redis Secret live (the stack
chart's ``hftpipe.io/namespace``)."""
OPERATOR_NAMESPACE = "hftpipe-system"


class CommandError(RuntimeError):
    """A command :class:`Cluster` ran (kubectl, helm, crictl...) failed or did not answer;
    the message holds the command and its output. An exception of its own, not an
    ``assert``: ``python -O`` drops asserts, and ``make cluster-up`` (not only the tests)
    must stop on a failed install."""


def release_installs(repo: Path = charts.REPO) -> list[tuple[str, Path, list[str]]]:
    """``(release, chart, helm arguments)`` of both charts, in install order, with the
    overrides this machine forces (each said where it is set) and nothing else: the
    README's commands for kind, plus those."""
    redis_repository, redis_tag = images.REDIS_IMAGE.rsplit(":", 1)
    stack = repo / "charts/hftpipe-stack"
    operator = repo / "charts/hftpipe-operator"
    return [
        (
            "hftpipe-stack",
            stack,
            [
                "-n", NAMESPACE, "-f", str(stack / "values-kind.yaml"),
                # Forced here: no Strimzi operator can run (its images cannot be pulled),
                # so no Kafka/KafkaNodePool objects; the stack's broker stands behind
                # the kafka-kafka-bootstrap Service Strimzi would create.
                "--set", "kafka.enabled=false",
                # Forced here: the official redis image cannot be pulled; a labelled
                # stand-in built from Debian's redis-server.
                "--set", f"redis.image.repository={redis_repository}",
                "--set", f"redis.image.tag={redis_tag}",
                "--wait", "--timeout", "5m",
            ],
        ),
        (
            "hftpipe-operator",
            operator,
            [
                "-n", OPERATOR_NAMESPACE, "--create-namespace",
                "-f", str(operator / "values-kind.yaml"),
                "--wait", "--timeout", "5m",
            ],
        ),
    ]  # fmt: skip


@dataclass(frozen=True)
class Cluster:
    """The running cluster and the ways a user talks to it."""

    stack: Stack

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus the env file's variables (KUBECONFIG, ...), the stack's kubectl
        and helm first on PATH, as after ``source .stack/env``."""
        tools = {str(Path(self.stack.env[k]).parent) for k in ("KUBECTL", "HELM")}
        return {
            **os.environ,
            **self.stack.env,
            "PATH": ":".join([*sorted(tools), os.environ["PATH"]]),
        }

    def run(
        self, *cmd: str, stdin: str | None = None, check: bool = True, timeout: float = 300
    ) -> str:
        try:
            done = subprocess.run(
                list(cmd),
                env=self.env,
                input=stdin,
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(f"{' '.join(cmd)}: no answer in {timeout} s") from exc
        if check and done.returncode != 0:
            raise CommandError(f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return self.run("kubectl", *args, stdin=stdin, check=check)

    def get(self, *args: str) -> dict[str, Any]:
        # A read, so retried: once, on a loaded machine, a `kubectl get` sat for the
        # whole 600 s of a test on a request that had no timeout.
        for attempt in range(3):
            try:
                printed = self.kubectl("get", *args, "-o", "json", "--request-timeout=30s")
                break
            except CommandError:
                if attempt == 2:
                    raise
        found: dict[str, Any] = json.loads(printed)
        return found

    def apply(self, docs: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def helm(self, verb: str, release: str, chart: Path, *args: str) -> None:
        """``helm <verb> <release> <chart> *args``, through :func:`charts.helm_chart` (the
        stack chart's optional dependencies cannot be downloaded here)."""
        done = charts.helm_chart(verb, chart, *args, release=release, env=self.env)
        if done.returncode != 0:
            raise CommandError(f"helm {verb} {release}:\n{done.stdout}\n{done.stderr}")

    def install_releases(self) -> None:
        """Both charts, as :func:`release_installs` says, into a ``default`` namespace
        that enforces the restricted Pod Security Standard (what the workers' pods are
        built for, and what the real admission plugin then checks)."""
        self.kubectl(
            "label", "namespace", NAMESPACE, "--overwrite",
            "pod-security.kubernetes.io/enforce=restricted",
        )  # fmt: skip
        for release, chart, args in release_installs():
            self.helm("install", release, chart, *args)

    def crictl(self, *args: str) -> str:
        return self.run(self.stack.env["CRICTL"], "--runtime-endpoint",
                        self.stack.env["CONTAINER_RUNTIME_ENDPOINT"], *args)  # fmt: skip
