"""The testbed's stand-ins for VFs: the one place production code names them.

The namespaced testbed has no SR-IOV hardware.  Its guests hold VFs declared in
vfmigrate's metadata with a test-only ``device`` kind (:data:`TEST_ONLY_DEVICE_TYPES`):

* ``simulated``: a VF with no device at all; it is claimed, travels and is
  released like a VF, and is never plugged;
* ``stand-in``: a virtio NIC on a bridge standing in for the VF, which
  ``vfmigrate migrate`` unplugs and plugs back like one.

A host honours them only with ``allow_stand_ins = yes``; elsewhere an entry of
these kinds holds nothing and an arriving guest that has one is refused
(:class:`TestOnlyVF`, raised by :meth:`vfmigrate.domxml.DomainXML.refuse_test_only`).
Other modules ask here rather than compare kind names.

Kept small, importing only what :mod:`vfmigrate.domxml` already has: the hook
imports it.
"""

from __future__ import annotations

from .errors import Refused
from .metadata import quoteattr

STAND_IN, SIMULATED = "stand-in", "simulated"
TEST_ONLY_DEVICE_TYPES = (STAND_IN, SIMULATED)


class TestOnlyVF(Refused):
    """A guest with test-only VF entries on a host that does not allow them (exit 1)."""

    msg_fmt = ("guest '{domain}' has {what} in vfmigrate's metadata, which only testbeds "
               "use, and {config_path} has allow_stand_ins = no; remove the entry from "
               "the guest's metadata, or set allow_stand_ins = yes on a testbed")

    __test__ = False   # not a pytest class


class StandInsNotAllowed(Refused):
    msg_fmt = ("guest '{domain}' has a stand-in VF ({mac}), which only testbeds use; set "
               "allow_stand_ins = yes in the config to plug it")


def is_test_only(entry: dict[str, str]) -> bool:
    """A metadata entry of a test-only ``device`` kind."""
    return entry.get("device") in TEST_ONLY_DEVICE_TYPES


def is_stand_in(device) -> bool:
    """A VF device (:class:`vfmigrate.domxml.VFDevice`) that is a virtio stand-in: a
    stand-in entry held only in the metadata (one that describes a device of the guest
    describes a VF)."""
    return device.kind == "metadata" and device.entry.get("device") == STAND_IN


def describe(device) -> str:
    """How ``vfmigrate check`` names a device held only in the metadata."""
    if is_stand_in(device):
        return "stand-in for a VF (testbed)"
    return "VF held outside the device list"


def plug_xml(entry: dict[str, str], *, mac: str, guest: str, domain: str,
             allow_stand_ins: bool) -> str:
    """The device XML that plugs a test-only entry in: the stand-in's virtio NIC on its
    bridge; StandInsNotAllowed for a simulated VF or where stand-ins are not allowed."""
    if entry.get("device") != STAND_IN or not allow_stand_ins:
        raise StandInsNotAllowed(domain=domain, mac=entry.get("mac"))
    return (f"<interface type='bridge'>{mac}<source bridge={quoteattr(entry['bridge'])}/>"
            f"<model type='virtio'/>{guest}</interface>")


def plugged(device, live) -> bool:
    """Whether a stand-in's NIC is in the guest (``live``: its parsed live XML, a
    :class:`vfmigrate.domxml.DomainXML`).  Found by its MAC alone: the NIC
    :func:`plug_xml` plugs in has the entry's MAC and never its alias."""
    return device.mac is not None and live.interface_element(device.mac) is not None
