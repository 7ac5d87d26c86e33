"""``make bench``: the hftpipe benchmark suite (``python bench/run.py [--quick]``).

Every figure is measured against a baseline in the same run, on one ephemeral
broker; see ``bench/README.md`` for what each means and the latest results.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _main() -> int:
    # Run as a script, the repository root is not on sys.path, and the suite is
    # the ``bench`` package (the probe subprocess imports it as ``bench.probe``).
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.suite import main  # noqa: PLC0415

    return main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(_main())
