"""NUMA: which host nodes a guest will use, and which node a PF sits on.

A VF whose PF sits on another node than the guest's memory makes every packet
cross the socket interconnect (nova bug 1893221).  The hook prefers, per
network's ``numa_affinity`` (:data:`AFFINITY_POLICIES`), VFs on the guest's nodes:

* ``preferred`` (default): VFs on the guest's nodes first, then the others;
* ``required``: only VFs on the guest's nodes; none free refuses the guest;
* ``none``: the node is not looked at.

The guest's nodes come from its XML as libvirt will apply it on this host:
``<numatune><memory nodeset>`` (where its memory is, which is where the VF DMAs),
else the host CPUs its vCPUs may run on (``<cputune><vcpupin cpuset>``, with
``<vcpu cpuset>`` for vCPUs not pinned one by one), mapped to nodes through
``/sys/devices/system/node/nodeN/cpulist``.  A guest with none of them is
*unpinned*: any node is as good.

A PF's node is its ``numa_node`` file.  Linux writes -1 where the firmware gives no
node; on a host with one node that is the node, elsewhere it is *unknown*, which
matches no guest's nodes (a ``required`` network refuses rather than guesses).
"""

from __future__ import annotations

import os

from . import lexical
from .records import record

AFFINITY_POLICIES = ("required", "preferred", "none")
DEFAULT_AFFINITY = "preferred"
_MAX_CPU = 1 << 16   # libvirt's own bitmap limit is far below; a bound for a hostile XML


class BadCpuset(ValueError):
    """A cpuset or nodeset that is not libvirt's syntax; the message says what is wrong."""


def parse_set(text: str) -> frozenset[int]:
    """A libvirt cpuset/nodeset: ``N``, ``N-M`` and ``^N`` entries, comma-separated
    (``0-3,^2,8``), ASCII digits only, as libvirt's virBitmapParse reads it."""
    included: set[int] = set()
    excluded: set[int] = set()
    for raw in text.split(","):
        entry = raw.strip()
        negated = entry.startswith("^")
        if negated:
            entry = entry[1:]
        first, dash, last = entry.partition("-")
        if not _is_number(first) or (dash and (negated or not _is_number(last))):
            raise BadCpuset(f"{text[:40]!r} is not a list like 0-3,^2,8")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise BadCpuset(f"{text[:40]!r} has a range that ends before it starts")
        (excluded if negated else included).update(range(low, high + 1))
    result = frozenset(included - excluded)
    if not result:
        raise BadCpuset(f"{text[:40]!r} names nothing")
    return result


def _is_number(text: str) -> bool:
    return lexical.made_of(text, lexical.ASCII_DIGITS, 1, 5) and int(text) < _MAX_CPU


def format_set(numbers) -> str:
    """``0,2-3``: a set written as libvirt writes one."""
    ranges: list[str] = []
    for number in sorted(numbers):
        if ranges and number == last + 1:
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{number}"
        else:
            ranges.append(str(number))
        last = number
    return ",".join(ranges)


def nodes_phrase(nodes) -> str:
    """``node 1``, ``nodes 0-1``: NUMA nodes as a sentence names them."""
    return f"node {format_set(nodes)}" if len(nodes) == 1 else f"nodes {format_set(nodes)}"


class GuestPlacement(record("GuestPlacement", "memory_nodeset vcpu_cpuset vcpupins")):
    """What a domain XML says about where its guest runs, as the XML's text:
    ``<numatune><memory nodeset>``, ``<vcpu cpuset>`` and every ``<vcpupin cpuset>``
    (None and () where absent).  Interpreted by :meth:`HostNodes.guest_nodes`."""

    __slots__ = ()

    @property
    def pinned(self) -> bool:
        return bool(self.memory_nodeset or self.vcpu_cpuset or self.vcpupins)


UNPINNED = GuestPlacement(None, None, ())


class HostNodes:
    """The host's NUMA nodes and their CPUs, read once from sysfs under a root."""

    def __init__(self, sysfs_root: str) -> None:
        self.sysfs_root = sysfs_root
        self._cpus: dict[int, frozenset[int]] | None = None

    @property
    def cpus_of_node(self) -> dict[int, frozenset[int]]:
        if self._cpus is None:
            directory = os.path.join(self.sysfs_root, "devices", "system", "node")
            cpus: dict[int, frozenset[int]] = {}
            try:
                names = os.listdir(directory)
            except OSError:
                names = []
            for name in names:
                number = name[4:]
                if not (name.startswith("node") and _is_number(number)):
                    continue
                try:
                    with open(os.path.join(directory, name, "cpulist")) as cpulist:
                        text = cpulist.read().strip()
                    cpus[int(number)] = parse_set(text) if text else frozenset()
                except (OSError, UnicodeDecodeError, BadCpuset):
                    cpus[int(number)] = frozenset()
            self._cpus = cpus
        return self._cpus

    def node_of_pf(self, numa_node: int | None) -> int | None:
        """A PF's node from its ``numa_node`` value; None where unknown."""
        return node_of_pf(numa_node, self.cpus_of_node)

    def guest_nodes(self, placement: GuestPlacement) -> frozenset[int] | None:
        """The host nodes the guest will use; None for an unpinned guest.
        Raises BadCpuset for a set that is not libvirt's syntax."""
        return guest_nodes(placement, self.cpus_of_node)


def node_of_pf(numa_node: int | None, cpus_of_node: dict[int, frozenset[int]]) -> int | None:
    """A PF's node from its ``numa_node`` (-1 or None: none given); None where unknown."""
    if numa_node is not None and numa_node >= 0:
        return numa_node
    return next(iter(cpus_of_node)) if len(cpus_of_node) == 1 else None


def guest_nodes(placement: GuestPlacement,
                cpus_of_node: dict[int, frozenset[int]]) -> frozenset[int] | None:
    """The nodes of a host with ``cpus_of_node`` that the guest will use; None for an
    unpinned guest.  Raises BadCpuset for a set that is not libvirt's syntax."""
    if placement.memory_nodeset:
        return _labelled(placement.memory_nodeset, "<numatune><memory nodeset>")
    cpus: set[int] = set()
    for cpuset in placement.vcpupins:
        cpus |= _labelled(cpuset, "<cputune><vcpupin cpuset>")
    if placement.vcpu_cpuset:
        cpus |= _labelled(placement.vcpu_cpuset, "<vcpu cpuset>")
    if not cpus:
        return None
    return frozenset(node for node, node_cpus in cpus_of_node.items() if node_cpus & cpus)


def _labelled(text: str, where: str) -> frozenset[int]:
    try:
        return parse_set(text)
    except BadCpuset as error:
        raise BadCpuset(f"{where} {error}") from None
