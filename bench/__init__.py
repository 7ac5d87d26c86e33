"""The hftpipe benchmark suite: ``python bench/run.py`` (``make bench``); see README.md."""
