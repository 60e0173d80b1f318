"""Who holds a VF and what stands in a guest's way: the one rule of the hook's decisions
(:mod:`vfmigrate.claims`) and of reconcile's plan (:mod:`vfmigrate.reconcile`), judged
over a :class:`Snapshot` of the host, which :meth:`Snapshot.of` alone builds.  Both
return what they decide as :class:`Change` records, and :func:`apply` alone writes them
to the ledger: the hook's decisions in the transaction that read the snapshot,
reconcile's plan in one transaction that checks each claim is still as planned.

* A VF is held by the live claim on it and by every running guest whose ``held``
  names it (:mod:`vfmigrate.running`).
* A claim is *stale* when its guest is not running and is not awaited (an incoming
  claim younger than the reservation timeout awaits its guest).
* A *reset claim* (:mod:`vfmigrate.ledger`) gives way to a running guest that holds
  its VF, and to a starting guest that names it once no reset runs on it (a failed or
  abandoned reset): the guest brings its own settings.
* Another guest's claim stands in a guest's way; for a starting guest, so does a
  running guest that holds the VF.
"""

from __future__ import annotations

from .ledger import ACTIVE, INCOMING, RELEASED, RESET_FAILED, RESETTING, Claim, Ledger
from .events import Event
from .records import record

# The hook's started/stopped/release calls import this module and the ledger only:
# these names are for annotations and readers, never needed at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .config import Config
    from .pci import PciAddress
    from .running import RunningGuest

# How long a reset claim in state "resetting" may be before it counts as left behind
# by a process that died mid-reset, beyond the reset timeout and the lock timeout.
RESET_GRACE = 5.0


def reset_in_progress(claim: Claim, now: float, config: Config, lock_timeout: float) -> bool:
    """A reset claim whose reset may still be running (not failed, not abandoned)."""
    return (claim.reset_state == RESETTING
            and now - claim.updated <= config.reset_timeout + lock_timeout + RESET_GRACE)


_RESET_PHRASES = {RESETTING: "its reset was abandoned", RESET_FAILED: "its reset failed"}


def reset_phrase(claim: Claim) -> str:
    """Why a reset claim's VF still waits for its reset, as a clause."""
    return _RESET_PHRASES.get(claim.reset_state, "its reset has not run")


# What applying a change writes to the ledger (Change.write); None: nothing, a report.
RELEASE, END_RESET, ADD, ACTIVATE = "release", "end reset", "add", "activate"


class Change(record("Change", "event vf domain_name domain_uuid network detail claim write "
                              "state reason")):
    """One thing a decision does (or, in a dry run, would do) to a VF's claim, or reports
    about a VF: the kind of event, the VF, its network, the guest, why, and the claim it
    is about (None where there is none); ``write`` what :func:`apply` writes for it
    (``state`` of a claim it adds; ``reason``, the ledger's).  The hook's decisions and
    the listener's reconcile both return these."""

    __slots__ = ()

    def __new__(cls, event, vf, domain_name, domain_uuid, network, detail, claim=None,
                write=None, state=None, reason=None):
        return super().__new__(cls, event, vf, domain_name, domain_uuid, network, detail,
                               claim, write, state, reason)

    @classmethod
    def of(cls, event, claim: Claim, detail: str, write: str | None = None,
           reason: str | None = None) -> Change:
        """About ``claim``: a report, or (``write``) its release, end or activation."""
        return cls(event, claim.vf, claim.domain_name, claim.domain_uuid, claim.network,
                   detail, claim, write, None, reason if reason is not None else detail)

    @classmethod
    def add(cls, event, vf: PciAddress, network: str, domain_uuid: str, domain_name: str,
            state: str, detail: str, reason: str) -> Change:
        """A new claim on ``vf`` for a guest."""
        return cls(event, vf, domain_name, domain_uuid, network, detail, None, ADD, state,
                   reason)

    def subject(self) -> str:
        """What it is about, in words: "VF … of network …, guest …"."""
        parts = []
        if self.vf != "-":
            parts.append(f"VF {self.vf}" + (f" of network {self.network}" if self.network
                                             else ""))
        if self.domain_name:
            parts.append(f"guest {self.domain_name}")
        return ", ".join(parts) or "the ledger"

    def line(self) -> str:
        """One line for a listing (``vfmigrate reconcile``)."""
        subject = " ".join(part for part in (
            f"VF {self.vf}" if self.vf != "-" else "",
            f"({self.network})" if self.network else "",
            f"guest {self.domain_name}" if self.domain_name else "") if part)
        return f"{self.event.name.lower():<9} {subject or 'ledger'}: {self.detail}"


class Snapshot:
    def __init__(self, config: Config, claims: Iterable[Claim],
                 running: Mapping[str, RunningGuest] | Callable[[], Mapping[str, RunningGuest]],
                 now: float, lock_timeout: float) -> None:
        """``claims``: the live claims; ``running``: what running guests hold, by UUID, or
        a function returning that, for a decision that may not need it."""
        self.config = config
        self.claim_of: dict[PciAddress, Claim] = {claim.vf: claim for claim in claims}
        self._running = running
        self._holders: dict[PciAddress, list[RunningGuest]] | None = None
        self.now = now
        self.lock_timeout = lock_timeout

    @classmethod
    def of(cls, config: Config, ledger: Ledger,
           running: Mapping[str, RunningGuest] | Callable[[], Mapping[str, RunningGuest]],
           clock: Callable[[], float], *, strict: bool = True) -> Snapshot:
        """The host now: the ledger's live claims (``strict``: a row that cannot be read
        raises; else it is left out and in ``ledger.bad_rows``) and what its running
        guests hold (the hook reads that from libvirt's status files, the listener from
        libvirt)."""
        return cls(config, ledger.live_claims(strict=strict), running, clock(),
                   ledger.lock_timeout)

    @property
    def running(self) -> Mapping[str, RunningGuest]:
        return self._running() if callable(self._running) else self._running

    @property
    def holders(self) -> dict[PciAddress, list[RunningGuest]]:
        """The running guests that hold each VF."""
        if self._holders is None:
            self._holders = {}
            for guest in self.running.values():
                for address in guest.held:
                    self._holders.setdefault(address, []).append(guest)
        return self._holders

    def _held_by_others(self, address: PciAddress, uuid: str) -> list[RunningGuest]:
        return [guest for guest in self.holders.get(address, ()) if guest.uuid != uuid]

    def is_stale(self, claim: Claim) -> bool:
        awaited = (claim.state == INCOMING
                   and self.now - claim.updated <= self.config.reservation_timeout)
        return not awaited and claim.domain_uuid not in self.running

    def taken_from(self, uuid: str) -> set[PciAddress]:
        """The VFs guest ``uuid`` cannot be given: claimed, or held by another running
        guest."""
        return set(self.claim_of) | {address for address in self.holders
                                     if self._held_by_others(address, uuid)}

    def standing(self, address: PciAddress, uuid: str, *, starting: bool
                 ) -> tuple[Claim | None, Claim | None, str | None]:
        """Guest ``uuid``'s standing on the VF at ``address``, which it holds, or names to
        start with (``starting``): its own claim on the VF, the reset claim that gives way
        to it, and what stands in its way, worded to follow "the VF is"; each None where
        there is none."""
        claim = self.claim_of.get(address)
        if claim is not None and claim.domain_uuid == uuid:
            return claim, None, None
        if claim is not None and not claim.is_reset:
            return None, None, f"claimed by guest '{claim.domain_name}' ({claim.state})"
        if (claim is not None and starting
                and reset_in_progress(claim, self.now, self.config, self.lock_timeout)):
            return None, None, "being reset by vfmigrate right now (retry in a few seconds)"
        others = self._held_by_others(address, uuid) if starting else []
        return None, claim, f"in use by running guest '{others[0].name}'" if others else None


def apply(ledger: Ledger, changes: list[Change], *, as_planned: bool = False) -> list[Change]:
    """Write ``changes`` in order, in the caller's ledger transaction; returns those done,
    each with its claim as it is now (a report is done as it is).

    ``as_planned`` (a plan made outside the transaction, as reconcile's): a change whose
    claim is no longer exactly as planned, or a new claim on a VF claimed meanwhile, is
    left out: a hook changed it, and the next plan will see that."""
    live = {claim.id: claim for claim in ledger.live_claims(strict=False)} \
        if as_planned else {}
    claimed = {claim.vf for claim in live.values()}
    done = []
    for change in changes:
        if change.write is None:
            done.append(change)
            continue
        if change.write == ADD:
            if as_planned and change.vf in claimed:
                continue
            claim = ledger.add(vf=change.vf, network=change.network,
                               domain_uuid=change.domain_uuid, domain_name=change.domain_name,
                               state=change.state, reason=change.reason)
            claimed.add(claim.vf)
        else:
            if as_planned and live.get(change.claim.id) != change.claim:
                continue
            state = ACTIVE if change.write == ACTIVATE else RELEASED
            claim, = ledger.set_state([change.claim], state, change.reason)
            if change.write == END_RESET:
                ledger.mark_reset(claim.vf)
            if state == RELEASED:
                claimed.discard(claim.vf)
        done.append(change._replace(claim=claim))
    return done


def activate(ledger: Ledger, domain_uuid: str, reason: str) -> list[Change]:
    """incoming → active for one guest (``started``, or arrival seen by the listener), in
    one transaction."""
    with ledger.transaction():
        return apply(ledger, [Change.of(Event.ACTIVATED, claim, "is in use", ACTIVATE, reason)
                              for claim in ledger.claims_of(domain_uuid, strict=False)
                              if claim.state == INCOMING])


def release(ledger: Ledger, domain_uuid: str, reason: str,
            only: Callable[[Claim], bool] = lambda claim: True) -> list[Change]:
    """Release a guest's live claims (all of them, or those ``only`` selects), in one
    transaction."""
    with ledger.transaction():
        return apply(ledger, [Change.of(Event.RELEASED, claim, "released", RELEASE, reason)
                              for claim in ledger.claims_of(domain_uuid, strict=False)
                              if only(claim)])
