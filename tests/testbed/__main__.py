"""Manual use of the testbed: ``python -m tests.testbed up|down|list`` (as root, from the repo).

* ``up [--hosts N] [--no-journald] [--hold]`` starts a testbed and prints its description
  (JSON) and how to enter each host. Without ``--hold`` it is left running (detached) and
  ``down`` removes it; with ``--hold`` it lives until this command gets SIGINT/SIGTERM.
* ``down [--force] [INSTANCE ...]`` removes the named instances, or with no name every
  instance of the prefix (detached or stale): processes in their namespaces, namespaces,
  directories. An instance whose owning process is alive is kept unless ``--force``.
* ``list`` shows the instances this machine knows.

Use /usr/bin/python3 or the project's venv (python3-libvirt imports only there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TextIO

from .testbed import DEFAULT_PREFIX, Testbed, destroy_instance, list_instances


def main(argv: Sequence[str], stdout: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a testbed")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--no-journald", action="store_true")
    up.add_argument("--hold", action="store_true",
                    help="stay in the foreground; tear down on SIGINT/SIGTERM")
    down = commands.add_parser("down", help="remove testbeds")
    down.add_argument("instances", nargs="*")
    down.add_argument("--force", action="store_true",
                      help="also remove instances whose owning process is alive")
    commands.add_parser("list", help="list testbeds")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if options.command == "up":
        testbed = Testbed(options.hosts, prefix=options.prefix, journald=not options.no_journald)
        testbed.create()
        testbed.start()
        description = testbed.describe()
        description["enter"] = {
            host.name: shlex.join(host.nsenter_argv() + ["bash"]) for host in testbed.hosts
        }
        stdout.write(json.dumps(description, indent=2) + "\n")
        stdout.flush()
        if not options.hold:
            testbed.detach()
            return 0
        signal.signal(signal.SIGTERM, _interrupt)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
        testbed.teardown()
        return 0
    if options.command == "down":
        known = list_instances(options.prefix)
        status = 0
        for name in options.instances or list(known):
            if known.get(name, {}).get("owned") and not options.force:
                stdout.write(f"kept {name}: its owner is alive (--force to remove)\n")
                status = 1
                continue
            destroy_instance(name)
            stdout.write(f"removed {name}\n")
        return status
    stdout.write(json.dumps(list_instances(options.prefix), indent=2) + "\n")
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
