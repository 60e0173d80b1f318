"""Plug VFs back into a guest that arrived without them (``vfmigrate migrate``).

A guest moved by ``vfmigrate migrate`` travels with its VFs unplugged.  Its
metadata lists each one with ``replug="on-arrival"``; the destination's hook,
claiming a local VF for it, rewrites the entry's ``address`` and turns the
flag into ``replug="pending"``.  This module builds each device back from its
entry (the claimed VF as source, the MAC, VLAN and guest PCI address it had),
plugs it in and clears the flag.

Used by the listener (on arrival and at every reconcile) and by ``vfmigrate
migrate`` itself if the destination's listener does not do it in time.
Idempotent: a VF already in the guest is not plugged twice.
"""

from __future__ import annotations

from collections import namedtuple

from . import METADATA_NAMESPACE, domxml, metadata, standins
from .errors import LibvirtFailure
from .metadata import quoteattr
from .pci import PciAddress


class Plugged(namedtuple("Plugged", "mac address device detail ok")):
    """One pending VF: its MAC, the host VF, how it was plugged, what happened."""

    __slots__ = ()


def device_xml(entry: dict[str, str], address: PciAddress, *, domain: str,
               allow_stand_ins: bool, guest_address: bool = True) -> str:
    """The device XML for a pending entry (attributes validated by domxml)."""
    kind = entry.get("device", "interface")
    mac = f"<mac address={quoteattr(entry['mac'])}/>" if entry.get("mac") else ""
    vlan = (f"<vlan><tag id={quoteattr(entry['vlan'])}/></vlan>"
            if entry.get("vlan") and kind != "hostdev" else "")
    guest = ""
    if guest_address and entry.get("guest-address"):
        attrs = PciAddress.parse(entry["guest-address"]).xml_attributes()
        guest = "<address type='pci' " + " ".join(f"{k}='{v}'" for k, v in attrs.items()) + "/>"
    source_attrs = " ".join(f"{k}='{v}'" for k, v in address.xml_attributes().items())
    source = f"<source><address type='pci' {source_attrs}/></source>"
    if kind == "hostdev":
        return f"<hostdev mode='subsystem' type='pci' managed='yes'>{source}{guest}</hostdev>"
    if standins.is_test_only(entry):
        return standins.plug_xml(entry, mac=mac, guest=guest, domain=domain,
                                 allow_stand_ins=allow_stand_ins)
    return f"<interface type='hostdev' managed='yes'>{mac}{source}{vlan}{guest}</interface>"


def pending_vfs(parsed: domxml.DomainXML) -> list[domxml.VFDevice]:
    return [device for device in parsed.devices
            if device.kind == "metadata" and metadata.is_pending(device.entry)
            and device.address]


def _already_plugged(device: domxml.VFDevice, parsed: domxml.DomainXML) -> bool:
    if standins.is_stand_in(device):
        return standins.plugged(device, parsed)
    return device.address in parsed.pci_sources


def plug_pending(host, uuid: str, *, allow_stand_ins: bool) -> list[Plugged]:
    """Plug in every pending VF of a running guest, then clear the flags."""
    guest = host.guest(uuid)
    if guest is None:
        return []
    parsed = domxml.parse(guest.xml, allow_stand_ins=allow_stand_ins)
    pending = pending_vfs(parsed)
    if not pending:
        return []
    results = []
    done_tags = set()
    for device in pending:
        if _already_plugged(device, parsed):
            results.append(Plugged(device.mac, device.address, device.entry.get("device"),
                                   "already plugged", True))
            done_tags.add(device.metadata_tag)
            continue
        try:
            where = _attach(host, uuid, device, guest.name, allow_stand_ins, live=True)
        except (LibvirtFailure, standins.StandInsNotAllowed) as error:
            results.append(Plugged(device.mac, device.address, device.entry.get("device"),
                                   str(error), False))
            continue
        detail = "plugged " + where
        if guest.persistent:
            # Separately from the live plug: a guest PCI address taken in the saved
            # definition must not move the device the guest already sees.
            try:
                saved = _attach(host, uuid, device, guest.name, allow_stand_ins, live=False)
                if saved != where:
                    detail += f"; in the saved definition {saved}"
            except LibvirtFailure as error:
                detail += f"; not added to the saved definition: {error}"
        results.append(Plugged(device.mac, device.address, device.entry.get("device"),
                               detail, True))
        done_tags.add(device.metadata_tag)
    if done_tags:
        entries = []
        for entry, device in zip(parsed.metadata_entries, _entry_devices(parsed)):
            entry = dict(entry)
            if device is not None and device.metadata_tag in done_tags:
                entry.pop("replug", None)
            entries.append(entry)
        host.set_metadata(uuid, metadata.render(entries), METADATA_NAMESPACE, metadata.PREFIX,
                          live=True, config=guest.persistent)
    return results


def _attach(host, uuid: str, device: domxml.VFDevice, domain: str, allow_stand_ins: bool, *,
            live: bool) -> str:
    """Attach the device to the running guest (``live``) or to its saved definition, at
    its old guest PCI address; where libvirt chooses if that one is taken there.  Says
    where it went."""
    xml = device_xml(device.entry, device.address, domain=domain,
                     allow_stand_ins=allow_stand_ins)
    try:
        host.attach_device(uuid, xml, live=live, config=not live)
    except LibvirtFailure as at_old_address:
        if "guest-address" not in device.entry:
            raise
        xml = device_xml(device.entry, device.address, domain=domain,
                         allow_stand_ins=allow_stand_ins, guest_address=False)
        host.attach_device(uuid, xml, live=live, config=not live)
        return ("at a new guest PCI address (at its old one: "
                f"{' '.join(str(at_old_address).split())})")
    return "at its guest PCI address" if "guest-address" in device.entry else "in"


def _entry_devices(parsed: domxml.DomainXML) -> list[domxml.VFDevice | None]:
    """For each metadata entry, in order, the device that carries its span."""
    by_tag = {device.metadata_tag: device for device in parsed.devices
              if device.metadata_tag is not None}
    return [by_tag.get(tag) for tag in parsed.metadata_spans]
