"""``python -m hftpipe_devstack up|down|status|install|demo`` (what ``make stack-up`` and
``make demo`` run)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from . import install, thirdparty
from .procs import StartError
from .stack import ALL_COMPONENTS, CLUSTER_COMPONENTS, KNOWN_COMPONENTS, Stack

DEMO_COMPONENTS = ("kafka", "redis")
"""What the demo's pipeline needs; the Kubernetes API is for the operator."""


class ReleaseError(RuntimeError):
    """A chart did not install on the cluster."""


def _install_releases(stack: Stack) -> None:
    """The two charts on the new cluster, as the README's helm commands say (with the
    overrides this machine forces, :func:`cluster.release_installs`)."""
    from .cluster import Cluster, CommandError, release_installs  # noqa: PLC0415 - cluster only

    for release, _chart, args in release_installs():
        print(f"helm install {release} ... -n {args[args.index('-n') + 1]}", flush=True)
    try:
        Cluster(stack).install_releases()
    except CommandError as exc:
        raise ReleaseError(
            f"{exc}\nThe cluster is up without the releases: fix the cause, then "
            "`make cluster-down && make cluster-up`, or install them by hand (README)."
        ) from exc


def _demo(stack: Stack, *, stop: bool) -> int:
    """``make demo``: the stack's Kafka and Redis (started if none runs), then the product's
    own ``hftpipe demo`` against them, as a user would run it against theirs."""
    started = False
    if stack.running() and stack.env_file.exists():
        print(f"using the local stack already running from {stack.state_dir}", file=sys.stderr)
        env = stack.env_from_file()
    else:
        print("starting the local stack (Kafka, Redis)...", file=sys.stderr)
        env = stack.up()
        started = True
    try:
        return subprocess.call(
            [sys.executable, "-m", "hftpipe_workers", "demo", "--data-dir", str(stack.state_dir)],
            env={**os.environ, **env},
        )
    finally:
        if stop and started:
            stack.down()
            print("\nThe local stack was stopped.")
        else:
            print(
                f"\nThe local stack keeps running (state in {stack.state_dir}); "
                "stop it with 'make stack-down'."
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="hftpipe-stack",
        description="Run the local stack (Kafka, Redis, Kubernetes API) as processes.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(".stack"),
        help="state directory: env file, logs, data (default: .stack)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install what is missing, start, write <dir>/env")
    up.add_argument(
        "--only",
        default=",".join(ALL_COMPONENTS),
        help=f"comma-separated subset of {','.join(KNOWN_COMPONENTS)}",
    )
    up.add_argument(
        "--cluster",
        action="store_true",
        help=f"a real node too (root): same as --only {','.join(CLUSTER_COMPONENTS)}",
    )
    up.add_argument(
        "--no-releases",
        action="store_true",
        help="with --cluster: install neither chart (by default the stack chart and the "
        "operator chart are installed, so `kubectl apply -f k8s/replayjob.yaml` runs)",
    )
    up.add_argument(
        "--kafka-scram",
        action="store_true",
        help="Kafka with SASL/SCRAM-SHA-512 and ACLs enforced, as in production; the env "
        "file authenticates as its super user 'admin'",
    )
    demo = sub.add_parser(
        "demo",
        help="start Kafka and Redis (or use the ones running), then run 'hftpipe demo' on them",
    )
    demo.add_argument(
        "--stop-stack", action="store_true", help="stop the stack afterwards if it started it"
    )
    sub.add_parser("down", help="stop every process of the stack")
    sub.add_parser("status", help="list the stack's processes")
    sub.add_parser(
        "install",
        help="install every component and third-party artefact into the cache, start nothing",
    )
    args = parser.parse_args(argv)

    stack = Stack(
        args.dir.resolve(),
        (
            CLUSTER_COMPONENTS
            if getattr(args, "cluster", False)
            else tuple(c for c in args.only.split(",") if c)
        )
        if args.command == "up"
        else DEMO_COMPONENTS
        if args.command == "demo"
        else ALL_COMPONENTS,
        kafka_scram=getattr(args, "kafka_scram", False),
    )
    try:
        if args.command == "install":
            # The stack's own components, then what the deployment checks validate
            # against (third-party CRDs, skaffold's schema, kindcheck, checkov).
            for key, value in {**install.install_all(), **thirdparty.install_all()}.items():
                print(f"{key}={value}")
        elif args.command == "up":
            env = stack.up()
            if "node" in stack.components and not args.no_releases:
                _install_releases(stack)
            print("Local stack is up:")
            for key, value in sorted(env.items()):
                print(f"  {key}={value}")
            print(f"Logs: {stack.state_dir / 'logs'}/")
            print(f"Use it:  source {stack.env_file}")
            print(
                "Stop it: make cluster-down"
                if "node" in stack.components
                else "Stop it: make stack-down"
            )
        elif args.command == "demo":
            return _demo(stack, stop=args.stop_stack)
        elif args.command == "down":
            records = stack.table().records()
            killed = stack.down()
            print(
                f"Stopped {len(records)} process(es) of {stack.state_dir}"
                + (f"; had to SIGKILL {', '.join(killed)}" if killed else "")
            )
        else:
            for record in stack.table().records():
                state = "running" if record.name in stack.running() else "stopped"
                print(
                    f"{record.name:24} pid {record.pid:<8} {state:8} ports {record.ports}"
                    f"  log {record.log}"
                )
    except (StartError, install.InstallError, ReleaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
