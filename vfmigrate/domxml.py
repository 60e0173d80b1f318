"""Find the VF devices in a libvirt domain XML and rewrite their host address.

The XML arrives from another host, inside libvirt's migration path, so it is
parsed defensively: at most ``MAX_XML_BYTES``, elements nested at most
``MAX_DEPTH`` deep, no DOCTYPE, no entity declarations, no external entities
(expat, never a network fetch).  Numbers are read as libvirt reads them
(ASCII digits only): anything else is :class:`BadDomainXML` naming the
attribute, never an internal error.

A *VF device* is a PCI passthrough device with a host-side source address:

* ``<interface type='hostdev'>`` with ``<source><address type='pci' …/>``;
* ``<hostdev mode='subsystem' type='pci'>`` with the same;
* a *metadata-only VF* (kind ``metadata``): an entry of vfmigrate's own
  metadata that matches no device above and holds a VF outside the device
  list: unplugged for a migration (``replug``), or a testbed's stand-in or
  simulated VF (``device``).  Its host address is the entry's ``address``.
  Any other entry without a device is a label left behind by a device since
  unplugged: it holds nothing.

Test-only entries (:mod:`vfmigrate.standins`) hold a VF only when the caller
parses with ``allow_stand_ins=True`` (the host's ``allow_stand_ins = yes``).
By default they are no device at all, claim nothing and are listed in
:attr:`DomainXML.test_only`, so that a caller that must not ignore them (the
migrate hook) can refuse the guest.

A device travels only with a host address to rewrite: a teamed device whose
``<source>`` has no PCI ``<address>`` (which libvirt itself rejects) does not
travel and claims nothing.

vfmigrate's metadata labels devices (matched by ``alias``, else ``mac``)::

    <metadata>
      <vfmigrate:vfs xmlns:vfmigrate="https://vfmigrate.dev/xmlns/domain/1">
        <vfmigrate:vf alias="ua-sriov0" network="physnet1" vlan="100"/>
        <vfmigrate:vf mac="52:54:00:6d:90:02" network="physnet2"
                      address="0000:3b:02.1" replug="on-arrival" device="interface"/>
      </vfmigrate:vfs>
    </metadata>

A device *rides along* a migration when it has ``<teaming type='transient'>``
(the only PCI device libvirt lets migrate) or a metadata entry.  Plain
``<interface type='network'>`` hostdev pools are libvirt's to allocate and are
left alone.

:meth:`DomainXML.rewrite` changes only the attribute values of the host-side
``<source><address>`` tags (and the ``address`` of metadata entries): it
splices bytes, so every other byte of the document, namespace prefixes and
quoting included, comes out identical.

The byte range of each device's element is recorded as well:
:meth:`DomainXML.element` and :meth:`DomainXML.interface_element` hand its text,
byte for byte, to a caller that copies or unplugs it (``vfmigrate migrate``)
instead of finding the element itself.
"""

from __future__ import annotations

import pyexpat as expat   # xml.parsers.expat is this module behind two package imports

from . import METADATA_NAMESPACE, lexical, metadata, standins, vfsettings
from .config import is_network_label
from .errors import BadDomainXML
from .numa import UNPINNED, GuestPlacement
from .pci import PciAddress
from .records import record

MAX_XML_BYTES = 2 * 1024 * 1024
# libvirt reads its XML with libxml2, which stops at 256 levels; a domain status file
# adds one.  Deeper documents are refused before their depth costs anything.
MAX_DEPTH = 1024
# Nothing vfmigrate reads is deeper below <domain> than devices/interface/actual/source/address.
_DEEPEST_READ = 5

_ALIAS_CHARACTERS = lexical.ASCII_ALNUM | frozenset("_-")
_BRIDGE_CHARACTERS = lexical.ASCII_ALNUM | frozenset("_.-")
_NS_VFS = METADATA_NAMESPACE + " vfs"

# The format of vfmigrate's metadata and the replug protocol: vfmigrate.metadata;
# the testbed's device kinds: vfmigrate.standins.
REPLUG_STATES = metadata.REPLUG_STATES
DEVICE_TYPES = metadata.DEVICE_TYPES + standins.TEST_ONLY_DEVICE_TYPES
_NS_VF = METADATA_NAMESPACE + " vf"


class Span(record("Span", "start end")):
    """Byte range of a start tag (``<`` to ``>`` inclusive) or of a whole element (its
    start tag to its end tag)."""

    __slots__ = ()


class VFDevice:
    """A VF device of the guest (see the module docstring for the kinds)."""

    __slots__ = ("kind", "alias", "mac", "address", "teaming", "network", "vlan", "replug",
                 "labelled", "address_tag", "metadata_tag", "metadata_address", "entry",
                 "teaming_partner", "managed", "element")

    def __init__(self, kind: str, *, labelled: bool = False,
                 metadata_tag: Span | None = None) -> None:
        self.kind = kind                      # "interface", "hostdev" or "metadata"
        self.alias: str | None = None
        self.mac: str | None = None
        self.address: PciAddress | None = None   # host side
        self.teaming = False
        self.teaming_partner: str | None = None   # alias of the virtio NIC it is teamed with
        self.network: str | None = None
        self.vlan: int | None = None
        self.replug: str | None = None
        self.labelled = labelled
        self.address_tag: Span | None = None
        self.metadata_tag = metadata_tag
        self.metadata_address: PciAddress | None = None
        self.entry: dict[str, str] = {}   # its metadata entry's attributes, if any
        # managed='yes': libvirt binds the VF to vfio-pci itself; libvirt's default is no
        self.managed: bool | None = None
        self.element: Span | None = None   # its element in <devices>; none for metadata-only

    @property
    def rides_along(self) -> bool:
        """Whether this VF moves with a migration (and so needs a VF there).

        A device without a host address has nothing to rewrite: a VF claimed for it
        would be used by nothing, so it does not travel.
        """
        if self.kind == "metadata":
            return True
        return (self.teaming or self.labelled) and self.address_tag is not None

    def describe(self, where_from: str = "") -> str:
        """``interface ua-vf0 (VF 0000:3b:02.1)``; ``where_from`` follows the address."""
        name = self.alias or (f"mac {self.mac}" if self.mac else None)
        where = f"VF {self.address}{where_from}" if self.address else "no VF"
        if self.kind == "metadata":
            return f"metadata-only VF ({name or where})"
        return f"{self.kind} {name} ({where})" if name else f"{self.kind} at {where}"

    def __repr__(self) -> str:
        return f"<VFDevice {self.describe()}>"


class DomainXML:
    """A parsed domain: identity, VF devices, every PCI source it names, and where its
    device elements are."""

    def __init__(self, data: bytes, uuid: str, name: str, devices: list[VFDevice],
                 pci_sources: list[PciAddress],
                 metadata_entries: list[dict[str, str]] | None = None,
                 metadata_spans: list[Span] | None = None,
                 interface_macs: dict[str, str] | None = None,
                 test_only: list[VFDevice] | None = None,
                 placement: GuestPlacement = UNPINNED,
                 interface_elements: dict[str, Span] | None = None,
                 device_aliases: set[str] | None = None) -> None:
        self.data = data
        self.uuid = uuid
        self.name = name
        self.devices = devices
        self.pci_sources = pci_sources
        self.metadata_entries = metadata_entries or []   # validated attributes, in order
        self.metadata_spans = metadata_spans or []       # each entry's start tag, in order
        self.interface_macs = interface_macs or {}       # alias -> MAC of other interfaces
        # MAC -> the first <interface> with it, any type (a VF's, a stand-in's NIC)
        self.interface_elements = interface_elements or {}
        # The alias of every element in <devices> that has one, whatever its kind.
        self.device_aliases = device_aliases or set()
        # Test-only entries (vfmigrate.standins) not honoured: parsed without
        # allow_stand_ins.  They hold nothing; a migrate hook should refuse them.
        self.test_only = test_only or []
        # Where the guest runs (NUMA), as the XML's text: vfmigrate.numa reads it.
        self.placement = placement

    @property
    def held_addresses(self) -> set[PciAddress]:
        """Every host PCI address the guest holds: its devices' sources (also a
        network interface's ``<actual>``) and its metadata-only VFs."""
        return set(self.pci_sources) | {device.address for device in self.devices
                                        if device.kind == "metadata" and device.address}

    def teaming_mac(self, device: VFDevice) -> str | None:
        """The MAC a teamed VF must have: its virtio partner's (QEMU failover)."""
        if device.teaming_partner is None:
            return None
        return self.interface_macs.get(device.teaming_partner)

    def element(self, device: VFDevice) -> bytes | None:
        """The text of ``device``'s element in ``<devices>`` (``<interface>`` or
        ``<hostdev>``), byte for byte; None for a metadata-only VF, which has none."""
        if device.element is None:
            return None
        return self.data[device.element.start:device.element.end]

    def interface_element(self, mac: str) -> bytes | None:
        """The text of the first ``<interface>`` (of any type) with this MAC (lower
        case), byte for byte; None if the guest has none."""
        span = self.interface_elements.get(mac)
        return self.data[span.start:span.end] if span is not None else None

    def refuse_test_only(self, config_path: str) -> None:
        """Raise :class:`vfmigrate.standins.TestOnlyVF` if the guest has test-only entries
        this parse did not honour (for the migrate/restore hook: the guest would arrive
        without a VF it expects)."""
        if self.test_only:
            what = ", ".join(f"a {entry.entry.get('device')} VF "
                             f"({entry.alias or entry.mac or entry.address or 'no name'})"
                             for entry in self.test_only)
            raise standins.TestOnlyVF(domain=self.name, what=what, config_path=config_path)

    @property
    def travelling_devices(self) -> list[VFDevice]:
        return [device for device in self.devices if device.rides_along]

    def rewrite(self, new_addresses: list[tuple[VFDevice, PciAddress]]) -> bytes:
        """The document with each device's host address replaced."""
        edits: list[tuple[Span, dict[str, str]]] = []
        for device, address in new_addresses:
            if device.address_tag is not None:
                edits.append((device.address_tag, address.xml_attributes()))
            if device.metadata_tag is not None and (device.kind == "metadata"
                                                    or device.metadata_address is not None):
                values = {"address": str(address)}
                replug = metadata.arrival_state(device.replug)
                if replug != device.replug:
                    values["replug"] = replug
                edits.append((device.metadata_tag, values))
        pieces, position = [], 0
        for span, values in sorted(edits, key=lambda edit: edit[0].start):
            pieces += [self.data[position:span.start],
                       _set_attributes(self.data[span.start:span.end], values)]
            position = span.end
        pieces.append(self.data[position:])
        return b"".join(pieces)


def parse(data: bytes, *, status: bool = False, allow_stand_ins: bool = False) -> DomainXML:
    """Parse a domain XML (or, with ``status``, libvirt's ``<domstatus>`` file).

    ``allow_stand_ins`` (the host's ``allow_stand_ins``) makes test-only metadata
    entries VF devices; without it they are only listed in ``DomainXML.test_only``.
    """
    if len(data) > MAX_XML_BYTES:
        raise BadDomainXML(problem=f"{len(data)} bytes is more than the {MAX_XML_BYTES} "
                                   "a domain XML may have")
    if b"\0" in data:
        raise BadDomainXML(problem="malformed XML: NUL bytes (libvirt writes UTF-8 XML, "
                                   "which has none)")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise BadDomainXML(problem="DOCTYPE and entity declarations are not allowed "
                                   "in a domain XML")
    return _DomainParser(data, status, allow_stand_ins).run()


def _unsafe(*_args: object) -> None:
    raise BadDomainXML(problem="DOCTYPE and entity declarations are not allowed in a domain XML")


class _DomainParser:
    def __init__(self, data: bytes, status: bool, allow_stand_ins: bool = False) -> None:
        self.data = data
        self.status = status
        self.allow_stand_ins = allow_stand_ins
        self.test_only: list[VFDevice] = []
        self.vfs_elements = 0
        # libvirt writes UTF-8 only; a declared encoding (UTF-16, say) is not obeyed.
        self.parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
        self.parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        self.parser.StartDoctypeDeclHandler = _unsafe
        self.parser.EntityDeclHandler = _unsafe
        self.parser.ExternalEntityRefHandler = _unsafe
        self.parser.StartElementHandler = self.start
        self.parser.EndElementHandler = self.end
        # Text is read only inside <uuid> and <name>: start() sets a CharacterDataHandler
        # there, and end() takes it away, so that the whitespace between a large guest's
        # elements costs no Python call (issue 15).
        self.depth = 0
        self.root_tag = ""
        self.domain_depth: int | None = None
        self.domain_closed = False
        #: Tags of the open elements inside <domain>, its child first.
        self.path: list[str] = []
        self.fields: dict[str, list[str]] = {"uuid": [], "name": []}
        self.reading_text = False
        self.device: VFDevice | None = None
        self.device_start = 0
        self.device_counts = False
        self.device_aliases: set[str] = set()
        self.interface_elements: dict[str, Span] = {}
        self.devices: list[VFDevice] = []
        self.entries: list[VFDevice] = []
        self.entry_attributes: list[dict[str, str]] = []
        self.interface_macs: dict[str, str] = {}
        self.pci_sources: list[PciAddress] = []
        self.memory_nodeset: str | None = None
        self.vcpu_cpuset: str | None = None
        self.vcpupins: list[str] = []

    def run(self) -> DomainXML:
        try:
            self.parser.Parse(self.data, True)
        except expat.ExpatError as error:
            raise BadDomainXML(problem=f"malformed XML at line {error.lineno}, column "
                                       f"{error.offset}: {expat.ErrorString(error.code)}") from None
        finally:
            # The parser's handlers are this object's methods: a cycle, which the hook
            # (that runs without the cyclic garbage collector) would keep until it exits.
            self.parser = None
        if self.domain_depth is None:
            raise BadDomainXML(problem="no <domain> element")
        uuid = "".join(self.fields["uuid"]).strip()
        name = "".join(self.fields["name"]).strip()
        if not lexical.is_uuid(uuid):
            raise BadDomainXML(problem=f"<uuid> is missing or invalid: {uuid[:40]!r}")
        if not name:
            raise BadDomainXML(problem="<name> is missing")
        return DomainXML(data=self.data, uuid=canonical_uuid(uuid), name=name,
                         devices=self._match_metadata(), pci_sources=self.pci_sources,
                         metadata_entries=self.entry_attributes,
                         metadata_spans=[entry.metadata_tag for entry in self.entries],
                         interface_macs=self.interface_macs, test_only=self.test_only,
                         placement=GuestPlacement(self.memory_nodeset, self.vcpu_cpuset,
                                                  tuple(self.vcpupins)),
                         interface_elements=self.interface_elements,
                         device_aliases=self.device_aliases)

    # -- expat callbacks ------------------------------------------------------

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise BadDomainXML(problem=f"elements are nested deeper than {MAX_DEPTH} levels "
                                       "(libvirt itself reads at most 256)")
        if self.domain_depth is None:
            self._find_domain(tag)
            return
        if self.domain_closed:
            return
        path = self.path
        path.append(tag)
        depth = len(path)
        if depth > _DEEPEST_READ:
            return
        top = path[0]
        if depth == 1:
            if tag in self.fields:
                self.parser.CharacterDataHandler = self.fields[tag].append
                self.reading_text = True
            elif tag == "vcpu":
                self.vcpu_cpuset = attrs.get("cpuset")
        elif top == "devices":
            if depth == 2:
                self._start_device(tag, attrs)
                return
            if depth == 3 and tag == "alias" and "name" in attrs:
                self.device_aliases.add(attrs["name"])
            if self.device is not None:
                self._device_child(depth, tag, path, attrs)
        elif depth == 2:
            if top == "numatune" and tag == "memory":
                self.memory_nodeset = attrs.get("nodeset")
            elif top == "cputune" and tag == "vcpupin" and "cpuset" in attrs:
                self.vcpupins.append(attrs["cpuset"])
            elif top == "metadata" and tag == _NS_VFS:
                self.vfs_elements += 1
        elif depth == 3 and top == "metadata" and path[1] == _NS_VFS and tag == _NS_VF \
                and self.vfs_elements == 1:
            # Only the first element of our namespace: libvirt keeps no other.
            self._metadata_entry(attrs)

    def end(self, tag: str) -> None:
        self.depth -= 1
        if self.domain_depth is None or self.domain_closed:
            return
        if self.depth < self.domain_depth:
            self.domain_closed = True   # a status file's <domain> is its last child
            return
        if self.reading_text:
            self.parser.CharacterDataHandler = None
            self.reading_text = False
        path = self.path
        if len(path) == 2:
            device = self.device
            if device is not None:
                device.element = Span(self.device_start, self._element_end(tag))
                if device.kind == "interface" and device.mac:
                    self.interface_elements.setdefault(device.mac, device.element)
                if self.device_counts:
                    self.devices.append(device)
                elif device.alias and device.mac:
                    self.interface_macs[device.alias] = device.mac
            self.device = None
        path.pop()

    # -- helpers --------------------------------------------------------------

    def _find_domain(self, tag: str) -> None:
        depth = self.depth
        if depth == 1:
            self.root_tag = tag
        if tag == "domain" and (depth == 1 or (self.status and self.root_tag == "domstatus")):
            self.domain_depth = depth
        elif depth == 1 and not (self.status and tag == "domstatus"):
            raise BadDomainXML(problem=f"root element is <{tag.split(' ')[-1]}>, not <domain>")

    def _span(self) -> Span:
        start = self.parser.CurrentByteIndex
        return Span(start, _end_of_start_tag(self.data, start))

    def _element_end(self, tag: str) -> int:
        """Index just past the device element that ends now: past its end tag, where
        expat stands (in ``<devices>``, no other end tag of its name can stand there), or
        past its start tag if it is an empty-element tag."""
        index = self.parser.CurrentByteIndex
        if self.data.startswith(b"</" + tag.encode(), index):
            return self.data.index(b">", index) + 1
        return _end_of_start_tag(self.data, self.device_start)

    def _start_device(self, tag: str, attrs: dict[str, str]) -> None:
        kind = attrs.get("type")
        if tag == "interface":
            # Other interfaces are followed only for the VF in a network interface's
            # status <actual>, and for the MAC of a teaming partner.
            self.device = VFDevice(kind="interface")
            self.device_counts = kind == "hostdev"
            if kind == "hostdev":
                self.device.managed = attrs.get("managed") == "yes"
        elif tag == "hostdev" and kind == "pci" and attrs.get("mode", "subsystem") == "subsystem":
            self.device = VFDevice(kind="hostdev")
            self.device_counts = True
            self.device.managed = attrs.get("managed") == "yes"
        if self.device is not None:
            self.device_start = self.parser.CurrentByteIndex

    def _device_child(self, depth: int, tag: str, path: list[str],
                      attrs: dict[str, str]) -> None:
        """An element inside the VF device being read: ``path[2:]`` are the tags from the
        device's child down to ``tag``, ``depth`` the length of ``path``."""
        device = self.device
        assert device is not None
        if depth == 3:
            if tag == "mac":
                device.mac = (attrs.get("address") or "").lower() or None
            elif tag == "alias":
                device.alias = attrs.get("name")
            elif tag == "teaming":
                device.teaming = attrs.get("type") == "transient"
                device.teaming_partner = attrs.get("persistent")
        elif tag == "address":
            if attrs.get("type", "pci") != "pci":
                return
            if depth == 4 and path[2] == "source":
                address = _pci_from_attributes(attrs, device)
                device.address = address
                device.address_tag = self._span()
                self.pci_sources.append(address)
            elif depth == 5 and path[2] == "actual" and path[3] == "source":
                self.pci_sources.append(_pci_from_attributes(attrs, device))
        elif depth == 4 and tag == "tag" and path[2] == "vlan" and "id" in attrs:
            if not _is_vlan(attrs["id"]):
                raise BadDomainXML(problem=f"<{device.kind}> <vlan><tag id={attrs['id'][:40]!r}>"
                                           " is not a VLAN ID 0-4095")
            device.vlan = int(attrs["id"])

    def _metadata_entry(self, attrs: dict[str, str]) -> None:
        entry = VFDevice(kind="metadata", labelled=True, metadata_tag=self._span())
        where = f"<vfmigrate:vf> entry {len(self.entries) + 1} in <metadata>"
        for name, value in attrs.items():
            check = _ENTRY_CHECKS.get(name)
            if check is not None and not check[0](value):
                raise BadDomainXML(problem=f"{where}: {name} {value[:40]!r} {check[1]}")
        if "address" in attrs:
            entry.metadata_address = PciAddress.parse(attrs["address"])
        entry.alias, entry.network = attrs.get("alias"), attrs.get("network")
        entry.mac = attrs["mac"].lower() if "mac" in attrs else None
        entry.vlan = int(attrs["vlan"]) if "vlan" in attrs else None
        entry.address = entry.metadata_address
        entry.replug = attrs.get("replug")
        entry.entry = dict(attrs)
        self.entries.append(entry)
        self.entry_attributes.append(dict(attrs))

    def _match_metadata(self) -> list[VFDevice]:
        devices = list(self.devices)
        for entry in self.entries:
            target = metadata.device_of(entry.entry, self.devices)
            if target is None:
                # An entry without a device holds a VF only while it travels (replug) or
                # when a testbed simulates one; otherwise it is a label left behind by a
                # device since unplugged, which holds nothing.  Test-only kinds hold
                # nothing on a host that does not allow them, even with replug: nothing
                # could plug them in there.
                if standins.is_test_only(entry.entry):
                    if self.allow_stand_ins:
                        devices.append(entry)
                    else:
                        self.test_only.append(entry)
                elif entry.replug:
                    devices.append(entry)
                continue
            target.labelled = True
            target.network = entry.network
            target.vlan = entry.vlan if entry.vlan is not None else target.vlan
            target.replug = entry.replug
            target.entry = entry.entry
            target.metadata_tag = entry.metadata_tag
            target.metadata_address = entry.metadata_address
        return devices


def _is_pci(text: str) -> bool:
    return lexical.is_pci_address(text, lexical.HEX_DIGITS)


def _is_vlan(text: str) -> bool:
    return lexical.made_of(text, lexical.ASCII_DIGITS, 1, 4) and int(text) <= 4095


# Checks of untrusted metadata attributes: (predicate, what is wrong otherwise).
_ENTRY_CHECKS = {
    "alias": (lambda v: lexical.made_of(v, _ALIAS_CHARACTERS, 1, 128), "is not a libvirt alias"),
    "mac": (lexical.is_mac, "is not a MAC address"),
    "network": (is_network_label, "is not a valid label"),
    "vlan": (_is_vlan, "is not 0-4095"),
    "pf": (lambda v: lexical.made_of(v, lexical.ASCII_DIGITS, 1, 2)
           and int(v) <= metadata.MAX_PF_ORDINAL,
           f"is not a PF ordinal 0-{metadata.MAX_PF_ORDINAL}"),
    "address": (_is_pci, "is not a PCI address (DDDD:BB:SS.F)"),
    "guest-address": (_is_pci, "is not a PCI address (DDDD:BB:SS.F)"),
    "replug": (lambda v: v in REPLUG_STATES, f"is not one of {', '.join(REPLUG_STATES)}"),
    "device": (lambda v: v in DEVICE_TYPES, f"is not one of {', '.join(DEVICE_TYPES)}"),
    "bridge": (lambda v: lexical.made_of(v, _BRIDGE_CHARACTERS, 1, 15), "is not a bridge name"),
    **vfsettings.CHECKS,
}


def _pci_from_attributes(attrs: dict[str, str], device: VFDevice) -> PciAddress:
    try:
        return PciAddress.from_xml_attributes(attrs.get("domain"), attrs.get("bus"),
                                              attrs.get("slot"), attrs.get("function"))
    except ValueError as error:
        raise BadDomainXML(problem=f"<{device.kind}> source address: {error}") from None


def mentioned_addresses(xml: bytes) -> set[PciAddress]:
    """Every PCI address the raw bytes of a domain XML mention, read leniently.

    For a guest whose XML vfmigrate rejects: ``<address>`` elements of any kind
    (guest side too) with values read as libvirt reads them and also as plain
    hex, and any ``DDDD:BB:SS.F`` text (metadata entries).  More addresses than
    the guest holds is fine: they only hold back releases and resets, and keep a VF
    from being handed out.  The one reading for XML that :func:`parse` refuses, by the
    hook (libvirt's status files) and by the listener (libvirt's live XML)."""
    import re   # only for XML already refused: the hook's usual path has no re

    address_tag = re.compile(rb"<(?:[\w.-]+:)?address\b[^>]*>", re.IGNORECASE)
    xml_attribute = re.compile(rb"""\b(domain|bus|slot|function)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
    sysfs_address = re.compile(rb"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")
    found: set[PciAddress] = set()
    if isinstance(xml, str):
        xml = xml.encode("utf-8", "surrogateescape")
    for tag in address_tag.finditer(xml):
        values: dict[str, list[int]] = {}
        for match in xml_attribute.finditer(tag.group(0)):
            raw = (match.group(2) if match.group(2) is not None else match.group(3)).strip()
            readings = values.setdefault(match.group(1).decode(), [])
            for base in (0, 16):
                try:
                    readings.append(int(raw.decode("ascii"), base))
                except (ValueError, UnicodeDecodeError):
                    pass
        if "bus" not in values or "slot" not in values:
            continue
        for domain in values.get("domain", [0]):
            for bus in values["bus"]:
                for slot in values["slot"]:
                    for function in values.get("function", [0]):
                        if 0 <= domain <= 0xFFFF and 0 <= bus <= 0xFF and 0 <= slot <= 0x1F \
                                and 0 <= function <= 7:
                            found.add(PciAddress(domain, bus, slot, function))
    for match in sysfs_address.finditer(xml):
        found.add(PciAddress.parse(match.group(0).decode()))
    return found


def canonical_uuid(text: str) -> str:
    digits = text.replace("-", "").lower()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _end_of_start_tag(data: bytes, start: int) -> int:
    """Index just past the ``>`` closing the start tag that begins at ``start`` (a quoted
    attribute value may hold ``>``: the search skips each value whole)."""
    index = start + 1
    while True:
        close = data.find(b">", index)
        if close < 0:
            break
        double, single = data.find(b'"', index, close), data.find(b"'", index, close)
        if double < 0 and single < 0:
            return close + 1
        opening = double if single < 0 or 0 <= double < single else single
        end_of_value = data.find(data[opening:opening + 1], opening + 1)
        if end_of_value < 0:
            break
        index = end_of_value + 1
    raise BadDomainXML(problem="unterminated start tag")


_SPACE = lexical.BYTES_SPACE
_NOT_IN_TAG_NAME = _SPACE + b"/>"
_NOT_IN_NAME = _SPACE + b"=/>"


class _Attribute:
    """One ``name="value"`` of a start tag: ``tag[quote:end]`` is the quoted value."""

    __slots__ = ("name", "quote", "end")

    def __init__(self, name: bytes, quote: int, end: int) -> None:
        self.name, self.quote, self.end = name, quote, end


def _attributes(tag: bytes) -> list[_Attribute]:
    """The attributes of one start tag, in order, read from its start (so that an
    attribute value that looks like attributes is never taken for them): after the
    tag's name, each is ``\\s+ NAME \\s* = \\s* "VALUE"`` (or ``'VALUE'``), where NAME has
    no space, ``=``, ``/`` or ``>``; the first thing that is not ends the list."""
    length = len(tag)
    position = 1
    while position < length and tag[position] not in _NOT_IN_TAG_NAME:
        position += 1
    found = []
    while True:
        name_start = position
        while name_start < length and tag[name_start] in _SPACE:
            name_start += 1
        name_end = name_start
        while name_end < length and tag[name_end] not in _NOT_IN_NAME:
            name_end += 1
        if name_start == position or name_end == name_start:
            return found
        quote = name_end
        while quote < length and tag[quote] in _SPACE:
            quote += 1
        if tag[quote:quote + 1] != b"=":
            return found
        quote += 1
        while quote < length and tag[quote] in _SPACE:
            quote += 1
        if tag[quote:quote + 1] not in (b'"', b"'"):
            return found
        close = tag.find(tag[quote:quote + 1], quote + 1)
        if close < 0:
            return found
        found.append(_Attribute(tag[name_start:name_end], quote, close + 1))
        position = close + 1


def _set_attributes(tag: bytes, values: dict[str, str]) -> bytes:
    """Replace (or add) attribute values in one start tag, keeping its quoting."""
    seen: set[str] = set()
    attributes = _attributes(tag)
    pieces, position = [], 0
    for attribute in attributes:
        name = attribute.name.decode()
        if name not in values:
            continue
        seen.add(name)
        quote = tag[attribute.quote:attribute.quote + 1]
        pieces += [tag[position:attribute.quote], quote, values[name].encode(), quote]
        position = attribute.end
    result = b"".join(pieces) + tag[position:]
    last = attributes[-1].quote if attributes else None
    quote = (tag[last:last + 1] if last is not None else b"'").decode()
    missing = b"".join(f" {name}={quote}{value}{quote}".encode()
                       for name, value in values.items() if name not in seen)
    if missing:
        close = len(result) - (2 if result.endswith(b"/>") else 1)
        while close > 0 and result[close - 1:close].isspace():
            close -= 1
        result = result[:close] + missing + result[close:]
    return result
