"""Whether the package on disk is the build the hook is running, during upgrades.

dpkg and rpm replace a package's files one rename at a time; a hook that libvirt
starts meanwhile could import some modules of the old version and some of the new
(packaging/README.md, "Upgrade safety").  ``packaging/build`` writes
``vfmigrate/_build.py``: the version and a CRC-32 of every module file of the build.
The hook's VF path checks the files on disk against it before its imports, and after
them that no file was replaced since: then everything it loaded is that build.  If not,
it waits a second (the package manager's rename loop takes milliseconds) and starts
itself once more; if the files still do not match, the package is broken and the hook
answers as it does when it cannot import vfmigrate at all (``hooks/qemu``): an
incoming guest with VFs is refused, so it stays on the source, anything else is let
through.

A tree without ``_build.py`` (a checkout, the tests) is not checked.
"""

from __future__ import annotations

import os
import sys
import time

REEXEC_ENV = "VFMIGRATE_REEXEC"
SETTLE_SECONDS = 1.0


def mismatch(package_dir: str | None = None, seen: dict | None = None) -> str | None:
    """What on disk is not this build (a missing or changed file), or None.  ``seen``
    gets each file's inode, mtime and size as read, for :func:`changed_since`."""
    try:
        from . import _build
    except ImportError:
        return None
    import zlib

    package_dir = package_dir or os.path.dirname(os.path.abspath(__file__))
    for name, crc in _build.FILES.items():
        path = os.path.join(package_dir, name)
        try:   # os.open and os.read: no file object to build, on the hook's path
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return f"{name} is missing"
        try:
            status = os.fstat(descriptor)
            data = os.read(descriptor, status.st_size + 1)
        except OSError:
            return f"{name} cannot be read"
        finally:
            os.close(descriptor)
        if zlib.crc32(data) != crc:
            return f"{name} is not the one of vfmigrate {_build.VERSION}"
        if seen is not None:
            seen[path] = (status.st_ino, status.st_mtime_ns, status.st_size)
    return None


def changed_since(seen: dict) -> str | None:
    """A file :func:`mismatch` read into ``seen`` that is no longer that file, or None.
    Package managers replace a file by renaming a new one over it (a new inode), so
    files unchanged here were this build all along: what was imported in between too."""
    for path, identity in seen.items():
        try:
            status = os.stat(path)
        except OSError:
            return f"{os.path.basename(path)} is missing"
        if (status.st_ino, status.st_mtime_ns, status.st_size) != identity:
            return f"{os.path.basename(path)} was replaced while the hook loaded it"
    return None


def restart_or_refuse(argv: list[str], xml: bytes, problem: str, stderr, environ) -> int:
    """After a mismatch: start the hook once more with the same arguments and the same
    XML on stdin; on the second mismatch refuse an incoming guest (exit 1) and let
    anything else through (exit 0), with one line either way."""
    if environ.get(REEXEC_ENV) != "1":
        time.sleep(SETTLE_SECONDS)
        descriptor = os.memfd_create("vfmigrate-hook-xml")
        os.write(descriptor, xml)
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.dup2(descriptor, 0)
        flags = "-I" + ("S" if sys.flags.no_site else "")
        os.execve(sys.executable, [sys.executable, flags, argv[0], *argv[1:]],
                  dict(environ, **{REEXEC_ENV: "1"}))
    incoming = argv[2:3] in (["migrate"], ["restore"])
    stderr.write(f"vfmigrate: the vfmigrate package is being replaced or is broken "
                 f"({problem}); " + ("the guest stays where it is: migrate it again once the "
                                     "package manager has finished, or reinstall vfmigrate"
                                     if incoming else "vfmigrate did nothing for this guest; "
                                     "reinstall vfmigrate") + "\n")
    return 1 if incoming else 0
