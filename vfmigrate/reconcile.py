"""Make the ledger agree with the guests libvirt runs and the VFs sysfs has.

Used by the listener (at start, after every reconnect, and for one guest
after a device was plugged or unplugged) and by ``vfmigrate reconcile``.

Rules, for the live claims of this host:

* a claim whose guest is not running is released, except an ``incoming``
  claim younger than the reservation timeout (its guest may be arriving);
* a claim on a VF its running guest no longer holds (unplugged) is released;
* a VF of a configured network that a running guest holds without a claim
  gets an ``active`` claim;
* a VF that two guests name, or that one guest holds while another's claim
  has it, is a conflict: logged, not changed;
* a claimed VF missing from sysfs is logged as vanished.

Then every released VF that nobody holds and that was not reset since is
reset (MAC zero, VLAN 0, spoof check and trust to host defaults), with the
ledger's write lock held so that no hook can claim it halfway.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable

from . import domxml
from .config import Config
from .errors import BadDomainXML, VfmigrateError
from .events import Event
from .inventory import Inventory
from .ledger import ACTIVE, INCOMING, RELEASED, Claim, Ledger
from .pci import PciAddress
from .virt import Guest


class Correction(namedtuple("Correction", "event vf domain_name domain_uuid network detail claim",
                            defaults=(None,))):
    """One thing reconcile changed (or, dry-run, would change) or reports."""

    __slots__ = ()

    def line(self) -> str:
        who = f"guest {self.domain_name}" if self.domain_name else "no guest"
        return f"{self.event.name.lower():<9} VF {self.vf} ({self.network or '-'}) {who}: {self.detail}"


class GuestVFs(namedtuple("GuestVFs", "uuid name held")):
    """A running guest and the host PCI addresses it holds."""

    __slots__ = ()

    @classmethod
    def from_guest(cls, guest: Guest) -> "GuestVFs":
        parsed = domxml.parse(guest.xml)
        return cls(guest.uuid, guest.name, parsed.held_addresses)


class NoReset:
    """``vf_reset = none``: released VFs are left as they are (and it says so)."""

    def reset(self, vf) -> None:
        return None   # "not reset", as opposed to a list of unsupported settings

    def set_mac(self, vf, mac: str, vlan: int | None = None) -> bool:
        return False  # not set


def vf_resetter(config: Config):
    """What resets released VFs on this host: netlink on the PF, or nothing."""
    if config.vf_reset == "none":
        return NoReset()
    from .vfnetlink import VFNetlink
    return VFNetlink(config.sysfs_root)


class Reconciler:
    def __init__(self, config: Config, ledger: Ledger, *,
                 inventory_factory: Callable[[], Inventory] | None = None,
                 vf_netlink, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.inventory_factory = inventory_factory or (
            lambda: Inventory(config.sysfs_root, config.networks.values()))
        self.vf_netlink = vf_netlink
        self.clock = clock or ledger.clock

    # -- planning -------------------------------------------------------------

    def guests_from(self, guests: Iterable[Guest]) -> tuple[list[GuestVFs], list[Correction]]:
        parsed, problems = [], []
        for guest in guests:
            try:
                parsed.append(GuestVFs.from_guest(guest))
            except BadDomainXML as error:
                problems.append(Correction(Event.CONFLICT, "-", guest.name, guest.uuid, None,
                                           f"cannot read its XML: {error}"))
        return parsed, problems

    def plan(self, guests: list[GuestVFs], *, only_uuid: str | None = None) -> list[Correction]:
        """What to change so the ledger matches ``guests`` (all running guests,
        or, with ``only_uuid``, that guest alone: [] if it is not running)."""
        inventory = self.inventory_factory()
        now = self.clock()
        claims = self.ledger.live_claims()
        by_uuid = {guest.uuid: guest for guest in guests}
        corrections: list[Correction] = []
        holders: dict[PciAddress, list[GuestVFs]] = {}
        for guest in guests:
            for address in guest.held:
                holders.setdefault(address, []).append(guest)

        claim_of = {claim.vf: claim for claim in claims}
        for claim in claims:
            if only_uuid is not None and claim.domain_uuid != only_uuid:
                continue
            guest = by_uuid.get(claim.domain_uuid)
            if guest is None:
                if claim.state == INCOMING and now - claim.updated <= self.config.reservation_timeout:
                    continue
                detail = ("incoming claim expired: the guest never arrived"
                          if claim.state == INCOMING else "the guest is not running")
                corrections.append(_release(claim, Event.EXPIRED if claim.state == INCOMING
                                            else Event.CORRECTED, detail))
            elif claim.vf not in guest.held:
                corrections.append(_release(claim, Event.CORRECTED,
                                            "the guest no longer holds this VF"))
            if inventory.find_vf(claim.vf) is None:
                corrections.append(Correction(Event.VANISHED, claim.vf, claim.domain_name,
                                              claim.domain_uuid, claim.network,
                                              "claimed VF is missing from sysfs", claim))

        for address, named_by in sorted(holders.items()):
            vf = inventory.find_vf(address)
            if vf is None:
                continue
            if only_uuid is not None and all(g.uuid != only_uuid for g in named_by):
                continue
            claim = claim_of.get(address)
            if len(named_by) > 1:
                names = ", ".join(sorted(g.name for g in named_by))
                corrections.append(Correction(Event.CONFLICT, address, names, None, vf.network,
                                              "several running guests name this VF"))
                continue
            guest = named_by[0]
            if claim is None:
                corrections.append(Correction(Event.CORRECTED, address, guest.name, guest.uuid,
                                              vf.network, "held without a claim: claim added"))
            elif claim.domain_uuid != guest.uuid:
                corrections.append(Correction(
                    Event.CONFLICT, address, guest.name, guest.uuid, vf.network,
                    f"held by this guest but claimed by guest '{claim.domain_name}' ({claim.state})"))
        return corrections

    # -- applying -------------------------------------------------------------

    def apply(self, corrections: list[Correction]) -> list[Correction]:
        """Carry out the releases and additions of a plan in one transaction."""
        applied = []
        with self.ledger.transaction():
            live = {claim.id: claim for claim in self.ledger.live_claims()}
            held = {claim.vf for claim in live.values()}
            for correction in corrections:
                claim = correction.claim
                if claim is not None and correction.event is not Event.VANISHED:
                    if claim.id in live:   # not released meanwhile by a hook
                        self.ledger.set_state([claim], RELEASED, f"reconcile: {correction.detail}")
                        held.discard(claim.vf)
                        applied.append(correction)
                elif correction.event is Event.CORRECTED and correction.vf not in held:
                    self.ledger.add(vf=correction.vf, network=correction.network,
                                    domain_uuid=correction.domain_uuid,
                                    domain_name=correction.domain_name, state=ACTIVE,
                                    reason="reconcile: held without a claim")
                    held.add(correction.vf)
                    applied.append(correction)
                elif correction.event in (Event.CONFLICT, Event.VANISHED):
                    applied.append(correction)
        return applied

    def reset_pending(self, *, dry_run: bool = False,
                      holders: set[PciAddress] | None = None) -> list[Correction]:
        """Reset every released VF that nobody holds or claims and that was not reset."""
        inventory = self.inventory_factory()
        done: list[Correction] = []
        seen: set[PciAddress] = set()
        for pending in self.ledger.pending_resets():
            if pending.vf in seen:
                continue
            seen.add(pending.vf)
            vf = inventory.find_vf(pending.vf)
            if dry_run:
                done.append(Correction(Event.RESET, pending.vf, pending.domain_name,
                                       pending.domain_uuid, pending.network,
                                       "would reset MAC, VLAN, spoof check, trust"))
                continue
            with self.ledger.transaction():
                claimed = any(claim.vf == pending.vf for claim in self.ledger.live_claims())
                if claimed or (holders and pending.vf in holders):
                    self.ledger.mark_reset(pending.vf)   # in use again: not ours to reset
                    continue
                if vf is None:
                    self.ledger.mark_reset(pending.vf)
                    done.append(Correction(Event.VANISHED, pending.vf, pending.domain_name,
                                           pending.domain_uuid, pending.network,
                                           "released VF is gone from sysfs: nothing to reset"))
                    continue
                try:
                    unsupported = self.vf_netlink.reset(vf)
                except VfmigrateError as error:   # left pending: retried next time
                    done.append(Correction(Event.RESET, pending.vf, pending.domain_name,
                                           pending.domain_uuid, pending.network,
                                           f"reset failed: {error}"))
                    continue
                self.ledger.mark_reset(pending.vf)
            if unsupported is None:
                detail = "left as it is (vf_reset = none)"
            else:
                note = (f" ({', '.join(unsupported)} not supported by the driver)"
                        if unsupported else "")
                detail = (f"reset on PF {vf.pf} vf {vf.index}: MAC 0, VLAN 0, spoofchk "
                          f"{'on' if self.vf_netlink.spoofchk else 'off'}, trust "
                          f"{'on' if self.vf_netlink.trust else 'off'}{note}")
            done.append(Correction(Event.RESET, pending.vf, pending.domain_name,
                                   pending.domain_uuid, pending.network, detail))
        return done

    def reconcile(self, guests: Iterable[Guest], *, only_uuid: str | None = None,
                  dry_run: bool = False) -> list[Correction]:
        parsed, problems = self.guests_from(guests)
        plan = self.plan(parsed, only_uuid=only_uuid)
        applied = plan if dry_run else self.apply(plan)
        holders = {address for guest in parsed for address in guest.held}
        return problems + applied + self.reset_pending(dry_run=dry_run, holders=holders)


def _release(claim: Claim, event: Event, detail: str) -> Correction:
    return Correction(event, claim.vf, claim.domain_name, claim.domain_uuid, claim.network,
                      detail, claim)
