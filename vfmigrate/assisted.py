"""``vfmigrate migrate DOMAIN DEST_URI``: move a guest whose VFs cannot ride along.

libvirt refuses to migrate a guest holding a PCI device without
``<teaming>``.  This command, run on the source host, does what an admin
would do by hand, in order, and undoes it if anything fails:

1. pre-flight (:mod:`vfmigrate.check`): refuse early if the destination
   cannot take the guest;
2. record each VF in the guest's metadata (network, MAC, VLAN, guest PCI
   address, how to plug it back) with ``replug="on-arrival"``;
3. unplug each VF live and wait until the guest lets go of it
   (DEVICE_REMOVED; bounded by ``unplug_timeout``);
4. migrate through the libvirt API; the destination's hook claims a VF of
   the same network for each entry and marks it ``replug="pending"``;
5. the destination's listener plugs the claimed VFs in (same MAC, VLAN and
   guest PCI address where free); if it has not within ``replug_timeout``,
   this command does it over the destination's connection;
6. the source's hook releases the source VFs when the guest leaves, and its
   listener resets them.

Rollback: a failure at step 3 or 4 (a libvirt error, an abort, a timeout,
SIGINT, SIGTERM or SIGHUP, any other exception) plugs every VF that was
unplugged back into the guest on the source and restores its metadata; a
signal during the migration aborts libvirt's migration job first.

The command leaves a *lease* in the guest's live metadata (namespace
:data:`LEASE_NAMESPACE`) before it unplugs anything: this host, its process
(pid, start time, boot id), the original metadata and, for every VF it asked
the guest to unplug, the device XML to plug it back.  If the command dies
(SIGKILL), the source's listener sees the lease of a dead process on a guest
that still runs here with no migration job, plugs the VFs back and restores
the metadata (:func:`recover_interrupted`).  A VF whose unplug had not
completed when the command gave up (``--unplug-timeout``) stays in the lease:
when the guest lets go of it later, the listener plugs it back instead of
releasing and resetting it.  The source's claims
are held throughout (the metadata still names the VFs), so no other guest can
take them meanwhile; claims the destination made for a migration that failed
are released by its hook, or expire.  The guest never ends up without its
devices on both hosts: before step 4 completes it is on the source, after it
on the destination, where step 5 is retried by the listener at every
reconcile.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import METADATA_NAMESPACE, domxml, metadata, replug, standins
from .check import CheckReport, run_check
from .config import Config
from .errors import LibvirtFailure, Refused, VfmigrateError, counted
from .events import Event
from .logs import event
from .pci import PciAddress

log = logging.getLogger("vfmigrate.migrate")

LEASE_NAMESPACE = METADATA_NAMESPACE + "/migration"
LEASE_PREFIX = "vfmigrate-migration"
INTERRUPTING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class MigrationRefused(Refused):
    msg_fmt = "guest '{domain}' cannot migrate to {destination}: {reasons}"


class MigrationAborted(Refused):
    msg_fmt = "migration of guest '{domain}' aborted: {reason}; {rollback}"


class Interrupted(Exception):
    """A signal asked ``vfmigrate migrate`` to stop (raised by its handler)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class SignalGuard:
    """What :func:`signals_raise` saw: the signals received; ``hold`` defers them."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.hold = False
        self.raised = False

    def handle(self, signum, frame) -> None:
        self.received.append(signum)
        if not self.hold and not self.raised:
            self.raised = True
            raise Interrupted(signum)

    @property
    def ignored(self) -> list[str]:
        """The signals that came after the one that interrupted (or during a rollback)."""
        return [signal.Signals(s).name for s in self.received[1 if self.raised else 0:]]


@contextmanager
def signals_raise() -> Iterator[SignalGuard]:
    """While inside: the first SIGINT, SIGTERM or SIGHUP raises :class:`Interrupted`;
    later ones, and any while ``hold`` is set (a rollback), are noted and otherwise
    ignored.  The previous handlers are restored after.  Only the main thread takes
    signals; elsewhere this does nothing."""
    guard = SignalGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {signum: signal.signal(signum, guard.handle) for signum in INTERRUPTING_SIGNALS}
    try:
        yield guard
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@dataclass(frozen=True)
class Options:
    p2p: bool = False
    persistent: bool = False
    undefine_source: bool = False
    bandwidth_mib: int | None = None
    timeout: float | None = None        # like virsh: pause the guest after this long
    unplug_timeout: float = 30.0
    replug_timeout: float = 30.0
    include_devices: frozenset[str] = frozenset()


class MovingVF(namedtuple("MovingVF", "name alias mac address network vlan guest_address kind "
                                      "bridge element")):
    """A VF to unplug here and plug in there; ``element`` is its device XML here."""

    __slots__ = ()


@dataclass
class Report:
    domain: str
    destination: str
    check: CheckReport
    moved: list[MovingVF] = field(default_factory=list)
    replugged_by: str = ""
    seconds_without_vf: float = 0.0
    seconds_migrating: float = 0.0
    seconds_total: float = 0.0


class AssistedMigration:
    def __init__(self, source, destination_uri: str, domain_name: str, *, config: Config | None,
                 options: Options, open_destination: Callable[[str], object],
                 progress: Callable[[str], None] = lambda line: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``source`` is a LibvirtHost opened after libvirt's event loop started
        (unplugs are awaited through DEVICE_REMOVED events)."""
        self.source = source
        self.destination_uri = destination_uri
        self.domain_name = domain_name
        self.config = config
        self.options = options
        self.open_destination = open_destination
        self.progress = progress
        self.clock = clock
        self.destination = None
        self.removed: dict[str, threading.Event] = {}
        self.removal_failed: dict[str, threading.Event] = {}
        self.signals = SignalGuard()
        self.migrated = False
        self.requested: list[MovingVF] = []   # unplug asked, in order

    # -- the sequence ----------------------------------------------------------

    def run(self) -> Report:
        started = self.clock()
        with signals_raise() as self.signals:
            try:
                self.destination = self.open_destination(self.destination_uri)
                try:
                    report = self._run(started)
                finally:
                    self.destination.close()
            except Interrupted as interrupted:   # before any change, or after the migration
                raise MigrationAborted(
                    domain=self.domain_name, reason=str(interrupted),
                    rollback="the guest runs on the destination; its listener plugs its VFs "
                    "in" if self.migrated else "nothing was changed") from None
        report.seconds_total = self.clock() - started
        return report

    def _run(self, started: float) -> Report:
        self._step("pre-flight check")
        check = run_check(self.source, self.destination, self.domain_name,
                          destination_uri=self.destination_uri, config=self.config,
                          include_devices=self.options.include_devices)
        report = Report(self.domain_name, self.destination_uri, check)
        if check.path is None:
            raise MigrationRefused(domain=self.domain_name, destination=self.destination_uri,
                                   reasons="; ".join(check.problems))
        domain = self.source.lookup_name(self.domain_name)
        uuid = domain.UUIDString()
        guest = self.source.guest(uuid)
        moving = self._vfs_to_move(guest.xml, check)
        report.moved = moving
        original_entries = self._parse(guest.xml).metadata_entries
        unplugged: list[MovingVF] = []
        unplug_started = self.clock()
        lease = None
        try:
            if moving:
                lease = Lease.mine(self.source.host_uuid(), original_entries)
                lease.moving = self._entries_for(original_entries, moving)
                self._step(f"recording {counted(len(moving), 'VF')} in the guest's metadata")
                self._set_lease(uuid, lease)
                self._set_metadata(uuid, lease.moving, guest.persistent)
                self._unplug_all(domain, uuid, moving, unplugged, lease)
            self._step(f"migrating to {self.destination_uri}")
            migrating = self.clock()
            self._migrate(uuid)
            self.migrated = True
            report.seconds_migrating = self.clock() - migrating
        except BaseException as error:   # signals and bugs too: never leave it unplugged
            self.signals.hold = True   # a signal now must not cut the rollback short
            if self._left_source(uuid):
                raise MigrationAborted(
                    domain=self.domain_name, reason=_why(error),
                    rollback="it had already completed: the guest runs on the destination"
                    + (", whose listener plugs its VFs in" if moving else "")) from None
            rollback = self._roll_back(uuid, unplugged, original_entries, guest.persistent,
                                       lease)
            if self.signals.ignored:
                rollback += f" ({', '.join(self.signals.ignored)} during the rollback ignored)"
            raise MigrationAborted(domain=self.domain_name, reason=_why(error),
                                   rollback=rollback) from (
                None if isinstance(error, (VfmigrateError, TimeoutError, Interrupted))
                else error)
        event(log, Event.MIGRATED, "guest %s migrated to %s by vfmigrate migrate (%s "
              "moved)", self.domain_name, self.destination_uri, counted(len(moving), "VF"),
              domain=self.domain_name, direction="out")
        if moving:
            report.replugged_by = self._wait_for_replug(uuid)
            report.seconds_without_vf = self.clock() - unplug_started
            try:   # the lease travelled along; its work is done
                self.destination.remove_metadata(uuid, LEASE_NAMESPACE, live=True,
                                                 config=False)
            except LibvirtFailure as error:
                log.warning("guest %s: could not drop the migration lease on the "
                            "destination: %s", self.domain_name, error)
        return report

    def _parse(self, xml: bytes) -> domxml.DomainXML:
        return domxml.parse(xml, allow_stand_ins=bool(self.config and
                                                      self.config.allow_stand_ins))

    def _step(self, what: str) -> None:
        self.progress(what)
        log.info("migrate %s: %s", self.domain_name, what)

    # -- which VFs -------------------------------------------------------------

    def _vfs_to_move(self, live_xml: bytes, check: CheckReport) -> list[MovingVF]:
        assisted = {(device.name, str(device.address)): device for device in check.devices
                    if device.path == "assisted"}
        parsed = self._parse(live_xml)
        moving = []
        for device in parsed.devices:
            name = device.alias or device.mac or str(device.address)
            checked = assisted.get((name, str(device.address)))
            if checked is None:
                continue
            stand_in = standins.is_stand_in(device)
            text = _element_text(parsed, device, stand_in)
            if text is None:
                continue   # a VF held outside the device list: nothing to unplug
            # domxml chose the element; ElementTree only reads and copies its text
            element = ElementTree.fromstring(text)
            guest_address = _guest_address(element)
            moving.append(MovingVF(
                name=name, alias=_alias(element), mac=device.mac, address=device.address,
                network=checked.network, vlan=device.vlan, guest_address=guest_address,
                kind=standins.STAND_IN if stand_in else device.kind,
                bridge=device.entry.get("bridge") if stand_in else None,
                element=_attachable(text)))
        return moving

    def _entries_for(self, entries: list[dict[str, str]],
                     moving: list[MovingVF]) -> list[dict[str, str]]:
        entries = [dict(entry) for entry in entries]
        for vf in moving:
            entry = metadata.entry_of(vf, entries, moving)
            if entry is None:
                entry = metadata.new_entry(vf)
                entries.append(entry)
            entry.update({"network": vf.network, "address": str(vf.address),
                          "device": vf.kind, "replug": metadata.ON_ARRIVAL})
            if vf.vlan is not None:
                entry["vlan"] = str(vf.vlan)
            if vf.guest_address is not None:
                entry["guest-address"] = str(vf.guest_address)
            if vf.bridge:
                entry["bridge"] = vf.bridge
        return entries

    def _set_metadata(self, uuid: str, entries: list[dict[str, str]], persistent: bool) -> None:
        self.source.set_metadata(uuid, metadata.render(entries), METADATA_NAMESPACE,
                                 metadata.PREFIX, live=True, config=persistent)

    # -- unplug ----------------------------------------------------------------

    def _unplug_all(self, domain, uuid: str, moving: list[MovingVF],
                    unplugged: list[MovingVF], lease: "Lease") -> None:
        libvirt = self.source.libvirt
        connection = self.source.connection
        callbacks = [
            connection.domainEventRegisterAny(
                domain, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                lambda conn, dom, alias, opaque: self._flag(self.removed, alias), None),
            connection.domainEventRegisterAny(
                domain, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
                lambda conn, dom, alias, opaque: self._flag(self.removal_failed, alias), None)]
        try:
            for vf in moving:
                self._step(f"unplugging {vf.kind} {vf.name} (VF {vf.address})")
                self.removed.setdefault(vf.alias, threading.Event())
                self.removal_failed.setdefault(vf.alias, threading.Event())
                lease.vfs.append(LeasedVF(vf.alias, vf.mac, vf.element, vf.address))
                self._set_lease(uuid, lease)
                self.requested.append(vf)   # before: a signal may come as the call returns
                try:
                    self.source.detach_device_alias(uuid, vf.alias, live=True, config=False)
                except LibvirtFailure:
                    self.requested.remove(vf)   # never asked: nothing to wait for
                    raise
                self._wait_unplugged(uuid, vf)
                unplugged.append(vf)
                event(log, Event.DETACHED, "guest %s let go of %s %s (VF %s)",
                      self.domain_name, vf.kind, vf.name, vf.address, domain=self.domain_name,
                      vf=vf.address, network=vf.network)
        finally:
            for callback in callbacks:
                try:
                    connection.domainEventDeregisterAny(callback)
                except libvirt.libvirtError:
                    pass

    def _flag(self, table: dict[str, threading.Event], alias: str) -> None:
        table.setdefault(alias, threading.Event()).set()

    def _wait_unplugged(self, uuid: str, vf: MovingVF) -> None:
        deadline = self.clock() + self.options.unplug_timeout
        while self.clock() < deadline:
            if self.removal_failed[vf.alias].is_set():
                raise MigrationAborted(domain=self.domain_name, rollback="",
                                       reason=f"the guest refused to unplug {vf.name}")
            if self.removed[vf.alias].wait(0.2):
                return
        if vf.alias not in self._device_aliases(uuid):
            return   # gone, the event was missed
        raise MigrationAborted(domain=self.domain_name, rollback="",
                               reason=f"the guest did not unplug {vf.name} within "
                                      f"{self.options.unplug_timeout:g} s (it still holds it; "
                                      "its unplug request stays pending in the guest)")

    def _device_aliases(self, uuid: str) -> set[str]:
        """The aliases of the guest's devices now (none once it is gone)."""
        guest = self.source.guest(uuid)
        if guest is None:
            return set()
        return self._parse(guest.xml).device_aliases

    # -- migrate ----------------------------------------------------------------

    def _migrate(self, uuid: str) -> None:
        """libvirt's migration call, on a worker thread: the main thread stays in Python
        so that a signal is taken at once and aborts the migration job."""
        timer = None
        if self.options.timeout:
            timer = threading.Timer(self.options.timeout, self._pause_to_converge, (uuid,))
            timer.daemon = True
            timer.start()
        outcome: dict[str, BaseException] = {}

        def call() -> None:
            try:
                self.source.migrate(uuid, self.destination_uri, p2p=self.options.p2p,
                                    persistent=self.options.persistent,
                                    undefine_source=self.options.undefine_source,
                                    bandwidth_mib=self.options.bandwidth_mib,
                                    destination=None if self.options.p2p else self.destination)
            except BaseException as error:
                outcome["error"] = error

        worker = threading.Thread(target=call, name="migrate", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
        except BaseException:
            self._step("aborting the migration job")
            try:
                self.source.abort_job(uuid)
            except LibvirtFailure as error:
                log.warning("could not abort the migration of guest %s: %s",
                            self.domain_name, error)
            worker.join(120)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if "error" in outcome:
            raise outcome["error"]

    def _pause_to_converge(self, uuid: str) -> None:
        self._step(f"--timeout {self.options.timeout:g} s reached: pausing the guest so the "
                   "migration completes")
        try:
            self.source.suspend(uuid)
        except LibvirtFailure as error:
            log.warning("could not pause guest %s: %s", self.domain_name, error)

    # -- after -------------------------------------------------------------------

    def _wait_for_replug(self, uuid: str) -> str:
        self._step("waiting for the destination's listener to plug in its VFs")
        deadline = self.clock() + self.options.replug_timeout
        while self.clock() < deadline:
            guest = self.destination.guest(uuid)
            if guest is not None and not replug.pending_vfs(self._parse(guest.xml)):
                return "the destination's listener"
            time.sleep(0.2)
        self._step(f"the destination's listener did not plug the VFs in within "
                   f"{self.options.replug_timeout:g} s: plugging them in from here")
        allow = bool(self.config and self.config.allow_stand_ins)
        results = replug.plug_pending(self.destination, uuid, allow_stand_ins=allow)
        failed = [plugged for plugged in results if not plugged.ok]
        if failed:
            raise MigrationAborted(
                domain=self.domain_name, rollback="the guest runs on the destination; its "
                "listener retries at every reconcile",
                reason="; ".join(f"VF {p.address}: {p.detail}" for p in failed))
        return "vfmigrate migrate (the destination's listener did not)"

    def _left_source(self, uuid: str) -> bool:
        """Whether the migration completed after all (the guest runs only there)."""
        try:
            if self.source.is_active(uuid):
                return False
            return self.destination is not None and self.destination.is_active(uuid)
        except LibvirtFailure:
            return False

    def _set_lease(self, uuid: str, lease: "Lease") -> None:
        self.source.set_metadata(uuid, lease.render(), LEASE_NAMESPACE, LEASE_PREFIX,
                                 live=True, config=False)

    def _roll_back(self, uuid: str, unplugged: list[MovingVF],
                   original_entries: list[dict[str, str]], persistent: bool,
                   lease: "Lease | None" = None) -> str:
        problems = []
        present = self._device_aliases(uuid)
        asked = self.requested or unplugged
        # Asked to unplug and still in the guest: its unplug may complete later.
        late = [vf for vf in asked if vf not in unplugged and vf.alias in present]
        failed = []
        # Every VF asked to unplug that the guest no longer has: also one whose removal
        # completed after the wait for it ended.
        for vf in reversed(asked):
            if vf.alias in present:
                continue
            try:
                self.source.attach_device(uuid, vf.element, live=True, config=False)
                event(log, Event.ATTACHED, "guest %s: %s %s (VF %s) plugged back in on the "
                      "source", self.domain_name, vf.kind, vf.name, vf.address,
                      domain=self.domain_name, vf=vf.address, network=vf.network)
            except LibvirtFailure as error:
                failed.append(vf)
                problems.append(f"could not plug {vf.name} (VF {vf.address}) back in: {error}; "
                                "the listener retries")
        try:
            # A VF not plugged back stays recorded as unplugged for a migration: the
            # guest still holds it, so nothing releases or resets it.
            if not failed:
                self._set_metadata(uuid, original_entries, persistent)
        except LibvirtFailure as error:
            problems.append(f"could not restore the guest's metadata: {error}")
        if lease is not None:
            keep = {vf.alias for vf in late + failed}
            try:
                if keep:
                    lease.vfs = [leased for leased in lease.vfs if leased.alias in keep]
                    lease.pid = lease.started = 0   # no process owns it: the listener does
                    self._set_lease(uuid, lease)
                else:
                    self.source.remove_metadata(uuid, LEASE_NAMESPACE, live=True, config=False)
            except LibvirtFailure as error:
                problems.append(f"could not update the migration lease: {error}")
        if problems:
            for problem in problems:
                log.error("rollback of guest %s: %s", self.domain_name, problem)
            return "ROLLBACK INCOMPLETE: " + "; ".join(problems)
        note = ""
        if late:
            note = (f"; if the guest lets go of {', '.join(vf.name for vf in late)} later, "
                    "the listener plugs it back in")
        back = [vf for vf in asked if vf not in late]
        if back:
            vfs = "VF" if len(back) == 1 else f"{len(back)} VFs"
            return f"the guest keeps running on the source with its {vfs} plugged back in{note}"
        return "the guest keeps running on the source, unchanged" + note


def _why(error: BaseException) -> str:
    if isinstance(error, MigrationAborted):
        return error.fields.get("reason", str(error))
    if isinstance(error, (VfmigrateError, TimeoutError, Interrupted)):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return f"unexpected {type(error).__name__}: {error}"


# -- the lease, and the listener's recovery from a dead command -------------------

class LeasedVF(namedtuple("LeasedVF", "alias mac element address")):
    """A VF ``vfmigrate migrate`` asked the guest to unplug: how to plug it back."""

    __slots__ = ()


def _boot_id(proc_root: Path) -> str:
    try:
        return (proc_root / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int, proc_root: Path = Path("/proc")) -> int | None:
    """The start time (clock ticks after boot) of a live process, None if there is none."""
    try:
        stat = (proc_root / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    state = fields[0]
    if state in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass
class Lease:
    """The record ``vfmigrate migrate`` keeps in the guest's live metadata while it works."""

    host: str
    pid: int
    started: int
    boot: str
    original: list[dict[str, str]]
    vfs: list[LeasedVF] = field(default_factory=list)
    moving: list[dict[str, str]] = field(default_factory=list)   # the on-arrival entries

    @classmethod
    def mine(cls, host: str, original: list[dict[str, str]],
             proc_root: Path = Path("/proc")) -> "Lease":
        pid = os.getpid()
        return cls(host, pid, process_start(pid, proc_root) or 0, _boot_id(proc_root),
                   [dict(entry) for entry in original])

    def render(self) -> str:
        q = metadata.quoteattr
        lines = [f"<migration host={q(self.host)} pid={q(str(self.pid))} "
                 f"started={q(str(self.started))} boot={q(self.boot)} "
                 f"original={q(metadata.render(self.original))} "
                 f"moving={q(metadata.render(self.moving))}>"]
        for vf in self.vfs:
            attributes = [f"alias={q(vf.alias or '')}", f"element={q(vf.element)}",
                          f"address={q(str(vf.address))}"]
            if vf.mac:
                attributes.append(f"mac={q(vf.mac)}")
            lines.append(f"  <vf {' '.join(attributes)}/>")
        lines.append("</migration>")
        return "\n".join(lines)

    @classmethod
    def parse(cls, text: str) -> "Lease":
        root = ElementTree.fromstring(text)
        original = [dict(entry.attrib) for entry in
                    ElementTree.fromstring(root.get("original") or "<vfs/>")]
        moving = [dict(entry.attrib) for entry in
                  ElementTree.fromstring(root.get("moving") or "<vfs/>")]
        vfs = [LeasedVF(vf.get("alias") or None, vf.get("mac"), vf.get("element", ""),
                        vf.get("address")) for vf in root if vf.tag.endswith("vf")]
        return cls(root.get("host", ""), int(root.get("pid") or 0),
                   int(root.get("started") or 0), root.get("boot", ""), original, vfs,
                   moving)

    def owner_alive(self, proc_root: Path = Path("/proc")) -> bool:
        """Whether the ``vfmigrate migrate`` that wrote it still runs."""
        if not self.pid or self.boot != _boot_id(proc_root):
            return False
        return process_start(self.pid, proc_root) == self.started


class Recovery(namedtuple("Recovery", "name state lines ok")):
    """What :func:`recover_interrupted` found: state ``owned`` (a live command or a
    migration job owns the guest), ``unplug-pending`` (the guest still has a VF it was
    asked to unplug: plugged back once it lets go), ``unreadable`` or ``recovered``."""

    __slots__ = ()


def recover_interrupted(host, uuid: str, *, proc_root: Path = Path("/proc")
                        ) -> Recovery | None:
    """Finish what a dead ``vfmigrate migrate`` left on this (its source) host.

    Acts only on positive evidence: the guest runs here, its lease names this host,
    the process that wrote it is gone and libvirt runs no job on the guest.  Then every
    leased VF the guest no longer has is plugged back in, the metadata restored, and
    the lease dropped once no unplug is pending.  None if there is no lease.
    """
    text = host.metadata(uuid, LEASE_NAMESPACE)
    if text is None:
        return None
    guest = host.guest(uuid)
    if guest is None:
        return None
    try:
        lease = Lease.parse(text)
    except (ElementTree.ParseError, ValueError) as error:
        return Recovery(guest.name, "unreadable",
                        [f"its vfmigrate migrate lease cannot be read ({error}); left alone"],
                        False)
    if lease.host != host.host_uuid():
        # Written on the host this guest migrated from: that command's work on its
        # source is over once the guest runs here; the lease is only a leftover.
        if not host.migration_job_running(uuid):
            host.remove_metadata(uuid, LEASE_NAMESPACE, live=True, config=False)
        return None
    if lease.owner_alive(proc_root) or host.migration_job_running(uuid):
        return Recovery(guest.name, "owned", [], True)
    # Read with ElementTree, not domxml: this last resort must plug a dead command's VFs
    # back even into a guest whose XML has since become one that domxml refuses.
    present = {_alias(element) for element in
               list(ElementTree.fromstring(guest.xml).find("devices") or [])}
    macs = _macs(guest.xml)
    lines, ok, pending = [], True, []
    plugged = 0
    for vf in lease.vfs:
        if (vf.alias and vf.alias in present) or (vf.mac and vf.mac in macs):
            pending.append(vf)   # still in the guest: its unplug may complete later
            continue
        try:
            host.attach_device(uuid, vf.element, live=True, config=False)
            plugged += 1
            lines.append(f"VF {vf.address} ({vf.alias or vf.mac}) plugged back in: the "
                         "vfmigrate migrate that unplugged it is gone and no migration runs")
        except LibvirtFailure as error:
            ok = False
            pending.append(vf)
            lines.append(f"could not plug VF {vf.address} ({vf.alias or vf.mac}) back in "
                         f"after an interrupted vfmigrate migrate: {error}")
    if not ok and lease.moving:
        # A VF it could not plug back stays recorded as unplugged for a migration, so
        # the guest still holds it: nothing releases or resets it; retried next time.
        host.set_metadata(uuid, metadata.render(lease.moving), METADATA_NAMESPACE,
                          metadata.PREFIX, live=True, config=guest.persistent)
    elif plugged or lease.pid or not pending:
        host.set_metadata(uuid, metadata.render(lease.original), METADATA_NAMESPACE,
                          metadata.PREFIX, live=True, config=guest.persistent)
    if pending:
        if plugged or lease.pid or len(pending) != len(lease.vfs):
            lease.vfs, lease.pid, lease.started = pending, 0, 0
            host.set_metadata(uuid, lease.render(), LEASE_NAMESPACE, LEASE_PREFIX, live=True,
                              config=False)
        return Recovery(guest.name, "unplug-pending", lines, ok)
    host.remove_metadata(uuid, LEASE_NAMESPACE, live=True, config=False)
    return Recovery(guest.name, "recovered", lines, ok)


def _macs(xml: bytes) -> set[str]:
    """Every MAC the XML names (read leniently, for :func:`recover_interrupted`)."""
    root = ElementTree.fromstring(xml)
    return {mac.get("address", "").lower() for mac in root.iter("mac")}


def _element_text(parsed: domxml.DomainXML, device: domxml.VFDevice,
                  stand_in: bool) -> bytes | None:
    """The text of the guest's element for ``device``: its own; for a stand-in, its NIC,
    found by its MAC alone (:func:`vfmigrate.standins.plug_xml` plugs in a NIC with the
    entry's MAC, never its alias).  None for any other VF held outside the device list,
    and for a stand-in whose NIC is not in the guest."""
    if stand_in:
        return parsed.interface_element(device.mac) if device.mac else None
    return parsed.element(device)


def _pci(element) -> PciAddress | None:
    try:
        return PciAddress.from_xml_attributes(element.get("domain"), element.get("bus"),
                                              element.get("slot"), element.get("function"))
    except ValueError:
        return None


def _alias(element) -> str | None:
    alias = element.find("alias")
    return alias.get("name") if alias is not None else None


def _guest_address(element) -> PciAddress | None:
    address = element.find("address")
    if address is None or address.get("type") != "pci":
        return None
    return _pci(address)


def _attachable(text: bytes) -> str:
    """The device XML to plug it back in: its element's text, libvirt's own alias
    dropped."""
    element = ElementTree.fromstring(text)
    alias = element.find("alias")
    if alias is not None and not alias.get("name", "").startswith("ua-"):
        element.remove(alias)
    return ElementTree.tostring(element, encoding="unicode")

