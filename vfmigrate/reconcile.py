"""Make the ledger agree with the guests libvirt runs and the VFs sysfs has.

Used by the listener (at start, after every reconnect, and for one guest
after a device was plugged or unplugged) and by ``vfmigrate reconcile``.

**Never harm a running guest.**  Reconcile releases a claim, or resets a VF,
only on positive evidence: libvirt reports the guest shut off or migrated out
(it is not in the list of running guests), or no running guest's live XML, as
libvirt reports it, names that VF.  Whatever reconcile cannot read is no
evidence:

* a running guest whose live XML vfmigrate rejects (a newer vfmigrate's
  metadata, an admin's typo, over the size limit …) is *running, unknown*: its
  claims stay, and so does every claim on, and every pending reset of, a VF
  that its claims name or that its raw XML mentions anywhere (any PCI address
  in any ``<address>`` element or in sysfs form, read leniently: holding back
  a reset too many costs nothing, one too few may cut a guest off).  One
  warning per such guest says what was wrong;
* a ledger row that cannot be read may name any VF: it is reported and, while
  a *live* one is there, no VF is reset;
* a claim that appeared or changed after the guest list was taken proves
  nothing about that list: a guest starting meanwhile (its ``prepare`` hook
  claimed a VF) is not in it.  Callers that pass the guest list as a function,
  or a :meth:`Reconciler.snapshot` taken before listing (``claims_before``),
  get releases only of claims older than the list; :meth:`Reconciler.apply`
  releases a claim only if it is still exactly as planned.

Rules, for the live claims of this host (who holds a VF and what conflicts is
:mod:`vfmigrate.ownership`'s rule, the hook's too):

* a claim whose guest is not running is released, except an ``incoming``
  claim younger than the reservation timeout (its guest may be arriving);
* a claim on a VF its running guest no longer holds (unplugged) is released;
* a VF of a configured network that a running guest holds without a claim
  gets an ``active`` claim;
* a VF that two guests name, or that one guest holds while another's claim
  has it, is a conflict: logged, not changed;
* a claimed VF missing from sysfs is logged as vanished.

Then every released VF that nobody holds and that was not reset since is
reset (MAC zero, VLAN 0, spoof check and trust to host defaults).  The reset
runs *outside* the ledger's write lock, so a slow or hung PF driver never
keeps hooks from claiming other VFs: a short transaction first gives the VF a
*reset claim* (see :mod:`vfmigrate.ledger`), so no hook hands it out
meanwhile; the netlink call runs on a worker thread that reconcile waits for
at most ``reset_timeout`` seconds; a second short transaction records the
outcome.  After a failure or a timeout the reset claim stays (the VF is out
of the free pool and ``vfmigrate status`` lists it) and the reset is retried
at later reconciles; a reset claim left by a process that died mid-reset is
taken over once it is older than the reset timeout plus the lock timeout.  A
hung call is never started twice: while it hangs, the other VFs of its PF
wait too.
"""

from __future__ import annotations

import logging
import threading
from collections import namedtuple
from collections.abc import Callable, Iterable

from . import domxml
from .config import Config
from .errors import BadDomainXML, VfmigrateError
from .events import Event
from .inventory import VF, Inventory
from .ledger import ACTIVE, INCOMING, RELEASED, RESET_FAILED, RESETTING, Claim, Ledger
from .ownership import RELEASE, Change, Snapshot, apply, reset_in_progress, reset_phrase
from .pci import PciAddress
from .running import RunningGuest
from .virt import Guest

log = logging.getLogger(__name__)


def _held_by(guest: Guest, *, allow_stand_ins: bool = False) -> RunningGuest:
    """What a running guest holds, read from libvirt (the hook reads the same from
    libvirt's status files: :mod:`vfmigrate.running`)."""
    return RunningGuest.from_domain(domxml.parse(guest.xml, allow_stand_ins=allow_stand_ins))


class UnknownGuest(namedtuple("UnknownGuest", "uuid name mentioned problem")):
    """A running guest whose XML vfmigrate rejects: *running, unknown*.

    ``mentioned``: every PCI address its raw XML mentions (a superset of what it
    may hold); ``problem``: why its XML was rejected."""

    __slots__ = ()

    @classmethod
    def from_guest(cls, guest: Guest, problem: str) -> "UnknownGuest":
        return cls(guest.uuid, guest.name, frozenset(domxml.mentioned_addresses(guest.xml)),
                   problem)


class ClaimsBefore(frozenset):
    """The live claims as they were before the guest list was taken: (id, updated)."""


class NoReset:
    """``vf_reset = none``: released VFs are left as they are (and it says so)."""

    def reset(self, vf) -> None:
        return None   # "not reset", as opposed to a list of unsupported settings

    def set_mac(self, vf, mac: str, vlan: int | None = None) -> bool:
        return False  # not set

    def set_vlan_priority(self, vf, vlan: int, qos: int) -> bool:
        return False  # not set

    def read_settings(self, vf) -> None:
        return None   # not read: VF settings are neither recorded nor applied


def vf_resetter(config: Config):
    """What resets released VFs on this host: netlink on the PF, or nothing."""
    if config.vf_reset == "none":
        return NoReset()
    from .vfnetlink import VFNetlink
    return VFNetlink(config.sysfs_root)


def _release(event, claim: Claim, detail: str) -> Change:
    """A plan's release of ``claim``; the ledger's reason says reconcile found it."""
    return Change.of(event, claim, detail, RELEASE, f"reconcile: {detail}")


class _ResetOutcome(namedtuple("_ResetOutcome", "unsupported failure")):
    __slots__ = ()


class Reconciler:
    def __init__(self, config: Config, ledger: Ledger, *,
                 inventory_factory: Callable[[], Inventory] | None = None,
                 vf_netlink, clock: Callable[[], float] | None = None,
                 reset_timeout: float | None = None) -> None:
        """``vf_netlink`` resets VFs (``reset(vf)``); ``reset_timeout`` (seconds, default
        the config's ``reset_timeout``) bounds the wait for one reset."""
        self.config = config
        self.ledger = ledger
        self.inventory_factory = inventory_factory or (
            lambda: Inventory.of(config))
        self.vf_netlink = vf_netlink
        self.clock = clock or ledger.clock
        self.reset_timeout = (reset_timeout if reset_timeout is not None
                              else config.reset_timeout)
        self._hung: dict[PciAddress, tuple[threading.Thread, PciAddress, float]] = {}

    # -- planning -------------------------------------------------------------

    def claims_before(self) -> ClaimsBefore:
        """The live claims now: take them *before* listing the guests (``plan``'s
        ``claims_before``)."""
        return ClaimsBefore((claim.id, claim.updated)
                            for claim in self.ledger.live_claims(strict=False))

    def read_guests(self, guests: Iterable[Guest]
                    ) -> tuple[list[RunningGuest], list[UnknownGuest], list[Change]]:
        """The running guests whose XML can be read, those that cannot (running,
        unknown), and one warning for each of the latter."""
        parsed, unknown, problems = [], [], []
        for guest in guests:
            try:
                parsed.append(_held_by(
                    guest, allow_stand_ins=self.config.allow_stand_ins))
            except BadDomainXML as error:
                unknown.append(UnknownGuest.from_guest(guest, str(error)))
                problems.append(Change(
                    Event.CONFLICT, "-", guest.name, guest.uuid, None,
                    f"cannot read its XML: {error}; it is running, so its VFs stay claimed "
                    "and no VF it may hold is released or reset"))
        return parsed, unknown, problems

    def guests_from(self, guests: Iterable[Guest]) -> tuple[list[RunningGuest], list[Change]]:
        parsed, _, problems = self.read_guests(guests)
        return parsed, problems

    def plan(self, guests: list[RunningGuest], *, only_uuid: str | None = None,
             unknown: Iterable[UnknownGuest] = (),
             claims_before: ClaimsBefore | None = None) -> list[Change]:
        """What to change so the ledger matches ``guests`` (all running guests,
        or, with ``only_uuid``, that guest alone: [] if it is not running).

        ``unknown``: running guests whose XML cannot be read (their claims and the
        VFs they may hold are left alone).  ``claims_before``: a snapshot taken before
        the guest list; only claims in it, unchanged, are released."""
        inventory = self.inventory_factory()
        self.ledger.bad_rows = {}
        snapshot = Snapshot.of(self.config, self.ledger, {guest.uuid: guest for guest in guests},
                               self.clock, strict=False)
        bad_rows = dict(self.ledger.bad_rows)
        unknown = list(unknown)
        unknown_uuids = {guest.uuid for guest in unknown}
        maybe_held = _maybe_held(unknown, snapshot.claim_of.values())
        corrections: list[Change] = []
        if only_uuid is None:
            for row, problem in sorted(bad_rows.items()):
                corrections.append(Change(
                    Event.CONFLICT, "-", None, None, None,
                    f"ledger {self.ledger.path} row {row} cannot be read ({problem}); no VF "
                    "is reset and none handed out until it is corrected or deleted"))

        def provable(claim: Claim) -> bool:
            """Whether the guest list can tell about this claim (see the module docstring)."""
            return (claim.vf not in maybe_held
                    and (claims_before is None or (claim.id, claim.updated) in claims_before))

        for claim in snapshot.claim_of.values():
            if claim.is_reset or only_uuid is not None and claim.domain_uuid != only_uuid:
                continue   # a reset claim ends below if a running guest holds its VF
            if claim.domain_uuid in unknown_uuids:
                continue   # running, unknown: its claims stay
            guest = snapshot.running.get(claim.domain_uuid)
            if snapshot.is_stale(claim):
                if provable(claim):
                    detail = ("incoming claim expired: the guest never arrived"
                              if claim.state == INCOMING else "the guest is not running")
                    corrections.append(_release(Event.EXPIRED if claim.state == INCOMING
                                                else Event.CORRECTED, claim, detail))
            elif guest is not None and claim.vf not in guest.held and provable(claim):
                corrections.append(_release(Event.CORRECTED, claim,
                                            "the guest no longer holds this VF"))
            if inventory.find_vf(claim.vf) is None:
                corrections.append(Change.of(Event.VANISHED, claim,
                                             "claimed VF is missing from sysfs"))

        for address, named_by in sorted(snapshot.holders.items()):
            if only_uuid is not None and all(g.uuid != only_uuid for g in named_by):
                continue
            guest = named_by[0]
            own, yielding, obstacle = snapshot.standing(address, guest.uuid, starting=False)
            if yielding is not None:
                corrections.append(_release(Event.CORRECTED, yielding, (
                    f"no longer waits for a reset ({reset_phrase(yielding)}): running guest "
                    f"'{guest.name}' holds this VF")))
            vf = inventory.find_vf(address)
            if vf is None:
                continue
            if len(named_by) > 1:
                names = ", ".join(sorted(g.name for g in named_by))
                corrections.append(Change(Event.CONFLICT, address, names, None, vf.network,
                                          "several running guests name this VF"))
            elif obstacle is not None:
                corrections.append(Change(Event.CONFLICT, address, guest.name, guest.uuid,
                                          vf.network, f"held by this guest but {obstacle}"))
            elif own is None:
                corrections.append(Change.add(Event.CORRECTED, address, vf.network, guest.uuid,
                                              guest.name, ACTIVE,
                                              "held without a claim: claim added",
                                              "reconcile: held without a claim"))
        return corrections

    # -- applying -------------------------------------------------------------

    def apply(self, corrections: list[Change]) -> list[Change]:
        """Carry out a plan in one transaction (:func:`vfmigrate.ownership.apply`).

        A claim is released only if it is still exactly as planned, and one is added
        only on a VF still unclaimed: what a hook changed meanwhile (activated, taken
        over, released, claimed) is left to the next reconcile."""
        with self.ledger.transaction():
            return apply(self.ledger, corrections, as_planned=True)

    # -- resets ---------------------------------------------------------------

    def reset_pending(self, *, dry_run: bool = False,
                      holders: set[PciAddress] | None = None,
                      maybe_held: set[PciAddress] | None = None) -> list[Change]:
        """Reset every released VF that nobody holds or claims and that was not reset.

        ``holders``: VFs running guests hold (their resets are not owed any more);
        ``maybe_held``: VFs a running guest whose XML cannot be read may hold (their
        resets wait).  Each reset runs outside the ledger lock under a reset claim."""
        holders = holders or set()
        maybe_held = maybe_held or set()
        if self.ledger.unreadable_rows(live_only=True):
            return []   # a live row we cannot read may name any VF: reported by plan()
        inventory = self.inventory_factory()
        done: list[Change] = []
        pending: dict[PciAddress, Claim] = {}
        for claim in self.ledger.pending_resets(strict=False):
            pending.setdefault(claim.vf, claim)
        for claim in self.ledger.live_claims(strict=False):
            if claim.is_reset:
                pending.setdefault(claim.vf, claim)
        for address, first in pending.items():
            hung = self._hung.get(address)
            if hung is not None and hung[0].is_alive():
                done.append(_reset_correction(first, (
                    f"reset failed: the reset started {self.clock() - hung[2]:.0f} s ago still "
                    "hangs in the PF driver; the VF stays out of use")))
                continue
            self._hung.pop(address, None)
            vf = inventory.find_vf(address)
            if vf is not None and self._pf_hangs(vf.pf):
                continue   # its PF hangs on another VF's reset: it waits its turn
            if dry_run:
                if address not in holders and address not in maybe_held:
                    done.append(_reset_correction(first, "would reset MAC, VLAN, spoof check, "
                                                         "trust"))
                continue
            started = self._start_reset(address, vf, holders, maybe_held, done)
            if started is None:
                continue
            outcome = self._run_reset(vf)
            done.append(self._finish_reset(started, vf, outcome))
        return done

    def _pf_hangs(self, pf: PciAddress) -> bool:
        return any(thread.is_alive() and hung_pf == pf
                   for thread, hung_pf, _ in self._hung.values())

    def _start_reset(self, address: PciAddress, vf: VF | None, holders: set[PciAddress],
                     maybe_held: set[PciAddress], done: list[Change]) -> Claim | None:
        """In one short transaction: the reset claim to reset ``address`` under, or None
        if it is not to be reset now (in use, held back, gone, being reset elsewhere)."""
        with self.ledger.transaction():
            now = self.clock()
            claim = next((c for c in self.ledger.live_claims(strict=False) if c.vf == address),
                         None)
            pending = [c for c in self.ledger.pending_resets(strict=False) if c.vf == address]
            if claim is not None and not claim.is_reset:
                self.ledger.mark_reset(address)   # in use again: not ours to reset
                return None
            if address in holders:
                if claim is not None:
                    self.ledger.set_state([claim], RELEASED, "reset given up: a running guest "
                                                            "holds the VF")
                self.ledger.mark_reset(address)
                return None
            if address in maybe_held:
                return None   # a running guest whose XML cannot be read may hold it
            if vf is None:
                if claim is not None:
                    self.ledger.set_state([claim], RELEASED, "reset given up: the VF is gone")
                self.ledger.mark_reset(address)
                about = pending[0] if pending else claim
                done.append(Change(Event.VANISHED, address, about.domain_name,
                                   about.domain_uuid, about.network,
                                   "released VF is gone from sysfs: nothing to reset"))
                return None
            reason = f"{RESETTING}: for at most {self.reset_timeout:g} s since {now:.0f}"
            if claim is None:
                if not pending:
                    return None   # reset meanwhile by another process
                claim = self.ledger.add_reset_claim(address, vf.network, reason)
            elif reset_in_progress(claim, now, self.config, self.ledger.lock_timeout):
                return None   # another process is resetting it right now
            else:   # failed, or left behind by a process that died mid-reset: retry
                [claim] = self.ledger.set_state([claim], ACTIVE, reason)
            return claim

    def _run_reset(self, vf: VF) -> _ResetOutcome:
        """``vf_netlink.reset(vf)`` on a worker thread, waited for ``reset_timeout`` s."""
        result: dict[str, object] = {}

        def work() -> None:
            try:
                result["unsupported"] = self.vf_netlink.reset(vf)
            except VfmigrateError as error:
                result["failure"] = str(error)
            except Exception as error:   # a bug in the resetter: the VF stays out of use
                log.exception("resetting VF %s failed", vf.address)
                result["failure"] = f"internal error: {type(error).__name__}: {error}"

        started = self.clock()
        thread = threading.Thread(target=work, name=f"vf-reset-{vf.address}", daemon=True)
        thread.start()
        thread.join(self.reset_timeout)
        if thread.is_alive():
            self._hung[vf.address] = (thread, vf.pf, started)
            return _ResetOutcome(None, f"no answer from the PF driver within "
                                       f"{self.reset_timeout:g} s (reset_timeout)")
        if "failure" in result:
            return _ResetOutcome(None, result["failure"])
        return _ResetOutcome(result.get("unsupported"), None)

    def _finish_reset(self, claim: Claim, vf: VF, outcome: _ResetOutcome) -> Change:
        """In one short transaction: record the outcome under the reset claim."""
        if outcome.failure is not None:
            detail = f"{RESET_FAILED}: {outcome.failure}; the VF stays out of use until a reset succeeds"
        elif outcome.unsupported is None:
            detail = "left as it is (vf_reset = none)"
        else:
            note = (f" ({', '.join(outcome.unsupported)} not supported by the driver)"
                    if outcome.unsupported else "")
            detail = (f"reset on PF {vf.pf} vf {vf.index}: MAC 0, VLAN 0, spoofchk "
                      f"{'on' if self.vf_netlink.spoofchk else 'off'}, trust "
                      f"{'on' if self.vf_netlink.trust else 'off'}{note}")
        with self.ledger.transaction():
            current = next((c for c in self.ledger.live_claims(strict=False)
                            if c.id == claim.id), None)
            if current == claim:   # else a guest took the VF over meanwhile: its business
                if outcome.failure is not None:
                    self.ledger.set_state([claim], ACTIVE, detail)
                else:
                    self.ledger.set_state([claim], RELEASED, "reset done")
                    self.ledger.mark_reset(vf.address)
        about = self._last_owner(vf.address) or claim
        return Change(Event.RESET, vf.address, about.domain_name, about.domain_uuid,
                      about.network, detail)

    def _last_owner(self, address: PciAddress) -> Claim | None:
        """The guest claim the VF was last released from (for the report)."""
        for claim in self.ledger.history(1000, strict=False):
            if claim.vf == address and not claim.is_reset:
                return claim
        return None

    def reconcile(self, guests: Iterable[Guest] | Callable[[], Iterable[Guest]], *,
                  only_uuid: str | None = None, dry_run: bool = False,
                  claims_before: ClaimsBefore | None = None) -> list[Change]:
        """Plan, apply, reset.  ``guests``: the running guests as libvirt lists them, or
        a function listing them (then the claims are snapshot first: exact)."""
        if callable(guests):
            claims_before = self.claims_before()
            guests = guests()
        parsed, unknown, problems = self.read_guests(guests)
        plan = self.plan(parsed, only_uuid=only_uuid, unknown=unknown,
                         claims_before=claims_before)
        applied = plan if dry_run else self.apply(plan)
        holders = {address for guest in parsed for address in guest.held}
        maybe_held = _maybe_held(unknown, self.ledger.live_claims(strict=False) if unknown
                                 else ())
        return problems + applied + self.reset_pending(dry_run=dry_run, holders=holders,
                                                       maybe_held=maybe_held)


def _maybe_held(unknown: list[UnknownGuest], claims: Iterable[Claim]) -> set[PciAddress]:
    """The VFs running guests whose XML cannot be read may hold: every PCI address their
    XML mentions, and the VFs of their claims."""
    uuids = {guest.uuid for guest in unknown}
    return ({address for guest in unknown for address in guest.mentioned}
            | {claim.vf for claim in claims if claim.domain_uuid in uuids})


def _reset_correction(claim: Claim, detail: str) -> Change:
    return Change(Event.RESET, claim.vf, claim.domain_name, claim.domain_uuid,
                  claim.network, detail)
