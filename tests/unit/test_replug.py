"""Devices rebuilt from metadata entries for plugging VFs back in."""

from __future__ import annotations

import pytest

from vfmigrate.pci import PciAddress
from vfmigrate.replug import device_xml
from vfmigrate.standins import StandInsNotAllowed

VF = PciAddress.parse("0000:5e:02.1")


def test_interface_keeps_mac_vlan_and_guest_address():
    xml = device_xml({"mac": "52:54:00:aa:bb:cc", "vlan": "42", "guest-address": "0000:07:00.0",
                      "device": "interface"}, VF, domain="g", allow_stand_ins=False)
    assert xml == ("<interface type='hostdev' managed='yes'><mac address=\"52:54:00:aa:bb:cc\"/>"
                   "<source><address type='pci' domain='0x0000' bus='0x5e' slot='0x02' "
                   "function='0x1'/></source><vlan><tag id=\"42\"/></vlan>"
                   "<address type='pci' domain='0x0000' bus='0x07' slot='0x00' "
                   "function='0x0'/></interface>")
    without = device_xml({"mac": "52:54:00:aa:bb:cc", "guest-address": "0000:07:00.0"}, VF,
                         domain="g", allow_stand_ins=False, guest_address=False)
    assert "bus='0x07'" not in without


def test_hostdev_has_no_mac_or_vlan():
    xml = device_xml({"alias": "ua-vf0", "device": "hostdev", "vlan": "7"}, VF, domain="g",
                     allow_stand_ins=False)
    assert xml == ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address "
                   "type='pci' domain='0x0000' bus='0x5e' slot='0x02' function='0x1'/>"
                   "</source></hostdev>")


def test_stand_ins_need_the_config_switch():
    entry = {"mac": "52:54:00:aa:bb:cc", "device": "stand-in", "bridge": "vmbr0"}
    with pytest.raises(StandInsNotAllowed) as refused:
        device_xml(entry, VF, domain="g", allow_stand_ins=False)
    assert "set allow_stand_ins = yes" in str(refused.value)
    assert device_xml(entry, VF, domain="g", allow_stand_ins=True) == (
        "<interface type='bridge'><mac address=\"52:54:00:aa:bb:cc\"/><source "
        "bridge=\"vmbr0\"/><model type='virtio'/></interface>")
