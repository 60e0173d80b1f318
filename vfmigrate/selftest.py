"""``vfmigrate --self-test``: can the hook do its work where it runs?

libvirt never passes ``--self-test`` (it always passes four arguments).
``vfmigrate hook enable`` and ``vfmigrate doctor`` run the hook file that way
under the confinement of the daemon that will run it (see
:mod:`vfmigrate.confinement`).  It proves what a real call needs: the package
imports, the config reads, sysfs and libvirt's run directory read, the ledger
opens and takes (and rolls back) a write transaction, journald takes a message.

Output: one line per check on stdout, ``ok   NAME: …`` or ``FAIL NAME: …``
(the FAIL text says what to do).  Exit 0 only if every check passed, else 1.
Nothing is changed: the ledger transaction is rolled back (opening it creates
it, with its directory, when it does not exist yet, as the hook would).
"""

from __future__ import annotations

import os
import sys

from .errors import counted


class _Rollback(Exception):
    pass


def main(stdout, *, environ=None, journal_socket=None, sender=None) -> int:
    from . import __version__
    from . import config as configuration
    from .errors import ConfigMissing, VfmigrateError

    environ = os.environ if environ is None else environ
    results: list[tuple[bool, str, str]] = []

    def check(name: str, passed: bool, message: str) -> None:
        results.append((passed, name, message))
        stdout.write(f"{'ok  ' if passed else 'FAIL'} {name}: {message}\n")

    package = os.path.dirname(os.path.abspath(__file__))
    check("import", True, f"vfmigrate {__version__} from {package} "
          f"(Python {sys.version.split()[0]} at {sys.executable})")

    path = configuration.config_path(None, environ)
    try:
        config = configuration.load(path)
        check("config", True, f"{path} read ({counted(len(config.networks), 'network')})")
    except ConfigMissing:
        config = configuration.Config(path=path)
        check("config", True, f"{path} does not exist: the hook leaves guests alone "
              "until it does")
    except VfmigrateError as error:
        check("config", False, f"{error}")
        config = None

    if config is not None:
        _check_sysfs(config, check)
        _check_run_dir(config, check)
        _check_ledger(config, check)
    _check_journal(check, journal_socket, sender)
    return 0 if all(passed for passed, _, _ in results) else 1


def _check_sysfs(config, check) -> None:
    from .errors import VfmigrateError
    from .inventory import Inventory

    devices = os.path.join(config.sysfs_root, "bus", "pci", "devices")
    try:
        count = len(os.listdir(devices))
    except OSError as error:
        check("sysfs", False, f"cannot read {devices}: {error.strerror}; check sysfs_root "
              f"in {config.path}")
        return
    try:
        inventory = Inventory.of(config)
        vfs = sum(len(inventory.vfs_of_network(name)) for name in config.networks)
    except VfmigrateError as error:
        check("sysfs", False, str(error))
        return
    check("sysfs", True, f"{devices} read ({count} PCI devices, {vfs} VFs in "
          f"{counted(len(config.networks), 'network')})")


def _check_run_dir(config, check) -> None:
    from .running import running_guests

    problems: list[str] = []
    try:
        guests = running_guests(config.libvirt_run_dir, problems,
                                allow_stand_ins=config.allow_stand_ins)
    except OSError as error:
        check("libvirt state", False, f"cannot read {config.libvirt_run_dir}: "
              f"{error.strerror}")
        return
    if problems:
        check("libvirt state", False, f"{problems[0]}")
        return
    check("libvirt state", True, f"{config.libvirt_run_dir} read "
          f"({counted(len(guests), 'running guest')})")


def _check_ledger(config, check) -> None:
    from .errors import VfmigrateError
    from .ledger import Ledger

    try:
        with Ledger.of(config) as ledger:
            live = ledger.live_claims()
            try:
                with ledger.transaction():
                    raise _Rollback
            except _Rollback:
                pass
    except VfmigrateError as error:
        check("ledger", False, f"{error}")
        return
    check("ledger", True, f"{config.ledger_path} opened, write transaction taken and "
          f"rolled back ({counted(len(live), 'live claim')})")


def _check_journal(check, journal_socket, sender) -> None:
    from .events import JOURNAL_SOCKET, default_sender

    socket_path = journal_socket or JOURNAL_SOCKET
    if sender is None:
        if not os.path.exists(socket_path):
            check("journal", True, f"no journald at {socket_path}: the hook reports on "
                  "stderr, which libvirt logs")
            return
        sender = default_sender(socket_path)
        if sender is None:
            check("journal", False, f"journald listens at {socket_path} but python3-systemd "
                  "is missing: install it")
            return
    try:
        sender("vfmigrate hook self-test", PRIORITY=7, SYSLOG_IDENTIFIER="vfmigrate")
    except OSError as error:
        check("journal", False, f"cannot send to journald at {socket_path}: "
              f"{error.strerror or error}")
        return
    check("journal", True, f"message sent to journald at {socket_path}")
