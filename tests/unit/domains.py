"""Domain XML for tests, built the way libvirt writes it."""

from __future__ import annotations

import uuid as uuid_module

from vfmigrate import METADATA_NAMESPACE
from vfmigrate.pci import PciAddress


def teaming_guest(name: str, vfs: list[str], *, uuid: str | None = None,
                  networks: list[str | None] | None = None, hostdev: bool = False) -> bytes:
    """A guest with one virtio+VF teaming pair per entry of ``vfs`` (host addresses)."""
    uuid = uuid or str(uuid_module.uuid5(uuid_module.NAMESPACE_DNS, name))
    networks = networks or [None] * len(vfs)
    devices, labels = [], []
    for index, (address, network) in enumerate(zip(vfs, networks)):
        pci = PciAddress.parse(address).xml_attributes()
        mac = f"52:54:00:{index:02x}:{len(name):02x}:{sum(map(ord, name)) % 256:02x}"
        source = (f"<address type='pci' domain='{pci['domain']}' bus='{pci['bus']}' "
                  f"slot='{pci['slot']}' function='{pci['function']}'/>")
        devices.append(
            f"    <interface type='bridge'>\n      <mac address='{mac}'/>\n"
            f"      <source bridge='br0'/>\n      <model type='virtio'/>\n"
            f"      <teaming type='persistent'/>\n      <alias name='ua-net{index}'/>\n"
            f"    </interface>\n")
        if hostdev:
            devices.append(
                f"    <hostdev mode='subsystem' type='pci' managed='yes'>\n"
                f"      <source>\n        {source}\n      </source>\n"
                f"      <teaming type='transient' persistent='ua-net{index}'/>\n"
                f"      <alias name='ua-vf{index}'/>\n    </hostdev>\n")
        else:
            devices.append(
                f"    <interface type='hostdev' managed='yes'>\n      <mac address='{mac}'/>\n"
                f"      <source>\n        {source}\n      </source>\n"
                f"      <teaming type='transient' persistent='ua-net{index}'/>\n"
                f"      <alias name='ua-vf{index}'/>\n    </interface>\n")
        if network:
            labels.append(f"      <vfmigrate:vf alias='ua-vf{index}' network='{network}'/>\n")
    metadata = ""
    if labels:
        metadata = (f"  <metadata>\n    <vfmigrate:vfs xmlns:vfmigrate='{METADATA_NAMESPACE}'>\n"
                    + "".join(labels) + "    </vfmigrate:vfs>\n  </metadata>\n")
    return (f"<domain type='qemu'>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n{metadata}"
            f"  <memory unit='KiB'>65536</memory>\n  <os>\n"
            f"    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>\n  </os>\n"
            f"  <devices>\n{''.join(devices)}  </devices>\n</domain>\n").encode()


def plain_guest(name: str) -> bytes:
    uuid = uuid_module.uuid5(uuid_module.NAMESPACE_DNS, name)
    return (f"<domain type='qemu'>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n"
            f"  <memory unit='KiB'>65536</memory>\n  <devices>\n"
            f"    <interface type='bridge'><source bridge='br0'/><model type='virtio'/>"
            f"</interface>\n  </devices>\n</domain>\n").encode()


def guest_uuid(name: str) -> str:
    return str(uuid_module.uuid5(uuid_module.NAMESPACE_DNS, name))
