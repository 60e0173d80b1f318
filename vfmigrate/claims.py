"""Claim decisions: which local VF a guest gets, and when a claim ends.

Shared by the hook (which may not call libvirt) and the listener/CLI.  Every
method runs its reads and writes in one ledger transaction, so a decision is
all-or-nothing and concurrent hook processes cannot pick the same VF.

Each method returns what it changed as :class:`Change` records; the caller
logs them only after the transaction committed, so the journal never tells of
a claim that was rolled back.

VFs under a *reset claim* (vfmigrate resetting them, or a reset that failed:
see :mod:`vfmigrate.ledger`) are claimed, so no selection hands them out.  A
guest that starts naming one takes it over only once no reset is running on
it (a failed or abandoned reset): its own settings come with it.  A
``managed='no'`` device gets only a VF already bound to vfio-pci, because
libvirt will not rebind it.  A ledger row that cannot be read refuses every
decision that hands out a VF (it may name any VF); releases still work.
"""

from __future__ import annotations

from .config import Config
from .domxml import DomainXML, VFDevice
from .errors import (NoFreeVF, Refused, UnknownNetwork, UnlabelledDevice, VFTaken,
                     VfmigrateError, counted)
from .inventory import VF, Inventory
from .ledger import ACTIVE, INCOMING, RELEASED, RESETTING, Claim, Ledger
from .events import Event
from .pci import PciAddress
from .records import record
from .running import RunningGuest


class NoNetworks(Refused):
    msg_fmt = ("guest '{domain}' holds {devices} but {config_path} defines "
               "no [network NAME] section; add the networks of this host")

    def __init__(self, *, domain: str, count: int, config_path: object) -> None:
        super().__init__(domain=domain, count=count, config_path=config_path,
                         devices=counted(count, "VF device"))


class AlreadyRunningHere(Refused):
    msg_fmt = "guest '{domain}' ({uuid}) is already running on this host"


class NoVfioVF(Refused):
    msg_fmt = ("no free VF bound to vfio-pci in network '{network}' on this host for "
               "{device} of guest '{domain}' (managed='no': libvirt will not bind it); "
               "bind free VFs to vfio-pci, or make the device managed='yes'")


VFIO_DRIVER = "vfio-pci"
# How long a reset claim in state "resetting" may be before it counts as left behind
# by a process that died mid-reset, beyond the reset timeout and the lock timeout.
RESET_GRACE = 5.0


def reset_in_progress(claim: Claim, now: float, config: Config, lock_timeout: float) -> bool:
    """A reset claim whose reset may still be running (not failed, not abandoned)."""
    return (claim.reset_state == RESETTING
            and now - claim.updated <= config.reset_timeout + lock_timeout + RESET_GRACE)


def awaits_its_guest(claim: Claim, now: float, config: Config) -> bool:
    """An incoming claim younger than the reservation timeout: its guest may still be
    arriving, running or not.  (The one expiry rule of the hook and of reconcile.)"""
    return claim.state == INCOMING and now - claim.updated <= config.reservation_timeout


class Change(record("Change", "event vf domain_name domain_uuid network detail claim")):
    """One thing a decision did (or, in a dry run, would do) to a VF's claim, or reports
    about a VF: the kind of event, the VF, its network, the guest, why, and the claim as
    it is now (None where there is none).  The hook's decisions and the listener's
    reconcile both return these."""

    __slots__ = ()

    def __new__(cls, event, vf, domain_name, domain_uuid, network, detail, claim=None):
        return super().__new__(cls, event, vf, domain_name, domain_uuid, network, detail,
                               claim)

    @classmethod
    def of(cls, event, claim: Claim, detail: str) -> Change:
        return cls(event, claim.vf, claim.domain_name, claim.domain_uuid, claim.network,
                   detail, claim)

    def line(self) -> str:
        """One line for a listing (``vfmigrate reconcile``)."""
        who = f"guest {self.domain_name}" if self.domain_name else "no guest"
        return (f"{self.event.name.lower():<9} VF {self.vf} ({self.network or '-'}) {who}: "
                f"{self.detail}")


class Assignment(record("Assignment", "device vf claim")):
    """The local VF given to one travelling VFDevice, and its claim."""

    __slots__ = ()


class Claims:
    def __init__(self, config: Config, ledger: Ledger, inventory: Inventory,
                 running: Mapping[str, RunningGuest] | Callable[[], Mapping[str, RunningGuest]],
                 clock: Callable[[], float]) -> None:
        """``running`` may be a function: it is then called once, when first needed
        (reading every running guest's status file is the costly part of a hook call,
        and releasing or activating claims does not need it)."""
        self.config = config
        self.ledger = ledger
        self.inventory = inventory
        self._running = running
        self.clock = clock

    @property
    def running(self) -> Mapping[str, RunningGuest]:
        if callable(self._running):
            self._running = self._running()
        return self._running

    # -- helpers ------------------------------------------------------------

    def network_for(self, device: VFDevice, domain: DomainXML) -> str:
        networks = self.config.networks
        if device.network is not None:
            if device.network not in networks:
                raise UnknownNetwork(domain=domain.name, network=device.network,
                                     device=device.describe(),
                                     configured=", ".join(sorted(networks)) or "none",
                                     config_path=self.config.path)
            return device.network
        if len(networks) == 1:
            return next(iter(networks))
        if not networks:
            raise NoNetworks(domain=domain.name, count=len(domain.travelling_devices),
                             config_path=self.config.path)
        raise UnlabelledDevice(device=device.describe(), domain=domain.name,
                               count=len(networks), configured=", ".join(sorted(networks)))

    def is_expired(self, claim: Claim, now: float) -> bool:
        """An incoming claim whose guest never arrived within the reservation timeout."""
        return (claim.state == INCOMING and not awaits_its_guest(claim, now, self.config)
                and claim.domain_uuid not in self.running)

    def _in_use_by_running(self, exclude_uuid: str) -> dict[PciAddress, RunningGuest]:
        return {address: guest for guest in self.running.values()
                if guest.uuid != exclude_uuid for address in guest.held}

    def _expire(self, claims: list[Claim], now: float, changes: list[Change]) -> list[Claim]:
        """Release expired claims; return the claims that stay live."""
        expired = [claim for claim in claims if self.is_expired(claim, now)]
        for claim in self.ledger.set_state(expired, RELEASED, "expired: the guest never arrived"):
            changes.append(Change.of(Event.EXPIRED, claim, "released: the guest it was "
                                                     "reserved for never arrived"))
        return [claim for claim in claims if claim not in expired]

    # -- decisions ----------------------------------------------------------

    def _usable(self, vf: VF, device: VFDevice) -> bool:
        """Present, and bound to vfio-pci if libvirt will not bind it (managed='no').

        ``managed`` comes from domxml (True/False; None where unknown, also from a
        domxml that does not read it yet): unknown keeps the old choice."""
        if not self.inventory.present(vf):
            return False
        if device.managed is False:
            return self.inventory.details(vf.address).driver == VFIO_DRIVER
        return True

    def _keep_address(self, device: VFDevice, network: str,
                      taken: set[PciAddress]) -> VF | None:
        """The device's current address, if it is a free VF of the network here too."""
        if device.address is None or device.address in taken:
            return None
        vf = self.inventory.find_vf(device.address)
        if vf is None or vf.network != network or not self._usable(vf, device):
            return None
        return vf

    def reserve_incoming(self, domain: DomainXML, operation: str
                         ) -> tuple[list[Assignment], list[Change]]:
        """Claim a free local VF for every travelling device (``migrate``/``restore``).

        All or nothing: if one device cannot get a VF, nothing is claimed.
        """
        if domain.uuid in self.running:
            raise AlreadyRunningHere(domain=domain.name, uuid=domain.uuid)
        changes: list[Change] = []
        assignments: list[Assignment] = []
        with self.ledger.transaction():
            now = self.clock()
            live = self.ledger.live_claims()
            stale_own = [claim for claim in live if claim.domain_uuid == domain.uuid]
            for claim in self.ledger.set_state(stale_own, RELEASED,
                                               f"superseded by a new {operation}"):
                changes.append(Change.of(Event.RELEASED, claim, "released: the guest's earlier "
                                                      "reservation is superseded"))
            live = self._expire([c for c in live if c not in stale_own], now, changes)
            taken = {claim.vf for claim in live} | set(self._in_use_by_running(domain.uuid))
            cursors: dict[str, Iterator[VF]] = {}
            for device in domain.travelling_devices:
                network = self.network_for(device, domain)
                choice = self._keep_address(device, network, taken)
                if choice is None and device.managed is False:
                    # Its own pass: VFs it skips stay for the devices after it.
                    choice = next((vf for vf in self.inventory.iter_vfs(network)
                                   if vf.address not in taken and self._usable(vf, device)),
                                  None)
                    if choice is None:
                        raise NoVfioVF(network=network, device=device.describe(),
                                       domain=domain.name)
                if choice is None:
                    cursor = cursors.setdefault(network, self.inventory.iter_vfs(network))
                    choice = next((vf for vf in cursor if vf.address not in taken
                                   and self.inventory.present(vf)), None)
                if choice is None:
                    vfs = self.inventory.vfs_of_network(network)
                    given = {a.vf.address for a in assignments}
                    own = sum(1 for vf in vfs if vf.address in given)
                    unavailable = sum(1 for vf in vfs if vf.address in taken) - own
                    raise NoFreeVF(network=network, total=len(vfs), unavailable=unavailable,
                                   own=own, absent=len(vfs) - unavailable - own)
                claim = self.ledger.add(vf=choice.address, network=network,
                                        domain_uuid=domain.uuid, domain_name=domain.name,
                                        state=INCOMING,
                                        reason=f"{operation}: for {device.describe()}")
                taken.add(choice.address)
                assignments.append(Assignment(device, choice, claim))
                changes.append(Change.of(Event.RESERVED, claim,
                                      f"reserved for its {device.describe(' on the source')}"))
        return assignments, changes

    def claim_for_start(self, domain: DomainXML) -> list[Change]:
        """Claim, as active, every VF of ours the guest names (``prepare``/``start``).

        A guest arriving by migration already holds incoming claims for these
        VFs: they are confirmed as they are.  A VF that another guest holds
        refuses the start.
        """
        changes: list[Change] = []
        with self.ledger.transaction():
            now = self.clock()
            live = self._expire(self.ledger.live_claims(), now, changes)
            holders = {claim.vf: claim for claim in live}
            in_use = self._in_use_by_running(domain.uuid)
            for device in domain.devices:
                vf = self.inventory.find_vf(device.address) if device.address else None
                if vf is None:
                    continue
                holder = holders.get(vf.address)
                if holder is not None and holder.domain_uuid == domain.uuid:
                    continue
                if holder is not None and holder.is_reset:
                    if reset_in_progress(holder, now, self.config, self.ledger.lock_timeout):
                        raise VFTaken(vf=vf.address, domain=domain.name,
                                      holder="being reset by vfmigrate right now (retry in a "
                                             "few seconds)")
                    # A failed or abandoned reset: the guest brings its own settings.
                    changes.extend(self._end_reset_claim(holder, f"guest '{domain.name}' "
                                                                 "started with it"))
                    holder = None
                if holder is not None:
                    raise VFTaken(vf=vf.address, domain=domain.name,
                                  holder=f"claimed by guest '{holder.domain_name}' "
                                         f"({holder.state})")
                if vf.address in in_use:
                    raise VFTaken(vf=vf.address, domain=domain.name,
                                  holder=f"in use by running guest '{in_use[vf.address].name}'")
                claim = self.ledger.add(vf=vf.address, network=vf.network,
                                        domain_uuid=domain.uuid, domain_name=domain.name,
                                        state=ACTIVE, reason=f"start: {device.describe()}")
                holders[vf.address] = claim
                changes.append(Change.of(Event.ACTIVATED, claim,
                                      f"claimed for its {device.describe()}"))
        return changes

    def _end_reset_claim(self, claim: Claim, why: str) -> list[Change]:
        """Give up a reset claim because a guest uses the VF: no reset is owed any more."""
        detail = f"no longer to be reset ({claim.reset_state}): {why}"
        released = self.ledger.set_state([claim], RELEASED, detail)
        self.ledger.mark_reset(claim.vf)
        return [Change.of(Event.RELEASED, c, detail) for c in released]

    def activate(self, domain_uuid: str, reason: str) -> list[Change]:
        """incoming → active for one guest (``started``, or arrival seen by the listener)."""
        with self.ledger.transaction():
            incoming = [c for c in self.ledger.claims_of(domain_uuid, strict=False)
                        if c.state == INCOMING]
            return [Change.of(Event.ACTIVATED, claim, "is in use")
                    for claim in self.ledger.set_state(incoming, ACTIVE, reason)]

    def release(self, domain_uuid: str, reason: str,
                only: Callable[[Claim], bool] = lambda claim: True) -> list[Change]:
        """Release a guest's live claims (all of them, or those ``only`` selects)."""
        with self.ledger.transaction():
            claims = [c for c in self.ledger.claims_of(domain_uuid, strict=False) if only(c)]
            return [Change.of(Event.RELEASED, claim, "released")
                    for claim in self.ledger.set_state(claims, RELEASED, reason)]

    def reassert(self, domain: DomainXML) -> tuple[list[Change], list[VfmigrateError]]:
        """Make sure a running guest's VFs are claimed as active (``reconnect``).

        Never refuses: conflicts are returned for logging, because a failing
        reconnect hook makes libvirt kill the guest.
        """
        changes: list[Change] = []
        conflicts: list[VfmigrateError] = []
        with self.ledger.transaction():
            holders = {claim.vf: claim for claim in self.ledger.live_claims(strict=False)}
            for device in domain.devices:
                vf = self.inventory.find_vf(device.address) if device.address else None
                if vf is None:
                    continue
                holder = holders.get(vf.address)
                if holder is not None and holder.is_reset:
                    # The running guest holds it: no reset may touch it any more.
                    changes.extend(self._end_reset_claim(holder, f"running guest "
                                                                 f"'{domain.name}' holds it"))
                    holder = None
                if holder is not None and holder.domain_uuid != domain.uuid:
                    conflicts.append(VFTaken(vf=vf.address, domain=domain.name,
                                             holder=f"also claimed by guest "
                                                    f"'{holder.domain_name}' ({holder.state})"))
                    continue
                if holder is not None:
                    if holder.state == INCOMING and domain.uuid in self.running:
                        for claim in self.ledger.set_state([holder], ACTIVE, "reconnect: running"):
                            changes.append(Change.of(Event.ACTIVATED, claim, "is in use"))
                    continue
                claim = self.ledger.add(vf=vf.address, network=vf.network,
                                        domain_uuid=domain.uuid, domain_name=domain.name,
                                        state=ACTIVE, reason="reconnect: claim was missing")
                holders[vf.address] = claim
                changes.append(Change.of(Event.CORRECTED, claim,
                                      "had no claim: claimed for it now"))
        return changes, conflicts
