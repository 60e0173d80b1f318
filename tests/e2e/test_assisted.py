"""``vfmigrate migrate`` and ``vfmigrate check`` on the namespaced testbed.

STAND-IN DEVICES: the testbed has no VFs, so the device moved here is a
virtio NIC standing in for a VF: vfmigrate's metadata names it as a VF of the
host (``device='stand-in'``, allowed by ``allow_stand_ins = yes``).  The
guest really unplugs it (the tiny Linux guest acknowledges PCIe hot-unplug;
a guest with no OS never does), the destination really claims a VF for it and
plugs a device in again.  This tests the orchestration's order and rollback;
real VFs are the SR-IOV lab's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from xml.etree import ElementTree

import pytest

from tests.testbed.guests import (SerialLog, guest_mac, linux_guest_xml, no_os_guest_xml,
                                  virtio_bridge_interface_xml)
from vfmigrate import METADATA_NAMESPACE

from .vfhosts import simulated_vf_of, vf_testbed, wait_until

STAND_IN_MAC = "52:54:00:5e:a1:1d"


def stand_in_metadata(vf) -> str:
    return (f"<metadata><vfmigrate:vfs xmlns:vfmigrate='{METADATA_NAMESPACE}'>"
            f"<vfmigrate:vf mac='{STAND_IN_MAC}' network='physnet1' address='{vf}' "
            f"device='stand-in' bridge='vmbr0'/></vfmigrate:vfs></metadata>")


def with_metadata(xml: str, element: str) -> str:
    end = xml.index("</name>") + len("</name>")
    return xml[:end] + element + xml[end:]


def stand_in_guest(testbed, source, image, name="assisted"):
    """The tiny Linux guest with its own NIC plus a stand-in VF NIC."""
    serial = SerialLog(testbed.shared_dir / f"{name}.serial.log")
    xml = linux_guest_xml(name, image, serial.path, interfaces=[
        virtio_bridge_interface_xml(guest_mac(name)),
        virtio_bridge_interface_xml(STAND_IN_MAC)])
    source.host.create_domain(with_metadata(xml, stand_in_metadata(source.vfs[1])))
    serial.wait_ready(timeout=120)
    return name, serial


def vfs_element(xml: str) -> str:
    """vfmigrate's own metadata element (the VF entries) of a domain XML."""
    start = xml.index("<vfmigrate:vfs")
    return xml[start:xml.index("</vfmigrate:vfs>", start)]


def stand_in_present(serial: SerialLog) -> bool:
    """Whether the guest's last interface report lists the stand-in NIC."""
    lines = serial.guest_lines()
    ends = [i for i, line in enumerate(lines) if line == "ifaces-end"]
    if not ends:
        return False
    start = max([i for i in range(ends[-1]) if not lines[i].startswith("iface ")] + [-1]) + 1
    return any(f"mac={STAND_IN_MAC}" in line for line in lines[start:ends[-1]])


@pytest.fixture
def stand_in_hosts():
    with vf_testbed(2, extra_config="allow_stand_ins = yes\n") as vf_hosts:
        yield vf_hosts


def vfmigrate_migrate(source, destination, name, *options, check=False):
    return source.vfmigrate("migrate", name, destination.host.uri, "--p2p", *options,
                            check=check)


@pytest.mark.between_versions
def test_stand_in_moves_and_is_plugged_back_in(stand_in_hosts, linux_guest_image):
    a, b = stand_in_hosts
    name, serial = stand_in_guest(stand_in_hosts.testbed, a, linux_guest_image)
    assert stand_in_present(serial)
    assert a.claim_summary() == [(name, str(a.vfs[1]), "active")]

    check = a.vfmigrate("check", name, b.host.uri, "--json", check=False)
    assert check.returncode == 10, check.stdout + check.stderr
    assert json.loads(check.stdout)["path"] == "vfmigrate-migrate"

    result = vfmigrate_migrate(a, b, name)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = result.stdout
    assert steps.index("pre-flight check") < steps.index("recording 1 VF") \
        < steps.index("unplugging stand-in") < steps.index("migrating to") \
        < steps.index("waiting for the destination's listener")
    assert re.search(r"plugged in by the destination's listener; the guest was without them "
                     r"for [\d.]+ s", steps)
    assert b.host.domain_state(name) == "running" and a.host.domain_state(name) is None
    live = b.host.virsh("dumpxml", name).stdout
    assert STAND_IN_MAC in live and "replug=" not in live
    assert simulated_vf_of(live) == str(b.vfs[0])
    assert b.claim_summary() == [(name, str(b.vfs[0]), "active")]
    wait_until(lambda: a.claims() == [], 15, "the source's claim to be released")
    wait_until(lambda: stand_in_present(serial), 30, "the guest to see its NIC again")
    assert any(e.get("VFMIGRATE_ACTION") == "attached" for e in b.journal())


def test_guest_that_never_unplugs_keeps_its_device(stand_in_hosts):
    a, b = stand_in_hosts
    xml = no_os_guest_xml("stubborn", hotplug_ports=2,
                          devices=[virtio_bridge_interface_xml(STAND_IN_MAC)])
    a.host.create_domain(with_metadata(xml, stand_in_metadata(a.vfs[2])))
    before = a.host.virsh("dumpxml", "stubborn").stdout
    result = vfmigrate_migrate(a, b, "stubborn", "--unplug-timeout", "3")
    assert result.returncode == 1
    assert result.stderr.startswith("vfmigrate: migration of guest 'stubborn' aborted: the guest "
                                    "did not unplug ")
    assert a.host.domain_state("stubborn") == "running" and b.host.domain_state("stubborn") is None
    after = a.host.virsh("dumpxml", "stubborn").stdout
    assert STAND_IN_MAC in after and "replug=" not in vfs_element(after)
    # Its unplug request stays pending in the guest: the lease, handed to the listener
    # (no process), says how to plug it back if the guest ever lets go of it.
    assert "<vfmigrate-migration:migration" in after and ' pid="0"' in after
    assert "the listener plugs it back in" in result.stderr
    assert simulated_vf_of(after) == simulated_vf_of(before) == str(a.vfs[2])
    assert a.claim_summary() == [("stubborn", str(a.vfs[2]), "active")] and b.claims() == []


@pytest.mark.between_versions
def test_destination_without_free_vf_rolls_back(stand_in_hosts, linux_guest_image):
    a, b = stand_in_hosts
    for index, vf in enumerate(b.vfs):
        b.start_guest(f"local{index}", vf)
    name, serial = stand_in_guest(stand_in_hosts.testbed, a, linux_guest_image)
    result = vfmigrate_migrate(a, b, name)
    assert result.returncode == 1
    assert "no free VF in network 'physnet1' on this host (4 VFs, 4 claimed or in use)" \
        in result.stderr
    assert "the guest keeps running on the source with its VF plugged back in" \
        in result.stderr
    assert a.host.domain_state(name) == "running"
    live = a.host.virsh("dumpxml", name).stdout
    assert STAND_IN_MAC in live and "replug=" not in live
    assert a.claim_summary() == [(name, str(a.vfs[1]), "active")]
    assert name not in [c.domain_name for c in b.claims()]
    wait_until(lambda: stand_in_present(serial), 30, "the guest to see its NIC again")


def test_migration_killed_midway_rolls_back(stand_in_hosts, linux_guest_image):
    a, b = stand_in_hosts
    name, serial = stand_in_guest(stand_in_hosts.testbed, a, linux_guest_image)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=vfmigrate_migrate(a, b, name, "--bandwidth", "8")))
    thread.start()
    wait_until(lambda: any(c.domain_name == name for c in b.claims()) and b.host.qemu_pids(),
               90, "the incoming migration to be under way")
    for pid in b.host.qemu_pids():
        os.kill(pid, signal.SIGKILL)
    thread.join(180)
    result = outcome["result"]
    assert result.returncode == 1, result.stdout + result.stderr
    assert "plugged back in" in result.stderr
    assert a.host.domain_state(name) == "running" and b.host.domain_state(name) is None
    assert a.claim_summary() == [(name, str(a.vfs[1]), "active")]
    wait_until(lambda: name not in [c.domain_name for c in b.claims()], 30,
               "the destination to drop its claim")
    wait_until(lambda: stand_in_present(serial), 30, "the guest to see its NIC again")


def test_destination_listener_down_the_command_plugs_in_itself(stand_in_hosts,
                                                               linux_guest_image):
    a, b = stand_in_hosts
    b.stop_listener(signal.SIGTERM)
    name, serial = stand_in_guest(stand_in_hosts.testbed, a, linux_guest_image)
    result = vfmigrate_migrate(a, b, name, "--replug-timeout", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "plugged in by vfmigrate migrate (the destination's listener did not)" in result.stdout
    live = b.host.virsh("dumpxml", name).stdout
    assert STAND_IN_MAC in live and "replug=" not in live
    b.start_listener()
    assert b.claim_summary() == [(name, str(b.vfs[0]), "active")]
    assert live.count(STAND_IN_MAC) == 2   # the device and its metadata entry, nothing twice
    assert b.host.virsh("dumpxml", name).stdout.count(STAND_IN_MAC) == 2


def test_check_says_what_path_a_guest_takes(stand_in_hosts):
    a, b = stand_in_hosts
    a.start_guest("plain", None)
    plain = a.vfmigrate("check", "plain", b.host.uri, check=False)
    assert plain.returncode == 0 and "plain 'virsh migrate --live'" in plain.stdout
    a.host.virsh("destroy", "plain")
    stopped = a.vfmigrate("check", "nosuch", b.host.uri, check=False)
    assert stopped.returncode == 6 and "look up domain 'nosuch' failed" in stopped.stderr


def test_vf_goes_back_to_its_guest_address_live_even_if_taken_in_the_saved_definition():
    """A pending VF whose old guest PCI address is free in the running guest but taken in
    its saved definition: live at its old address, saved elsewhere."""
    with vf_testbed(1, listeners=False, extra_config="allow_stand_ins = yes\n") as (a,):
        name = a.host.create_domain(no_os_guest_xml("moved", hotplug_ports=3), persistent=True)
        occupant = a.host.directory / "occupant.xml"
        occupant.write_text(
            "<interface type='bridge'><mac address='52:54:00:5e:a1:99'/>"
            "<source bridge='vmbr0'/><model type='virtio'/>"
            "<address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>"
            "</interface>")
        a.host.virsh("attach-device", name, str(occupant), "--config")
        a.host.virsh("metadata", name, "--uri", METADATA_NAMESPACE, "--key", "vfmigrate",
                     "--set", f"<vfs><vf mac='{STAND_IN_MAC}' network='physnet1' "
                     f"address='{a.vfs[1]}' device='stand-in' bridge='vmbr0' "
                     "guest-address='0000:02:00.0' replug='pending'/></vfs>",
                     "--live", "--config")

        a.start_listener()   # its reconcile plugs in what is pending
        wait_until(lambda: a.journal(VFMIGRATE_ACTION="attached"), 30,
                   "the listener to plug the VF in")
        live = a.host.virsh("dumpxml", name).stdout
        saved = a.host.virsh("dumpxml", name, "--inactive").stdout
        assert guest_bus_of(live, STAND_IN_MAC) == "0x02"
        assert guest_bus_of(saved, "52:54:00:5e:a1:99") == "0x02"
        assert guest_bus_of(saved, STAND_IN_MAC) not in (None, "0x02")
        assert "replug=" not in live and "replug=" not in saved
        message = a.journal(VFMIGRATE_ACTION="attached")[0]["MESSAGE"]
        assert "plugged at its guest PCI address; in the saved definition at a new guest " \
               "PCI address (at its old one: " in message, message


def guest_bus_of(xml: str, mac: str) -> str | None:
    """The guest PCI bus of the interface with this MAC, or None if there is none."""
    for interface in ElementTree.fromstring(xml).iter("interface"):
        if interface.find(f"mac[@address='{mac}']") is not None:
            address = interface.find("address[@type='pci']")
            return address.get("bus") if address is not None else None
    return None
