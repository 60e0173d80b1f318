"""Running guests on this host, from libvirt's status files.

libvirt keeps ``<run_dir>/<name>.xml`` (``<domstatus>``) for every running
guest and removes it when the guest stops.  Reading these files is how the
hook learns which VFs running guests hold without calling libvirt, which a
hook must never do.

A status file is mostly QEMU capabilities and runtime state; only the
guest's ``<devices>`` matter here, so only that element (libvirt's own
output, balanced) is parsed, with the same parser as incoming XML.
"""

from __future__ import annotations

import os
import re
from collections import namedtuple

from . import domxml
from .errors import BadDomainXML

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
            problems.append(f"skipping status file {entry.path}: {error}")
            continue
        guests[guest.uuid] = guest
    return guests


def _guest_from_status(data: bytes) -> RunningGuest:
    domain = _DOMAIN_START.search(data)
    if domain is None:
        raise BadDomainXML(problem="no <domain> element")
    devices_start = data.find(b"<devices>", domain.start())
    head = data[domain.start():devices_start if devices_start >= 0 else len(data)]
    uuid, name = _UUID.search(head), _NAME.search(head)
    if uuid is None or name is None:
        raise BadDomainXML(problem="no <uuid> or <name> before <devices>")
    canonical = domxml.canonical_uuid(uuid.group(1).decode())
    display_name = name.group(1).decode(errors="replace")
    if devices_start < 0:
        return RunningGuest(canonical, display_name, ())
    devices_end = data.find(b"</devices>", devices_start)
    if devices_end < 0:
        raise BadDomainXML(problem="unterminated <devices>")
    devices = data[devices_start:devices_end + len(b"</devices>")]
    if b"hostdev" not in devices:
        return RunningGuest(canonical, display_name, ())
    wrapped = (b"<domain><name>guest</name><uuid>" + uuid.group(1) + b"</uuid>"
               + devices + b"</domain>")
    return RunningGuest(canonical, display_name, tuple(domxml.parse(wrapped).pci_sources))
