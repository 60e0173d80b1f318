"""What the listener sets on a running guest's VFs, and when it records their settings.

* a teamed ``<hostdev>``'s VF gets the MAC of its virtio partner
  (:func:`configure_teamed_hostdevs`): libvirt sets the MAC of an
  ``<interface type='hostdev'>`` only;
* an arriving guest's VFs get the VLAN priority recorded on the source
  (:func:`apply_vlan_priority`), once libvirt has set their VLAN tag with priority 0;
* when a PF's netdev changes, the VF settings of the running guests holding its VFs
  are recorded again (:func:`guests_to_record_again`), except while one migrates.

Each takes the libvirt connection (:class:`vfmigrate.virt.LibvirtHost`) and, to set
VFs, the listener's ``vf_netlink`` (:func:`vfmigrate.reconcile.vf_resetter`); the
listener fences every call for one guest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from . import domxml, vfsettings
from .config import Config
from .errors import BadDomainXML
from .events import Event
from .inventory import Inventory
from .logs import event
from .vfnetlink import VFSettingError
from .virt import Guest, LibvirtHost

# The listener's journal entries name one logger, whichever module writes them.
log = logging.getLogger("vfmigrate.listener")


def guests_to_record_again(host: LibvirtHost, config: Config, ifname: str) -> Iterator[Guest]:
    """A netdev changed: if it is a PF's, each running guest that holds one of its VFs,
    whose VF settings are to be recorded again (not one that migrates: its metadata is
    locked by the migration and travels as it is)."""
    inventory = Inventory.of(config)
    pfs = {pf for network in config.networks for pf in inventory.pfs_of_network(network)
           if ifname in inventory.details(pf).netdevs}
    if not pfs:
        return
    for guest in host.active_guests():
        try:
            parsed = domxml.parse(guest.xml, allow_stand_ins=config.allow_stand_ins)
        except BadDomainXML:
            continue   # warned about by reconcile
        holds = any(vf is not None and vf.pf in pfs
                    for vf in (inventory.find_vf(device.address)
                               for device in parsed.devices if device.address is not None))
        if not holds:
            continue
        if host.migration_job_running(guest.uuid):
            log.info("guest %s migrates: its VF settings on %s are not recorded again",
                     guest.name, ifname)
            continue
        yield guest


def apply_vlan_priority(host: LibvirtHost, uuid: str, *, config: Config, vf_netlink) -> None:
    """Give an arriving guest's VFs the VLAN priority recorded on the source.

    libvirt sets the VLAN tag of an ``<interface type='hostdev'>`` (the listener
    that of a teamed ``<hostdev>``) with priority 0, so the priority comes after.
    """
    guest, devices = _devices_on_vfs(host, uuid, config, lambda parsed, device:
                                     vfsettings.recorded(device.entry or {},
                                                         vfsettings.APPLIED_AFTER_VLAN))
    for device, vf, wanted in devices:
        unapplied = []
        if wanted.get("vlan-proto", "802.1Q") != "802.1Q":
            unapplied.append(f"VLAN protocol {wanted['vlan-proto']} (vfmigrate sets "
                             "802.1Q only)")
        qos = int(wanted.get("vlan-qos", "0"))
        try:
            if qos and vf_netlink.set_vlan_priority(vf, device.vlan or 0, qos):
                event(log, Event.CONFIGURED, "guest %s: VF %s (PF %s vf %d) has the "
                      "source's VLAN priority %d on VLAN %d", guest.name, vf.address, vf.pf,
                      vf.index, qos, device.vlan or 0, domain=guest.name, vf=vf.address,
                      network=vf.network)
            elif qos:
                unapplied.append(f"VLAN priority {qos} (vf_reset = none leaves it to the "
                                 "admin)")
        except VFSettingError as error:
            unapplied.append(f"VLAN priority {qos} ({error.fields['problem']})")
        for what in unapplied:
            event(log, Event.UNAPPLIED, "guest %s arrived, but VF %s did not get the "
                  "source's %s", guest.name, vf.address, what, level=logging.WARNING,
                  domain=guest.name, vf=vf.address, network=vf.network)


def configure_teamed_hostdevs(host: LibvirtHost, uuid: str, *, config: Config,
                              vf_netlink) -> None:
    """Give each teamed ``<hostdev>`` VF its virtio partner's MAC, on its PF.

    libvirt sets the MAC of an ``<interface type='hostdev'>`` itself, not of a
    plain ``<hostdev>`` (since 7.1 teamable): QEMU failover needs it equal to
    the virtio NIC's, and on a destination the VF is a different one.
    """
    guest, devices = _devices_on_vfs(host, uuid, config, lambda parsed, device:
                                     parsed.teaming_mac(device)
                                     if device.kind == "hostdev" else None)
    for device, vf, mac in devices:
        if vf_netlink.set_mac(vf, mac, device.vlan):
            event(log, Event.CONFIGURED, "guest %s: VF %s (PF %s vf %d) MAC %s%s for its "
                  "teamed hostdev", guest.name, vf.address, vf.pf, vf.index, mac,
                  f", VLAN {device.vlan}" if device.vlan is not None else "",
                  domain=guest.name, vf=vf.address, network=vf.network)
        else:
            log.warning("guest %s: teamed hostdev VF %s needs MAC %s, which vf_reset = none "
                        "leaves to the admin", guest.name, vf.address, mac)


def _devices_on_vfs(host: LibvirtHost, uuid: str, config: Config, wanted_of: Callable
                    ) -> tuple[Guest | None, list[tuple[domxml.VFDevice, object, object]]]:
    """The running guest and, for each of its devices on a VF of this host for which
    ``wanted_of(parsed, device)`` is something, (device, VF, that something)."""
    guest = host.guest(uuid)
    if guest is None:
        return guest, []
    parsed = domxml.parse(guest.xml, allow_stand_ins=config.allow_stand_ins)
    inventory = Inventory.of(config)
    found = []
    for device in parsed.devices:
        wanted = wanted_of(parsed, device)
        vf = inventory.find_vf(device.address) if wanted and device.address else None
        if vf is not None:
            found.append((device, vf, wanted))
    return guest, found
