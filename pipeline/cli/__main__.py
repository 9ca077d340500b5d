"""``python -m pipeline.cli``: the ``tsad`` command line (as the ``tsad`` script runs it)."""

from pipeline.cli import app

app(prog_name="tsad")
