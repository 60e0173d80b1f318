"""vfmigrate's element in a domain's ``<metadata>``: decide and render it.

The element (namespace :data:`vfmigrate.METADATA_NAMESPACE`) has one
``<vf>`` per VF the guest holds, naming its network so that the destination
of a migration knows which pool to take a VF from::

    <vfs>
      <vf mac="52:54:00:6d:90:02" network="physnet1"/>
      <vf alias="ua-vf0" network="physnet2" vlan="100"/>
    </vfs>

Devices are matched by ``mac`` where they have one (stable across
definitions), else by ``alias``.  libvirt stores the element under the
namespace with the prefix ``vfmigrate`` (``virDomainSetMetadata``).
"""

from __future__ import annotations

from collections.abc import Callable

from .domxml import DomainXML
from .pci import PciAddress

PREFIX = "vfmigrate"
ENTRY_ATTRIBUTES = ("alias", "mac", "network", "vlan", "address", "device", "guest-address",
                    "bridge", "replug")


def quoteattr(value: str) -> str:
    """An XML attribute value, quoted (xml.sax.saxutils' would import urllib and http)."""
    escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return '"' + escaped.replace('"', "&quot;") + '"'


def render(entries: list[dict[str, str]]) -> str:
    """The element for ``setMetadata`` (libvirt adds the namespace and prefix)."""
    lines = ["<vfs>"]
    for entry in entries:
        attributes = " ".join(f"{name}={quoteattr(entry[name])}"
                              for name in ENTRY_ATTRIBUTES if entry.get(name) is not None)
        lines.append(f"  <vf {attributes}/>")
    lines.append("</vfs>")
    return "\n".join(lines)


def labelled_entries(domain: DomainXML, network_of: Callable[[PciAddress], str | None]
                     ) -> list[dict[str, str]] | None:
    """The guest's entries with every local VF device labelled with its network.

    ``network_of`` maps a host VF address to its network on this host (None
    for devices that are not VFs of a configured network).  Returns None when
    the metadata already says all of it.
    """
    entries = [dict(entry) for entry in domain.metadata_entries]
    changed = False
    for device in domain.devices:
        if device.kind == "metadata" or device.address is None:
            continue
        network = network_of(device.address)
        if network is None or not (device.mac or device.alias):
            continue
        entry = next((e for e in entries
                      if (device.mac and e.get("mac", "").lower() == device.mac)
                      or (device.alias and e.get("alias") == device.alias)), None)
        if entry is None:
            entry = {"mac": device.mac} if device.mac else {"alias": device.alias}
            entries.append(entry)
        if entry.get("network") != network:
            entry["network"] = network
            changed = True
    return entries if changed else None
