"""``vfmigrate check`` against libvirt's test driver with custom hosts.

The test driver (``test:///path/to/host.xml``) is real libvirt API code over a
host described in a file: node devices with SR-IOV capabilities, networks and
running guests, which the namespaced testbed cannot have.
"""

from __future__ import annotations

import io
import json

import pytest

from tests.fakesysfs import NVME_PM1733
from vfmigrate.cli import main

libvirt = pytest.importorskip("libvirt")

DESTINATION = """<node>
  <device>
    <name>pci_0000_5e_00_0</name>
    <parent>computer</parent>
    <capability type='pci'>
      <class>0x020000</class>
      <domain>0</domain><bus>94</bus><slot>0</slot><function>0</function>
      <product id='0x1572'/><vendor id='0x8086'/>
      <capability type='virt_functions' maxCount='64'>
        <address domain='0x0000' bus='0x5e' slot='0x02' function='0x0'/>
        <address domain='0x0000' bus='0x5e' slot='0x02' function='0x1'/>
      </capability>
    </capability>
  </device>
  <device>
    <name>net_ens1f0_3c_fd_fe_00_00_01</name>
    <parent>pci_0000_5e_00_0</parent>
    <capability type='net'><interface>ens1f0</interface></capability>
  </device>
  <device>
    <name>pci_0000_86_00_0</name>
    <parent>computer</parent>
    <capability type='pci'>
      <domain>0</domain><bus>134</bus><slot>0</slot><function>0</function>
      <product id='0x1572'/><vendor id='0x8086'/>
      <capability type='virt_functions' maxCount='64'>
        <address domain='0x0000' bus='0x86' slot='0x02' function='0x0'/>
        <address domain='0x0000' bus='0x86' slot='0x02' function='0x1'/>
        <address domain='0x0000' bus='0x86' slot='0x02' function='0x2'/>
      </capability>
    </capability>
  </device>
  <device>
    <name>net_ens2f0_3c_fd_fe_00_00_02</name>
    <parent>pci_0000_86_00_0</parent>
    <capability type='net'><interface>ens2f0</interface></capability>
  </device>
  %(network)s
  <domain type='test'>
    <name>resident</name>
    <memory>65536</memory>
    <os><type>hvm</type></os>
    <devices>
      <interface type='hostdev' managed='yes'>
        <mac address='52:54:00:00:00:77'/>
        <source><address type='pci' domain='0x0000' bus='0x5e' slot='0x02' function='0x0'/></source>
      </interface>
    </devices>
  </domain>
</node>"""

PHYSNET2_POOL = """<network>
    <name>physnet2</name>
    <forward mode='hostdev' managed='yes'><pf dev='ens2f0'/></forward>
  </network>"""


def device(vf, mac, teaming=False, hostdev=False) -> str:
    pci = vf.xml_attributes()
    source = (f"<source><address type='pci' domain='{pci['domain']}' bus='{pci['bus']}' "
              f"slot='{pci['slot']}' function='{pci['function']}'/></source>")
    team = "<teaming type='transient' persistent='ua-backup0'/>" if teaming else ""
    if hostdev:
        return f"<hostdev mode='subsystem' type='pci' managed='yes'>{source}{team}</hostdev>"
    return (f"<interface type='hostdev' managed='yes'><mac address='{mac}'/>{source}{team}"
            "</interface>")


def source_host(tmp_path, devices: list[str]) -> str:
    path = tmp_path / "source.xml"
    path.write_text(f"<node><domain type='test'><name>vfguest</name><memory>65536</memory>"
                    f"<os><type>hvm</type></os><devices>{''.join(devices)}</devices></domain>"
                    "</node>")
    return f"test://{path}"


def destination_host(tmp_path, network: str = "") -> str:
    path = tmp_path / "destination.xml"
    path.write_text(DESTINATION % {"network": network})
    return f"test://{path}"


def check(host, source_uri, destination_uri, *extra) -> tuple[int, dict]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["vfmigrate", "--config", str(host.config_path), "check", "vfguest",
                 destination_uri, "--uri", source_uri, "--json", *extra], out, err)
    assert err.getvalue() == ""
    return code, json.loads(out.getvalue())


def test_vf_without_teaming_needs_vfmigrate_migrate(host, tmp_path):
    source = source_host(tmp_path, [device(host.physnet1_vfs[5], "52:54:00:00:00:01")])
    code, report = check(host, source, destination_host(tmp_path))
    assert (code, report["path"], report["can_migrate"]) == (10, "vfmigrate-migrate", True)
    [dev] = report["devices"]
    assert (dev["address"], dev["network"], dev["path"]) == \
        (str(host.physnet1_vfs[5]), "physnet1", "assisted")
    [network] = report["networks"]
    assert (network["needed"], network["free"], network["total"], network["pfs"]) == \
        (1, 1, 2, ["ens1f0"])   # one of the two VFs is held by the resident guest
    assert network["method"] == "PFs named as in this host's config"
    assert report["destination_libvirt"].startswith("9.")


def test_not_enough_free_vfs_means_cannot(host, tmp_path):
    source = source_host(tmp_path, [device(host.physnet1_vfs[5], "52:54:00:00:00:01"),
                                    device(host.physnet1_vfs[6], "52:54:00:00:00:02")])
    code, report = check(host, source, destination_host(tmp_path))
    assert (code, report["path"]) == (1, None)
    assert report["problems"] == ["network physnet1: the destination has 1 free VF for 2 "
                                  "(PFs named as in this host's config)"]


def test_a_destination_whose_pfs_are_named_otherwise_has_unknown_free_vfs(host, tmp_path):
    """lab-b on a pxb-pcie bus names its PF ens1 where lab-a's is enp1s0 (issue 16): its
    free VFs are unknown over libvirt, not none, and the destination's hook decides."""
    path = tmp_path / "renamed.xml"
    path.write_text((DESTINATION % {"network": ""}).replace("ens1f0", "ens1"))
    source = source_host(tmp_path, [device(host.physnet1_vfs[5], "52:54:00:00:00:01")])
    code, report = check(host, source, f"test://{path}")
    assert (code, report["path"], report["can_migrate"]) == (10, "vfmigrate-migrate", True)
    [network] = report["networks"]
    assert (network["free"], network["total"], network["pfs"]) == (None, None, [])
    assert network["method"] == "no PF there is named as in this host's config"
    assert ("network physnet1: the destination has no PF named as in this host's config, so "
            "its free VFs are not visible; its hook decides when the guest arrives"
            in report["notes"])


def test_libvirt_hostdev_network_of_the_label_names_the_pool(host, tmp_path):
    source = source_host(tmp_path, [device(host.physnet2_vfs[1], "52:54:00:00:00:01")])
    code, report = check(host, source, destination_host(tmp_path, PHYSNET2_POOL))
    [network] = report["networks"]
    assert (code, network["free"], network["pfs"]) == (10, 3, ["ens2f0"])
    assert network["method"] == "PFs of the destination's libvirt network 'physnet2'"


def test_teaming_needs_a_qemu_with_failover(host, tmp_path):
    source = source_host(tmp_path, [device(host.physnet1_vfs[5], "52:54:00:00:00:01",
                                           teaming=True)])
    code, report = check(host, source, destination_host(tmp_path))
    assert report["devices"][0]["path"] == "teaming"
    # The test driver reports hypervisor version 0.0.2: no virtio-net failover.
    assert (code, report["problems"]) == (1, ["destination QEMU 0.0.2 has no virtio-net "
                                              "failover (needs 4.2)"])


def test_non_network_vf_is_refused_unless_included(host, tmp_path):
    [nvme] = host.sysfs.add_pf(NVME_PM1733, "0000:d8:00.0", "nvme0", 1)
    host.write_config({"physnet1": "ens1f0", "storage": "0000:d8:00.0"})
    source = source_host(tmp_path, [device(nvme, None, hostdev=True)])
    code, report = check(host, source, destination_host(tmp_path))
    assert code == 1
    assert report["devices"][0]["reason"].startswith("PCI class 0x010802 is not a network "
                                                     "controller")
    code, report = check(host, source, destination_host(tmp_path), "--include-device",
                         str(nvme))
    assert (report["devices"][0]["path"], report["devices"][0]["network"]) == \
        ("assisted", "storage")
    # The destination has no PF at this host's address for the network: how many VFs it
    # has there is unknown over libvirt (its own config names its PFs), not none.
    assert report["networks"][0]["free"] is None
    assert code == 10


def test_text_output_names_each_device_and_network(host, tmp_path):
    source = source_host(tmp_path, [device(host.physnet1_vfs[5], "52:54:00:00:00:01")])
    out, err = io.StringIO(), io.StringIO()
    code = main(["vfmigrate", "--config", str(host.config_path), "check", "vfguest",
                 destination_host(tmp_path), "--uri", source], out, err)
    lines = out.getvalue().splitlines()
    assert code == 10
    assert lines[0].endswith("can migrate with 'vfmigrate migrate' (VFs are unplugged, moved "
                             "and plugged in again)")
    assert lines[1] == (f"  device 52:54:00:00:00:01 (VF {host.physnet1_vfs[5]}, network "
                        "physnet1): assisted: no teaming: unplugged before and plugged in "
                        "after the migration")


def test_test_only_vf_entries_are_a_problem_unless_allowed(host, tmp_path):
    """A simulated VF in the guest's metadata is a testbed's; on a host without
    ``allow_stand_ins`` it is no VF to move, and the check says why it cannot."""
    from vfmigrate import METADATA_NAMESPACE
    path = tmp_path / "source.xml"
    path.write_text(f"<node><domain type='test'><name>vfguest</name><memory>65536</memory>"
                    f"<metadata><v:vfs xmlns:v='{METADATA_NAMESPACE}'><v:vf "
                    f"mac='52:54:00:00:00:09' network='physnet1' address='{host.physnet1_vfs[7]}' "
                    f"device='simulated'/></v:vfs></metadata>"
                    f"<os><type>hvm</type></os><devices/></domain></node>")
    code, report = check(host, f"test://{path}", destination_host(tmp_path))
    assert (code, report["devices"]) == (1, [])
    assert report["problems"] == [
        "device 52:54:00:00:00:09: a simulated VF in vfmigrate's metadata, which only "
        f"testbeds use; {host.config_path} has allow_stand_ins = no"]
    host.write_config(allow_stand_ins="yes")
    code, report = check(host, f"test://{path}", destination_host(tmp_path))
    [dev] = report["devices"]
    assert (code, dev["path"], dev["reason"]) == (10, "assisted", "VF held outside the device list")


ON_NODE_1 = "<numatune><memory mode='strict' nodeset='1'/></numatune>"


def numa_destination(tmp_path) -> str:
    """DESTINATION with ens1f0's PF on NUMA node 0 and ens2f0's on node 1."""
    path = tmp_path / "destination.xml"
    xml = DESTINATION % {"network": ""}
    for bus, node in (("94", 0), ("134", 1)):
        marker = f"<bus>{bus}</bus><slot>0</slot><function>0</function>"
        xml = xml.replace(marker, f"{marker}<numa node='{node}'/>", 1)
    path.write_text(xml)
    return f"test://{path}"


def pinned_source(tmp_path, devices: list[str], placement: str) -> str:
    path = tmp_path / "source.xml"
    path.write_text(f"<node><domain type='test'><name>vfguest</name><memory>65536</memory>"
                    f"{placement}<os><type>hvm</type></os><devices>{''.join(devices)}"
                    "</devices></domain></node>")
    return f"test://{path}"


def test_a_pinned_guest_is_told_how_many_free_vfs_sit_on_its_node(host, tmp_path):
    host.write_config({"physnet1": "ens1f0, ens2f0"})
    source = pinned_source(tmp_path, [device(host.physnet1_vfs[5], "52:54:00:00:00:01")],
                           ON_NODE_1)
    code, report = check(host, source, numa_destination(tmp_path))
    [network] = report["networks"]
    # ens1f0 (node 0): 1 of 2 free; ens2f0 (node 1): 3 free
    assert (code, network["free"], network["near"], network["nodes"], network["affinity"]) \
        == (10, 4, 3, "1", "preferred")


def test_required_affinity_without_room_on_the_guests_node_cannot_migrate(host, tmp_path):
    host.write_config({"physnet1": "ens1f0"})
    with host.config_path.open("a") as config:
        config.write("numa_affinity = required\n")
    source = pinned_source(tmp_path, [device(host.physnet1_vfs[5], "52:54:00:00:00:01")],
                           ON_NODE_1)
    code, report = check(host, source, numa_destination(tmp_path))
    assert (code, report["networks"][0]["near"]) == (1, 0)
    assert report["problems"] == [
        "network physnet1: the destination has 0 free VFs on NUMA node 1, where the guest "
        "runs, for 1, and numa_affinity = required (as in this host's config)"]
    out, err = io.StringIO(), io.StringIO()
    main(["vfmigrate", "--config", str(host.config_path), "check", "vfguest",
          numa_destination(tmp_path), "--uri", source], out, err)
    assert ("  network physnet1 on the destination: needs 1, 1 free of 2 (PFs named as in "
            "this host's config); 0 free on NUMA node 1, where the guest runs "
            "(numa_affinity = required)") in out.getvalue().splitlines()


def test_preferred_affinity_without_room_is_a_note(host, tmp_path):
    host.write_config({"physnet1": "ens1f0"})
    source = pinned_source(tmp_path, [device(host.physnet1_vfs[5], "52:54:00:00:00:01")],
                           ON_NODE_1)
    code, report = check(host, source, numa_destination(tmp_path))
    assert (code, report["problems"]) == (10, [])
    assert ("network physnet1: the destination has 0 free VFs on NUMA node 1, where the "
            "guest runs, for 1: the others would come from another node") in report["notes"]


def test_cpu_pins_on_a_destination_without_cells_are_unknown_not_a_refusal(host, tmp_path):
    source = pinned_source(tmp_path, [device(host.physnet1_vfs[5], "52:54:00:00:00:01")],
                           "<vcpu cpuset='8-11'>2</vcpu>")
    code, report = check(host, source, numa_destination(tmp_path))
    assert (code, report["networks"][0]["near"]) == (10, None)
    assert any("whether its VFs sit on the guest's node is unknown" in note
               for note in report["notes"])


def test_only_a_stand_ins_network_goes_uncounted_and_the_report_is_unchanged(host, tmp_path):
    """A stand-in (a virtio NIC of the testbed) needs no VF there: its network's free VFs
    are not counted.  A simulated VF's are.  Whether a device is a stand-in is not
    reported: the devices keep the fields they had."""
    from vfmigrate import METADATA_NAMESPACE
    host.write_config(allow_stand_ins="yes")
    path = tmp_path / "source.xml"
    path.write_text(f"<node><domain type='test'><name>vfguest</name><memory>65536</memory>"
                    f"<metadata><v:vfs xmlns:v='{METADATA_NAMESPACE}'>"
                    f"<v:vf mac='52:54:00:00:00:0a' network='physnet1' "
                    f"address='{host.physnet1_vfs[7]}' device='stand-in' bridge='br0'/>"
                    f"<v:vf mac='52:54:00:00:00:0b' network='physnet2' "
                    f"address='{host.physnet2_vfs[0]}' device='simulated'/></v:vfs></metadata>"
                    f"<os><type>hvm</type></os><devices/></domain></node>")
    code, report = check(host, f"test://{path}", destination_host(tmp_path))
    assert code == 10
    assert [list(dev) for dev in report["devices"]] == \
        [["name", "address", "network", "path", "reason"]] * 2
    assert [(dev["network"], dev["reason"]) for dev in report["devices"]] == [
        ("physnet1", "stand-in for a VF (testbed)"),
        ("physnet2", "VF held outside the device list")]
    methods = {network["network"]: network["method"] for network in report["networks"]}
    assert methods == {"physnet1": "stand-in VFs are simulated: not counted",
                       "physnet2": "no PF there is named as in this host's config"}
