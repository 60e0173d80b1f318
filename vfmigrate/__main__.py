"""``python3 -m vfmigrate``: the same as the ``vfmigrate`` command."""
import sys

from vfmigrate.cli import run

sys.exit(run())
