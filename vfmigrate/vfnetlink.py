"""VF settings on the PF, through netlink (pyroute2): reset, and set a MAC.

A VF's MAC, VLAN, spoof check and trust live on its PF (``ip link set PF vf
N …``).  This adapter is the only place that talks netlink; it takes the
sysfs root (to find the PF's netdev) and an ``IPRoute`` factory (tests pass a
fake; the SR-IOV lab exercises the real one).  Errors become
:class:`VFSettingError`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import HostStateError
from .inventory import VF

ZERO_MAC = "00:00:00:00:00:00"


class VFSettingError(HostStateError):
    msg_fmt = "cannot set {what} of VF {vf} (PF {pf} vf {index}): {problem}"


def _default_iproute():
    from pyroute2 import IPRoute
    return IPRoute()


class VFNetlink:
    """Reset VFs to host defaults, or give them a MAC/VLAN, via their PF."""

    def __init__(self, sysfs_root: str | os.PathLike,
                 iproute_factory: Callable[[], object] = _default_iproute, *,
                 spoofchk: bool = True, trust: bool = False) -> None:
        self.sysfs_root = os.fspath(sysfs_root)
        self.iproute_factory = iproute_factory
        self.spoofchk = spoofchk
        self.trust = trust

    def pf_netdev(self, vf: VF) -> str:
        net = os.path.join(self.sysfs_root, "bus", "pci", "devices", str(vf.pf), "net")
        try:
            names = sorted(os.listdir(net))
        except OSError as error:
            raise VFSettingError(what="settings", vf=vf.address, pf=vf.pf, index=vf.index,
                                 problem=f"PF has no netdev ({error.strerror})") from None
        if not names:
            raise VFSettingError(what="settings", vf=vf.address, pf=vf.pf, index=vf.index,
                                 problem="PF has no netdev")
        return names[0]

    def reset(self, vf: VF) -> list[str]:
        """MAC to zero, VLAN 0, spoof check and trust to the host defaults.

        Returns the settings the driver does not support (spoofchk/trust are
        optional for drivers; MAC and VLAN are not).
        """
        unsupported = []
        with self._session(vf) as (iproute, index):
            self._set(iproute, index, vf, "mac", {"mac": ZERO_MAC})
            self._set(iproute, index, vf, "vlan", {"vlan": 0})
            for name, value in (("spoofchk", self.spoofchk), ("trust", self.trust)):
                try:
                    self._set(iproute, index, vf, name, {name: int(value)})
                except VFSettingError as error:
                    if error.fields.get("errno") != errno.EOPNOTSUPP:
                        raise
                    unsupported.append(name)
        return unsupported

    def set_mac(self, vf: VF, mac: str, vlan: int | None = None) -> bool:
        """Give the VF a MAC (and VLAN) through its PF; True once done."""
        with self._session(vf) as (iproute, index):
            self._set(iproute, index, vf, "mac", {"mac": mac})
            if vlan is not None:
                self._set(iproute, index, vf, "vlan", {"vlan": vlan})
        return True

    # -- netlink ------------------------------------------------------------

    @contextmanager
    def _session(self, vf: VF) -> Iterator[tuple[object, int]]:
        """An IPRoute and the PF's ifindex, closed afterwards."""
        name = self.pf_netdev(vf)
        iproute = self.iproute_factory()
        try:
            indexes = iproute.link_lookup(ifname=name)
            if not indexes:
                raise VFSettingError(what="settings", vf=vf.address, pf=vf.pf, index=vf.index,
                                     problem=f"netdev {name} not found")
            yield iproute, indexes[0]
        finally:
            iproute.close()

    def _set(self, iproute, ifindex: int, vf: VF, what: str, settings: dict) -> None:
        try:
            iproute.link("set", index=ifindex, vf=dict(settings, vf=vf.index))
        except Exception as error:   # pyroute2's NetlinkError, or OSError
            code = getattr(error, "code", None) or getattr(error, "errno", None)
            raise VFSettingError(what=what, vf=vf.address, pf=vf.pf, index=vf.index,
                                 problem=os.strerror(code) if code else str(error),
                                 errno=code) from None

