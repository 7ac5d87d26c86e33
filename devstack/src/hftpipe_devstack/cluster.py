"""Talking to a running real-node cluster as a user does: kubectl, helm, crictl."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .stack import Stack


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
            raise AssertionError(f"{' '.join(cmd)}: no answer in {timeout} s") from exc
        if check:
            assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
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
            except AssertionError:
                if attempt == 2:
                    raise
        found: dict[str, Any] = json.loads(printed)
        return found

    def apply(self, docs: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def crictl(self, *args: str) -> str:
        return self.run(self.stack.env["CRICTL"], "--runtime-endpoint",
                        self.stack.env["CONTAINER_RUNTIME_ENDPOINT"], *args)  # fmt: skip
