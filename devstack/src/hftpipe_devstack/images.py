"""The container images a real single-node Kubernetes cluster needs, built here without a registry.

No container registry is reachable from this machine, only Debian's mirror, PyPI and
the Go module proxy, so every image the cluster runs is built locally and handed to
containerd as an archive:

- stand-ins for the official bases, ``python:3.11-slim-bookworm`` and ``redis``, made by
  ``debootstrap`` from Debian 12 packages and labelled ``io.hftpipe.stand-in=true`` (they
  are not the official images and must never be mistaken for them);
- the pause image, Kubernetes' own ``build/pause/linux/pause.c`` compiled statically;
- CoreDNS and rancher's local-path-provisioner, ``go install``-ed from the module proxy,
  plus a busybox image (Debian's ``busybox-static``) for the provisioner's helper pods;
- our operator and workers images, from ``operator/Dockerfile`` and ``workers/Dockerfile``
  unchanged, by ``buildah bud`` on the local stand-in base.

Everything lands in the version-keyed cache of :mod:`.install`: a root filesystem
tarball per stand-in, a binary per Go tool, an OCI archive per image, each keyed by
its version or by a digest of what went into it (for our images: the build context's
contents), so a second run rebuilds nothing. buildah's storage lives in
``<cache>/buildah`` (never ``/var/lib/containers``), and every buildah call runs under
one file lock so that no container or overlay mount outlives the step that made it.

The caller (the node module) runs :func:`ensure_cluster_images` and then
:func:`import_images` against its containerd's socket; :data:`CLUSTER_IMAGES` names
the references the manifests must use. ``python -m hftpipe_devstack.images --verify``
builds everything, imports it into a throwaway containerd and runs each image once.

What a caller must know:

- containerd's CRI must be told ``sandbox_image = PAUSE_IMAGE`` (containerd 1.6
  defaults to ``registry.k8s.io/pause:3.6``), and every pod's ``imagePullPolicy`` must
  let a present image be used (``IfNotPresent``/``Never``): nothing can be pulled.
- The images are imported unpacked for the ``overlayfs`` snapshotter (the CRI's
  default); pass ``snapshotter=`` if the node uses another.
- Our images are rebuilt when any file of the build context changes (git's list minus
  ``.dockerignore``: ``devstack/`` included), but buildah's layer cache makes a
  rebuild that changes no copied file take seconds.
- buildah's store (``<cache>/buildah``) only grows (old layers are the layer cache);
  deleting it is safe: the base images are reloaded from their cached archives.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import install, versions
from .install import InstallError, Ticker, cache_root, cached, log, require_tool, run_step

# ------------------------------------------------------------------------ references

PYTHON_BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
"""What our Dockerfiles' ``FROM python:3.11-slim-bookworm`` resolves to: the stand-in's name."""

PAUSE_IMAGE = f"registry.k8s.io/pause:{versions.PAUSE}"
COREDNS_IMAGE = f"localhost/hftpipe/coredns:{versions.COREDNS}"
LOCAL_PATH_IMAGE = f"localhost/hftpipe/local-path-provisioner:v{versions.LOCAL_PATH_PROVISIONER}"
BUSYBOX_IMAGE = f"localhost/hftpipe-standin/busybox:{versions.DEBIAN_SUITE}"
REDIS_IMAGE = f"localhost/hftpipe-standin/redis:7.0-{versions.DEBIAN_SUITE}"
PROJECT_TAG = "0.1.0"
"""The tag the charts default to (``hftpipe-operator:0.1.0``, ``hftpipe-workers:0.1.0``)."""
OPERATOR_IMAGE = f"docker.io/library/hftpipe-operator:{PROJECT_TAG}"
WORKERS_IMAGE = f"docker.io/library/hftpipe-workers:{PROJECT_TAG}"

CLUSTER_IMAGES: Mapping[str, str] = {
    "pause": PAUSE_IMAGE,
    "coredns": COREDNS_IMAGE,
    "local-path-provisioner": LOCAL_PATH_IMAGE,
    "busybox": BUSYBOX_IMAGE,
    "redis": REDIS_IMAGE,
    "operator": OPERATOR_IMAGE,
    "workers": WORKERS_IMAGE,
}
"""Logical name -> the reference containerd knows the image by after :func:`import_images`.

The charts' short refs normalise to these (``hftpipe-operator:0.1.0`` is
``docker.io/library/hftpipe-operator:0.1.0``); Redis, CoreDNS, the provisioner and its
helper must be pointed at theirs explicitly (chart values, manifests)."""

ARCHIVE = "image.oci.tar"
"""File name of an image's OCI archive inside its cache directory."""

RECIPE = "1"
"""Bumped when the way images are assembled changes, so every cache key changes with it."""

_NAMESPACE = "k8s.io"
"""containerd namespace the CRI plugin (and so the kubelet) reads images from."""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# --------------------------------------------------------------- pure: stand-in recipes


@dataclass(frozen=True)
class StandIn:
    """A Debian 12 root filesystem standing in for an official image we cannot pull.

    ``symlinks`` are ``(path in the rootfs, target)``, ``remove`` paths in the rootfs,
    ``dirs`` ``(path, mode)``: the layout differences from plain Debian that make it
    behave like the image it replaces.
    """

    name: str
    ref: str
    replaces: str
    packages: tuple[str, ...]
    description: str
    env: tuple[tuple[str, str], ...]
    cmd: tuple[str, ...]
    workdir: str = "/"
    symlinks: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()
    dirs: tuple[tuple[str, int], ...] = ()
    labels: tuple[tuple[str, str], ...] = field(default=())


PYTHON_STANDIN = StandIn(
    name="python",
    ref=PYTHON_BASE_IMAGE,
    replaces="docker.io/library/python:3.11-slim-bookworm",
    packages=("python3", "python3-pip", "python3-venv", "ca-certificates"),
    description=(
        "Local stand-in for python:3.11-slim-bookworm built by debootstrap from Debian 12 "
        "packages; not the official image"
    ),
    # The official image's PATH, verbatim (it names /usr/local/bin twice).
    env=(
        ("PATH", "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        ("LANG", "C.UTF-8"),
    ),
    cmd=("python3",),
    # The official image's interpreter is /usr/local/bin/python3; Debian's is /usr/bin.
    symlinks=(
        ("usr/local/bin/python", "/usr/bin/python3"),
        ("usr/local/bin/python3", "/usr/bin/python3"),
        ("usr/local/bin/pip", "/usr/bin/pip3"),
        ("usr/local/bin/pip3", "/usr/bin/pip3"),
    ),
    # PEP 668's marker: without it `pip install uv` works as in the official image
    # (Debian's pip then installs into /usr/local, beside the official layout).
    remove=("usr/lib/python3.11/EXTERNALLY-MANAGED",),
)

REDIS_STANDIN = StandIn(
    name="redis",
    ref=REDIS_IMAGE,
    replaces="docker.io/library/redis",
    packages=("redis-server", "redis-tools"),
    description=(
        "Local stand-in for the redis image: Debian 12's redis-server and redis-tools "
        "(Redis 7.0) on a debootstrap base; not the official image"
    ),
    env=(("PATH", DEFAULT_PATH), ("LANG", "C.UTF-8")),
    cmd=("redis-server",),
    workdir="/data",
    # Writable by any uid (the chart runs it as 10001 and mounts a volume here anyway).
    dirs=(("data", 0o1777),),
)

STANDINS: Mapping[str, StandIn] = {s.name: s for s in (PYTHON_STANDIN, REDIS_STANDIN)}

_ROOTFS_CLEANUP = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf/templates.dat-old",
    "var/log/apt",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "tmp",
    "root/.cache",
)
"""Emptied in a stand-in's rootfs: apt's lists and caches and the logs of this build."""


def debian_sources(sources: str) -> list[tuple[str, list[str]]]:
    """``(URI, suites)`` of each stanza of a deb822 ``.sources`` file (comments dropped)."""
    found: list[tuple[str, list[str]]] = []
    for stanza in re.split(r"\n\s*\n", sources):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "uris" in fields and "suites" in fields:
            found.append((fields["uris"].split()[0], fields["suites"].split()))
    return found


def debian_mirror(sources: str, suite: str = versions.DEBIAN_SUITE) -> str:
    """The mirror of the main archive: the URI whose stanza lists ``suite`` itself."""
    for uri, suites in debian_sources(sources):
        if suite in suites:
            return uri
    raise InstallError(
        f"no Debian mirror for {suite!r} in /etc/apt/sources.list.d/debian.sources; "
        "debootstrap needs one (e.g. URIs: http://deb.debian.org/debian)"
    )


def rootfs_sources(sources: str, suite: str = versions.DEBIAN_SUITE) -> str:
    """The stand-in's own apt sources: the host's stanzas for ``suite`` (and its
    -updates and -security), so that the rootfs takes the same security updates."""
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    stanzas = []
    for uri, suites in debian_sources(sources):
        mine = [s for s in suites if s == suite or s.startswith(f"{suite}-")]
        if mine:
            stanzas.append(
                f"Types: deb\nURIs: {uri}\nSuites: {' '.join(mine)}\n"
                f"Components: main\nSigned-By: {keyring}\n"
            )
    if not stanzas:
        raise InstallError(f"the host's apt sources name no {suite} suite")
    return "\n".join(stanzas)


def standin_key(standin: StandIn, suite: str = versions.DEBIAN_SUITE) -> str:
    """Cache key of a stand-in's rootfs: what it is made of (Debian moves within a
    release, so a rebuild is forced by bumping :data:`RECIPE`, not by the mirror)."""
    return recipe_digest(
        [RECIPE, suite, *standin.packages, *map(repr, (standin.symlinks, standin.remove))]
    )[:16]


def standin_config_args(standin: StandIn, packages: Mapping[str, str]) -> list[str]:
    """``buildah config`` arguments of a stand-in: its runtime config and the labels that
    say, in the image itself, that it is a local stand-in and what it was built from."""
    labels = {
        "io.hftpipe.stand-in": "true",
        "io.hftpipe.stand-in.for": standin.replaces,
        "io.hftpipe.stand-in.packages": " ".join(f"{p}={v}" for p, v in sorted(packages.items())),
        "org.opencontainers.image.description": standin.description,
        "org.opencontainers.image.title": standin.ref,
        "org.opencontainers.image.vendor": "hftpipe devstack (local build)",
        "org.opencontainers.image.base.name": f"debian:{versions.DEBIAN_SUITE} (debootstrap)",
        **dict(standin.labels),
    }
    args = ["--os", "linux", "--arch", "amd64", "--workingdir", standin.workdir]
    for key, value in standin.env:
        args += ["--env", f"{key}={value}"]
    args += ["--cmd", json.dumps(list(standin.cmd)), "--entrypoint", "[]"]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    return args


# ------------------------------------------------------------ pure: FROM scratch images


@dataclass(frozen=True)
class ScratchFile:
    """One file of a FROM-scratch image: its source (None for a symlink) and mode."""

    path: str
    source: Path | None = None
    mode: int = 0o755
    link: str | None = None


@dataclass(frozen=True)
class ScratchImage:
    """A FROM-scratch image: a few files, an entrypoint or command, labels."""

    ref: str
    files: tuple[ScratchFile, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    dirs: tuple[tuple[str, int], ...] = ()

    def config_args(self) -> list[str]:
        """``buildah config`` arguments (pure)."""
        args = ["--os", "linux", "--arch", "amd64"]
        for key, value in self.env:
            args += ["--env", f"{key}={value}"]
        args += ["--entrypoint", json.dumps(list(self.entrypoint))]
        args += ["--cmd", json.dumps(list(self.cmd))]
        for key, value in self.labels:
            args += ["--label", f"{key}={value}"]
        return args

    def key(self) -> str:
        """Cache key: the config and every file's content, so a rebuilt binary with the
        same version still makes a new image."""
        parts = [RECIPE, self.ref, *self.config_args(), repr(self.dirs)]
        for item in self.files:
            content = _file_digest(item.source) if item.source else f"-> {item.link}"
            parts.append(f"{item.path} {item.mode:o} {content}")
        return recipe_digest(parts)[:16]


def busybox_applets(listing: str) -> list[str]:
    """Applet names from ``busybox --list``, minus any that would escape ``/bin``."""
    names = {line.strip() for line in listing.splitlines()}
    return sorted(n for n in names if n and "/" not in n and n not in {".", "..", "busybox"})


def pause_source_tag(makefile: str) -> str:
    """The tag ``build/pause/Makefile`` gives the pause source (``TAG ?= 3.10.1``)."""
    match = re.search(r"^TAG\s*\?=\s*(\S+)", makefile, re.M)
    if not match:
        raise InstallError("k8s.io/kubernetes build/pause/Makefile names no TAG")
    return match[1]


# ------------------------------------------------------------ pure: build context hash


def _dockerignore_regex(pattern: str, where: str) -> re.Pattern[str]:
    """A ``.dockerignore`` pattern compiled as moby's patternmatcher does; character
    classes and escapes are refused (``where`` names the line) rather than misread."""
    out, i = "^", 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 2
                if pattern[i : i + 1] == "/":
                    i += 1
                out += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char in "[\\":
            raise ValueError(
                f"{where}: {pattern!r}: character classes and escapes are not supported"
            )
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + "$")


def dockerignore_patterns(
    text: str, where: str = ".dockerignore"
) -> list[tuple[bool, re.Pattern[str]]]:
    """``(is_exception, regex)`` for each pattern of a ``.dockerignore``, in order."""
    patterns = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip())
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
        patterns.append((exception, _dockerignore_regex(pattern, f"{where}:{number}")))
    return patterns


def dockerignored(patterns: Sequence[tuple[bool, re.Pattern[str]]], relative: str) -> bool:
    """Whether the context leaves ``relative`` out: the last pattern matching it or one
    of its parent directories decides (as Docker and buildah do)."""
    parts = relative.split("/")
    candidates = [relative, *("/".join(parts[:i]) for i in range(1, len(parts)))]
    excluded = False
    for exception, regex in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not exception
    return excluded


def recipe_digest(parts: Iterable[str]) -> str:
    """sha256 over strings, each length-prefixed so that no two lists collide."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode()
        digest.update(f"{len(data)}:".encode() + data)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def context_digest(
    context: Path, files: Iterable[str], dockerfile: str, base_image_id: str, tag: str
) -> str:
    """What a ``buildah bud`` of ``dockerfile`` depends on: the context files that
    ``.dockerignore`` lets through (content and executable bit; a listed file that is
    gone counts as such), the Dockerfile, the base image's id and the tag.

    ``files`` are paths relative to ``context`` (git's list); a change anywhere else in
    the tree therefore never forces a rebuild.
    """
    ignore_file = context / ".dockerignore"
    patterns = dockerignore_patterns(ignore_file.read_text() if ignore_file.exists() else "")
    parts = [RECIPE, tag, dockerfile, base_image_id]
    for rel in sorted(set(files) | {dockerfile, ".dockerignore"}):
        if rel != dockerfile and dockerignored(patterns, rel):
            continue
        path = context / rel
        if path.is_symlink():
            parts.append(f"{rel} -> {os.readlink(path)}")
        elif path.is_file():
            parts.append(f"{rel} {os.access(path, os.X_OK):d} {_file_digest(path)}")
        else:
            parts.append(f"{rel} missing")
    return recipe_digest(parts)


# ------------------------------------------------------- pure: buildah and ctr commands


@dataclass(frozen=True)
class BuildahStorage:
    """buildah's image store, kept in the cache (never ``/var/lib/containers``)."""

    root: Path
    runroot: Path
    driver: str = "overlay"

    def args(self) -> list[str]:
        """Global flags that point every buildah call at this store."""
        return ["--root", str(self.root), "--runroot", str(self.runroot)] + (
            ["--storage-driver", self.driver] if self.driver else []
        )


def buildah_storage() -> BuildahStorage:
    """The store under ``<cache>/buildah``."""
    base = cache_root() / "buildah"
    return BuildahStorage(root=base / "storage", runroot=base / "run")


def bud_args(
    storage: BuildahStorage,
    context: Path,
    dockerfile: str,
    tag: str,
    *,
    uv_cache: Path | None,
    trust: Path | None = None,
) -> list[str]:
    """``buildah bud`` of a Dockerfile, as is: the local base only (``--pull=never``),
    the host's network (``uv sync`` reaches PyPI), cached layers (a code edit reruns only
    the steps after the code's COPY), and optionally a uv cache bind-mounted where the
    build stage's uv looks for it (root's ``~/.cache/uv``): that speeds a rebuild
    without touching the Dockerfile or the image (the Dockerfile copies, never links,
    from the cache: ``UV_LINK_MODE=copy``).

    ``trust`` is the host's CA bundle (see :func:`build_trust`), mounted read-only over the
    build container's, with a system ``uv.toml`` saying ``native-tls = true`` beside it,
    for the RUN steps only: where HTTPS goes through a TLS-inspecting proxy, pip and uv
    then trust what the host trusts, and the images still carry Debian's bundle."""
    args = ["buildah", *storage.args(), "bud", "--pull=never", "--network=host", "--layers"]
    args += ["--format", "oci", "-f", str(context / dockerfile), "-t", tag]
    if uv_cache is not None:
        args += ["--volume", f"{uv_cache}:/root/.cache/uv"]
    if trust is not None:
        args += ["--volume", f"{trust}:/etc/ssl/certs/ca-certificates.crt:ro"]
        args += ["--volume", f"{trust.parent / UV_NATIVE_TLS}:/etc/uv/uv.toml:ro"]
    return [*args, str(context)]


UV_NATIVE_TLS = "uv-native-tls.toml"
"""Beside the build's CA bundle: a uv.toml making uv (which otherwise trusts only the
roots compiled into it) use the system's bundle, as pip does."""


def build_trust(host_bundle: Path, workdir: Path) -> Path | None:
    """A copy of the host's CA bundle for :func:`bud_args`, with the uv.toml beside it
    (None when the host has no bundle: the build then trusts Debian's). A copy, so that
    the bind mount does not pin the host's file while the system updates it."""
    if not host_bundle.is_file():
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = workdir / "ca-certificates.crt"
    shutil.copyfile(host_bundle, bundle)
    (workdir / UV_NATIVE_TLS).write_text("native-tls = true\n")
    return bundle


def containerd_config(root: Path, state: Path, address: Path) -> str:
    """A containerd 1.6 config (version 2) whose every path is under a scratch directory,
    for a throwaway instance that cannot touch the machine's own containerd. The CRI
    plugin is off: importing and running images needs only the core services."""
    return (
        "version = 2\n"
        f'root = "{root}"\n'
        f'state = "{state}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n\n'
        "[grpc]\n"
        f'  address = "{address}"\n\n'
        "[ttrpc]\n"
        f'  address = "{address}.ttrpc"\n\n'
        "[debug]\n"
        '  address = ""\n\n'
        "[metrics]\n"
        '  address = ""\n'
    )


def ctr_import_args(
    address: Path, archive: Path, *, namespace: str = _NAMESPACE, snapshotter: str = "overlayfs"
) -> list[str]:
    """``ctr images import`` of one OCI archive, unpacked for ``snapshotter`` right away:
    the CRI plugin creates containers from unpacked snapshots, so an image that is only
    content would first be unpacked on the kubelet's pod start, against its timeout.
    The names come from the archive (the full references buildah wrote into it)."""
    return [
        "ctr",
        "--address",
        str(address),
        "--namespace",
        namespace,
        "images",
        "import",
        "--snapshotter",
        snapshotter,
        str(archive),
    ]


def ctr_run_args(
    address: Path,
    ref: str,
    container_id: str,
    argv: Sequence[str],
    *,
    read_only: bool = False,
    mounts: Sequence[str] = (),
    detach: bool = False,
    namespace: str = _NAMESPACE,
) -> list[str]:
    """``ctr run`` of an imported image once (``--rm``, or detached to be killed later).

    ctr 1.6 has no ``--user``: a process runs as the image's ``USER`` (our images: 10001)
    or as root, and drops to another uid itself (:data:`AS_10001`).
    """
    args = ["ctr", "--address", str(address), "--namespace", namespace, "run"]
    args += ["--detach"] if detach else ["--rm"]
    if read_only:
        args.append("--read-only")
    for mount in mounts:
        args += ["--mount", mount]
    return [*args, ref, container_id, *argv]


def mounts_under(mountinfo: str, root: Path) -> list[str]:
    """Mount points at or below ``root`` in ``/proc/self/mountinfo``, deepest first."""
    prefix = str(root).rstrip("/")
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


@dataclass(frozen=True)
class SmokeTest:
    """One run of an imported image, and a string its output must contain."""

    ref: str
    argv: tuple[str, ...]
    expect: str
    read_only: bool = False
    mounts: tuple[str, ...] = ()


AS_10001 = ("setpriv", "--reuid=10001", "--regid=10001", "--clear-groups", "--")
"""util-linux's setpriv (in every debootstrap base): the charts' uid for images whose
config names no user, since ctr 1.6 cannot set one."""

_TMPFS = "type=tmpfs,src=tmpfs,dst={},options=rw:nosuid:nodev:mode=1777"
_UID_AND_VERSION = "import os, sys; print(os.getuid(), os.getgid(), sys.version)"

SMOKE_TESTS: tuple[SmokeTest, ...] = (
    SmokeTest(PAUSE_IMAGE, ("/pause", "-v"), "pause.c v"),
    SmokeTest(COREDNS_IMAGE, ("/coredns", "-version"), f"CoreDNS-{versions.COREDNS}"),
    SmokeTest(
        LOCAL_PATH_IMAGE,
        ("local-path-provisioner", "--version"),
        versions.LOCAL_PATH_PROVISIONER,
    ),
    # What the provisioner's helper pods run (as root, as upstream's helper pods do).
    SmokeTest(
        BUSYBOX_IMAGE,
        (
            "sh",
            "-c",
            "mkdir -m 0777 -p /scratch/a/b && chmod 0777 /scratch/a/b && ls -d /scratch/a/b"
            " && rm -rf /scratch/a && true",
        ),
        "/scratch/a/b",
        mounts=(_TMPFS.format("/scratch"),),
    ),
    # As the chart runs it: uid 10001, read-only root, a writable /data.
    SmokeTest(
        REDIS_IMAGE,
        (
            *AS_10001,
            "sh",
            "-c",
            "id -u && redis-server --version && redis-server --port 6399 --dir /data"
            " --daemonize yes && sleep 1 && redis-cli -p 6399 ping"
            " && redis-cli -p 6399 shutdown nosave",
        ),
        "PONG",
        read_only=True,
        mounts=(_TMPFS.format("/data"),),
    ),
    SmokeTest(
        PYTHON_BASE_IMAGE,
        (*AS_10001, "python3", "-c", "import ssl, sys, venv; print(sys.version)"),
        "3.11.",
    ),
    # Our images run as their USER 10001:10001 (the expected output says so).
    SmokeTest(
        WORKERS_IMAGE,
        ("python3", "-c", f"import pyarrow, hftpipe_workers; {_UID_AND_VERSION}"),
        "10001 10001 3.11.",
        read_only=True,
    ),
    SmokeTest(WORKERS_IMAGE, ("/opt/venv/bin/hftpipe", "--help"), "Usage"),
    SmokeTest(
        OPERATOR_IMAGE,
        ("python3", "-c", f"import kopf, hftpipe_operator.handlers; {_UID_AND_VERSION}"),
        "10001 10001 3.11.",
        read_only=True,
    ),
    # The operator's CLI has no --help (it starts kopf): its entry point is on PATH.
    SmokeTest(
        OPERATOR_IMAGE,
        ("sh", "-c", "command -v hftpipe-operator"),
        "/opt/venv/bin/hftpipe-operator",
    ),
)
"""What :func:`smoke_test` runs: as the non-root uid the charts use wherever they do."""


# ---------------------------------------------------------------------- running buildah


@contextlib.contextmanager
def _buildah_lock(storage: BuildahStorage) -> Iterator[None]:
    """One buildah step at a time on our store: a step's cleanup (removing its working
    containers, unmounting) must never race another step's build."""
    storage.root.parent.mkdir(parents=True, exist_ok=True)
    with (storage.root.parent / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _buildah(storage: BuildahStorage, *args: str, what: str) -> str:
    return run_step(["buildah", *storage.args(), *args], what=what).strip()


def _require_buildah() -> None:
    require_tool("buildah", "Install buildah (Debian: apt-get install -y buildah).")


def _unmount_leftovers(storage: BuildahStorage) -> None:
    """Unmount everything buildah left mounted in our store, then check none is left.

    A container rootfs a failed step left behind (``.../overlay/<id>/merged``), and the
    private bind mount of ``<root>/overlay`` onto itself that containers/storage's
    overlay driver makes and never undoes. Only called under the store's lock, when no
    step of ours is running: every mount under the store is then a leftover.
    """
    for where in (storage.root, storage.runroot):
        for point in mounts_under(Path("/proc/self/mountinfo").read_text(), where):
            subprocess.run(["umount", point], check=False, capture_output=True)
    left = [
        point
        for where in (storage.root, storage.runroot)
        for point in mounts_under(Path("/proc/self/mountinfo").read_text(), where)
    ]
    if left:
        raise InstallError(
            f"mounts stayed behind in buildah's store: {left}; unmount them "
            "(umount <path>) before the next build"
        )


def _commit_and_export(
    storage: BuildahStorage, container: str, ref: str, config: Sequence[str], out: Path
) -> None:
    """Configure the working container, commit it as ``ref``, write its OCI archive."""
    _buildah(storage, "config", *config, container, what=f"configuring {ref}")
    _buildah(storage, "commit", "--rm", "--format", "oci", container, ref, what=f"committing {ref}")
    _export(storage, ref, out)


def _export(storage: BuildahStorage, ref: str, out: Path) -> None:
    # The reference goes into the archive's index (org.opencontainers.image.ref.name),
    # which is the name `ctr images import` gives the image.
    _buildah(storage, "push", ref, f"oci-archive:{out}:{ref}", what=f"exporting {ref}")


def _from_scratch(storage: BuildahStorage, name: str) -> str:
    return _buildah(
        storage,
        "from",
        "--name",
        f"hftpipe-{name}-{uuid.uuid4().hex[:8]}",
        "scratch",
        what="creating a working container from scratch",
    )


def _add_tree(storage: BuildahStorage, container: str, tarball: Path, what: str) -> None:
    # A local tar archive is extracted by `buildah add`, owners, modes and links as in it.
    _buildah(storage, "add", container, str(tarball), "/", what=f"adding {what}")


def _build_image(name: str, key: str, assemble: Callable[[BuildahStorage, Path], None]) -> Path:
    """``cache/image-<name>-<key>/image.oci.tar``, made by ``assemble(storage, out)``."""

    def build(tmp: Path) -> None:
        _require_buildah()
        storage = buildah_storage()
        with _buildah_lock(storage):
            try:
                assemble(storage, tmp / ARCHIVE)
            finally:
                _unmount_leftovers(storage)

    return cached(f"image-{name}-{key}", build) / ARCHIVE


def oci_archive_image_id(archive: Path) -> str:
    """The image id (config digest) of a single-image OCI archive: the id buildah and
    containerd give the image, whatever the compression of its layers."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> dict[str, object]:
            member = tar.extractfile("blobs/" + digest.replace(":", "/", 1))
            if member is None:
                raise InstallError(f"{archive}: blob {digest} missing")
            loaded: dict[str, object] = json.load(member)
            return loaded

        index_member = tar.extractfile("index.json")
        if index_member is None:
            raise InstallError(f"{archive} is not an OCI archive (no index.json)")
        index = json.load(index_member)
        manifest = blob(index["manifests"][0]["digest"])
        config = manifest["config"]
        if not isinstance(config, dict):
            raise InstallError(f"{archive}: malformed manifest")
        return str(config["digest"])


def _ensure_in_storage(storage: BuildahStorage, archive: Path, ref: str) -> str:
    """Put the archive's image in the store under ``ref`` (a wiped store is refilled
    from the cached archive, never from a registry); return its id."""
    image_id = oci_archive_image_id(archive)
    proc = subprocess.run(
        [
            "buildah",
            *storage.args(),
            "images",
            "--noheading",
            "--no-trunc",
            "--format",
            "{{.ID}}",
            ref,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0 and image_id.removeprefix("sha256:") in proc.stdout:
        return image_id
    _buildah(storage, "pull", f"oci-archive:{archive}", what=f"loading {ref} from {archive}")
    _buildah(storage, "tag", image_id.removeprefix("sha256:"), ref, what=f"tagging {ref}")
    return image_id


# ------------------------------------------------------------------------ stand-ins


def _chroot(rootfs: Path, script: str, what: str) -> str:
    return run_step(
        [
            "chroot",
            str(rootfs),
            "/usr/bin/env",
            "-i",
            f"PATH={DEFAULT_PATH}",
            "DEBIAN_FRONTEND=noninteractive",
            "LANG=C.UTF-8",
            "/bin/sh",
            "-ec",
            script,
        ],
        what=what,
    )


def _tar_rootfs(rootfs: Path, out: Path) -> None:
    # /dev, /proc and /sys stay empty: the runtime mounts its own there.
    run_step(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "-C",
            str(rootfs),
            "-cf",
            str(out),
            "--exclude=./dev/*",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            ".",
        ],
        what=f"archiving {rootfs}",
    )


def ensure_standin_rootfs(standin: StandIn) -> Path:
    """``cache/standin-rootfs-<name>-<key>/``: ``rootfs.tar`` and ``packages.json``
    (the Debian versions of the packages asked for), debootstrapped once.

    ``debootstrap --variant=minbase`` from the host's Debian mirror, then an
    ``apt-get upgrade`` against -updates and -security (as the official images carry
    them), then the official image's layout and no apt lists or caches. The .debs are
    kept in ``cache/debootstrap-debs-<suite>`` so that the next stand-in downloads
    nothing debootstrap has fetched before.
    """
    suite = versions.DEBIAN_SUITE

    def build(tmp: Path) -> None:
        for tool, hint in (("debootstrap", "apt-get install -y debootstrap"), ("chroot", "")):
            require_tool(tool, f"Install it (Debian: {hint or 'coreutils'}).")
        if os.geteuid() != 0:
            raise InstallError("debootstrap needs root: run the image build as root")
        sources_file = Path("/etc/apt/sources.list.d/debian.sources")
        sources = sources_file.read_text() if sources_file.exists() else ""
        mirror = debian_mirror(sources)
        debs = cache_root() / f"debootstrap-debs-{suite}"
        debs.mkdir(parents=True, exist_ok=True)
        rootfs = tmp / "rootfs"
        log(
            f"debootstrapping a Debian {suite} rootfs with {', '.join(standin.packages)} "
            f"for the {standin.ref} stand-in (2-4 min cold)"
        )
        with Ticker(f"debootstrapping the {standin.name} stand-in"):
            run_step(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(standin.packages)}",
                    f"--cache-dir={debs}",
                    suite,
                    str(rootfs),
                    mirror,
                ],
                what=f"debootstrap of the {standin.name} stand-in",
            )
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(rootfs_sources(sources))
        with Ticker(f"applying Debian {suite} updates to the {standin.name} stand-in"):
            _chroot(
                rootfs,
                "apt-get update -qq && apt-get -y -qq upgrade && apt-get clean",
                f"apt-get upgrade in the {standin.name} stand-in",
            )
        listing = _chroot(rootfs, "dpkg-query -W -f '${Package} ${Version}\\n'", "dpkg-query")
        installed = dict(line.split(" ", 1) for line in listing.splitlines() if " " in line)
        packages = {p: installed[p] for p in standin.packages}
        _apply_layout(rootfs, standin)
        _tar_rootfs(rootfs, tmp / "rootfs.tar")
        (tmp / "packages.json").write_text(json.dumps(packages, indent=2) + "\n")
        shutil.rmtree(rootfs)

    return cached(f"standin-rootfs-{standin.name}-{standin_key(standin, suite)}", build)


def _apply_layout(rootfs: Path, standin: StandIn) -> None:
    """Debian's rootfs made to look like the image it stands in for, and cleaned."""
    for rel in _ROOTFS_CLEANUP:
        path = rootfs / rel
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            path.unlink(missing_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    # The runtime bind-mounts its own; debootstrap copied the host's.
    for rel in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / rel).write_text("")
    for rel in standin.remove:
        (rootfs / rel).unlink(missing_ok=True)
    for rel, target in standin.symlinks:
        link = rootfs / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    for rel, mode in standin.dirs:
        (rootfs / rel).mkdir(parents=True, exist_ok=True)
        (rootfs / rel).chmod(mode)


def ensure_standin_image(standin: StandIn) -> Path:
    """The OCI archive of a stand-in (and the image in buildah's store, as ``standin.ref``)."""
    rootfs = ensure_standin_rootfs(standin)
    packages: dict[str, str] = json.loads((rootfs / "packages.json").read_text())
    config = standin_config_args(standin, packages)
    key = recipe_digest([RECIPE, rootfs.name, *config])[:16]

    def assemble(storage: BuildahStorage, out: Path) -> None:
        log(f"committing the stand-in {standin.ref} (buildah from scratch + add)")
        container = _from_scratch(storage, standin.name)
        try:
            _add_tree(storage, container, rootfs / "rootfs.tar", f"the {standin.name} rootfs")
            _commit_and_export(storage, container, standin.ref, config, out)
        finally:
            subprocess.run(
                ["buildah", *storage.args(), "rm", container], capture_output=True, check=False
            )

    return _build_image(f"standin-{standin.name}", key, assemble)


# --------------------------------------------------------------- FROM scratch images


def _tar_files(files: Sequence[ScratchFile], dirs: Sequence[tuple[str, int]], out: Path) -> None:
    """A root-owned tarball of an image's few files (and symlinks, and directories)."""

    def rooted(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    with tarfile.open(out, "w") as tar:
        seen: set[str] = set()
        wanted = [(p, m) for p, m in dirs]
        for item in files:
            parent = posixpath.dirname(item.path.strip("/"))
            while parent:
                wanted.append((parent, 0o755))
                parent = posixpath.dirname(parent)
        for path, mode in sorted(wanted, key=lambda d: d[0].count("/")):
            if path not in seen:
                seen.add(path)
                info = tarfile.TarInfo(path)
                info.type, info.mode = tarfile.DIRTYPE, mode
                tar.addfile(rooted(info))
        for item in files:
            name = item.path.strip("/")
            if item.link is not None:
                info = tarfile.TarInfo(name)
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, item.link, 0o777
                tar.addfile(rooted(info))
            elif item.source is not None:
                info = tar.gettarinfo(str(item.source), arcname=name)
                info.mode = item.mode
                with item.source.open("rb") as handle:
                    tar.addfile(rooted(info), handle)


def ensure_scratch_image(image: ScratchImage, name: str) -> Path:
    """The OCI archive of a FROM-scratch image (cached by :meth:`ScratchImage.key`)."""

    def assemble(storage: BuildahStorage, out: Path) -> None:
        log(f"building {image.ref} (FROM scratch)")
        tree = out.parent / "files.tar"
        _tar_files(image.files, image.dirs, tree)
        container = _from_scratch(storage, name)
        try:
            _add_tree(storage, container, tree, f"the files of {image.ref}")
            _commit_and_export(storage, container, image.ref, image.config_args(), out)
        finally:
            subprocess.run(
                ["buildah", *storage.args(), "rm", container], capture_output=True, check=False
            )
            tree.unlink(missing_ok=True)

    return _build_image(name, image.key(), assemble)


def _local_build_labels(
    title: str, source: str, version: str, description: str
) -> tuple[tuple[str, str], ...]:
    """Labels that say an image was built here from upstream's source, not pulled."""
    return (
        ("io.hftpipe.local-build", "true"),
        ("org.opencontainers.image.title", title),
        ("org.opencontainers.image.source", source),
        ("org.opencontainers.image.version", version),
        ("org.opencontainers.image.description", description),
    )


def ensure_pause_binary() -> Path:
    """``pause`` compiled statically from the ``pause.c`` of ``k8s.io/kubernetes``."""
    kubernetes = versions.KUBERNETES

    def build(tmp: Path) -> None:
        require_tool("gcc", "Install gcc and glibc's static libraries (apt-get install -y gcc).")
        tree = Path(install.go_mod_download("k8s.io/kubernetes", f"v{kubernetes}")["Dir"])
        source = tree / "build/pause/linux/pause.c"
        tag = pause_source_tag((tree / "build/pause/Makefile").read_text())
        log(f"compiling pause {tag} from k8s.io/kubernetes@v{kubernetes} build/pause/linux/pause.c")
        (tmp / "bin").mkdir()
        # The Makefile's CFLAGS, plus -s: the binary has no use for its symbols.
        run_step(
            [
                "gcc",
                "-Os",
                "-Wall",
                "-Werror",
                "-static",
                "-s",
                f"-DVERSION=v{tag}-hftpipe-k8s-v{kubernetes}",
                "-o",
                str(tmp / "bin/pause"),
                str(source),
            ],
            what="compiling pause.c (static)",
        )
        (tmp / "source-tag").write_text(tag + "\n")

    return cached(f"pause-k8s-{kubernetes}", build) / "bin" / "pause"


@dataclass(frozen=True)
class GoBinary:
    """A static (``CGO_ENABLED=0``) Go command at a pinned version, with version ldflags."""

    name: str
    package: str
    version: str
    ldflags: str = ""

    def ensure(self) -> Path:
        """Path of the binary: ``go install pkg@version``; should that refuse (a module
        with replace directives), ``go build`` inside a copy of the downloaded module."""

        def build(tmp: Path) -> None:
            require_tool("go", "Install Go 1.24+ (https://go.dev/doc/install).")
            log(f"building {self.name} {self.version} (go install, CGO_ENABLED=0)")
            env = {
                "GOBIN": str(tmp / "bin"),
                "CGO_ENABLED": "0",
                "GOTOOLCHAIN": "local",
                "GOFLAGS": "",
            }
            flags = ["-trimpath", "-ldflags", f"-s -w {self.ldflags}".strip()]
            with Ticker(f"building {self.name}"), tempfile.TemporaryDirectory() as outside:
                try:
                    run_step(
                        ["go", "install", *flags, f"{self.package}@{self.version}"],
                        cwd=Path(outside),
                        env=env,
                        what=f"go install {self.name}",
                    )
                except InstallError as error:
                    if "replace" not in str(error):
                        raise
                    self._build_from_module(tmp, flags, env)

        return cached(f"{self.name}-{self.version}-static", build) / "bin" / self.name

    def _build_from_module(self, tmp: Path, flags: list[str], env: dict[str, str]) -> None:
        module = self.package  # the commands built here are their modules' main packages
        src = tmp / "src"
        shutil.copytree(install.go_mod_download(module, self.version)["Dir"], src)
        src.chmod(0o755)
        for path in src.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        run_step(
            ["go", "build", *flags, "-o", str(tmp / "bin" / self.name), "."],
            cwd=src,
            env={**env, "GOFLAGS": "-mod=mod"},
            what=f"go build {self.name}",
        )
        shutil.rmtree(src)


COREDNS = GoBinary(
    "coredns",
    "github.com/coredns/coredns",
    f"v{versions.COREDNS}",
    f"-X github.com/coredns/coredns/coremain.GitCommit=v{versions.COREDNS}",
)
LOCAL_PATH_PROVISIONER = GoBinary(
    "local-path-provisioner",
    "github.com/rancher/local-path-provisioner",
    f"v{versions.LOCAL_PATH_PROVISIONER}",
    f"-X main.VERSION=v{versions.LOCAL_PATH_PROVISIONER}",
)


def pause_image(binary: Path, source_tag: str) -> ScratchImage:
    """``registry.k8s.io/pause``: ``/pause`` alone, as the real image."""
    labels = _local_build_labels(
        "pause",
        f"https://github.com/kubernetes/kubernetes/tree/v{versions.KUBERNETES}/build/pause",
        source_tag,
        f"The pause program of Kubernetes v{versions.KUBERNETES} (build/pause/linux/pause.c,"
        f" source tag {source_tag}), compiled statically here with gcc; not the image "
        "published on registry.k8s.io",
    )
    return ScratchImage(
        ref=PAUSE_IMAGE,
        files=(ScratchFile("/pause", binary),),
        entrypoint=("/pause",),
        labels=labels,
    )


def coredns_image(binary: Path) -> ScratchImage:
    """CoreDNS at ``/coredns``, as the official image lays it out."""
    labels = _local_build_labels(
        "coredns",
        "https://github.com/coredns/coredns",
        versions.COREDNS,
        "CoreDNS built here with go install, FROM scratch; not the image coredns publishes",
    )
    return ScratchImage(
        ref=COREDNS_IMAGE,
        files=(ScratchFile("/coredns", binary),),
        entrypoint=("/coredns",),
        labels=labels,
        dirs=(("tmp", 0o1777),),
    )


def local_path_image(binary: Path) -> ScratchImage:
    """The provisioner at ``/usr/bin/local-path-provisioner`` with a PATH, as upstream's
    image (their manifests run ``command: [local-path-provisioner, ...]``)."""
    version = versions.LOCAL_PATH_PROVISIONER
    labels = _local_build_labels(
        "local-path-provisioner",
        "https://github.com/rancher/local-path-provisioner",
        version,
        "rancher/local-path-provisioner built here with go install, FROM scratch "
        "(upstream's image is alpine-based); not the image rancher publishes",
    )
    return ScratchImage(
        ref=LOCAL_PATH_IMAGE,
        files=(ScratchFile("/usr/bin/local-path-provisioner", binary),),
        cmd=("local-path-provisioner",),
        env=(("PATH", DEFAULT_PATH),),
        labels=labels,
        dirs=(("tmp", 0o1777),),
    )


def busybox_image(binary: Path, applets: Sequence[str], version: str) -> ScratchImage:
    """Debian's static busybox at ``/bin/busybox`` with an applet symlink for each command,
    for the provisioner's helper pods (``sh -c 'mkdir -m 0777 -p ...'``, ``rm -rf``)."""
    links = tuple(ScratchFile(f"/bin/{a}", link="busybox") for a in applets)
    labels = (
        ("io.hftpipe.stand-in", "true"),
        ("io.hftpipe.stand-in.for", "docker.io/library/busybox"),
        ("io.hftpipe.stand-in.packages", f"busybox-static={version}"),
        (
            "org.opencontainers.image.description",
            "Local stand-in for busybox: Debian 12's busybox-static, FROM scratch; "
            "not the official image",
        ),
    )
    return ScratchImage(
        ref=BUSYBOX_IMAGE,
        files=(ScratchFile("/bin/busybox", binary), *links),
        cmd=("sh",),
        env=(("PATH", DEFAULT_PATH),),
        labels=labels,
        dirs=(("tmp", 0o1777), ("root", 0o700), ("etc", 0o755)),
    )


def _busybox() -> tuple[Path, list[str], str]:
    path = Path(require_tool("busybox", "Install it: apt-get install -y busybox-static."))
    version = run_step(
        ["dpkg-query", "-W", "-f", "${Version}", "busybox-static"],
        what="dpkg-query busybox-static (the busybox image needs Debian's static build)",
    ).strip()
    applets = busybox_applets(run_step([str(path), "--list"], what="busybox --list"))
    for needed in ("sh", "mkdir", "rm", "chmod", "ls"):
        if needed not in applets:
            raise InstallError(f"{path} has no {needed} applet: install busybox-static")
    return path.resolve(), applets, version


# ------------------------------------------------------------------ our own images


def project_labels(ref: str, dockerfile: str, base_id: str) -> dict[str, str]:
    """Labels that replace the stand-in's inherited ones in our images (labels are
    inherited from the base): ours are not stand-ins, but are built on one.

    Set on the built image by a commit of its own, never by ``bud --label``: buildah
    applies those to every stage, recommits the ``FROM base`` stage under a new id on
    each build, and so misses the layer cache of every step after it.
    """
    return {
        "io.hftpipe.stand-in": "false",
        "io.hftpipe.stand-in.for": "",
        "io.hftpipe.stand-in.packages": "",
        "io.hftpipe.base.stand-in": "true",
        "io.hftpipe.base-image-id": base_id,
        "org.opencontainers.image.title": ref,
        "org.opencontainers.image.description": (
            f"hftpipe, built here from {dockerfile} unchanged, on a local stand-in for "
            f"{PYTHON_STANDIN.replaces} (Debian 12's python3 3.11; see io.hftpipe.base-image-id)"
        ),
        "org.opencontainers.image.base.name": f"{PYTHON_BASE_IMAGE} (local stand-in)",
        "org.opencontainers.image.vendor": "hftpipe",
        "org.opencontainers.image.version": PROJECT_TAG,
    }


def context_files(repo_root: Path) -> list[str]:
    """The files of the build context as git sees them: tracked, and untracked but not
    git-ignored (a new module not yet added is still copied into the image)."""
    out = run_step(
        [
            "git",
            "-C",
            str(repo_root),
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        what="listing the build context (git ls-files)",
    )
    return [f for f in out.split("\0") if f]


def _uv_build_cache() -> Path:
    path = cache_root() / "uv-build-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_project_images(repo_root: Path, *, uv_cache: bool = True) -> dict[str, str]:
    """Build ``operator/Dockerfile`` and ``workers/Dockerfile`` as they are; return
    ``{image reference: OCI archive path}``.

    Each archive is cached under a digest of its build context (:func:`context_digest`),
    so an unchanged tree builds nothing. ``uv_cache`` bind-mounts ``cache/uv-build-cache``
    onto the build stage's uv cache (a rebuild then downloads no wheel twice).
    """
    repo_root = repo_root.resolve()
    base = ensure_standin_image(PYTHON_STANDIN)
    files = context_files(repo_root)
    return {
        ref: str(_project_image(repo_root, files, base, dockerfile, ref, uv_cache=uv_cache))
        for dockerfile, ref in (
            ("operator/Dockerfile", OPERATOR_IMAGE),
            ("workers/Dockerfile", WORKERS_IMAGE),
        )
    }


def build_project_image(repo_root: Path, dockerfile: str, ref: str) -> Path:
    """One of our Dockerfiles built as :func:`build_project_images` builds it, tagged
    ``ref``; the OCI archive's path. For a build tool that names the image itself
    (skaffold's custom builder: ``hftpipe_devstack.skaffold``)."""
    repo_root = repo_root.resolve()
    base = ensure_standin_image(PYTHON_STANDIN)
    return _project_image(repo_root, context_files(repo_root), base, dockerfile, ref, uv_cache=True)


def _project_image(
    repo_root: Path, files: Sequence[str], base: Path, dockerfile: str, ref: str, *, uv_cache: bool
) -> Path:
    base_id = oci_archive_image_id(base)
    digest = context_digest(repo_root, files, dockerfile, base_id, ref)

    name = ref.rsplit("/", 1)[-1].replace(":", "-")

    def assemble(storage: BuildahStorage, out: Path) -> None:
        _ensure_in_storage(storage, base, PYTHON_BASE_IMAGE)
        log(f"building {ref} from {dockerfile} with buildah bud (uv sync reaches PyPI)")
        unlabelled = f"localhost/hftpipe-build/{name}"
        cmd = bud_args(
            storage,
            repo_root,
            dockerfile,
            unlabelled,
            uv_cache=_uv_build_cache() if uv_cache else None,
            trust=build_trust(Path("/etc/ssl/certs/ca-certificates.crt"), out.parent / "trust"),
        )
        try:
            with Ticker(f"building {ref}"):
                run_step(cmd, cwd=repo_root, what=f"buildah bud {dockerfile}")
        finally:
            shutil.rmtree(out.parent / "trust", ignore_errors=True)
        # The labels go on afterwards: buildah applies bud's --label to every stage,
        # which recommits the base stage and misses the layer cache of all that follows.
        container = _buildah(
            storage, "from", "--pull=never", unlabelled, what=f"relabelling {unlabelled}"
        )
        try:
            labels = {
                **project_labels(ref, dockerfile, base_id),
                "io.hftpipe.context-digest": digest,
            }
            config = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
            _commit_and_export(storage, container, ref, config, out)
        finally:
            subprocess.run(
                ["buildah", *storage.args(), "rm", container], capture_output=True, check=False
            )
        (out.parent / "context-digest").write_text(digest + "\n")

    return _build_image(name, digest[:16], assemble)


# ------------------------------------------------------------------------ public API


def ensure_infra_images() -> list[Path]:
    """The archives of the cluster's own images: pause, CoreDNS, local-path-provisioner,
    busybox, and the Redis and Python stand-ins."""
    pause = ensure_pause_binary()
    source_tag = (pause.parent.parent / "source-tag").read_text().strip()
    busybox, applets, busybox_version = _busybox()
    return [
        ensure_scratch_image(pause_image(pause, source_tag), "pause"),
        ensure_scratch_image(coredns_image(COREDNS.ensure()), "coredns"),
        ensure_scratch_image(local_path_image(LOCAL_PATH_PROVISIONER.ensure()), "local-path"),
        ensure_scratch_image(busybox_image(busybox, applets, busybox_version), "busybox"),
        ensure_standin_image(REDIS_STANDIN),
        ensure_standin_image(PYTHON_STANDIN),
    ]


def ensure_cluster_images(repo_root: Path) -> list[Path]:
    """The OCI archive of every image in :data:`CLUSTER_IMAGES` (and of the Python
    stand-in), built or taken from the cache; hand them to :func:`import_images`."""
    archives = ensure_infra_images()
    archives += [Path(p) for p in build_project_images(repo_root).values()]
    return archives


def import_images(
    archives: Iterable[Path],
    containerd_address: Path,
    *,
    namespace: str = _NAMESPACE,
    snapshotter: str = "overlayfs",
) -> list[str]:
    """Import archives into containerd's ``k8s.io`` namespace (where the kubelet's CRI
    finds them), unpacked for ``snapshotter``; return the image names containerd has.

    Importing an image that is already there replaces its name's target and is cheap
    (its layers are content-addressed), so calling this on every start is fine.
    """
    require_tool("ctr", "Install containerd (Debian: apt-get install -y containerd).")
    names: list[str] = []
    for archive in archives:
        out = run_step(
            ctr_import_args(
                containerd_address, archive, namespace=namespace, snapshotter=snapshotter
            ),
            what=f"importing {archive} into containerd ({containerd_address})",
        )
        names += re.findall(r"^unpacking (\S+) ", out, re.M)
    return names


def image_names(containerd_address: Path, namespace: str = _NAMESPACE) -> list[str]:
    """The image names containerd holds in ``namespace`` (``ctr images ls -q``)."""
    out = run_step(
        [
            "ctr",
            "--address",
            str(containerd_address),
            "--namespace",
            namespace,
            "images",
            "ls",
            "-q",
        ],
        what="listing containerd's images",
    )
    return out.split()


# --------------------------------------------------- a throwaway containerd, smoke tests


@contextlib.contextmanager
def scratch_containerd(workdir: Path) -> Iterator[Path]:
    """A containerd of our own with every path under ``workdir``; yields its socket.

    For checking the archives without the node's containerd: on exit it is stopped,
    every mount under ``workdir`` (snapshots, shims' rootfs) unmounted and the
    directory removed.
    """
    require_tool("containerd", "Install containerd (Debian: apt-get install -y containerd).")
    workdir.mkdir(parents=True, exist_ok=True)
    address = workdir / "containerd.sock"
    config = workdir / "config.toml"
    config.write_text(containerd_config(workdir / "root", workdir / "state", address))
    with (workdir / "containerd.log").open("w") as log_file:
        proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            ok = (
                subprocess.run(
                    ["ctr", "--address", str(address), "version"], capture_output=True, check=False
                ).returncode
                == 0
            )
            if ok:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "containerd.log").read_text()[-2000:]
                raise InstallError(f"the scratch containerd did not start:\n{tail}")
            time.sleep(0.2)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for point in mounts_under(Path("/proc/self/mountinfo").read_text(), workdir):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def smoke_test(address: Path, tests: Sequence[SmokeTest] = SMOKE_TESTS) -> dict[str, str]:
    """Run each test once in the containerd at ``address``; ``{ref argv: output}``.

    The pause image is also started detached and stopped with SIGTERM, as the runtime
    does with every pod sandbox.
    """
    results: dict[str, str] = {}
    for test in tests:
        cid = f"hftpipe-smoke-{uuid.uuid4().hex[:10]}"
        what = f"{test.ref} {' '.join(test.argv)}"
        cmd = ctr_run_args(
            address, test.ref, cid, test.argv, read_only=test.read_only, mounts=test.mounts
        )
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired as timeout:
            subprocess.run(
                ["ctr", "--address", str(address), "--namespace", _NAMESPACE, "tasks", "kill",
                 "--signal", "SIGKILL", cid],
                capture_output=True,
                check=False,
            )  # fmt: skip
            raise InstallError(f"running {what}: no exit within 120 s") from timeout
        out = proc.stdout + proc.stderr
        if proc.returncode != 0 or test.expect not in out:
            raise InstallError(
                f"running {what} (exit {proc.returncode}) printed {out[-2000:]!r}, "
                f"expected {test.expect!r} in it: {' '.join(cmd)}"
            )
        results[what] = " | ".join(out.strip().splitlines()[:3])
        log(f"  ran {what}: {results[what]}")
    results[f"{PAUSE_IMAGE} (sandbox)"] = _start_stop_pause(address)
    return results


def _start_stop_pause(address: Path) -> str:
    cid = f"hftpipe-smoke-pause-{uuid.uuid4().hex[:8]}"
    base = ["ctr", "--address", str(address), "--namespace", _NAMESPACE]
    run_step(
        ctr_run_args(address, PAUSE_IMAGE, cid, (), detach=True),
        what="starting the pause image",
    )
    try:
        time.sleep(0.5)
        status = run_step([*base, "tasks", "ls"], what="listing tasks")
        line = next((ln for ln in status.splitlines() if ln.startswith(cid)), "")
        if "RUNNING" not in line:
            raise InstallError(f"the pause container is not running: {status}")
        run_step([*base, "tasks", "kill", "--signal", "SIGTERM", cid], what="stopping pause")
        for _ in range(50):
            if "STOPPED" in run_step([*base, "tasks", "ls"], what="listing tasks"):
                break
            time.sleep(0.1)
        return f"{line.split()[-1]} until SIGTERM"
    finally:
        subprocess.run([*base, "tasks", "delete", "--force", cid], capture_output=True, check=False)
        subprocess.run([*base, "containers", "delete", cid], capture_output=True, check=False)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m hftpipe_devstack.images [--verify] [repo_root]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo_root", nargs="?", default=".", type=Path)
    parser.add_argument(
        "--verify",
        action="store_true",
        help="import into a throwaway containerd and run each image once",
    )
    parser.add_argument("--infra-only", action="store_true", help="skip our own images")
    args = parser.parse_args(argv)
    started = time.monotonic()
    archives = ensure_infra_images()
    if not args.infra_only:
        archives += [Path(p) for p in build_project_images(args.repo_root).values()]
    log(f"{len(archives)} image archives ready in {time.monotonic() - started:.0f} s")
    for archive in archives:
        print(archive)
    if args.verify:
        with scratch_containerd(Path(tempfile.mkdtemp(prefix="hftpipe-ctrd-"))) as address:
            started = time.monotonic()
            import_images(archives, address)
            log(f"imported in {time.monotonic() - started:.1f} s")
            for name in image_names(address):
                print(name)
            tests = [
                t
                for t in SMOKE_TESTS
                if not args.infra_only or t.ref not in (OPERATOR_IMAGE, WORKERS_IMAGE)
            ]
            for what, out in smoke_test(address, tests).items():
                print(f"{what}: {out}")


if __name__ == "__main__":
    main()
