"""``python -m tuner``: the ``tuner`` command, for an environment whose scripts are not on PATH."""

from tuner.cli import entry

entry()
