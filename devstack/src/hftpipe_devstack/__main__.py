"""``python -m hftpipe_devstack``."""

import sys

from .cli import main

sys.exit(main())
