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

Rollback: a failure at step 3 or 4 plugs every VF that was unplugged back
into the guest on the source and restores its metadata.  The source's claims
are held throughout (the metadata still names the VFs), so no other guest can
take them meanwhile; claims the destination made for a migration that failed
are released by its hook, or expire.  The guest never ends up without its
devices on both hosts: before step 4 completes it is on the source, after it
on the destination, where step 5 is retried by the listener at every
reconcile.
"""

from __future__ import annotations

import logging
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass, field

from . import METADATA_NAMESPACE, domxml, metadata, replug
from .check import CheckReport, run_check
from .config import Config
from .errors import LibvirtFailure, Refused
from .events import Event
from .logs import event
from .pci import PciAddress

log = logging.getLogger("vfmigrate.migrate")


class MigrationRefused(Refused):
    msg_fmt = "guest '{domain}' cannot migrate to {destination}: {reasons}"


class MigrationAborted(Refused):
    msg_fmt = "migration of guest '{domain}' aborted: {reason}; {rollback}"


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

    # -- the sequence ----------------------------------------------------------

    def run(self) -> Report:
        started = self.clock()
        self.destination = self.open_destination(self.destination_uri)
        try:
            report = self._run(started)
        finally:
            self.destination.close()
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
        original_entries = domxml.parse(guest.xml).metadata_entries
        unplugged: list[MovingVF] = []
        unplug_started = self.clock()
        try:
            if moving:
                self._step(f"recording {len(moving)} VF(s) in the guest's metadata")
                self._set_metadata(uuid, self._entries_for(original_entries, moving),
                                   guest.persistent)
                self._unplug_all(domain, uuid, moving, unplugged)
            self._step(f"migrating to {self.destination_uri}")
            migrating = self.clock()
            self._migrate(uuid)
            report.seconds_migrating = self.clock() - migrating
        except (LibvirtFailure, MigrationAborted, TimeoutError) as error:
            rollback = self._roll_back(uuid, unplugged, original_entries, guest.persistent)
            reason = error.fields.get("reason", str(error)) if isinstance(
                error, MigrationAborted) else str(error)
            raise MigrationAborted(domain=self.domain_name, reason=reason,
                                   rollback=rollback) from None
        event(log, Event.MIGRATED, "guest %s migrated to %s by vfmigrate migrate (%d VF(s) "
              "moved)", self.domain_name, self.destination_uri, len(moving),
              domain=self.domain_name, direction="out")
        if moving:
            report.replugged_by = self._wait_for_replug(uuid)
            report.seconds_without_vf = self.clock() - unplug_started
        return report

    def _step(self, what: str) -> None:
        self.progress(what)
        log.info("migrate %s: %s", self.domain_name, what)

    # -- which VFs -------------------------------------------------------------

    def _vfs_to_move(self, live_xml: bytes, check: CheckReport) -> list[MovingVF]:
        assisted = {(device.name, str(device.address)): device for device in check.devices
                    if device.path == "assisted"}
        parsed = domxml.parse(live_xml)
        root = ElementTree.fromstring(live_xml)
        moving = []
        for device in parsed.devices:
            name = device.alias or device.mac or str(device.address)
            checked = assisted.get((name, str(device.address)))
            if checked is None:
                continue
            stand_in = device.kind == "metadata"
            element = _find_element(root, device, stand_in)
            if element is None:
                if stand_in:
                    continue   # a VF held outside the device list: nothing to unplug
                raise MigrationAborted(domain=self.domain_name, rollback="nothing changed",
                                       reason=f"device {name} vanished from the guest")
            guest_address = _guest_address(element)
            moving.append(MovingVF(
                name=name, alias=_alias(element), mac=device.mac, address=device.address,
                network=checked.network, vlan=device.vlan, guest_address=guest_address,
                kind="stand-in" if stand_in else device.kind,
                bridge=device.entry.get("bridge") if stand_in else None,
                element=_attachable(element)))
        return moving

    def _entries_for(self, entries: list[dict[str, str]],
                     moving: list[MovingVF]) -> list[dict[str, str]]:
        entries = [dict(entry) for entry in entries]
        for vf in moving:
            entry = next((e for e in entries if (vf.mac and e.get("mac", "").lower() == vf.mac)
                          or (vf.alias and e.get("alias") == vf.alias)), None)
            if entry is None:
                entry = {"mac": vf.mac} if vf.mac else {"alias": vf.alias}
                entries.append(entry)
            entry.update({"network": vf.network, "address": str(vf.address),
                          "device": vf.kind, "replug": "on-arrival"})
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
                    unplugged: list[MovingVF]) -> None:
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
                self.source.detach_device_alias(uuid, vf.alias, live=True, config=False)
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
        if vf.alias not in (_alias(e) for e in self._device_elements(uuid)):
            return   # gone, the event was missed
        raise MigrationAborted(domain=self.domain_name, rollback="",
                               reason=f"the guest did not unplug {vf.name} within "
                                      f"{self.options.unplug_timeout:g} s (it still holds it; "
                                      "its unplug request stays pending in the guest)")

    def _device_elements(self, uuid: str) -> list:
        guest = self.source.guest(uuid)
        if guest is None:
            return []
        return list(ElementTree.fromstring(guest.xml).find("devices") or [])

    # -- migrate ----------------------------------------------------------------

    def _migrate(self, uuid: str) -> None:
        timer = None
        if self.options.timeout:
            timer = threading.Timer(self.options.timeout, self._pause_to_converge, (uuid,))
            timer.daemon = True
            timer.start()
        try:
            self.source.migrate(uuid, self.destination_uri, p2p=self.options.p2p,
                                persistent=self.options.persistent,
                                undefine_source=self.options.undefine_source,
                                bandwidth_mib=self.options.bandwidth_mib,
                                destination=None if self.options.p2p else self.destination)
        finally:
            if timer is not None:
                timer.cancel()

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
            if guest is not None and not replug.pending_vfs(domxml.parse(guest.xml)):
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

    def _roll_back(self, uuid: str, unplugged: list[MovingVF],
                   original_entries: list[dict[str, str]], persistent: bool) -> str:
        problems = []
        present = {_alias(element) for element in self._device_elements(uuid)}
        for vf in reversed(unplugged):
            if vf.alias in present:
                continue
            try:
                self.source.attach_device(uuid, vf.element, live=True, config=False)
                event(log, Event.ATTACHED, "guest %s: %s %s (VF %s) plugged back in on the "
                      "source", self.domain_name, vf.kind, vf.name, vf.address,
                      domain=self.domain_name, vf=vf.address, network=vf.network)
            except LibvirtFailure as error:
                problems.append(f"could not plug {vf.name} (VF {vf.address}) back in: {error}")
        try:
            self._set_metadata(uuid, original_entries, persistent)
        except LibvirtFailure as error:
            problems.append(f"could not restore the guest's metadata: {error}")
        if problems:
            for problem in problems:
                log.error("rollback of guest %s: %s", self.domain_name, problem)
            return "ROLLBACK INCOMPLETE: " + "; ".join(problems)
        if unplugged:
            return (f"the guest keeps running on the source with its {len(unplugged)} VF(s) "
                    "plugged back in")
        return "the guest keeps running on the source, unchanged"


def _find_element(root, device: domxml.VFDevice, stand_in: bool):
    devices = root.find("devices")
    if devices is None:
        return None
    for element in devices:
        mac = element.find("mac")
        mac = mac.get("address", "").lower() if mac is not None else None
        if stand_in or device.kind == "interface":
            if element.tag == "interface" and mac and mac == device.mac:
                return element
        elif element.tag == "hostdev":
            source = element.find("source/address")
            if source is not None and _pci(source) == device.address:
                return element
    return None


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


def _attachable(element) -> str:
    """The device XML to plug it back in: libvirt's own aliases dropped."""
    copy = ElementTree.fromstring(ElementTree.tostring(element))
    alias = copy.find("alias")
    if alias is not None and not alias.get("name", "").startswith("ua-"):
        copy.remove(alias)
    return ElementTree.tostring(copy, encoding="unicode")

