"""Running guests on this host, and what they hold, from libvirt's status files.

libvirt keeps ``<run_dir>/<name>.xml`` (``<domstatus>``) for every running
guest and removes it when the guest stops.  Reading these files is how the
hook learns which VFs running guests hold without calling libvirt, which a
hook must never do.

What a running guest holds is :attr:`DomainXML.held_addresses` of its domain:
its devices' PCI sources (a network interface's ``<actual>`` too) and the VFs
its vfmigrate metadata names while they are unplugged.  That is the one
definition of *held*; the listener reads the same from libvirt itself
(:meth:`RunningGuest.from_domain`).

A status file is mostly QEMU capabilities and runtime state around the
guest's ``<domain>``.  A file that names neither ``hostdev`` nor vfmigrate's
metadata after ``<domain`` holds nothing: its ``<name>`` and ``<uuid>`` are
found with two byte searches.  Otherwise the ``<domain>`` element, found with
expat without namespaces (libvirt's private data around it is never read with
namespace rules, so a prefix there cannot break anything), is parsed whole by
:func:`domxml.parse`, the parser of incoming XML: a ``<devices>`` of another
application inside ``<metadata>`` can neither hide nor forge a VF, and the
private ``<devices>`` of libvirt's status data is never looked at.

A status file that cannot be parsed still belongs to a running guest: rather
than skipping it (its VFs would look free), every PCI address it names counts
as held, and the problem is reported.

Parsing is what costs (most of the hook's time with 20 VF guests running), and
libvirt rewrites a status file only when the guest changes.  With a
``cache_path`` the result per file is kept there, keyed by the file's name,
inode, size and modification time in nanoseconds (libvirt writes each version
to a new file and renames it over the old one, so any rewrite changes the
key).  As git does for its index, an entry is trusted only for a file last
modified more than a second before the cache was written: within the file
system's timestamp granularity a rewrite in place could keep the key.  An
unreadable or foreign cache is ignored and written again.
"""

from __future__ import annotations

import os
import time
import pyexpat as expat   # xml.parsers.expat is this module behind two package imports

from . import METADATA_NAMESPACE, domxml, lexical
from .errors import BadDomainXML
from .pci import PciAddress
from .records import record

_SPACE = lexical.BYTES_SPACE
_AFTER_DOMAIN_NAME = b">" + _SPACE   # what ends the name in <domain …> or <domain>
_UUID_CHARACTERS = lexical.HEX_DIGITS | {"-"}
_VF_MARKERS = (b"hostdev", METADATA_NAMESPACE.encode())


class RunningGuest(record("RunningGuest", "uuid name held")):
    """A running guest: its UUID, its name, and the host PCI addresses it holds (a
    frozenset; see the module docstring)."""

    __slots__ = ()

    @classmethod
    def from_domain(cls, parsed: domxml.DomainXML) -> RunningGuest:
        return cls(parsed.uuid, parsed.name, frozenset(parsed.held_addresses))


def _domain_start(data: bytes) -> int:
    """Where ``<domain`` followed by a space or ``>`` starts (``<domain[\\s>]``), or -1."""
    position = data.find(b"<domain")
    while position >= 0:
        following = data[position + 7:position + 8]
        if following and following in _AFTER_DOMAIN_NAME:
            return position
        position = data.find(b"<domain", position + 1)
    return position


def _element_text(data: bytes, tag: bytes, start: int, end: int, accept) -> str | None:
    """The stripped text of the first ``<tag>TEXT</tag>`` in ``data[start:end]`` whose
    text has no ``<`` and that ``accept(text)`` takes, else None."""
    opening, closing = b"<" + tag + b">", b"</" + tag + b">"
    position = data.find(opening, start, end)
    while position >= 0:
        text_start = position + len(opening)
        text_end = data.find(b"<", text_start, end)
        if text_end >= 0 and data.startswith(closing, text_end):
            text = data[text_start:text_end].strip(_SPACE).decode(errors="replace")
            if accept(text):
                return text
        position = data.find(opening, position + 1, end)
    return None


def _uuid_text(text: str) -> bool:
    return lexical.made_of(text, _UUID_CHARACTERS, 32, 36)


def _name_text(text: str) -> bool:
    return 1 <= len(text) <= 256


def running_guests(run_dir: str | os.PathLike, problems: list[str] | None = None, *,
                   allow_stand_ins: bool = False,
                   cache_path: str | None = None) -> dict[str, RunningGuest]:
    """Running guests by UUID.  Unreadable status files are noted in ``problems``.
    ``allow_stand_ins`` as :func:`domxml.parse` takes it (the host's setting)."""
    problems = problems if problems is not None else []
    guests: dict[str, RunningGuest] = {}
    try:
        entries = list(os.scandir(run_dir))
    except FileNotFoundError:
        return guests
    except OSError as error:
        problems.append(f"cannot list libvirt run dir {os.fspath(run_dir)}: {error.strerror}")
        return guests
    header = f"{_CACHE_HEADER} stand-ins={'yes' if allow_stand_ins else 'no'}"
    cached, written = _read_cache(cache_path, header) if cache_path else ({}, 0)
    trusted_before = written - _RACY_NS
    fresh: dict[tuple, RunningGuest] = {}
    parsed_any = False
    for entry in entries:
        if not entry.name.endswith(".xml") or not entry.is_file(follow_symlinks=False):
            continue
        try:
            status = entry.stat(follow_symlinks=False)
        except OSError as error:
            problems.append(f"cannot read {entry.path}: {error.strerror}")
            continue
        key = (entry.name, status.st_ino, status.st_size, status.st_mtime_ns)
        guest = cached.get(key) if status.st_mtime_ns < trusted_before else None
        if guest is None:
            parsed_any = True
            try:
                with open(entry.path, "rb") as status_file:
                    data = status_file.read()
                guest = _guest_from_status(data, allow_stand_ins)
            except OSError as error:
                problems.append(f"cannot read {entry.path}: {error.strerror}")
                continue
            except BadDomainXML as error:
                guest = _guest_from_unreadable(data)
                if guest is None:
                    problems.append(f"skipping status file {entry.path}: {error}")
                    continue
                problems.append(f"cannot read status file {entry.path} of running guest "
                                f"{guest.name} ({error}); every PCI address in it counts "
                                "as in use")
                guests[guest.uuid] = guest
                continue   # not cached: the problem is reported on every read
        fresh[key] = guest
        guests[guest.uuid] = guest
    if cache_path and (parsed_any or fresh != cached):
        _write_cache(cache_path, header, fresh)
    return guests


def status_domain_xml(run_dir: str | os.PathLike, name: str) -> bytes | None:
    """The ``<domain>`` element of running guest ``name``'s status file, as libvirt wrote
    it; None if there is no such file or it has no complete ``<domain>``."""
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        return None
    try:
        with open(os.path.join(run_dir, name + ".xml"), "rb") as status_file:
            data = status_file.read()
    except OSError:
        return None
    start = _domain_start(data)
    if start < 0:
        return None
    try:
        end = _DomainScan(data, start).domain_end
    except BadDomainXML:
        return None
    return data[start:end]


_CACHE_HEADER = "vfmigrate running-guests cache 1"
_RACY_NS = 1_000_000_000


def _read_cache(path: str, header: str) -> tuple[dict[tuple, RunningGuest], int]:
    """The cache's entries and when it was written (ns), or nothing if it is absent,
    unreadable or not this kind."""
    try:
        with open(path, encoding="utf-8") as cache:
            lines = cache.read().split("\n")
        if lines[0] != header or lines[-1] != "" or not lines[1].startswith("written "):
            return {}, 0
        written = int(lines[1][len("written "):])
        entries = {}
        for line in lines[2:-1]:
            name, inode, size, mtime, uuid, guest_name, held = line.split("\t")
            entries[(bytes.fromhex(name).decode(), int(inode), int(size), int(mtime))] = \
                RunningGuest(uuid, bytes.fromhex(guest_name).decode(),
                             frozenset(PciAddress.parse(text) for text in held.split(",")
                                       if text))
        return entries, written
    except (OSError, ValueError, UnicodeError, IndexError):
        return {}, 0


def _write_cache(path: str, header: str, entries: dict[tuple, RunningGuest]) -> None:
    """Replace the cache (a new file renamed over it, mode 0600); a failure only costs
    the next reader a parse."""
    lines = [header, f"written {time.time_ns()}"]
    for (name, inode, size, mtime), guest in sorted(entries.items()):
        lines.append("\t".join((name.encode().hex(), str(inode), str(size), str(mtime),
                                guest.uuid, guest.name.encode().hex(),
                                ",".join(sorted(str(address) for address in guest.held)))))
    temporary = f"{path}.{os.getpid()}"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                             0o600)
        with open(descriptor, "w", encoding="utf-8") as cache:
            cache.write("\n".join(lines) + "\n")
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def _guest_from_status(data: bytes, allow_stand_ins: bool = False) -> RunningGuest:
    domain = _domain_start(data)
    if domain < 0:
        raise BadDomainXML(problem="no <domain> element")
    if not any(data.find(marker, domain) >= 0 for marker in _VF_MARKERS):
        # The cheap path: nothing that can hold a VF.  libvirt writes <name> and <uuid>
        # first.
        devices_start = data.find(b"<devices>", domain)
        head_end = devices_start if devices_start >= 0 else len(data)
        uuid = _element_text(data, b"uuid", domain, head_end, _uuid_text)
        name = _element_text(data, b"name", domain, head_end, _name_text)
        if uuid is None or name is None:
            raise BadDomainXML(problem="no <uuid> or <name> before <devices>")
        return RunningGuest(domxml.canonical_uuid(uuid), name, frozenset())
    end = _DomainScan(data, domain).domain_end
    parsed = domxml.parse(data[domain:end], allow_stand_ins=allow_stand_ins)
    return RunningGuest.from_domain(parsed)


def _guest_from_unreadable(data: bytes) -> RunningGuest | None:
    """A running guest whose status file cannot be parsed still holds its VFs: it
    holds every PCI address the file names (more than its VFs, never fewer)."""
    domain = _domain_start(data)
    if domain < 0:
        return None
    uuid = _element_text(data, b"uuid", domain, len(data), _uuid_text)
    if uuid is None or not lexical.is_uuid(uuid):
        return None
    name = _element_text(data, b"name", domain, len(data), _name_text)
    return RunningGuest(domxml.canonical_uuid(uuid), name or "?",
                        frozenset(domxml.mentioned_addresses(data[domain:])))


class _Done(Exception):
    pass


class _DomainScan:
    """Where the ``<domain>`` element that starts at ``start`` ends: expat without
    namespaces over it, stopping at its end tag."""

    def __init__(self, data: bytes, start: int) -> None:
        self.data = data
        self.start_offset = start
        self.depth = 0
        self.domain_end: int | None = None
        parser = expat.ParserCreate(encoding="UTF-8")
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = domxml._unsafe
        parser.EntityDeclHandler = domxml._unsafe
        parser.ExternalEntityRefHandler = domxml._unsafe
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
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

    def _start(self, _tag: str, _attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth > domxml.MAX_DEPTH:
            raise BadDomainXML(problem=f"elements are nested deeper than {domxml.MAX_DEPTH} "
                                       "levels")

    def _end(self, _tag: str) -> None:
        self.depth -= 1
        if self.depth == 0:
            end_tag = self.start_offset + self.parser.CurrentByteIndex
            close = self.data.find(b">", end_tag)
            self.domain_end = close + 1 if close >= 0 else len(self.data)
            raise _Done
