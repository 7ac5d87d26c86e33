"""skaffold on the local one-node cluster: the binary, its custom builder, and the
Docker API it insists on.

``skaffold.yaml``'s ``local-node`` profile builds both images with our buildah
builder (a ``custom`` artifact whose command is ``custom-build`` below) and installs
both charts with helm. Run it through this module, with the node's env sourced
(``make cluster-up``, then ``source .stack/env``)::

    python -m hftpipe_devstack.skaffold run -p local-node
    python -m hftpipe_devstack.skaffold delete -p local-node

Any arguments are skaffold's; this wrapper only prepares what skaffold needs here:

- the skaffold binary, built from its Go module at :data:`versions.SKAFFOLD`
  (:func:`ensure_skaffold`);
- a Docker Engine API on a unix socket, answered from the node's containerd
  (:class:`DockerAPI`): with ``local.push: false`` skaffold asks the "local Docker
  daemon" for the ID of every image a custom build produced and tags it
  ``<name>:<ID>`` there, which is the reference it deploys. This machine has no Docker
  daemon and no registry, and the cluster's image store is the node's containerd, so
  the API answers from there: the ID is the CRI's image ID (the config digest, as
  Docker's), the tag a real ``ctr images tag`` in the kubelet's namespace;
- ``HFTPIPE_STACK_CHART``: the stack chart as helm accepts it here
  (:func:`charts.chart_for_helm`, the copy with stand-in subcharts), the profile's
  ``chartPath`` (:func:`stack_chart_path`);
- skaffold's global config in a temporary file: no update check, metrics or survey
  prompt (nothing outside is reachable, and nobody answers a prompt in a test).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import charts, images, install, thirdparty, versions
from .install import InstallError, Ticker, cached, log, run_step

STACK_CHART_ENV = "HFTPIPE_STACK_CHART"
"""Environment variable the ``local-node`` profile's stack release takes its chartPath from."""

DOCKER_API_VERSION = "1.41"
"""The Engine API version the shim speaks: Docker clients since 20.10 negotiate down to it."""

# ------------------------------------------------------------------------- binary

_VERSION_PACKAGE = f"{thirdparty.SKAFFOLD_MODULE}/pkg/skaffold/version"

BUILD_TAGS = ("timetzdata", "osusergo", "netgo", "release")
"""The tags of skaffold's own Linux release build (its Makefile), without cgo: osusergo and
netgo are what make that build static, and ``release`` drops its development-only code."""


def skaffold_cache_name() -> str:
    """Cache directory of the skaffold build (``skaffold-v<version>``)."""
    return f"skaffold-v{versions.SKAFFOLD}"


def ensure_skaffold() -> Path:
    """Path of the skaffold binary, building it on first use.

    Not ``go install ...@version`` (:class:`install.GoTool`): skaffold's go.mod has
    replace directives, which ``go install`` refuses for a module at a version. Built
    with ``go build ./cmd/skaffold`` inside a copy of the checksum-verified module.
    """
    version = f"v{versions.SKAFFOLD}"

    def build(tmp: Path) -> None:
        install.require_tool("go", "Install Go 1.24+ (https://go.dev/doc/install).")
        log(f"building skaffold {version} from its Go module: cold, ~10 min on 2 cores, once")
        src = tmp / "src"
        shutil.copytree(install.go_mod_download(thirdparty.SKAFFOLD_MODULE, version)["Dir"], src)
        # The module cache is read-only; go build writes nothing there, but copytree kept
        # the modes and the removal below needs write bits.
        for path in [src, *src.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        ldflags = f"-s -w -X {_VERSION_PACKAGE}.version={version}"
        with Ticker("compiling skaffold"):
            run_step(
                ["go", "build", "-trimpath", "-tags", " ".join(BUILD_TAGS), "-ldflags", ldflags,
                 "-o", str(tmp / "bin" / "skaffold"), "./cmd/skaffold"],
                cwd=src,
                env={"CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
                what="go build skaffold",
            )  # fmt: skip
        shutil.rmtree(src)

    return cached(skaffold_cache_name(), build) / "bin" / "skaffold"


# ------------------------------------------------------------ image references


def normalize_ref(ref: str) -> str:
    """A reference as containerd names it: ``hftpipe-operator:x`` ->
    ``docker.io/library/hftpipe-operator:x`` (pure; what Docker and the CRI do)."""
    name, digest = ref.split("@", 1) if "@" in ref else (ref, "")
    first, _, rest = name.partition("/")
    if not rest:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not digest:
        name += ":latest"
    return f"{name}@{digest}" if digest else name


# ------------------------------------------------------------------ custom build


def custom_build(dockerfile: str, env: Mapping[str, str]) -> list[str]:
    """What the profile's ``buildCommand`` runs: build ``dockerfile`` with our buildah
    builder as ``$IMAGE`` and import it into the node's containerd; the names it has.

    skaffold sets ``IMAGE`` (the tag it chose), ``BUILD_CONTEXT`` and ``PUSH_IMAGE``.
    The archive is named by the normalized reference, the name containerd and the
    kubelet use for ``$IMAGE``, so an unchanged tree reuses the archive the node was
    started with.
    """
    if env.get("PUSH_IMAGE", "false") == "true":
        raise InstallError(
            "skaffold asked to push the image: there is no registry here; the local-node "
            "profile sets build.local.push: false (do not pass --push)"
        )
    missing = [k for k in ("IMAGE", "BUILD_CONTEXT", "CONTAINERD_ADDRESS") if not env.get(k)]
    if missing:
        raise InstallError(
            f"{', '.join(missing)} not set: run through skaffold's local-node profile with "
            "the node's env sourced (source .stack/env)"
        )
    ref = normalize_ref(env["IMAGE"])
    started = time.monotonic()
    archive = images.build_project_image(Path(env["BUILD_CONTEXT"]), dockerfile, ref)
    names = images.import_images([archive], Path(env["CONTAINERD_ADDRESS"]))
    log(f"{ref}: built and imported into containerd in {time.monotonic() - started:.0f} s")
    return names


# --------------------------------------------------------- the Docker Engine API


class ImageStore(Protocol):
    """Where the shim's images are: :class:`ContainerdImages`, or a fake in tests."""

    def inspect(self, ref_or_id: str) -> dict[str, Any] | None:
        """The CRI image status (``id``, ``repoTags``, ``repoDigests``, ``size``) or None."""

    def tag(self, source: str, target: str) -> None:
        """Name the image ``source`` (a name it has) also ``target`` (normalized)."""


@dataclass(frozen=True)
class ContainerdImages:
    """The node's containerd, as the kubelet sees it: CRI for look-ups (its image ID is
    the config digest, the ID Docker reports), ``ctr`` for tags in the ``k8s.io``
    namespace (CRI has no tag call; the CRI plugin picks the new name up at once)."""

    crictl: str
    runtime_endpoint: str
    containerd_address: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ContainerdImages:
        missing = [k for k in ("CRICTL", "CONTAINER_RUNTIME_ENDPOINT", "CONTAINERD_ADDRESS")
                   if not env.get(k)]  # fmt: skip
        if missing:
            raise InstallError(
                f"{', '.join(missing)} not set: start the node (make cluster-up) and "
                "source its env file first"
            )
        return cls(env["CRICTL"], env["CONTAINER_RUNTIME_ENDPOINT"], env["CONTAINERD_ADDRESS"])

    def inspect(self, ref_or_id: str) -> dict[str, Any] | None:
        key = ref_or_id if ref_or_id.startswith("sha256:") else normalize_ref(ref_or_id)
        proc = subprocess.run(
            [self.crictl, "--runtime-endpoint", self.runtime_endpoint,
             "inspecti", "-o", "json", key],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            return None
        status: dict[str, Any] = json.loads(proc.stdout).get("status") or {}
        return status or None

    def tag(self, source: str, target: str) -> None:
        run_step(
            ["ctr", "--address", self.containerd_address, "--namespace", "k8s.io",
             "images", "tag", "--force", source, target],
            what=f"tagging {source} as {target} in containerd",
        )  # fmt: skip


def image_inspect_json(status: Mapping[str, Any]) -> dict[str, Any]:
    """The Engine API's ``ImageInspect`` of a CRI image status (pure): what Docker's
    client decodes. Only what skaffold reads is meaningful (``Id``, ``RepoTags``)."""
    return {
        "Id": status["id"],
        "RepoTags": list(status.get("repoTags") or []),
        "RepoDigests": list(status.get("repoDigests") or []),
        "Size": int(status.get("size") or 0),
        "Os": "linux",
        "Architecture": "amd64",
        "Config": {},
        "RootFS": {"Type": "layers", "Layers": []},
    }


_ROUTE = re.compile(r"^(?:/v(?P<version>[\d.]+))?(?P<path>/.*)$")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    store: ImageStore


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 with a Content-Length on every answer: Docker's client keeps connections.
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        # The base prints the client address, which a unix socket does not have.
        pass

    def _send(self, status: int, body: object = None, *, head: bool = False) -> None:
        # JSON, except the ping's plain "OK".
        data = (
            b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        self.send_response(status)
        self.send_header("Api-Version", DOCKER_API_VERSION)
        self.send_header("Ostype", "linux")
        kind = "text/plain" if body is None or isinstance(body, bytes) else "application/json"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _route(self) -> tuple[str, dict[str, list[str]]]:
        url = urllib.parse.urlsplit(self.path)
        match = _ROUTE.match(urllib.parse.unquote(url.path))
        return (match.group("path") if match else url.path), urllib.parse.parse_qs(url.query)

    def do_HEAD(self) -> None:
        path, _ = self._route()
        self._send(200 if path == "/_ping" else 404, head=True)

    def do_GET(self) -> None:
        path, _ = self._route()
        if path == "/_ping":
            self._send(200, b"OK")
        elif path == "/version":
            self._send(200, {
                "Version": f"hftpipe-containerd-shim ({DOCKER_API_VERSION})",
                "ApiVersion": DOCKER_API_VERSION,
                "MinAPIVersion": "1.24",
                "Os": "linux",
                "Arch": "amd64",
                "Components": [],
            })  # fmt: skip
        elif path.startswith("/images/") and path.endswith("/json"):
            name = path[len("/images/") : -len("/json")]
            status = self.server.store.inspect(name)
            if status is None:
                self._send(404, {"message": f"No such image: {name}"})
            else:
                self._send(200, image_inspect_json(status))
        else:
            self._unsupported(path)

    def do_POST(self) -> None:
        path, query = self._route()
        if path.startswith("/images/") and path.endswith("/tag"):
            name = path[len("/images/") : -len("/tag")]
            repo, tag = query.get("repo", [""])[0], query.get("tag", ["latest"])[0]
            status = self.server.store.inspect(name)
            if status is None or not status.get("repoTags"):
                self._send(404, {"message": f"No such image: {name}"})
                return
            try:
                self.server.store.tag(status["repoTags"][0], normalize_ref(f"{repo}:{tag}"))
            except InstallError as error:
                self._send(500, {"message": str(error)})
                return
            self._send(201)
        else:
            self._unsupported(path)

    def do_DELETE(self) -> None:
        self._unsupported(self._route()[0])

    def _unsupported(self, path: str) -> None:
        # Loudly: a skaffold feature that needs more of Docker than this must fail, not
        # silently do nothing.
        message = f"{self.command} {path}: not served by hftpipe's containerd-backed Docker API"
        log(f"docker API: {message}")
        self._send(501, {"message": message})


@contextlib.contextmanager
def docker_api(store: ImageStore, socket_path: Path) -> Iterator[str]:
    """Serve the Engine API subset skaffold's local builder uses on ``socket_path``;
    yields the ``DOCKER_HOST`` value (``unix://...``)."""
    socket_path.unlink(missing_ok=True)
    server = _Server(str(socket_path), _Handler)
    server.store = store
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"unix://{socket_path}"
    finally:
        server.shutdown()
        server.server_close()
        socket_path.unlink(missing_ok=True)


def unix_http(socket_path: Path, method: str, path: str) -> tuple[int, bytes]:
    """One HTTP request over a unix socket; ``(status, body)`` (for tests and checks)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(socket_path))
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
                     .encode())  # fmt: skip
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# ------------------------------------------------------------------------ wrapper

GLOBAL_CONFIG = """\
# Written by hftpipe_devstack.skaffold for one run: nothing outside is reachable here.
global:
  update-check: false
  collect-metrics: false
  survey:
    disable-prompt: true
  kubeContexts: []
"""


def stack_chart_path() -> str:
    """The stack chart for the profile's chartPath: :func:`charts.chart_for_helm`'s copy,
    relative to the repository root, because skaffold prefixes a chartPath that is not
    absolute before it expands the template (``/repo/{{.VAR}}``)."""
    copy = charts.chart_for_helm(charts.REPO / "charts" / "hftpipe-stack")
    return os.path.relpath(copy.resolve(), charts.REPO)


def skaffold_env(env: Mapping[str, str], docker_host: str, workdir: Path) -> dict[str, str]:
    """The environment skaffold runs in: ``env`` plus the Docker API, the stack chart,
    its global config, and the node's helm and kubectl first on PATH (skaffold runs
    ``helm`` and, for its status check, ``kubectl`` by name)."""
    config = workdir / "skaffold-global.yaml"
    config.write_text(GLOBAL_CONFIG)
    tools = [str(Path(env[k]).parent) for k in ("HELM", "KUBECTL") if env.get(k)]
    return {
        **env,
        "DOCKER_HOST": docker_host,
        STACK_CHART_ENV: stack_chart_path(),
        "SKAFFOLD_CONFIG": str(config),
        "SKAFFOLD_UPDATE_CHECK": "false",
        "SKAFFOLD_INTERACTIVE": "false",
        "PATH": ":".join([*tools, env.get("PATH", os.defpath)]),
    }


def run_skaffold(args: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """``skaffold *args`` in the repository root with the containerd-backed Docker API up."""
    base = dict(os.environ if env is None else env)
    binary = ensure_skaffold()
    store = ContainerdImages.from_env(base)
    with tempfile.TemporaryDirectory(prefix="hftpipe-skaffold-") as tmp:
        work = Path(tmp)
        with docker_api(store, work / "docker.sock") as docker_host:
            return subprocess.run(
                [str(binary), *args],
                cwd=charts.REPO,
                env=skaffold_env(base, docker_host, work),
                check=False,
            ).returncode


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hftpipe_devstack.skaffold custom-build --dockerfile F`` (the profile's
    build command), ``... ensure`` (build the binary, print its path), or ``... ARGS``
    (skaffold ARGS, prepared as the module docstring says)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["custom-build"]:
            parser = argparse.ArgumentParser(
                prog="python -m hftpipe_devstack.skaffold custom-build"
            )
            parser.add_argument("--dockerfile", required=True)
            for name in custom_build(parser.parse_args(args[1:]).dockerfile, os.environ):
                print(name)
            return 0
        if args[:1] == ["ensure"]:
            print(ensure_skaffold())
            return 0
        return run_skaffold(args)
    except InstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
