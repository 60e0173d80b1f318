"""VF settings on the PF, through netlink: read, apply, reset, set a MAC.

A VF's MAC, VLAN, spoof check, trust, rates and link state live on its PF
(``ip link set PF vf N …``).  Settings are read and applied in the string form
vfmigrate's metadata records them in (:mod:`vfmigrate.vfsettings`).  This
adapter is the only place that decides what to ask netlink; it takes the sysfs
root (to find the PF's netdev) and an ``IPRoute`` factory: pyroute2's in the
listener, :class:`vfmigrate.rtnl.RouteSocket` in the hook (sets only, without
pyroute2's import cost), a fake PF in unit tests; the SR-IOV lab exercises both
real ones.  Errors become :class:`VFSettingError`.
"""

from __future__ import annotations

import errno
import os

from . import vfsettings
from .errors import HostStateError
from .inventory import VF

# The hook imports this module to give arriving VFs their settings: collections.abc and
# contextlib (which imports functools and collections) would cost it ~2.5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

ZERO_MAC = "00:00:00:00:00:00"
UNREPORTED = 0xFFFFFFFF   # trust/spoofchk of a driver that does not report them (-1)
_LINK_STATES = dict(enumerate(vfsettings.LINK_STATES))   # IFLA_VF_LINK_STATE_AUTO = 0, …
_VLAN_PROTOCOLS = {0x8100: "802.1Q", 0x88A8: "802.1ad"}


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
        """MAC to zero, VLAN 0 (priority 0, 802.1Q), spoof check and trust to the host
        defaults; rates and link state too where they are set.

        Returns the settings the driver does not support (spoofchk/trust are
        optional for drivers; MAC and VLAN are not).
        """
        unsupported = []
        with self._session(vf) as (iproute, index):
            try:
                current = self._read(iproute, index, vf)
            except VFSettingError:
                current = {}   # unknown: rates and link state, which few set, stay as they are
            self._set(iproute, index, vf, "mac", {"mac": ZERO_MAC})
            self._set(iproute, index, vf, "vlan", {"vlan": 0})
            optional = [("spoofchk", {"spoofchk": int(self.spoofchk)}),
                        ("trust", {"trust": int(self.trust)})]
            if current.get("min-tx-rate", "0") != "0" or current.get("max-tx-rate", "0") != "0":
                optional.append(("rate", {"rate": {"min_tx_rate": 0, "max_tx_rate": 0}}))
            if current.get("link-state", "auto") != "auto":
                optional.append(("link-state", {"link_state": 0}))
            for name, setting in optional:
                try:
                    self._set(iproute, index, vf, name, setting)
                except VFSettingError as error:
                    if error.fields.get("errno") != errno.EOPNOTSUPP:
                        raise
                    unsupported.append(name)
        return unsupported

    def read_settings(self, vf: VF) -> dict[str, str]:
        """The VF's settings as its PF reports them, in metadata form (a driver that does
        not report trust or spoof checking leaves them out)."""
        with self._session(vf) as (iproute, index):
            return self._read(iproute, index, vf)

    def apply(self, vf: VF, settings: dict[str, str]) -> dict[str, str]:
        """Give the VF ``settings`` (metadata form) except the VLAN's; returns, per setting
        that was not applied, why not."""
        requests = []
        if "trust" in settings:
            requests.append((["trust"], {"trust": int(settings["trust"] == "on")}))
        if "spoofchk" in settings:
            requests.append((["spoofchk"], {"spoofchk": int(settings["spoofchk"] == "on")}))
        rates = [name for name in ("min-tx-rate", "max-tx-rate") if name in settings]
        if rates:
            requests.append((rates, {"rate": {
                "min_tx_rate": int(settings.get("min-tx-rate", "0")),
                "max_tx_rate": int(settings.get("max-tx-rate", "0"))}}))
        if "link-state" in settings:
            requests.append((["link-state"],
                             {"link_state": vfsettings.LINK_STATES.index(settings["link-state"])}))
        failed: dict[str, str] = {}
        with self._session(vf) as (iproute, index):
            for names, setting in requests:
                try:
                    self._set(iproute, index, vf, "/".join(names), setting)
                except VFSettingError as error:
                    for name in names:
                        failed[name] = error.fields["problem"]
        return failed

    def set_vlan_priority(self, vf: VF, vlan: int, qos: int) -> bool:
        """VLAN ``vlan`` with priority ``qos`` (802.1Q) on the VF; True once done."""
        with self._session(vf) as (iproute, index):
            self._set(iproute, index, vf, "VLAN priority", {"vlan": {"vlan": vlan, "qos": qos}})
        return True

    def set_mac(self, vf: VF, mac: str, vlan: int | None = None) -> bool:
        """Give the VF a MAC (and VLAN) through its PF; True once done."""
        with self._session(vf) as (iproute, index):
            self._set(iproute, index, vf, "mac", {"mac": mac})
            if vlan is not None:
                self._set(iproute, index, vf, "vlan", {"vlan": vlan})
        return True

    # -- netlink ------------------------------------------------------------

    def _session(self, vf: VF) -> "_Session":
        """``with self._session(vf) as (iproute, ifindex):`` an IPRoute and the PF's
        ifindex, the IPRoute closed afterwards."""
        return _Session(self, vf)

    def _read(self, iproute, ifindex: int, vf: VF) -> dict[str, str]:
        try:
            [link] = iproute.get_links(ifindex, ext_mask=1)   # RTEXT_FILTER_VF
        except Exception as error:   # pyroute2's NetlinkError, or OSError
            code = getattr(error, "code", None) or getattr(error, "errno", None)
            raise VFSettingError(what="settings", vf=vf.address, pf=vf.pf, index=vf.index,
                                 problem=os.strerror(code) if code else str(error),
                                 errno=code) from None
        vflist = link.get_attr("IFLA_VFINFO_LIST")
        for info in (vflist.get_attrs("IFLA_VF_INFO") if vflist is not None else ()):
            mac = info.get_attr("IFLA_VF_MAC")
            if mac is not None and mac["vf"] == vf.index:
                return _settings_of(info)
        raise VFSettingError(what="settings", vf=vf.address, pf=vf.pf, index=vf.index,
                             problem="the PF does not report this VF")

    def _set(self, iproute, ifindex: int, vf: VF, what: str, settings: dict) -> None:
        try:
            iproute.link("set", index=ifindex, vf=dict(settings, vf=vf.index))
        except Exception as error:   # pyroute2's NetlinkError, or OSError
            code = getattr(error, "code", None) or getattr(error, "errno", None)
            raise VFSettingError(what=what, vf=vf.address, pf=vf.pf, index=vf.index,
                                 problem=os.strerror(code) if code else str(error),
                                 errno=code) from None



def _settings_of(info) -> dict[str, str]:
    """One ``IFLA_VF_INFO`` in metadata form."""
    settings: dict[str, str] = {}
    for name, attribute in (("trust", "IFLA_VF_TRUST"), ("spoofchk", "IFLA_VF_SPOOFCHK")):
        value = info.get_attr(attribute)
        if value is not None and value[name] != UNREPORTED:
            settings[name] = "on" if value[name] else "off"
    rate = info.get_attr("IFLA_VF_RATE")
    if rate is not None:
        settings["min-tx-rate"] = str(rate["min_tx_rate"])
        settings["max-tx-rate"] = str(rate["max_tx_rate"])
    link_state = info.get_attr("IFLA_VF_LINK_STATE")
    if link_state is not None and link_state["link_state"] in _LINK_STATES:
        settings["link-state"] = _LINK_STATES[link_state["link_state"]]
    vlan = info.get_attr("IFLA_VF_VLAN")
    if vlan is not None:
        settings["vlan-qos"] = str(vlan["qos"])
    vlans = info.get_attr("IFLA_VF_VLAN_LIST")
    for entry in (vlans.get_attrs("IFLA_VF_VLAN_INFO") if vlans is not None else ()):
        protocol = _VLAN_PROTOCOLS.get(entry["proto"])
        if protocol is not None:
            settings["vlan-proto"] = protocol
    return settings


class _Session:
    """What :meth:`VFNetlink._session` returns (a class: no contextlib on the hook's path)."""

    def __init__(self, netlink: VFNetlink, vf: VF) -> None:
        self.netlink, self.vf = netlink, vf

    def __enter__(self) -> tuple[object, int]:
        vf = self.vf
        name = self.netlink.pf_netdev(vf)
        self.iproute = self.netlink.iproute_factory()
        try:
            indexes = self.iproute.link_lookup(ifname=name)
            if not indexes:
                raise VFSettingError(what="settings", vf=vf.address, pf=vf.pf,
                                     index=vf.index, problem=f"netdev {name} not found")
        except BaseException:   # __exit__ runs only once __enter__ has returned
            self.iproute.close()
            raise
        return self.iproute, indexes[0]

    def __exit__(self, *exc_info: object) -> None:
        self.iproute.close()
