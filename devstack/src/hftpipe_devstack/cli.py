"""``python -m hftpipe_devstack up|down|status|install`` (what ``make stack-up`` runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import install, thirdparty
from .procs import StartError
from .stack import ALL_COMPONENTS, CLUSTER_COMPONENTS, KNOWN_COMPONENTS, Stack


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
        else ALL_COMPONENTS,
    )
    try:
        if args.command == "install":
            # The stack's own components, then what the deployment checks validate
            # against (third-party CRDs, skaffold's schema, kindcheck, checkov).
            for key, value in {**install.install_all(), **thirdparty.install_all()}.items():
                print(f"{key}={value}")
        elif args.command == "up":
            env = stack.up()
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
    except (StartError, install.InstallError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
