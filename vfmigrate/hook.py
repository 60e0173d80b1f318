"""vfmigrate's libvirt qemu hook: give travelling VFs a local home.

Enabled as ``/etc/libvirt/hooks/qemu.d/vfmigrate`` (libvirt >= 6.5), a copy of
``/usr/libexec/vfmigrate/qemu-hook`` made by ``vfmigrate hook enable``.  libvirt
runs it as ``vfmigrate <domain> <operation> <sub-op> <extra>`` with the domain
XML on stdin.  It never calls libvirt: libvirt waits for the hook, so a call
back would deadlock.

What it does, per operation (all on the host that runs the hook):

``migrate begin -`` / ``restore begin -`` (the destination; XML filters)
    For every VF device that travels (``<teaming type='transient'>`` or named
    in vfmigrate's metadata) pick a free VF of its network (metadata label,
    else the host's only network), claim it as ``incoming`` and print the XML
    with only that device's host ``<source><address>`` changed.  All or
    nothing: if one device gets no VF, nothing is claimed, nothing printed,
    and the hook exits 1 with one line on stderr, which libvirt shows in the
    migration's error; the guest stays on the source.  Each chosen VF gets the
    settings the source recorded in the metadata (trust, rates …;
    :mod:`vfmigrate.parity`), or the arrival is refused the same way where the
    network's ``settings_parity`` requires one the PF cannot apply.
``prepare begin -`` / ``start begin -``
    Claim as ``active`` every VF of a configured network that the XML names
    (an arriving guest's ``incoming`` claims are confirmed as they are).
    A VF claimed by, or in use by, another guest refuses the start (exit 1).
``started begin -``
    This guest's ``incoming`` claims become ``active``.
``stopped end <reason>`` / ``release end <reason>``
    Release this guest's claims on this host.  A failed incoming migration
    leaves nothing behind; a guest that migrated away frees its VFs (the
    listener then resets them).
``reconnect begin -``
    Re-assert ``active`` claims for the running guest.  Always exits 0:
    libvirt kills a guest whose reconnect hook fails.

Any other operation, and any guest without a VF device, costs only reading
stdin: no config is read (it may be absent), nothing is printed, exit 0.

``vfmigrate --self-test`` (one argument; libvirt always passes four) reads no
stdin and runs :mod:`vfmigrate.selftest`: one line per check on stdout, exit 0
only if the hook can do its work where it runs.  ``vfmigrate hook enable`` and
``vfmigrate doctor`` run it under the libvirt daemon's confinement.

stdout carries only XML, only for ``migrate``/``restore``, and only when it
changed: empty output means unchanged.  stderr carries at most one line, the
error.  Decisions are logged to the journal (stderr if there is none).  Exit
codes are those of :mod:`vfmigrate.errors` (0 ok, 1 refused, 2 usage, 3 bad
XML, 4 bad config, 5 sysfs/ledger, 70 bug).
"""

import os
import sys
import time

from . import METADATA_NAMESPACE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

_OPERATIONS = frozenset({"migrate", "restore", "prepare", "start", "started",
                         "stopped", "release", "reconnect"})
_VF_MARKERS = (b"hostdev", METADATA_NAMESPACE.encode())
SELF_TEST = "--self-test"


def may_hold_vfs(xml: bytes) -> bool:
    """Cheap pre-check: a guest without these strings has no VF device."""
    return any(marker in xml for marker in _VF_MARKERS)


def main(argv, stdin, stdout, *, stderr=None, environ=None, config=None,
         sysfs_root=None, ledger=None, clock=time.time, journal_sender=None,
         journal_socket=None, may_restart=False, netlink_factory=None) -> int:
    """Run one hook call; returns the exit code.

    ``stdin``/``stdout`` are binary streams.  ``config`` (a Config) replaces
    the config file, ``sysfs_root`` its sysfs root, ``ledger`` (a Ledger) its
    ledger; ``journal_sender`` is python-systemd's ``sender_function`` and
    ``journal_socket`` where journald listens (absent: log to ``stderr``).
    ``netlink_factory`` makes the :class:`~vfmigrate.vfnetlink.VFNetlink` that gives
    arriving VFs their recorded settings (tests: one over a fake PF).
    ``may_restart``: this is the hook's own process, which may start itself again when
    its package is being replaced (:mod:`vfmigrate.buildcheck`).
    """
    stderr = stderr if stderr is not None else sys.stderr
    environ = os.environ if environ is None else environ
    if argv[1:] == [SELF_TEST]:
        import io
        from .selftest import main as self_test
        text = io.TextIOWrapper(stdout, encoding="utf-8", write_through=True)
        try:
            return self_test(text, environ=environ, journal_socket=journal_socket,
                             sender=journal_sender)
        finally:
            text.detach()
    xml = stdin.read()
    if len(argv) < 4:
        stderr.write("vfmigrate: usage: vfmigrate DOMAIN OPERATION SUB-OPERATION [EXTRA] "
                     "(run by libvirt as a qemu hook, domain XML on stdin)\n")
        return 2
    operation = argv[2]
    if operation not in _OPERATIONS or not may_hold_vfs(xml):
        return 0
    from . import buildcheck
    checked: dict = {}
    problem = buildcheck.mismatch(seen=checked)      # the files before the imports …
    if problem is None:
        try:
            from .hookrun import HookCall
        except Exception as error:      # a module gone, or one of another build
            problem = f"cannot import it: {type(error).__name__}: {error}"
        else:
            problem = buildcheck.changed_since(checked)   # … and after: all of one build
    if problem is not None:
        if not may_restart:
            environ = dict(environ, **{buildcheck.REEXEC_ENV: "1"})
        return buildcheck.restart_or_refuse(argv, xml, problem, stderr, environ)
    call = HookCall(domain_name=argv[1], operation=operation, sub_operation=argv[3],
                    extra=argv[4] if len(argv) > 4 else "-", xml=xml, stdout=stdout,
                    stderr=stderr, environ=environ, config=config, sysfs_root=sysfs_root,
                    ledger=ledger, clock=clock, journal_sender=journal_sender,
                    journal_socket=journal_socket, netlink_factory=netlink_factory)
    return call.run()


def run() -> "NoReturn":
    """Entry point of the installed hook executable: exits with :func:`main`'s code once
    its answer is flushed, without the interpreter's teardown (freeing every module and
    object one by one), which libvirt would wait for: ~2 ms of each VF call, issue 15.
    Everything the call opened is closed by then (:class:`~vfmigrate.hookrun.HookCall`)."""
    code = main(sys.argv, sys.stdin.buffer, sys.stdout.buffer, may_restart=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
