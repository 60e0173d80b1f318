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
device, the last one counts (:func:`entry_of`).  The same rule finds a device
again in another reading of the guest (:func:`counterpart`).  An entry that
describes no device holds a VF only while it travels (``replug``) or when a
testbed simulates one (``device`` is a test-only kind).

**Replug protocol** (``replug``, :data:`REPLUG_STATES`): ``vfmigrate migrate``
sets :data:`ON_ARRIVAL` on the source after unplugging the VF (with ``address``,
``device``, ``guest-address`` to plug it back); the destination's hook sets
:data:`PENDING` when it claims a VF for the entry (:func:`arrival_state`); the
destination's listener plugs the VF in (:func:`is_pending`) and drops
``replug``.  ``device`` says how to plug it: :data:`DEVICE_TYPES`, or one of
the testbed's test-only kinds, which only :mod:`vfmigrate.standins` names.

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
ON_ARRIVAL, PENDING = "on-arrival", "pending"
REPLUG_STATES = (ON_ARRIVAL, PENDING)
DEVICE_TYPES = ("interface", "hostdev")


def arrival_state(replug: str | None) -> str | None:
    """An entry's ``replug`` once the destination's hook has claimed a VF for it."""
    return PENDING if replug == ON_ARRIVAL else replug


def is_pending(entry: dict[str, str]) -> bool:
    """Whether the entry's VF is claimed here and waits for the listener to plug it in."""
    return entry.get("replug") == PENDING


def may_have_pending(xml: bytes) -> bool:
    """Whether a domain XML as libvirt writes it may have a pending entry, looked for
    without parsing it: False means it has none."""
    return any(f"replug={quote}{PENDING}{quote}".encode() in xml for quote in "\"'")


def _named(alias: str | None, mac: str | None, devices: list) -> list:
    """The devices with this alias; if none has it (or there is none), with this MAC."""
    if alias:
        found = [device for device in devices if device.alias == alias]
        if found:
            return found
    if mac:
        return [device for device in devices if device.mac == mac]
    return []


def device_of(entry: dict[str, str], devices: list) -> object | None:
    """The device (anything with ``alias`` and ``mac``) this entry describes, or None."""
    found = _named(entry.get("alias"), (entry.get("mac") or "").lower(), devices)
    return found[0] if found else None


def counterpart(device, devices: list) -> object | None:
    """The one device of ``devices`` (another reading of the same guest: its saved
    definition, say) that is ``device``, found as an entry finds its device (alias,
    else MAC); None where there is none or more than one (never by position)."""
    found = _named(device.alias, device.mac, devices)
    return found[0] if len(found) == 1 else None


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
