"""Claim decisions: which local VF a guest gets, and when a claim ends.

Shared by the hook (which may not call libvirt) and the listener/CLI.  Each
decision reads a :class:`~vfmigrate.ownership.Snapshot` of the host and returns
what it decides as :class:`~vfmigrate.ownership.Change` records, which
:func:`vfmigrate.ownership.apply` writes in the transaction that read the
snapshot: a decision is all-or-nothing and concurrent hook processes cannot
pick the same VF.  The caller logs the changes only after the transaction
committed, so the journal never tells of a claim that was rolled back.

Who holds a VF, which claim is stale and what stands in a guest's way is
decided by :mod:`vfmigrate.ownership`, the rule reconcile follows too.  VFs under
a *reset claim* (see :mod:`vfmigrate.ledger`) are claimed, so no selection hands
them out.  A ``managed='no'`` device gets only a VF already bound to vfio-pci,
because libvirt will not rebind it.  A ledger row that cannot be read refuses
every decision that hands out a VF (it may name any VF); releases still work.
"""

from __future__ import annotations

from .config import Config
from .domxml import DomainXML, VFDevice
from .errors import (BadDomainXML, NoFreeVF, Refused, UnknownNetwork, UnlabelledDevice,
                     VFTaken, VfmigrateError, counted, vf_counts)
from .inventory import VF, Inventory
from .ledger import ACTIVE, INCOMING, Claim, Ledger
from .numa import BadCpuset, nodes_phrase
from .events import Event, EventKind
from .ownership import ACTIVATE, END_RESET, RELEASE, Change, Snapshot, apply, reset_phrase
from .pci import PciAddress
from .records import record
from .running import RunningGuest, running_guests


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


class NoVFOnGuestNodes(Refused):
    msg_fmt = ("no free VF in network '{network}' on NUMA {where} of this host, where "
               "guest '{domain}' runs, and the network has numa_affinity = required "
               "({counts}); free a VF there, or set numa_affinity = preferred")

    def __init__(self, *, network: str, domain: str, nodes: frozenset[int], total: int,
                 unavailable: int, own: int) -> None:
        where = nodes_phrase(nodes) if nodes else "nodes of its CPUs (none)"
        super().__init__(network=network, domain=domain, where=where,
                         counts=vf_counts(counted(total, "VF") + " there", unavailable, own))


class NoPFSpread(Refused):
    msg_fmt = ("guest '{domain}' had its VFs in network '{network}' on different PFs on the "
               "source, and this host has no free VF for {device} on a PF other than "
               "{pfs}, which its other VFs there took (pf_spread = required); free a VF on "
               "another PF of the network, or set pf_spread = preferred")


VFIO_DRIVER = "vfio-pci"
_ARRIVAL = {"migrate": "migration", "restore": "restore"}


class Assignment(record("Assignment", "device vf")):
    """The local VF given to one travelling VFDevice."""

    __slots__ = ()


class Claims:
    @classmethod
    def of(cls, config: Config, ledger: Ledger, clock: Callable[[], float], *,
           sysfs_root: str | None = None,
           on_unreadable: Callable[[str], None] | None = None) -> Claims:
        """A host's claims as the hook and the listener decide them: its inventory, and
        what its running guests hold as libvirt's status files say, read when first
        needed; ``on_unreadable`` hears of each status file that could not be read."""
        def read_running() -> Mapping[str, RunningGuest]:
            problems: list[str] = []
            running = running_guests(config.libvirt_run_dir, problems,
                                     allow_stand_ins=config.allow_stand_ins,
                                     cache_path=config.running_cache_path)
            if on_unreadable is not None:
                for problem in problems:
                    on_unreadable(problem)
            return running
        return cls(config, ledger, Inventory.of(config, sysfs_root), read_running, clock)

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

    @staticmethod
    def _release(snapshot: Snapshot, claims: list[Claim], reason: str,
                 event: EventKind, detail: str) -> list[Change]:
        """Release ``claims``, which then hold no VF in ``snapshot``."""
        for claim in claims:
            del snapshot.claim_of[claim.vf]
        return [Change.of(event, claim, detail, RELEASE, reason) for claim in claims]

    def _expire(self, snapshot: Snapshot) -> list[Change]:
        """Release the incoming claims whose guest never arrived.  (An active claim whose
        guest is not running may be one between its ``prepare`` and its ``start`` hook:
        the hook leaves stale active claims to reconcile.)"""
        expired = [claim for claim in snapshot.claim_of.values()
                   if claim.state == INCOMING and snapshot.is_stale(claim)]
        changes: list[Change] = []
        for claim in expired:
            changes += self._release(snapshot, [claim], "expired: the guest never arrived",
                                     Event.EXPIRED, f"released: it was reserved for guest "
                                                    f"'{claim.domain_name}', which never "
                                                    "arrived")
        return changes

    def _named_vfs(self, domain: DomainXML) -> Iterator[tuple[VFDevice, VF]]:
        """The devices of the guest that name a VF of ours, with that VF."""
        for device in domain.devices:
            vf = self.inventory.find_vf(device.address) if device.address else None
            if vf is not None:
                yield device, vf

    @staticmethod
    def _claim_active(snapshot: Snapshot, domain: DomainXML, vf: VF, event: EventKind,
                      detail: str, reason: str) -> Change:
        """A new active claim on ``vf`` for the guest, which then holds it in ``snapshot``."""
        snapshot.claim_of[vf.address] = Claim(None, vf.address, vf.network, domain.uuid,
                                              domain.name, ACTIVE, snapshot.now,
                                              snapshot.now, reason)
        return Change.add(event, vf.address, vf.network, domain.uuid, domain.name, ACTIVE,
                          detail, reason)

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

    def _keep_address(self, device: VFDevice, network: str, taken: set[PciAddress],
                      nodes: frozenset[int] | None, avoid: set[PciAddress]) -> VF | None:
        """The device's current address, if it is a free VF of the network here too (on
        the guest's NUMA nodes, where the network weighs them, and on none of ``avoid``,
        the PFs the guest's VFs that were on other PFs took)."""
        if device.address is None or device.address in taken:
            return None
        vf = self.inventory.find_vf(device.address)
        if vf is None or vf.network != network or vf.pf in avoid \
                or not self._usable(vf, device):
            return None
        if self._affinity(network, nodes) != "none" \
                and self.inventory.pf_node(vf.pf) not in nodes:
            return None
        return vf

    def _guest_nodes(self, domain: DomainXML) -> frozenset[int] | None:
        """The host NUMA nodes the guest will use; None for an unpinned guest."""
        if not domain.placement.pinned:
            return None
        try:
            return self.inventory.host_nodes.guest_nodes(domain.placement)
        except BadCpuset as error:
            raise BadDomainXML(problem=f"guest '{domain.name}': {error}") from None

    def _affinity(self, network: str, nodes: frozenset[int] | None) -> str:
        """How the guest's nodes weigh in this network: the policy, "none" if unpinned."""
        return "none" if nodes is None else self.config.networks[network].numa_affinity

    def _candidates(self, network: str, nodes: frozenset[int] | None) -> Iterator[VF]:
        """The network's VFs in the order they are given out: on the guest's NUMA nodes
        first (only those under ``required``), then by PF order and VF index."""
        for tier in self.inventory.pf_tiers(network, nodes, self._affinity(network, nodes)):
            yield from self.inventory.iter_vfs_of(network, tier)

    def _choose_apart(self, network: str, nodes: frozenset[int] | None,
                      avoid: set[PciAddress], usable: Callable[[VF], bool]
                      ) -> tuple[VF | None, bool]:
        """The first usable VF, NUMA tier by NUMA tier, on a PF not in ``avoid``; within
        a tier, under ``pf_spread = preferred``, one on a PF in ``avoid`` before the next
        tier (NUMA before spread).  Returns the VF (None: none) and whether it is apart."""
        spread = self.config.networks[network].pf_spread
        for tier in self.inventory.pf_tiers(network, nodes, self._affinity(network, nodes)):
            apart = [pf for pf in tier if pf not in avoid]
            vf = next((vf for vf in self.inventory.iter_vfs_of(network, apart) if usable(vf)),
                      None)
            if vf is not None:
                return vf, True
            if spread != "required":
                shared = [pf for pf in tier if pf in avoid]
                vf = next((vf for vf in self.inventory.iter_vfs_of(network, shared)
                           if usable(vf)), None)
                if vf is not None:
                    return vf, False
        return None, False

    def reserve_incoming(self, domain: DomainXML, operation: str
                         ) -> tuple[list[Assignment], list[Change]]:
        """Claim a free local VF for every travelling device (``migrate``/``restore``).

        All or nothing: if one device cannot get a VF, nothing is claimed.
        """
        if domain.uuid in self.running:
            raise AlreadyRunningHere(domain=domain.name, uuid=domain.uuid)
        assignments: list[Assignment] = []
        with self.ledger.transaction():
            snapshot = Snapshot.of(self.config, self.ledger, self.running, self.clock)
            changes = self._reserve(snapshot, domain, operation, assignments)
            return assignments, apply(self.ledger, changes)

    def _reserve(self, snapshot: Snapshot, domain: DomainXML, operation: str,
                 assignments: list[Assignment]) -> list[Change]:
        """reserve_incoming's decision over ``snapshot``; fills ``assignments``."""
        earlier = [claim for claim in snapshot.claim_of.values()
                   if claim.domain_uuid == domain.uuid]
        changes = self._release(snapshot, earlier, f"superseded by a new {operation}",
                                Event.RELEASED, f"released: this {_ARRIVAL[operation]} "
                                                "replaces the guest's earlier "
                                                "reservation of it")
        changes += self._expire(snapshot)
        taken = snapshot.taken_from(domain.uuid)
        nodes = self._guest_nodes(domain)
        cursors: dict[str, Iterator[VF]] = {}
        # PFs taken here by each (network, pf ordinal) of the guest's metadata
        spread: dict[tuple[str, str], set[PciAddress]] = {}
        for device in domain.travelling_devices:
            network = self.network_for(device, domain)
            group = device.entry.get("pf")
            avoid = set().union(*(pfs for (net, other), pfs in spread.items()
                                  if net == network and other != group)) \
                if group is not None else set()
            choice = self._keep_address(device, network, taken, nodes, avoid)
            apart = True
            if choice is None and (device.managed is False or avoid):
                # Its own pass: VFs it skips stay for the devices after it.
                def usable(vf: VF, device: VFDevice = device) -> bool:
                    return vf.address not in taken and self._usable(vf, device)
                choice, apart = self._choose_apart(network, nodes, avoid, usable)
                if choice is None and avoid and \
                        self._choose_apart(network, nodes, set(), usable)[0] is not None:
                    raise NoPFSpread(domain=domain.name, network=network,
                                     device=device.describe(' on the source'),
                                     pfs=", ".join(sorted(map(str, avoid))))
                if choice is None and device.managed is False:
                    raise NoVfioVF(network=network, device=device.describe(),
                                   domain=domain.name)
            if choice is None:
                cursor = cursors.setdefault(network, self._candidates(network, nodes))
                choice = next((vf for vf in cursor if vf.address not in taken
                               and self.inventory.present(vf)), None)
            if choice is None:
                if self._affinity(network, nodes) == "required":
                    near = list(self._candidates(network, nodes))
                    own, unavailable = _unavailable(near, taken, assignments)
                    raise NoVFOnGuestNodes(network=network, domain=domain.name,
                                           nodes=nodes, total=len(near), own=own,
                                           unavailable=unavailable)
                vfs = self.inventory.vfs_of_network(network)
                own, unavailable = _unavailable(vfs, taken, assignments)
                raise NoFreeVF(network=network, total=len(vfs), unavailable=unavailable,
                               own=own, absent=len(vfs) - unavailable - own)
            taken.add(choice.address)
            if group is not None:
                spread.setdefault((network, group), set()).add(choice.pf)
            assignments.append(Assignment(device, choice))
            changes.append(Change.add(Event.RESERVED, choice.address, network, domain.uuid,
                                      domain.name, INCOMING,
                                      f"reserved for its {device.describe(' on the source')}",
                                      f"{operation}: for {device.describe()}"))
            if not apart:
                changes.append(Change(
                    Event.SPREAD, choice.address, domain.name, domain.uuid, network,
                    f"shares PF {choice.pf} with another of its VFs, which sat on "
                    "another PF on the source: no other PF of the network has a free "
                    "VF here (pf_spread = preferred)"))
        return changes

    def claim_for_start(self, domain: DomainXML) -> list[Change]:
        """Claim, as active, every VF of ours the guest names (``prepare``/``start``).

        A guest arriving by migration already holds incoming claims for these
        VFs: they are confirmed as they are.  A VF that another guest holds
        refuses the start.
        """
        with self.ledger.transaction():
            snapshot = Snapshot.of(self.config, self.ledger, self.running, self.clock)
            changes = self._expire(snapshot)
            for device, vf in self._named_vfs(domain):
                own, yielding, obstacle = snapshot.standing(vf.address, domain.uuid,
                                                            starting=True)
                if own is not None:
                    continue
                if obstacle is not None:
                    raise VFTaken(vf=vf.address, domain=domain.name, holder=obstacle)
                if yielding is not None:
                    changes.append(_end_reset_claim(yielding, f"guest '{domain.name}' "
                                                              "started with it"))
                changes.append(self._claim_active(snapshot, domain, vf, Event.ACTIVATED,
                                                  f"claimed for its {device.describe()}",
                                                  f"start: {device.describe()}"))
            return apply(self.ledger, changes)

    def reassert(self, domain: DomainXML) -> tuple[list[Change], list[VfmigrateError]]:
        """Make sure a running guest's VFs are claimed as active (``reconnect``).

        Never refuses: conflicts are returned for logging, because a failing
        reconnect hook makes libvirt kill the guest.
        """
        changes: list[Change] = []
        conflicts: list[VfmigrateError] = []
        with self.ledger.transaction():
            snapshot = Snapshot.of(self.config, self.ledger, lambda: self.running, self.clock,
                                   strict=False)
            for _, vf in self._named_vfs(domain):
                own, yielding, obstacle = snapshot.standing(vf.address, domain.uuid,
                                                            starting=False)
                if yielding is not None:
                    changes.append(_end_reset_claim(yielding, f"running guest "
                                                              f"'{domain.name}' holds it"))
                if obstacle is not None:
                    conflicts.append(VFTaken(vf=vf.address, domain=domain.name,
                                             holder=f"also {obstacle}"))
                elif own is None:
                    changes.append(self._claim_active(snapshot, domain, vf, Event.CORRECTED,
                                                      "had no claim: claimed for it now",
                                                      "reconnect: claim was missing"))
                elif own.state == INCOMING and domain.uuid in snapshot.running:
                    changes.append(Change.of(Event.ACTIVATED, own, "is in use", ACTIVATE,
                                             "reconnect: running"))
            return apply(self.ledger, changes), conflicts


def _end_reset_claim(claim: Claim, why: str) -> Change:
    """Give up a reset claim because a guest uses the VF: no reset is owed any more."""
    detail = f"no longer waits for a reset ({reset_phrase(claim)}): {why}"
    return Change.of(Event.RELEASED, claim, detail, END_RESET, detail)


def _unavailable(vfs: list[VF], taken: set[PciAddress], assignments: list[Assignment]
                 ) -> tuple[int, int]:
    """Of ``vfs``, how many this guest's other devices were given, and how many other
    guests claim or use (for a refusal's counts)."""
    given = {assignment.vf.address for assignment in assignments}
    own = sum(1 for vf in vfs if vf.address in given)
    return own, sum(1 for vf in vfs if vf.address in taken) - own
