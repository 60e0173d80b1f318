"""What ``vfmigrate status`` shows: every VF of every network, with its owner.

A VF under a reset claim shows as ``resetting`` or ``reset-failed`` (out of
the free pool until a reset succeeds); ledger rows that cannot be read are
listed in :attr:`HostStatus.problems` as one-line sentences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Config
from .inventory import Inventory
from .ledger import RESET_FAILED, Claim, Ledger
from .running import RunningGuest


@dataclass
class VFStatus:
    address: str
    index: int
    state: str            # free, incoming, active, in-use (by a running guest, unclaimed),
                          # resetting, reset-failed (vfmigrate holds it: see ledger)
    domain_name: str | None
    domain_uuid: str | None
    since: float | None
    driver: str | None
    netdevs: tuple[str, ...]
    numa_node: int | None


@dataclass
class PFStatus:
    spec: str
    address: str
    num_vfs: int
    total_vfs: int | None
    numa_node: int | None          # None: unknown (vfmigrate.numa)
    vfs: list[VFStatus] = field(default_factory=list)


@dataclass
class NetworkStatus:
    name: str
    pfs: list[PFStatus]
    missing_pfs: list[str]
    numa_affinity: str
    pf_spread: str = "preferred"
    settings_parity: str = "trust"

    def count(self, state: str) -> int:
        return sum(1 for pf in self.pfs for vf in pf.vfs if vf.state == state)

    @property
    def total(self) -> int:
        return sum(len(pf.vfs) for pf in self.pfs)


@dataclass
class HostStatus:
    networks: list[NetworkStatus]
    stray_claims: list[Claim]      # live claims on VFs no network has any more
    problems: list[str] = field(default_factory=list)   # one-line sentences

    def as_dict(self) -> dict:
        return {
            "networks": [{
                "name": network.name,
                "missing_pfs": network.missing_pfs,
                "numa_affinity": network.numa_affinity,
                "pf_spread": network.pf_spread,
                "settings_parity": network.settings_parity,
                "counts": {state: network.count(state)
                           for state in ("free", "incoming", "active", "in-use")},
                "out_of_use": {state: network.count(state)
                               for state in ("resetting", "reset-failed")},
                "pfs": [{"spec": pf.spec, "address": pf.address, "num_vfs": pf.num_vfs,
                         "total_vfs": pf.total_vfs, "numa_node": pf.numa_node,
                         "vfs": [vars(vf) | {"netdevs": list(vf.netdevs)} for vf in pf.vfs]}
                        for pf in network.pfs],
            } for network in self.networks],
            "stray_claims": [claim.as_dict() for claim in self.stray_claims],
            "problems": list(self.problems),
        }


def host_status(config: Config, inventory: Inventory, ledger: Ledger,
                running: dict[str, RunningGuest]) -> HostStatus:
    bad_rows = ledger.unreadable_rows()
    problems = [f"ledger {ledger.path}: claim row {row} is unreadable ({problem}); correct or "
                "delete it with sqlite3 (while it is live, vfmigrate hands out no VF)"
                for row, problem in sorted(bad_rows.items())]
    claims = {claim.vf: claim for claim in ledger.live_claims(strict=False)}
    in_use = {address: guest for guest in running.values() for address in guest.held}
    seen = set()
    networks = []
    for name in config.networks:
        vfs_by_pf: dict = {}
        for vf in inventory.vfs_of_network(name):
            vfs_by_pf.setdefault(vf.pf, []).append(vf)
        pfs = []
        for pf in inventory.pf_details(name):
            pf_status = PFStatus(spec=pf.spec, address=str(pf.address), num_vfs=pf.num_vfs,
                                 total_vfs=pf.total_vfs, numa_node=inventory.pf_node(pf.address))
            for vf in vfs_by_pf.get(pf.address, []):
                seen.add(vf.address)
                details = inventory.details(vf.address)
                claim = claims.get(vf.address)
                guest = in_use.get(vf.address)
                if claim is not None and claim.is_reset:
                    state, owner, uuid, since = (
                        "reset-failed" if claim.reset_state == RESET_FAILED else "resetting",
                        None, None, claim.updated)
                elif claim is not None:
                    state, owner, uuid, since = (claim.state, claim.domain_name,
                                                 claim.domain_uuid, claim.updated)
                elif guest is not None:
                    state, owner, uuid, since = "in-use", guest.name, guest.uuid, None
                else:
                    state, owner, uuid, since = "free", None, None, None
                pf_status.vfs.append(VFStatus(
                    address=str(vf.address), index=vf.index, state=state, domain_name=owner,
                    domain_uuid=uuid, since=since, driver=details.driver,
                    netdevs=details.netdevs, numa_node=details.numa_node))
            pfs.append(pf_status)
        networks.append(NetworkStatus(name=name, pfs=pfs,
                                      missing_pfs=inventory.missing_pfs.get(name, []),
                                      numa_affinity=config.networks[name].numa_affinity,
                                      pf_spread=config.networks[name].pf_spread,
                                      settings_parity=config.networks[name].settings_parity))
    stray = [claim for address, claim in claims.items() if address not in seen]
    for claim in claims.values():
        if claim.reset_state == RESET_FAILED:
            problems.append(f"VF {claim.vf} ({claim.network}) is out of use: {claim.reason}")
    return HostStatus(networks=networks, stray_claims=stray, problems=problems)
