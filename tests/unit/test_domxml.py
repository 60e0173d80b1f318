"""What domxml hands other modules besides the VF devices: each device's element, byte
for byte, the interface with a MAC, and the aliases of all devices (issue 15: domxml is
the one reader of domain XML; ``vfmigrate migrate`` copies and unplugs what it finds)."""

from __future__ import annotations

from vfmigrate import METADATA_NAMESPACE, domxml

from .domains import guest_uuid, teaming_guest
from .test_safety_parsing import status_file

VIRTIO = b"""<interface type='bridge'>
      <mac address='52:54:00:AA:00:01'/>
      <source bridge='br0'/><model type='virtio'/>
      <alias name='net0'/>
    </interface>"""
VF_INTERFACE = b"""<interface type="hostdev" managed="yes" note='a &gt; b'>
      <mac address="52:54:00:aa:00:02"/>
      <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source>
      <alias name='hostdev0'/>
    </interface
    >"""
VF_HOSTDEV = b"""<hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x3b' slot='0x02' function='0x2'/></source>
      <alias name='ua-vf1'/>
    </hostdev>"""
EMPTY_VF = b"<interface type='hostdev'/>"


def guest(*devices: bytes, metadata: str = "") -> bytes:
    return (f"<domain type='kvm'>\n  <name>g</name><uuid>{guest_uuid('g')}</uuid>\n{metadata}"
            "  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
            "    <disk type='file' device='disk'><source file='/d.img'/>"
            "<target dev='vda'/><alias name='virtio-disk0'/></disk>\n    ").encode() \
        + b"\n    ".join(devices) + b"\n  </devices>\n</domain>\n"


def test_each_device_element_is_handed_out_byte_for_byte():
    parsed = domxml.parse(guest(VIRTIO, VF_INTERFACE, VF_HOSTDEV, EMPTY_VF))
    assert [parsed.element(device) for device in parsed.devices] == \
        [VF_INTERFACE, VF_HOSTDEV, EMPTY_VF]


def test_a_status_file_hands_out_the_same_elements():
    xml = teaming_guest("db", ["0000:3b:02.1"], hostdev=True)
    live, status = domxml.parse(xml), domxml.parse(status_file(xml, "db"), status=True)
    assert [status.element(d) for d in status.devices] == [live.element(d) for d in live.devices]
    assert live.element(live.devices[0]).startswith(b"<hostdev ")


def test_a_metadata_only_vf_has_no_element():
    entries = (f"  <metadata><v:vfs xmlns:v='{METADATA_NAMESPACE}'><v:vf mac='52:54:00:aa:00:09' "
               "network='physnet1' address='0000:3b:02.3' replug='on-arrival'/></v:vfs>"
               "</metadata>\n")
    parsed = domxml.parse(guest(VIRTIO, metadata=entries))
    [entry] = parsed.devices
    assert entry.kind == "metadata" and parsed.element(entry) is None


def test_the_interface_with_a_mac_is_the_first_of_any_type():
    twin = VF_INTERFACE.replace(b"52:54:00:aa:00:02", b"52:54:00:aa:00:01")
    parsed = domxml.parse(guest(VIRTIO, twin, VF_HOSTDEV))
    assert parsed.interface_element("52:54:00:aa:00:01") == VIRTIO
    assert parsed.element(parsed.devices[0]) == twin   # a device is its own element
    assert parsed.interface_element("52:54:00:aa:00:02") is None
    assert parsed.interface_element("52:54:00:aa:00:03") is None


def test_device_aliases_are_those_of_every_device_and_only_of_devices():
    entries = (f"  <metadata><v:vfs xmlns:v='{METADATA_NAMESPACE}'><v:vf alias='ua-label' "
               "network='physnet1'/></v:vfs></metadata>\n")
    nested = VIRTIO.replace(b"<model type='virtio'/>",
                            b"<model type='virtio'/><driver><alias name='deep'/></driver>")
    parsed = domxml.parse(guest(nested, VF_HOSTDEV, metadata=entries))
    assert parsed.device_aliases == {"virtio-disk0", "net0", "ua-vf1"}



def test_text_is_read_only_inside_name_and_uuid_and_nothing_after_the_domain():
    """The parser reads character data only inside <name> and <uuid> (issue 15), and in a
    status file nothing after </domain>, where libvirt writes nothing."""
    xml = guest(VF_HOSTDEV).replace(b"<name>g</name>", b"<name>g<!-- a comment -->2</name>")
    status = status_file(xml, "g2").replace(
        b"</domstatus>", b"<extra><name>other</name><devices><hostdev type='pci'>"
                         b"<source><address bus='0x3c' slot='0x02'/></source></hostdev>"
                         b"</devices></extra></domstatus>")
    assert b"<extra>" in status
    for parsed in (domxml.parse(xml), domxml.parse(status, status=True)):
        assert parsed.name == "g2"
        assert parsed.uuid == guest_uuid("g")
        assert [str(address) for address in parsed.pci_sources] == ["0000:3b:02.2"]
