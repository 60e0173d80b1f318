"""After an arrival by migration: the saved definition names the VFs the guest holds here.

libvirt passes only the live XML through the hook, so after ``migrate
--persistent`` a guest's saved definition still names the source's VFs.  The
listener rewrites it only on positive evidence: the guest has just arrived (the
arrival event, or :func:`arrived_unchecked` at start), and only for the devices
vfmigrate moved.  The check is recorded in the saved definition's metadata
(:data:`SAVED_NAMESPACE`, this host's UUID), so a later ``virsh edit`` of the admin
stays as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from . import METADATA_NAMESPACE, domxml, metadata
from .config import Config
from .events import Event
from .ledger import Ledger
from .logs import event
from .virt import LibvirtHost

# The listener's journal entries name one logger, whichever module writes them.
log = logging.getLogger("vfmigrate.listener")

# The saved definition's own record: which host checked its VFs after an arrival.
SAVED_NAMESPACE = METADATA_NAMESPACE + "/saved-definition"
SAVED_PREFIX = "vfmigrate-saved"


def arrived_unchecked(host: LibvirtHost, uuid: str, this_host: Callable[[], str]) -> bool:
    """Positive evidence of an arrival whose saved definition was not yet checked
    here: libvirt says the guest runs (or is paused) after an incoming migration,
    and its saved definition carries no record of this host (``this_host()``, its UUID)."""
    if not host.arrived_by_migration(uuid):
        return False
    saved = host.guest(uuid, inactive=True)
    return saved is not None and _checked_on(saved.xml) != this_host()


def fix_persistent_definition(host: LibvirtHost, uuid: str, *, ledger: Ledger, config: Config,
                              this_host: Callable[[], str]) -> bool:
    """After an arrival, make the saved definition name the VFs vfmigrate moved.

    Only the devices the hook moved are rewritten: a travelling device of the live
    XML (teamed or in vfmigrate's metadata) on a VF this guest holds a claim for
    here, matched to its saved device as a metadata entry finds its device (alias, else
    MAC: :func:`vfmigrate.metadata.counterpart`), never by position; every other byte
    stays.
    The saved definition then records that this host (``this_host()``, its UUID)
    checked it.  True if a device was rewritten.
    """
    live = host.guest(uuid)
    if live is None or not live.persistent:
        return False
    saved = host.guest(uuid, inactive=True)
    if saved is None:
        return False
    live_doc = domxml.parse(live.xml, allow_stand_ins=config.allow_stand_ins)
    saved_doc = domxml.parse(saved.xml, allow_stand_ins=config.allow_stand_ins)
    claimed = {claim.vf for claim in ledger.claims_of(uuid)}
    pairs, targets = [], set()
    for device in saved_doc.devices:
        match = metadata.counterpart(device, [d for d in live_doc.travelling_devices
                                              if d.kind == device.kind])
        if match is None or match.address is None or match.address not in claimed \
                or match.address == device.address or id(match) in targets:
            continue
        targets.add(id(match))
        pairs.append((device, match.address))
    if pairs:
        host.define(saved_doc.rewrite(pairs))
        for device, address in pairs:
            event(log, Event.CORRECTED, "guest %s: saved definition now names VF %s for "
                  "%s (was %s), as the migration moved it", live.name, address,
                  device.describe(), device.address, domain=live.name, vf=address)
    host.set_metadata(uuid, f"<checked host={metadata.quoteattr(this_host())}/>",
                      SAVED_NAMESPACE, SAVED_PREFIX, live=False, config=True)
    return bool(pairs)


def _checked_on(saved_xml: bytes) -> str | None:
    """The host whose listener last checked this saved definition after an arrival."""
    import xml.etree.ElementTree as ElementTree
    try:
        root = ElementTree.fromstring(saved_xml)
    except ElementTree.ParseError:
        return None
    checked = root.find(f"metadata/{{{SAVED_NAMESPACE}}}checked")
    return checked.get("host") if checked is not None else None

