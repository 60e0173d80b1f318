"""Which libvirt and QEMU a testbed host runs.

* ``system``: the machine's own (Debian 12: libvirt 9.0, QEMU 7.2), monolithic libvirtd.
* ``backports``: libvirt 11 and QEMU 10 from bookworm-backports, extracted privately into the
  lab's cache (tests/lab/lab.py: :func:`backports_libvirt`, :func:`outer_qemu`) and laid over
  /usr inside the host's own mount namespace only; the machine's libvirt is left alone.
  Debian builds libvirt without the modular daemons, so this host runs a monolithic libvirtd
  too (as Debian 13 and Ubuntu ship it).
* ``modular``: the same libvirt 11 and QEMU 10 with the modular daemons, as Fedora and RHEL
  run them: ``virtqemud`` runs QEMU and the hooks, ``virtproxyd`` serves remote clients,
  ``virtnodedevd`` and ``virtnetworkd`` what ``qemu:///system`` forwards to them; no libvirtd.
  The daemons are built from that libvirt's own source (lab.py :func:`modular_daemons`).

Hosts of one testbed may run different flavours: that is how migrations between libvirt
versions are tested.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
from pathlib import Path

#: Module directories replaced wholesale on a backports host: a libvirt 11 daemon must not
#: load the system's 9.0 drivers, nor QEMU 10 the system's 7.2 modules (it crashes on
#: ``qom-list-types`` if it does).
LIBVIRT_MODULES = Path("/usr/lib/x86_64-linux-gnu/libvirt")
QEMU_MODULES = Path("/usr/lib/x86_64-linux-gnu/qemu")
#: Environment variable naming the flavours the e2e tier runs (comma separated).
FLAVOURS_ENV = "VFMIGRATE_TEST_LIBVIRT"
FLAVOUR_NAMES = ("system", "backports", "modular")
#: The flavour that every other one also meets in the tier's tests between versions.
BASELINE_FLAVOUR = "system"
#: Flavours that, by default, run only the e2e tests marked ``daemon_layout``: libvirtd on
#: 11.3 differs from ``modular`` only in the daemon that runs QEMU and the hooks (the qemu
#: driver, the hook calls and the migration stream are the same code), and from ``system``
#: only in the version.  Named in ``$VFMIGRATE_TEST_LIBVIRT``, a flavour runs every test.
DAEMON_LAYOUT_ONLY = ("backports",)


@dataclasses.dataclass(frozen=True)
class LibvirtFlavour:
    """A libvirt + QEMU build a testbed host runs (see the module docstring)."""

    name: str
    #: Trees whose ``usr/`` is laid over /usr, topmost first (empty: the system's own).
    usr_layers: tuple[Path, ...] = ()
    #: (directory, system directory it replaces), so that no module of another version loads.
    private_dirs: tuple[tuple[Path, Path], ...] = ()
    libvirt_version: str = ""
    qemu_version: str = ""
    #: The daemon that runs QEMU and the qemu hooks: libvirtd, or virtqemud with modular daemons.
    qemu_daemon: str = "libvirtd"
    #: Modular daemons started before it, which it or its clients need.
    helper_daemons: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        """``9.0`` for libvirt 9.0.0: what test ids and summaries call this flavour."""
        return ".".join(self.libvirt_version.split(".")[:2])

    @property
    def label(self) -> str:
        daemons = (self.qemu_daemon if not self.helper_daemons
                   else f"modular daemons ({', '.join((self.qemu_daemon, *self.helper_daemons))})")
        return f"libvirt {self.libvirt_version} + QEMU {self.qemu_version}, {daemons}"

    def mount_commands(self) -> list[list[str]]:
        """The mounts, run inside the host's mount namespace, that make it this flavour."""
        if not self.usr_layers:
            return []
        lower = ":".join([*(str(layer / "usr") for layer in self.usr_layers), "/usr"])
        commands = [["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}", "/usr"]]
        for source, target in self.private_dirs:
            commands.append(["mount", "--bind", str(source), str(target)])
        return commands


def _first_version(argv: list[str]) -> str:
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    match = re.search(r"(\d+\.\d+\.\d+)", output)
    if match is None:
        raise RuntimeError(f"{argv[0]} printed no version: {output!r}")
    return match.group(1)


@functools.cache
def system_flavour() -> LibvirtFlavour:
    return LibvirtFlavour(
        "system",
        libvirt_version=_first_version(["/usr/sbin/libvirtd", "--version"]),
        qemu_version=_first_version(["qemu-system-x86_64", "--version"]),
    )


@functools.cache
def backports_flavour() -> LibvirtFlavour:
    """libvirt 11 + QEMU 10 from bookworm-backports (downloaded and cached on first use)."""
    from tests.lab import lab

    libvirt = lab.backports_libvirt()
    qemu = lab.outer_qemu()
    return LibvirtFlavour(
        "backports",
        usr_layers=(libvirt.root, qemu.root),
        private_dirs=((libvirt.modules, LIBVIRT_MODULES),
                      (qemu.root / QEMU_MODULES.relative_to("/"), QEMU_MODULES)),
        libvirt_version=libvirt.versions()["libvirt-daemon"].split("-")[0],
        qemu_version=qemu.version().split()[3],
    )


@functools.cache
def modular_flavour() -> LibvirtFlavour:
    """:func:`backports_flavour` with the modular daemons (built and cached on first use)."""
    from tests.lab import lab

    daemons = lab.modular_daemons()
    backports = backports_flavour()
    return dataclasses.replace(
        backports, name="modular", usr_layers=(daemons.root, *backports.usr_layers),
        qemu_daemon=lab.MODULAR_DAEMONS[0], helper_daemons=lab.MODULAR_DAEMONS[1:])


def flavour(name: str) -> LibvirtFlavour:
    if name == "system":
        return system_flavour()
    if name == "backports":
        return backports_flavour()
    if name == "modular":
        return modular_flavour()
    raise ValueError(f"unknown libvirt flavour {name!r}: use one of {', '.join(FLAVOUR_NAMES)}")


def _named_flavours() -> list[str]:
    wanted = [n.strip() for n in os.environ.get(FLAVOURS_ENV, "").split(",") if n.strip()]
    for name in wanted:
        if name not in FLAVOUR_NAMES:
            raise ValueError(f"{FLAVOURS_ENV}={os.environ[FLAVOURS_ENV]!r} names {name!r}; "
                             f"use a comma-separated list of {', '.join(FLAVOUR_NAMES)}")
    return wanted


def flavours_to_test() -> list[str]:
    """The flavour names ``$VFMIGRATE_TEST_LIBVIRT`` asks for (default: all of them)."""
    return _named_flavours() or list(FLAVOUR_NAMES)


def flavours_for_every_test() -> list[str]:
    """Of :func:`flavours_to_test`, those that run every e2e test: by default all but
    :data:`DAEMON_LAYOUT_ONLY`, which run the tests marked ``daemon_layout``."""
    named = _named_flavours()
    return named or [name for name in FLAVOUR_NAMES if name not in DAEMON_LAYOUT_ONLY]
