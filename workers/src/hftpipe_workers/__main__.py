"""``python -m hftpipe_workers`` (same as the ``hftpipe`` command)."""

from .cli import app

app(prog_name="hftpipe")
