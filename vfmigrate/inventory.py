"""PFs and VFs of the configured networks, read from sysfs under a root.

The root is a parameter (``Config.sysfs_root``, normally ``/sys``); tests and
the testbed point it at a fake tree of the same shape.  Only addresses that
passed :class:`PciAddress` validation or netdev names from the config are
ever joined into a path.

Reading is lazy, because the hook runs inside libvirt's migration path on
hosts with hundreds of VFs: :meth:`Inventory.iter_vfs` reads one
``virtfnN`` link at a time, so picking a free VF stops at the first one;
:meth:`Inventory.find_vf` looks at one VF's ``physfn`` link.  Full listings
and per-VF details (driver, netdevs, NUMA node) are for ``status``.

The first time any PF is needed, every network's PF specs are resolved to PCI
addresses (one ``readlink`` or ``stat`` each): a PF that two networks name,
by netdev in one and by address in the other, is :class:`PFInTwoNetworks`, a
configuration error, because its VFs would be handed out to both networks.
"""

from __future__ import annotations

import os
from .config import NetworkConfig
from .errors import ConfigError, SysfsError
from .numa import HostNodes
from .pci import PciAddress, is_pci_address
from .records import record


class PFInTwoNetworks(ConfigError):
    msg_fmt = ("PF {pf} is in network '{first}' (as {first_spec}) and in network "
               "'{second}' (as {second_spec}); a PF may be in one network only: "
               "remove it from one [network] section")


class VF(record("VF", "address pf index network")):
    """A VF: its address, its PF's address, its index on the PF, its network."""

    __slots__ = ()


class PF(record("PF", "address spec network num_vfs total_vfs")):
    __slots__ = ()


class DeviceDetails(record("DeviceDetails", "driver netdevs vendor device numa_node")):
    __slots__ = ()


def _matches(address: str, pattern: str) -> bool:
    """Whether a VF's address matches an allow/deny pattern (a glob, case-insensitive).
    fnmatch (which imports re) only for a pattern with wildcards."""
    pattern = pattern.lower()
    if not any(wildcard in pattern for wildcard in "*?["):
        return address == pattern
    from fnmatch import fnmatchcase
    return fnmatchcase(address, pattern)


class Inventory:
    @classmethod
    def of(cls, config, sysfs_root: str | None = None) -> Inventory:
        """The inventory of a host's configured networks (under ``sysfs_root`` if given,
        else the config's)."""
        return cls(sysfs_root or config.sysfs_root, config.networks.values())

    def __init__(self, sysfs_root: str | os.PathLike,
                 networks: Iterable[NetworkConfig]) -> None:
        self.sysfs_root = os.fspath(sysfs_root)
        self._devices_dir = os.path.join(self.sysfs_root, "bus", "pci", "devices")
        self.networks = {network.name: network for network in networks}
        self.missing_pfs: dict[str, list[str]] = {}
        self.skipped: list[str] = []   # unreadable virtfn links, for the caller to log
        self._pfs: dict[str, list[PciAddress]] = {}
        self._vfs: dict[str, list[VF]] = {}
        self._resolved: dict[str, list[tuple[str, PciAddress | None]]] | None = None
        self.host_nodes = HostNodes(self.sysfs_root)
        self._pf_nodes: dict[PciAddress, int | None] = {}

    # -- paths ----------------------------------------------------------------

    def pci_device_dir(self, address: PciAddress) -> str:
        return f"{self._devices_dir}/{address}"

    def _check_root(self) -> None:
        if not os.path.isdir(self._devices_dir):
            raise SysfsError(path=self._devices_dir, problem="not a directory")

    # -- PFs ------------------------------------------------------------------

    def resolve_pf(self, spec: str) -> PciAddress | None:
        """The PCI address of a PF named by netdev or address; None if absent."""
        if is_pci_address(spec):
            address = PciAddress.parse(spec)
            return address if os.path.exists(self.pci_device_dir(address)) else None
        link = os.path.join(self.sysfs_root, "class", "net", spec, "device")
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise SysfsError(path=link, problem=error.strerror) from None
        try:
            return PciAddress.parse(os.path.basename(target))
        except ValueError:
            raise SysfsError(path=link, problem=f"points at {target!r}, not a PCI device") from None

    def resolved_pfs(self) -> dict[str, list[tuple[str, PciAddress | None]]]:
        """Every network's PF specs with their addresses (None: absent); raises
        PFInTwoNetworks when two networks name the same PF."""
        if self._resolved is None:
            resolved: dict[str, list[tuple[str, PciAddress | None]]] = {}
            owner: dict[PciAddress, tuple[str, str]] = {}
            for name, config in self.networks.items():
                resolved[name] = []
                for spec in config.pfs:
                    address = self.resolve_pf(spec)
                    if address is not None:
                        first = owner.setdefault(address, (name, spec))
                        if first[0] != name:
                            raise PFInTwoNetworks(pf=address, first=first[0],
                                                  first_spec=first[1], second=name,
                                                  second_spec=spec)
                        if first[1] != spec:
                            continue   # the same PF twice in one network: once is enough
                    resolved[name].append((spec, address))
            self._resolved = resolved
        return self._resolved

    def pfs_of_network(self, network: str) -> list[PciAddress]:
        if network not in self._pfs:
            self._check_root()
            found, missing = [], []
            for spec, address in self.resolved_pfs()[network]:
                (found if address is not None else missing).append(address or spec)
            self._pfs[network] = found
            self.missing_pfs[network] = missing
        return self._pfs[network]

    def pf_details(self, network: str) -> list[PF]:
        result = []
        for spec, address in self.resolved_pfs()[network]:
            if address is None:
                continue
            directory = self.pci_device_dir(address)
            result.append(PF(address, spec, network,
                             _read_int(os.path.join(directory, "sriov_numvfs")) or 0,
                             _read_int(os.path.join(directory, "sriov_totalvfs"))))
        return result

    # -- VFs ------------------------------------------------------------------

    def vfs_of_pf(self, pf: PciAddress, network: str) -> Iterator[VF]:
        """The PF's VFs in index order, one ``virtfnN`` link at a time."""
        directory = self.pci_device_dir(pf)
        num_vfs = _read_int(os.path.join(directory, "sriov_numvfs")) or 0
        for index in range(num_vfs):
            link = f"{directory}/virtfn{index}"
            try:
                address = PciAddress.parse(os.path.basename(os.readlink(link)))
            except (OSError, ValueError) as error:
                self.skipped.append(f"{link}: {error}")
                continue
            yield VF(address, pf, index, network)

    def _allowed(self, network: NetworkConfig, address: PciAddress) -> bool:
        if not (network.allow_vfs or network.deny_vfs):
            return True
        text = str(address)
        if network.allow_vfs and not any(_matches(text, pattern)
                                         for pattern in network.allow_vfs):
            return False
        return not any(_matches(text, pattern) for pattern in network.deny_vfs)

    def iter_vfs(self, network: str) -> Iterator[VF]:
        """The network's usable VFs, lazily, in a stable order (PF order, VF index)."""
        config = self.networks[network]
        for pf in self.pfs_of_network(network):
            for vf in self.vfs_of_pf(pf, network):
                if self._allowed(config, vf.address):
                    yield vf

    def pf_node(self, pf: PciAddress) -> int | None:
        """The NUMA node the PF sits on; None where unknown (vfmigrate.numa)."""
        if pf not in self._pf_nodes:
            try:
                numa_node = _read_int(os.path.join(self.pci_device_dir(pf), "numa_node"))
            except SysfsError:
                numa_node = None
            self._pf_nodes[pf] = self.host_nodes.node_of_pf(numa_node)
        return self._pf_nodes[pf]

    def pf_tiers(self, network: str, nodes: frozenset[int] | None,
                 affinity: str) -> list[list[PciAddress]]:
        """The network's PFs in the tiers VFs are given out in: all of them (``nodes``
        None or ``affinity`` "none"), else those on ``nodes``, then (unless ``affinity``
        is "required") the others."""
        pfs = self.pfs_of_network(network)
        if nodes is None or affinity == "none":
            return [pfs]
        near = [pf for pf in pfs if self.pf_node(pf) in nodes]
        return [near] if affinity == "required" else [near, [pf for pf in pfs if pf not in near]]

    def iter_vfs_of(self, network: str, pfs: Iterable[PciAddress]) -> Iterator[VF]:
        """The network's usable VFs of ``pfs``, PF by PF, in VF index order."""
        config = self.networks[network]
        for pf in pfs:
            for vf in self.vfs_of_pf(pf, network):
                if self._allowed(config, vf.address):
                    yield vf

    def vfs_of_network(self, network: str) -> list[VF]:
        if network not in self._vfs:
            self._vfs[network] = list(self.iter_vfs(network))
        return self._vfs[network]

    def present(self, vf: VF) -> bool:
        """Whether the VF's device exists (a ``virtfnN`` link can dangle)."""
        return os.path.isdir(self.pci_device_dir(vf.address))

    def find_vf(self, address: PciAddress) -> VF | None:
        """The VF at ``address`` if it is a usable VF of a configured network."""
        directory = self.pci_device_dir(address)
        try:
            pf = PciAddress.parse(os.path.basename(os.readlink(os.path.join(directory, "physfn"))))
        except (OSError, ValueError):
            return None
        for network, config in self.networks.items():
            if pf in self.pfs_of_network(network):
                if not self._allowed(config, address):
                    return None
                index = self._vf_index(pf, address)
                return VF(address, pf, index, network) if index is not None else None
        return None

    def _vf_index(self, pf: PciAddress, address: PciAddress) -> int | None:
        """The VF's index on its PF, from SR-IOV offset and stride as the kernel does."""
        directory = self.pci_device_dir(pf)
        offset = _read_int(os.path.join(directory, "sriov_offset"))
        stride = _read_int(os.path.join(directory, "sriov_stride"))
        if offset is not None and stride:
            index, remainder = divmod(address.routing_id - pf.routing_id - offset, stride)
            link = os.path.join(directory, f"virtfn{index}")
            if remainder == 0 and index >= 0 and _link_name(link) == str(address):
                return index
        for vf in self.vfs_of_pf(pf, ""):
            if vf.address == address:
                return vf.index
        return None

    def details(self, address: PciAddress) -> DeviceDetails:
        directory = self.pci_device_dir(address)
        try:
            driver = os.path.basename(os.readlink(os.path.join(directory, "driver")))
        except OSError:
            driver = None
        try:
            netdevs = tuple(sorted(os.listdir(os.path.join(directory, "net"))))
        except OSError:
            netdevs = ()
        return DeviceDetails(driver, netdevs, _read_text(os.path.join(directory, "vendor")),
                             _read_text(os.path.join(directory, "device")),
                             _read_int(os.path.join(directory, "numa_node")))


def _link_name(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _read_text(path: str) -> str | None:
    try:
        with open(path) as sysfs_file:
            return sysfs_file.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        raise SysfsError(path=path, problem=f"expected a number, found {text[:32]!r}") from None
