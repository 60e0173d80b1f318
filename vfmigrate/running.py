"""Running guests on this host, from libvirt's status files.

libvirt keeps ``<run_dir>/<name>.xml`` (``<domstatus>``) for every running
guest and removes it when the guest stops.  Reading these files is how the
hook learns which VFs running guests hold without calling libvirt, which a
hook must never do.

A status file is mostly QEMU capabilities and runtime state; only the
guest's ``<devices>`` matter here.  A file without the word ``hostdev`` after
``<domain`` costs two regular-expression searches.  Otherwise the domain is
read with expat (no namespaces, so any prefix is just part of a name) only up
to the start of its own ``<devices>``, the direct child of ``<domain>``: a
``<devices>`` of another application inside ``<metadata>`` (which libvirt
writes before the guest's devices) can neither hide nor forge a VF, and the
private ``<devices>`` of libvirt's status data before ``<domain>`` is never
looked at.  That element (to the next ``</devices>``: libvirt's device
elements contain none) is then parsed, inside the domain's own start tag
(which declares its namespace prefixes), with the same parser as incoming
XML, which refuses it if it is not whole.

A status file that cannot be parsed still belongs to a running guest: rather
than skipping it (its VFs would look free), every PCI address it names counts
as held, and the problem is reported.
"""

from __future__ import annotations

import os
import re
from collections import namedtuple
from xml.parsers import expat

from . import domxml
from .errors import BadDomainXML
from .pci import PciAddress

_DOMAIN_START = re.compile(rb"<domain[\s>]")
_UUID = re.compile(rb"<uuid>\s*([0-9a-fA-F-]{32,36})\s*</uuid>")
_NAME = re.compile(rb"<name>\s*([^<]{1,256}?)\s*</name>")


class RunningGuest(namedtuple("RunningGuest", "uuid name pci_sources")):
    __slots__ = ()


def running_guests(run_dir: str | os.PathLike,
                   problems: list[str] | None = None) -> dict[str, RunningGuest]:
    """Running guests by UUID.  Unreadable status files are noted in ``problems``."""
    problems = problems if problems is not None else []
    guests: dict[str, RunningGuest] = {}
    try:
        entries = list(os.scandir(run_dir))
    except FileNotFoundError:
        return guests
    except OSError as error:
        problems.append(f"cannot list libvirt run dir {os.fspath(run_dir)}: {error.strerror}")
        return guests
    for entry in entries:
        if not entry.name.endswith(".xml") or not entry.is_file(follow_symlinks=False):
            continue
        try:
            with open(entry.path, "rb") as status_file:
                data = status_file.read()
            guest = _guest_from_status(data)
        except OSError as error:
            problems.append(f"cannot read {entry.path}: {error.strerror}")
            continue
        except BadDomainXML as error:
            guest = _guest_from_unreadable(data)
            if guest is None:
                problems.append(f"skipping status file {entry.path}: {error}")
                continue
            problems.append(f"cannot read status file {entry.path} of running guest "
                            f"{guest.name} ({error}); every PCI address in it counts as in use")
        guests[guest.uuid] = guest
    return guests


def _guest_from_status(data: bytes) -> RunningGuest:
    domain = _DOMAIN_START.search(data)
    if domain is None:
        raise BadDomainXML(problem="no <domain> element")
    if data.find(b"hostdev", domain.start()) < 0:
        # The cheap path: no VF at all.  libvirt writes <name> and <uuid> first.
        devices_start = data.find(b"<devices>", domain.start())
        head = data[domain.start():devices_start if devices_start >= 0 else len(data)]
        uuid, name = _UUID.search(head), _NAME.search(head)
        if uuid is None or name is None:
            raise BadDomainXML(problem="no <uuid> or <name> before <devices>")
        return RunningGuest(domxml.canonical_uuid(uuid.group(1).decode()),
                            name.group(1).decode(errors="replace"), ())
    scan = _DomainScan(data, domain.start())
    uuid = scan.fields["uuid"].strip()
    name = scan.fields["name"].strip()
    if not domxml._UUID.fullmatch(uuid) or not name:
        raise BadDomainXML(problem="no valid <uuid> or <name> in <domain>")
    canonical = domxml.canonical_uuid(uuid)
    if scan.devices_start is None:
        return RunningGuest(canonical, name, ())
    devices_end = data.find(b"</devices>", scan.devices_start)
    if devices_end < 0:
        raise BadDomainXML(problem="unterminated <devices>")
    devices = data[scan.devices_start:devices_end + len(b"</devices>")]
    if b"hostdev" not in devices:
        return RunningGuest(canonical, name, ())
    wrapped = (data[domain.start():scan.domain_tag_end] + b"<name>guest</name><uuid>"
               + canonical.encode() + b"</uuid>" + devices + b"</domain>")
    return RunningGuest(canonical, name, tuple(domxml.parse(wrapped).pci_sources))


_ADDRESS_TAG = re.compile(rb"<address\s[^>]*>")
_PCI_PART = re.compile(rb"""\s(domain|bus|slot|function)\s*=\s*["']([^"'<>]{1,12})["']""")


def _guest_from_unreadable(data: bytes) -> RunningGuest | None:
    """A running guest whose status file cannot be parsed still holds its VFs: it
    holds every PCI address the file names (more than its VFs, never fewer)."""
    domain = _DOMAIN_START.search(data)
    if domain is None:
        return None
    uuid, name = _UUID.search(data, domain.start()), _NAME.search(data, domain.start())
    if uuid is None or not domxml._UUID.fullmatch(uuid.group(1).decode()):
        return None
    addresses = set()
    for tag in _ADDRESS_TAG.finditer(data, domain.start()):
        parts = {key.decode(): value.decode(errors="replace")
                 for key, value in _PCI_PART.findall(tag.group(0))}
        try:
            addresses.add(PciAddress.from_xml_attributes(parts.get("domain"), parts.get("bus"),
                                                         parts.get("slot"),
                                                         parts.get("function")))
        except ValueError:
            continue
    return RunningGuest(domxml.canonical_uuid(uuid.group(1).decode()),
                        name.group(1).decode(errors="replace") if name else "?",
                        tuple(sorted(addresses)))


class _Done(Exception):
    pass


class _DomainScan:
    """Where the domain's own ``<devices>`` starts, and its ``<name>`` and ``<uuid>``:
    expat over the domain from its start tag, stopping at ``<devices>``."""

    def __init__(self, data: bytes, start: int) -> None:
        self.data = data
        self.start_offset = start
        self.depth = 0
        self.fields = {"name": "", "uuid": ""}
        self.text_field: str | None = None
        self.devices_start: int | None = None
        self.domain_tag_end = start
        parser = expat.ParserCreate(encoding="UTF-8")
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = domxml._unsafe
        parser.EntityDeclHandler = domxml._unsafe
        parser.ExternalEntityRefHandler = domxml._unsafe
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        self.parser = parser
        try:
            parser.Parse(data[start:], True)
        except _Done:
            return
        except expat.ExpatError as error:
            raise BadDomainXML(problem=f"malformed XML at line {error.lineno}, column "
                                       f"{error.offset}: {expat.ErrorString(error.code)}"
                               ) from None
        raise BadDomainXML(problem="unterminated <domain>")

    def _start(self, tag: str, _attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth > domxml.MAX_DEPTH:
            raise BadDomainXML(problem=f"elements are nested deeper than {domxml.MAX_DEPTH} "
                                       "levels")
        if self.depth == 1:
            self.domain_tag_end = domxml._end_of_start_tag(
                self.data, self.start_offset + self.parser.CurrentByteIndex)
        elif self.depth == 2:
            self.text_field = tag if tag in self.fields else None
            if tag == "devices":
                self.devices_start = self.start_offset + self.parser.CurrentByteIndex
                raise _Done

    def _end(self, _tag: str) -> None:
        self.depth -= 1
        self.text_field = None
        if self.depth == 0:
            raise _Done

    def _text(self, text: str) -> None:
        if self.text_field is not None and self.depth == 2:
            self.fields[self.text_field] += text
