"""The bench's own Python environment for Quix Streams: pinned, cached, never the product's.

Quix Streams is a baseline the bench measures, not a dependency of hftpipe: it is not in
``pyproject.toml`` or ``uv.lock``, and nothing of the product imports it. The bench
creates a virtualenv for it under the cache directory
(``$HFTPIPE_CACHE_DIR/bench-quixstreams-<version>-py<X.Y>``, default ``~/.cache/hftpipe``),
once, with the project's pinned uv when it is there (``make venv`` installs it) and
``python -m venv`` + pip otherwise, and runs ``bench/quix_vwap.py`` with its Python.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

QUIXSTREAMS_VERSION: Final = "3.28.1"
"""The pinned Quix Streams release (the newest that installed with Python 3.11 when
the baseline was added). ``[redis]`` brings the client its Redis sink needs."""
REQUIREMENT: Final = f"quixstreams[redis]=={QUIXSTREAMS_VERSION}"
UV_VERSION: Final = "0.13.9"
"""The uv of the Makefile (``UV_VERSION``), used when it is installed."""


def venv_dir() -> Path:
    """Where the bench's Quix Streams venv lives, keyed by the pinned version and Python."""
    from hftpipe_devstack.install import cache_root  # noqa: PLC0415

    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return cache_root() / f"bench-quixstreams-{QUIXSTREAMS_VERSION}-py{py}"


def python(root: Path) -> Path:
    """The venv's interpreter."""
    return root / "bin" / "python"


def ensure_venv(log: Callable[[str], None] = print) -> Path:
    """The Python of the bench's Quix Streams venv, created on first use.

    Built in place (a venv's scripts name its path), marked ``.installed`` (with the
    installed versions) once complete; an unmarked directory is a failed build and is
    started over."""
    from hftpipe_devstack.install import cache_root  # noqa: PLC0415

    root = venv_dir()
    done = root / ".installed"
    if done.exists() and python(root).exists():
        return python(root)
    log(f"installing {REQUIREMENT} into {root} (the bench's own venv, once)")
    shutil.rmtree(root, ignore_errors=True)
    uv = cache_root() / f"uv-{UV_VERSION}" / "bin" / "uv"
    if uv.exists():
        _run([str(uv), "venv", "--quiet", "--python", sys.executable, str(root)])
        _run([str(uv), "pip", "install", "--quiet", "--python", str(python(root)), REQUIREMENT])
    else:
        _run([sys.executable, "-m", "venv", str(root)])
        _run([str(python(root)), "-m", "pip", "install", "--quiet", REQUIREMENT])
    done.write_text(freeze(python(root)))
    return python(root)


def freeze(py: Path) -> str:
    """``name==version`` of every package in the venv (recorded with the results)."""
    cmd = [str(py), "-c", _FREEZE]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


_FREEZE: Final = (
    "from importlib import metadata\n"
    "for d in sorted(metadata.distributions(), key=lambda d: d.metadata['Name'].lower()):\n"
    "    print(f\"{d.metadata['Name']}=={d.version}\")\n"
)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])}... exited with {proc.returncode}: "
            f"{(proc.stderr or proc.stdout)[-1500:]}"
        )
