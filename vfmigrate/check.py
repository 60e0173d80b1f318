"""``vfmigrate check DOMAIN DEST_URI``: can the guest migrate there, and how?

Runs on the source host.  The destination is asked only through the libvirt
API (its node devices, its running guests' XML, its libvirt and QEMU
versions); the source's own config and sysfs tell each VF's network and PCI
class.  For every VF device of the guest it says which path it takes:

* ``teaming``: ``<teaming type='transient'>``; rides along a plain ``virsh
  migrate --live`` (QEMU failover; vfmigrate's hook picks the VF there);
* ``assisted``: any other VF of a network NIC; ``vfmigrate migrate`` unplugs,
  migrates and plugs a VF of the destination in again;
* ``refused``: a PCI device that is not a network VF (an NVMe or GPU VF, say)
  unless included with ``--include-device``, or a VF of no known network.

Then whether the destination has enough free VFs per network, and libvirt and
QEMU versions that support the path.  Exit codes: 0 a plain ``virsh migrate``
works, 10 only ``vfmigrate migrate`` works, 1 the migration cannot succeed
(the reasons are listed), 6 libvirt failed.

Free VFs are the destination's VFs minus those its running guests hold; VFs
its vfmigrate has reserved for guests still arriving are not visible through
libvirt, so the count can be higher than what the hook will find.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from collections import namedtuple
from dataclasses import dataclass, field

from . import domxml, lexical, standins
from .config import Config
from .errors import counted
from .inventory import Inventory
from .numa import (DEFAULT_AFFINITY, UNPINNED, BadCpuset, format_set, guest_nodes,
                   node_of_pf, nodes_phrase, parse_set)
from .pci import PciAddress

EXIT_PLAIN, EXIT_ASSISTED, EXIT_CANNOT = 0, 10, 1
HOOK_QEMU_D = 6_005_000           # libvirt 6.5: qemu.d hooks
HOSTDEV_TEAMING = 7_001_000       # libvirt 7.1: <teaming> on <hostdev>
QEMU_FAILOVER = 4_002_000         # QEMU 4.2: virtio-net failover


class DeviceCheck(namedtuple("DeviceCheck", "name address network path reason stand_in",
                             defaults=(False,))):
    """``stand_in``: a testbed's stand-in for a VF (:mod:`vfmigrate.standins`), for
    which the destination's free VFs are not counted; not reported."""

    __slots__ = ()

    def as_dict(self) -> dict:
        return {"name": self.name, "address": str(self.address), "network": self.network,
                "path": self.path, "reason": self.reason}


class NetworkCheck(namedtuple("NetworkCheck", "network needed free total pfs method "
                                               "near nodes affinity",
                               defaults=(None, None, None))):
    """``near``: free VFs on the guest's NUMA ``nodes`` (None: unpinned or unknown)."""

    __slots__ = ()

    @property
    def enough(self) -> bool:
        return self.free is None or self.free >= self.needed


@dataclass
class CheckReport:
    domain: str
    destination: str
    devices: list[DeviceCheck] = field(default_factory=list)
    networks: list[NetworkCheck] = field(default_factory=list)
    destination_libvirt: int = 0
    destination_qemu: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> str | None:
        """``virsh``, ``vfmigrate-migrate`` or None (cannot migrate)."""
        if self.problems:
            return None
        if any(device.path == "assisted" for device in self.devices):
            return "vfmigrate-migrate"
        return "virsh"

    @property
    def exit_code(self) -> int:
        return {None: EXIT_CANNOT, "virsh": EXIT_PLAIN,
                "vfmigrate-migrate": EXIT_ASSISTED}[self.path]

    def as_dict(self) -> dict:
        return {"domain": self.domain, "destination": self.destination,
                "can_migrate": self.path is not None, "path": self.path,
                "devices": [device.as_dict() for device in self.devices],
                "networks": [network._asdict() | {"enough": network.enough}
                             for network in self.networks],
                "destination_libvirt": _version(self.destination_libvirt),
                "destination_qemu": _version(self.destination_qemu),
                "problems": self.problems, "notes": self.notes}

    def lines(self) -> list[str]:
        lines = [f"guest {self.domain} -> {self.destination}: "
                 + {None: "CANNOT migrate",
                    "virsh": "can migrate with a plain 'virsh migrate --live'",
                    "vfmigrate-migrate": "can migrate with 'vfmigrate migrate' (VFs are "
                                         "unplugged, moved and plugged in again)"}[self.path]]
        for device in self.devices:
            lines.append(f"  device {device.name} (VF {device.address}, network "
                         f"{device.network or '?'}): {device.path}: {device.reason}")
        for network in self.networks:
            free = "not visible" if network.free is None else f"{network.free} free of " \
                                                                f"{network.total}"
            near = "" if network.near is None else (
                f"; {network.near} free on NUMA {nodes_phrase(parse_set(network.nodes))}, "
                f"where the guest runs (numa_affinity = {network.affinity})")
            lines.append(f"  network {network.network} on the destination: needs "
                         f"{network.needed}, {free} ({network.method}){near}")
        lines.append(f"  destination: libvirt {_version(self.destination_libvirt)}, "
                     f"QEMU {_version(self.destination_qemu)}")
        lines += [f"  problem: {problem}" for problem in self.problems]
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def run_check(source, destination, domain_name: str, *, destination_uri: str,
              config: Config | None, include_devices: frozenset[str] = frozenset()) -> CheckReport:
    """``source``/``destination`` are :class:`vfmigrate.virt.LibvirtHost`."""
    report = CheckReport(domain=domain_name, destination=destination_uri)
    domain = source.lookup_name(domain_name)
    uuid = domain.UUIDString()
    if not source.is_active(uuid):
        report.problems.append(f"guest {domain_name} is not running")
        return report
    allow_stand_ins = bool(config and config.allow_stand_ins)
    parsed = domxml.parse(source.guest(uuid).xml, allow_stand_ins=allow_stand_ins)
    inventory = Inventory.of(config) if config else None
    for device in parsed.devices:
        report.devices.append(_check_device(device, inventory, config, include_devices))
    report.problems += [f"device {d.name}: {d.reason}" for d in report.devices
                        if d.path == "refused"]
    for entry in parsed.test_only:
        report.problems.append(
            f"device {entry.alias or entry.mac or entry.address}: a {entry.entry['device']} "
            f"VF in vfmigrate's metadata, which only testbeds use; "
            f"{config.path if config else 'this host'} has allow_stand_ins = no")
    report.destination_libvirt, report.destination_qemu = destination.versions()
    _check_versions(report, parsed)
    _check_capacity(report, destination, config, parsed.placement)
    return report


def _check_device(device: domxml.VFDevice, inventory: Inventory | None, config: Config | None,
                  include_devices: frozenset[str]) -> DeviceCheck:
    name = device.alias or device.mac or str(device.address)
    network = device.network
    if network is None and inventory is not None and device.address is not None:
        vf = inventory.find_vf(device.address)
        network = vf.network if vf else None
    if device.kind == "metadata":
        return DeviceCheck(name, device.address, network, "assisted",
                           standins.describe(device), stand_in=standins.is_stand_in(device))
    included = bool({device.alias, device.mac, str(device.address)} & include_devices)
    pci_class = _pci_class(config, device.address)
    if pci_class is not None and not pci_class.startswith("0x02") and not included:
        return DeviceCheck(name, device.address, network, "refused",
                           f"PCI class {pci_class} is not a network controller; only VFs of "
                           f"NICs move by default (include it with --include-device {name})")
    if network is None:
        return DeviceCheck(name, device.address, None, "refused",
                           "not a VF of a configured network and has no network label "
                           f"(label it: vfmigrate tag DOMAIN --network NAME --device {name})")
    if device.teaming:
        return DeviceCheck(name, device.address, network, "teaming",
                           "teamed with a virtio NIC: QEMU failover moves it")
    return DeviceCheck(name, device.address, network, "assisted",
                       "no teaming: unplugged before and plugged in after the migration")


def _pci_class(config: Config | None, address: PciAddress | None) -> str | None:
    if config is None or address is None:
        return None
    try:
        with open(os.path.join(config.sysfs_root, "bus", "pci", "devices", str(address),
                               "class")) as class_file:
            return class_file.read().strip()
    except OSError:
        return None


def _check_versions(report: CheckReport, parsed: domxml.DomainXML) -> None:
    if not any(d.path != "refused" for d in report.devices):
        return
    if report.destination_libvirt < HOOK_QEMU_D:
        report.problems.append(f"destination libvirt {_version(report.destination_libvirt)} "
                               "is older than 6.5: it cannot run vfmigrate's hook")
    teamed = [d for d in parsed.devices if d.teaming]
    if any(d.kind == "hostdev" for d in teamed) and report.destination_libvirt < HOSTDEV_TEAMING:
        report.problems.append("the guest teams a <hostdev>, which needs libvirt 7.1 on the "
                               "destination")
    if teamed and report.destination_qemu < QEMU_FAILOVER:
        report.problems.append(f"destination QEMU {_version(report.destination_qemu)} has no "
                               "virtio-net failover (needs 4.2)")


def _check_capacity(report: CheckReport, destination, config: Config | None,
                    placement=UNPINNED) -> None:
    needed: dict[str, int] = {}
    stand_ins = set()
    for device in report.devices:
        if device.path in ("teaming", "assisted") and device.network:
            needed[device.network] = needed.get(device.network, 0) + 1
            if device.stand_in:
                stand_ins.add(device.network)
    if not needed:
        return
    pools = _destination_pools(destination)
    nodes, cells = _guest_nodes_there(report, destination, placement)
    in_use = {address for guest in destination.active_guests()
              for address in domxml.parse(guest.xml).pci_sources}
    hostdev_networks = destination.hostdev_networks()
    for network, count in sorted(needed.items()):
        if network in stand_ins:
            report.networks.append(NetworkCheck(network, count, None, None, [],
                                                "stand-in VFs are simulated: not counted"))
            continue
        pfs, method = _pfs_of(network, pools, hostdev_networks, config)
        if pfs is None:
            # The destination's own config is not visible over libvirt: a destination whose
            # PFs are named otherwise has VFs this host cannot count (unknown, not none).
            report.networks.append(NetworkCheck(network, count, None, None, [], method))
            report.notes.append(f"network {network}: the destination has no PF named as in "
                                "this host's config, so its free VFs are not visible; its "
                                "hook decides when the guest arrives")
            continue
        vfs = [vf for pf in pfs for vf in pools[pf][1]]
        free = sum(1 for vf in vfs if vf not in in_use)
        near = affinity = None
        if nodes:
            affinity = (config.networks[network].numa_affinity
                        if config is not None and network in config.networks
                        else DEFAULT_AFFINITY)
            near = sum(1 for pf in pfs if node_of_pf(pools[pf][2], cells) in nodes
                       for vf in pools[pf][1] if vf not in in_use)
        check = NetworkCheck(network, count, free, len(vfs),
                             [pools[pf][0] or str(pf) for pf in pfs], method, near,
                             format_set(nodes) if nodes else None, affinity)
        report.networks.append(check)
        if not check.enough:
            report.problems.append(f"network {network}: the destination has "
                                   f"{counted(free, 'free VF')} for {count} ({method})")
        elif near is not None and near < count and affinity != "none":
            where = (f"{counted(near, 'free VF')} on NUMA {nodes_phrase(nodes)}, where the "
                     "guest runs")
            if affinity == "required":
                report.problems.append(
                    f"network {network}: the destination has {where}, for {count}, and "
                    "numa_affinity = required (as in this host's config)")
            else:
                report.notes.append(
                    f"network {network}: the destination has {where}, for {count}: "
                    "the others would come from another node")
    report.notes.append("VFs the destination has reserved for guests still arriving are not "
                        "visible through libvirt")


def _guest_nodes_there(report: CheckReport, destination, placement
                       ) -> tuple[frozenset[int] | None, dict[int, frozenset[int]]]:
    """The destination's NUMA nodes the guest will use (None: unpinned, or unknown,
    which a note says), and the destination's cells."""
    if not placement.pinned:
        return None, {}
    cells = destination.numa_cells()
    try:
        nodes = guest_nodes(placement, cells)
    except BadCpuset as error:
        report.problems.append(f"the guest's {error}")
        return None, cells
    if not nodes:
        report.notes.append("the destination reports no NUMA node with the guest's pinned "
                            "CPUs: whether its VFs sit on the guest's node is unknown")
        return None, cells
    return nodes, cells


def _destination_pools(destination
                       ) -> dict[PciAddress, tuple[str | None, list[PciAddress], int | None]]:
    """The destination's PFs: address -> (netdev name, VF addresses, NUMA node), from
    node devices."""
    libvirt = destination.libvirt
    pools: dict[PciAddress, tuple[str | None, list[PciAddress], int | None]] = {}
    names: dict[str, PciAddress] = {}
    for xml in destination.node_device_xmls(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV):
        root = ElementTree.fromstring(xml)
        pci = root.find("capability[@type='pci']")
        if pci is None:
            continue
        try:
            address = PciAddress.from_xml_attributes(
                *(pci.findtext(part, "0").strip() for part in ("domain", "bus", "slot",
                                                               "function")))
        except ValueError:
            continue   # not a device vfmigrate could use
        names[root.findtext("name", "")] = address
        functions = pci.find("capability[@type='virt_functions']")
        if functions is not None:
            vfs = []
            for a in functions.findall("address"):
                try:
                    vfs.append(PciAddress.from_xml_attributes(a.get("domain"), a.get("bus"),
                                                              a.get("slot"), a.get("function")))
                except ValueError:
                    continue
            numa = pci.find("numa")
            node = numa.get("node", "") if numa is not None else ""
            pools[address] = (None, vfs, int(node) if lexical.made_of(
                node, lexical.ASCII_DIGITS, 1, 5) else None)
    for xml in destination.node_device_xmls(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET):
        root = ElementTree.fromstring(xml)
        parent = names.get(root.findtext("parent", ""))
        if parent in pools:
            pools[parent] = (root.findtext("capability/interface"), *pools[parent][1:])
    return pools


def _pfs_of(network: str, pools, hostdev_networks: dict[str, list[str]],
            config: Config | None) -> tuple[list[PciAddress] | None, str]:
    """The destination's PFs of ``network`` and how they were found; None for the PFs when
    this host's config names none that the destination has (which PFs are unknown)."""
    by_name = {name: address for address, (name, *_) in pools.items() if name}
    if network in hostdev_networks:
        pfs = [by_name[name] for name in hostdev_networks[network] if name in by_name]
        return pfs, f"PFs of the destination's libvirt network '{network}'"
    if config is not None and network in config.networks:
        specs = config.networks[network].pfs
        pfs = [by_name[spec] for spec in specs if spec in by_name]
        pfs += [address for address in pools if str(address) in specs]
        if not pfs and pools:
            return None, "no PF there is named as in this host's config"
        return pfs, "PFs named as in this host's config"
    return list(pools), "every PF of the destination (its network layout is not visible)"
