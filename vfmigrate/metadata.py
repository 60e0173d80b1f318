"""vfmigrate's element in a domain's ``<metadata>``: its format, the rule that
ties an entry to a device, and the replug protocol.  Written once, here; the
hook's parser (:mod:`vfmigrate.domxml`) and every writer use it.

The element (namespace :data:`vfmigrate.METADATA_NAMESPACE`) has one
``<vf>`` per VF the guest holds, naming its network so that the destination
of a migration knows which pool to take a VF from::

    <vfs>
      <vf mac="52:54:00:6d:90:02" network="physnet1"/>
      <vf alias="ua-vf0" network="physnet2" vlan="100"/>
    </vfs>

**PF spread** (``pf``): where a guest holds several VFs of one network, each entry
of that network has ``pf``, the ordinal (0, 1, …) of the PF its VF sat on when the
guest was first labelled; entries with different ordinals sat on different PFs,
which is the redundancy a destination keeps (``pf_spread``).  It records the
intent, so a destination that could not keep it does not rewrite it.

**VF settings** (``trust``, ``spoofchk``, ``min-tx-rate``, ``max-tx-rate``,
``link-state``, ``vlan-qos``, ``vlan-proto``): those of the VF on its PF that
differ from a reset VF, as the listener last read them where the guest runs
(:mod:`vfmigrate.vfsettings`); the destination applies them to its VF.

**Which device an entry describes** (:func:`device_of`): the device whose
``alias`` is the entry's alias; if no device has it (or the entry has none),
the device whose MAC is the entry's MAC.  Where several entries describe one
device, the last one counts (:func:`entry_of`).  An entry that describes no
device holds a VF only while it travels (``replug``) or when a testbed
simulates one (``device`` is a test-only kind).

**Replug protocol** (``replug``, :data:`REPLUG_STATES`): ``vfmigrate migrate``
sets ``on-arrival`` on the source after unplugging the VF (with ``address``,
``device``, ``guest-address`` to plug it back); the destination's hook sets
``pending`` when it claims a VF for the entry; the destination's listener
plugs the VF in and drops ``replug``.  ``device`` says how to plug it:
:data:`DEVICE_TYPES` (``stand-in``: a virtio NIC standing in for a VF in the
namespaced testbed, only with ``allow_stand_ins = yes``; ``simulated``: a
testbed VF with no device at all, never plugged).

libvirt stores the element under the namespace with the prefix ``vfmigrate``
(``virDomainSetMetadata``).
"""

from __future__ import annotations

from . import vfsettings

PREFIX = "vfmigrate"
ENTRY_ATTRIBUTES = ("alias", "mac", "network", "vlan", "pf",
                    *vfsettings.ATTRIBUTES,
                    "address", "device", "guest-address", "bridge", "replug")
MAX_PF_ORDINAL = 63
REPLUG_STATES = ("on-arrival", "pending")
DEVICE_TYPES = ("interface", "hostdev", "stand-in", "simulated")
TEST_ONLY_DEVICE_TYPES = ("stand-in", "simulated")


def is_test_only(entry: dict[str, str]) -> bool:
    """An entry of a test-only ``device`` kind (:mod:`vfmigrate.standins`)."""
    return entry.get("device") in TEST_ONLY_DEVICE_TYPES


def device_of(entry: dict[str, str], devices: list) -> object | None:
    """The device (anything with ``alias`` and ``mac``) this entry describes, or None."""
    alias = entry.get("alias")
    if alias:
        found = next((device for device in devices if device.alias == alias), None)
        if found is not None:
            return found
    mac = (entry.get("mac") or "").lower()
    if mac:
        return next((device for device in devices if device.mac == mac), None)
    return None


def entry_of(device, entries: list[dict[str, str]], devices: list) -> dict[str, str] | None:
    """The entry that describes ``device`` (one of ``devices``), or None."""
    return next((entry for entry in reversed(entries)
                 if device_of(entry, devices) is device), None)


def new_entry(device) -> dict[str, str]:
    """An entry naming ``device`` the way it is best found again: by MAC (stable
    across definitions) where it has one, else by alias."""
    return {"mac": device.mac} if device.mac else {"alias": device.alias}


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


def labelled_entries(domain, network_of, pf_of=lambda address: None,
                     settings_of=lambda address: None) -> list[dict[str, str]] | None:
    """The guest's entries with every local VF device labelled with its network, its
    VF settings and, where it holds several VFs of a network none of whose entries
    has one yet, the ordinal of each VF's PF (``pf``).

    ``network_of`` maps a host VF address to its network on this host (None
    for devices that are not VFs of a configured network); ``pf_of`` to its PF's
    address; ``settings_of`` to the VF's settings as its PF reports them (None
    where they cannot be read: what is recorded stays, as for any setting the PF
    does not report).  Returns None when the metadata already says all of it.
    """
    entries = [dict(entry) for entry in domain.metadata_entries]
    devices = [device for device in domain.devices if device.kind != "metadata"]
    changed = False
    labelled: dict[str, list[tuple[dict[str, str], object]]] = {}
    for device in devices:
        if device.address is None:
            continue
        network = network_of(device.address)
        if network is None or not (device.mac or device.alias):
            continue
        entry = entry_of(device, entries, devices)
        if entry is None:
            entry = new_entry(device)
            entries.append(entry)
        if entry.get("network") != network:
            entry["network"] = network
            changed = True
        current = settings_of(device.address)
        if current is not None:
            recorded = vfsettings.recorded(entry)
            settings = vfsettings.updated(recorded, current)
            if settings != recorded:
                updated = vfsettings.with_recorded(entry, settings)
                entry.clear()
                entry.update(updated)
                changed = True
        labelled.setdefault(network, []).append((entry, pf_of(device.address)))
    for network, members in labelled.items():
        pfs = [pf for _, pf in members]
        if len(members) < 2 or None in pfs or any("pf" in entry for entry, _ in members):
            continue
        ordinals = {pf: str(index) for index, pf in enumerate(dict.fromkeys(pfs))}
        if len(ordinals) > MAX_PF_ORDINAL + 1:
            continue
        for entry, pf in members:
            entry["pf"] = ordinals[pf]
        changed = True
    return entries if changed else None
