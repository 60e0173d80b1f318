"""Which devices ``vfmigrate migrate`` unplugs, and the entries it leaves for the
destination (no libvirt: the live XML and the check's verdict are given)."""

from __future__ import annotations

from vfmigrate import METADATA_NAMESPACE, domxml, metadata
from vfmigrate.assisted import AssistedMigration, Options
from vfmigrate.check import CheckReport, DeviceCheck
from vfmigrate.config import Config

from .domains import guest_uuid

LIVE = f"""<domain type='kvm' id='1'>
  <name>g</name><uuid>{guest_uuid('g')}</uuid>
  <metadata><v:vfs xmlns:v='{METADATA_NAMESPACE}'>
    <v:vf mac='52:54:00:00:02:01' network='physnet1' address='0000:3b:01.2'
          device='stand-in' bridge='br0'/>
    <v:vf mac='52:54:00:00:02:02' network='physnet1' address='0000:3b:01.3'
          device='simulated'/>
  </v:vfs></metadata>
  <memory unit='KiB'>65536</memory>
  <devices>
    <interface type='hostdev' managed='yes'>
      <mac address='52:54:00:00:01:01'/>
      <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x01' function='0x1'/></source>
      <alias name='hostdev0'/>
      <address type='pci' domain='0x0000' bus='0x07' slot='0x00' function='0x0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:00:02:01'/>
      <source bridge='br0'/><model type='virtio'/>
      <alias name='net1'/>
      <address type='pci' domain='0x0000' bus='0x08' slot='0x00' function='0x0'/>
    </interface>
  </devices>
</domain>""".encode()


def test_a_stand_in_moves_as_a_stand_in_and_a_simulated_vf_has_nothing_to_unplug():
    migration = AssistedMigration(None, "qemu+ssh://b/system", "g",
                                  config=Config("/etc/vfmigrate/vfmigrate.conf",
                                                allow_stand_ins=True),
                                  options=Options(), open_destination=lambda uri: None)
    devices = domxml.parse(LIVE, allow_stand_ins=True).devices
    check = CheckReport("g", "qemu+ssh://b/system", devices=[
        DeviceCheck(d.alias or d.mac, d.address, "physnet1", "assisted", "") for d in devices])
    moving = migration._vfs_to_move(LIVE, check)
    assert [(vf.name, vf.alias, vf.kind, vf.bridge, str(vf.guest_address)) for vf in moving] == [
        ("hostdev0", "hostdev0", "interface", None, "0000:07:00.0"),
        ("52:54:00:00:02:01", "net1", "stand-in", "br0", "0000:08:00.0")]
    entries = migration._entries_for(domxml.parse(LIVE).metadata_entries, moving)
    assert [(entry.get("mac"), entry.get("device"), entry.get("replug")) for entry in entries] == [
        ("52:54:00:00:02:01", "stand-in", metadata.ON_ARRIVAL),
        ("52:54:00:00:02:02", "simulated", None),
        ("52:54:00:00:01:01", "interface", metadata.ON_ARRIVAL)]
    assert entries[2]["address"] == "0000:3b:01.1"


def test_a_vf_moves_as_its_own_element_though_a_nic_before_it_has_its_mac():
    """domxml says which element is the device: not the first interface with its MAC."""
    virtio = (b"<interface type='bridge'><mac address='52:54:00:00:01:01'/>"
              b"<source bridge='br0'/><model type='virtio'/><alias name='net0'/></interface>")
    xml = LIVE.replace(b"<devices>\n", b"<devices>\n    " + virtio + b"\n", 1)
    migration = AssistedMigration(None, "qemu+ssh://b/system", "g", config=None,
                                  options=Options(), open_destination=lambda uri: None)
    [vf] = domxml.parse(xml).devices
    check = CheckReport("g", "qemu+ssh://b/system", devices=[
        DeviceCheck(vf.alias, vf.address, "physnet1", "assisted", "")])
    [moving] = migration._vfs_to_move(xml, check)
    assert (moving.alias, str(moving.guest_address)) == ("hostdev0", "0000:07:00.0")
    # the device XML to plug it back: its own element, libvirt's alias dropped
    assert moving.element.startswith('<interface type="hostdev" managed="yes">')
    assert "52:54:00:00:01:01" in moving.element and "<alias" not in moving.element
