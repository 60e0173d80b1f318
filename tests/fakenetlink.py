"""A PF's VF settings behind rtnetlink, for hosts without SR-IOV hardware.

:class:`FakePFs` stands in for the kernel behind pyroute2's ``IPRoute``: it
holds each VF's settings per PF netdev, answers ``get_links(index,
ext_mask=1)`` with messages shaped as pyroute2 decodes ``IFLA_VFINFO_LIST``,
and applies ``link("set", index=…, vf={…})`` the way a PF driver does,
refusing with EOPNOTSUPP what its driver lacks.  The SR-IOV lab runs the real
thing (igb); this only lets unit tests see what was asked and what resulted.
"""

from __future__ import annotations

import errno

UNREPORTED = 0xFFFFFFFF


class _Attrs:
    def __init__(self, attrs: dict) -> None:
        self.attrs = attrs

    def get_attr(self, name: str):
        value = self.attrs.get(name)
        return value[0] if isinstance(value, list) else value

    def get_attrs(self, name: str) -> list:
        value = self.attrs.get(name)
        return value if isinstance(value, list) else ([] if value is None else [value])


class FakeVF:
    def __init__(self, index: int) -> None:
        self.index = index
        self.mac = "00:00:00:00:00:00"
        self.vlan, self.qos, self.proto = 0, 0, 0x8100
        self.spoofchk = 1
        self.trust = 0
        self.min_tx_rate = self.max_tx_rate = 0
        self.link_state = 0

    def info(self, reports_trust: bool = True) -> _Attrs:
        vf = self.index
        return _Attrs({
            "IFLA_VF_MAC": {"vf": vf, "mac": self.mac},
            "IFLA_VF_VLAN": {"vf": vf, "vlan": self.vlan, "qos": self.qos},
            "IFLA_VF_RATE": {"vf": vf, "min_tx_rate": self.min_tx_rate,
                             "max_tx_rate": self.max_tx_rate},
            "IFLA_VF_SPOOFCHK": {"vf": vf, "spoofchk": self.spoofchk},
            "IFLA_VF_LINK_STATE": {"vf": vf, "link_state": self.link_state},
            "IFLA_VF_TRUST": {"vf": vf, "trust": self.trust if reports_trust else UNREPORTED},
            "IFLA_VF_VLAN_LIST": _Attrs({"IFLA_VF_VLAN_INFO": [
                {"vf": vf, "vlan": self.vlan, "qos": self.qos, "proto": self.proto}]}),
        })


class FakePF:
    """One PF's VFs; ``lacks`` names what its driver refuses (``trust``, ``rate``,
    ``link_state``, …) with EOPNOTSUPP."""

    def __init__(self, netdev: str, ifindex: int, num_vfs: int, lacks=()) -> None:
        self.netdev, self.ifindex = netdev, ifindex
        self.lacks = set(lacks)
        self.vfs = [FakeVF(index) for index in range(num_vfs)]


class FakePFs:
    """The kernel side: PFs by netdev; ``requests`` lists every set, in order."""

    def __init__(self) -> None:
        self.pfs: dict[str, FakePF] = {}
        self.requests: list[tuple[str, int, dict]] = []
        self.opened = self.closed = 0   # IPRoutes made by iproute(), and closed

    def add(self, netdev: str, num_vfs: int, lacks=()) -> FakePF:
        pf = FakePF(netdev, 100 + len(self.pfs), num_vfs, lacks)
        self.pfs[netdev] = pf
        return pf

    def vf(self, netdev: str, index: int) -> FakeVF:
        return self.pfs[netdev].vfs[index]

    def iproute(self) -> "FakeIPRoute":
        self.opened += 1
        return FakeIPRoute(self)


class FakeIPRoute:
    """What :class:`vfmigrate.vfnetlink.VFNetlink` uses of pyroute2's ``IPRoute``."""

    def __init__(self, kernel: FakePFs) -> None:
        self.kernel = kernel

    def _pf(self, index: int) -> FakePF:
        for pf in self.kernel.pfs.values():
            if pf.ifindex == index:
                return pf
        raise OSError(errno.ENODEV, "No such device")

    def link_lookup(self, ifname: str) -> list[int]:
        pf = self.kernel.pfs.get(ifname)
        return [pf.ifindex] if pf else []

    def get_links(self, index: int, ext_mask: int = 0) -> list:
        pf = self._pf(index)
        infos = [vf.info("trust" not in pf.lacks) for vf in pf.vfs] if ext_mask & 1 else []
        return [_Attrs({"IFLA_IFNAME": pf.netdev,
                        "IFLA_VFINFO_LIST": _Attrs({"IFLA_VF_INFO": infos})})]

    def link(self, command: str, *, index: int, vf: dict) -> None:
        pf = self._pf(index)
        request = dict(vf)
        number = request.pop("vf")
        self.kernel.requests.append((pf.netdev, number, dict(request)))
        target = pf.vfs[number]
        for key, value in request.items():
            if key in pf.lacks:
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
            if key == "rate":
                target.min_tx_rate, target.max_tx_rate = value["min_tx_rate"], value["max_tx_rate"]
            elif key == "vlan":
                spec = value if isinstance(value, dict) else {"vlan": value, "qos": 0}
                target.vlan, target.qos, target.proto = spec["vlan"], spec.get("qos", 0), 0x8100
            else:
                setattr(target, key, value)

    def close(self) -> None:
        self.kernel.closed += 1
