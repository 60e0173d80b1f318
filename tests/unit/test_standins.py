"""The testbed's stand-ins, and the one place that names their kinds."""

from __future__ import annotations

from vfmigrate import METADATA_NAMESPACE, domxml, standins

from .domains import teaming_guest


def with_entries(xml: bytes, *entries: str) -> bytes:
    element = (f"<metadata><v:vfs xmlns:v='{METADATA_NAMESPACE}'>"
               + "".join(f"<v:vf {entry}/>" for entry in entries) + "</v:vfs></metadata>")
    return xml.replace(b"<memory", element.encode() + b"<memory", 1)


def test_the_test_only_kinds_are_accepted_after_the_production_ones():
    assert [standins.is_test_only({"device": kind}) for kind in domxml.DEVICE_TYPES] == \
        [False, False, True, True]
    assert domxml.DEVICE_TYPES == ("interface", "hostdev", "stand-in", "simulated")
    assert not standins.is_test_only({})


def test_a_stand_in_is_an_entry_that_describes_no_device_of_the_guest():
    """An entry of kind stand-in that names a VF of the guest describes that VF (which
    vfmigrate migrate unplugs and plugs back as the VF it is)."""
    base = teaming_guest("g", ["0000:3b:01.1"])
    [vf] = domxml.parse(base).devices
    xml = with_entries(base, f"mac='{vf.mac}' network='physnet1' device='stand-in' bridge='br0'",
                       "mac='52:54:00:00:02:01' network='physnet1' address='0000:3b:01.2' "
                       "device='stand-in' bridge='br0'",
                       "mac='52:54:00:00:02:02' network='physnet1' address='0000:3b:01.3' "
                       "device='simulated'")
    real, stand_in, simulated = domxml.parse(xml, allow_stand_ins=True).devices
    assert (real.kind, stand_in.kind, simulated.kind) == ("interface", "metadata", "metadata")
    assert [standins.is_stand_in(d) for d in (real, stand_in, simulated)] == [False, True, False]
    assert [standins.describe(d) for d in (stand_in, simulated)] == \
        ["stand-in for a VF (testbed)", "VF held outside the device list"]
