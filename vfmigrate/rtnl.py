"""The few rtnetlink requests the hook makes, without pyroute2.

The hook gives an arriving guest's VFs their recorded settings inside libvirt's
migration path, where importing pyroute2 would cost ~170 ms.  :class:`RouteSocket`
offers the part of pyroute2's ``IPRoute`` that :class:`vfmigrate.vfnetlink.VFNetlink`
uses to *set* VF settings — ``link_lookup(ifname=…)``, ``link("set", index=…,
vf={…})``, ``close()`` — over a raw ``NETLINK_ROUTE`` socket: one ``RTM_SETLINK``
with ``IFLA_VFINFO_LIST`` per request, acknowledged.  The listener, which reads
settings too and is not in a hurry, keeps pyroute2.  Only the C halves of the
socket and struct modules are imported (``socket`` would import ``enum`` and
``selectors``).
"""

from __future__ import annotations

import _socket
import _struct
import os

AF_NETLINK, NETLINK_ROUTE = 16, 0
RTM_SETLINK, NLMSG_ERROR = 19, 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
IFLA_VFINFO_LIST, IFLA_VF_INFO = 22, 1
# IFLA_VF_* attribute, and the payload after the u32 VF index, per pyroute2 key.
_VF_ATTRIBUTES = {"mac": 1, "vlan": 2, "spoofchk": 4, "link_state": 5, "rate": 6, "trust": 9}


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _vf_payload(key: str, vf: int, value) -> bytes:
    if key == "mac":
        octets = bytes(int(part, 16) for part in value.split(":"))
        return _struct.pack("=I", vf) + octets + b"\0" * (32 - len(octets))
    if key == "vlan":
        spec = value if isinstance(value, dict) else {"vlan": value, "qos": 0}
        return _struct.pack("=III", vf, spec["vlan"], spec.get("qos", 0))
    if key == "rate":
        return _struct.pack("=III", vf, value["min_tx_rate"], value["max_tx_rate"])
    return _struct.pack("=II", vf, int(value))


class RouteSocket:
    """A NETLINK_ROUTE socket that sets VF settings on a PF (see the module docstring)."""

    def __init__(self) -> None:
        self.socket = _socket.socket(AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                                     NETLINK_ROUTE)
        self.socket.settimeout(10.0)
        self.socket.bind((0, 0))
        self.sequence = 0

    def link_lookup(self, ifname: str) -> list[int]:
        try:
            return [_socket.if_nametoindex(ifname)]
        except OSError:
            return []

    def link(self, command: str, *, index: int, vf: dict) -> None:
        if command != "set":
            raise ValueError(f"RouteSocket only sets links, not {command!r}")
        settings = dict(vf)
        number = settings.pop("vf")
        attributes = b"".join(_attribute(_VF_ATTRIBUTES[key], _vf_payload(key, number, value))
                              for key, value in settings.items())
        body = (_struct.pack("=BxHiII", 0, 0, index, 0, 0)   # struct ifinfomsg
                + _attribute(IFLA_VFINFO_LIST, _attribute(IFLA_VF_INFO, attributes)))
        self.sequence += 1
        header = _struct.pack("=IHHII", 16 + len(body), RTM_SETLINK,
                              NLM_F_REQUEST | NLM_F_ACK, self.sequence, 0)
        self.socket.send(header + body)
        self._acknowledged()

    def _acknowledged(self) -> None:
        while True:
            reply = self.socket.recv(65536)
            offset = 0
            while offset + 16 <= len(reply):
                length, kind, _, sequence, _ = _struct.unpack_from("=IHHII", reply, offset)
                if kind == NLMSG_ERROR and sequence == self.sequence:
                    (error,) = _struct.unpack_from("=i", reply, offset + 16)
                    if error:
                        raise OSError(-error, os.strerror(-error))
                    return
                offset += max(length + (-length % 4), 16)

    def close(self) -> None:
        self.socket.close()
