"""Never harm a running guest (issue 12): the listener against libvirt's test driver.

The listener releases, resets or rewrites only on positive evidence.  These
tests build each host situation with real libvirt API calls on
``test:///default`` (guests defined, started, their saved definitions edited
as an admin would with ``virsh edit``) and run the real listener on it; only
the VF hardware (sysfs tree, netlink) is fake.
"""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from tests.unit.test_listener_testdriver import (guest_xml, pipe_udev_watch, remove_guests,
                                                 source_address, wait_for)
from tests.unit.test_reconcile import FakeIPRoute
from vfmigrate import METADATA_NAMESPACE, logs
from vfmigrate.ledger import ACTIVE
from vfmigrate.listener import Listener
from vfmigrate.supervision import DeviceChanged, Notifier, Reconcile
from vfmigrate.vfnetlink import VFNetlink

libvirt = pytest.importorskip("libvirt")

GUESTS = ("unreadable", "unreadable2", "editable", "healthy")
MAC = "52:54:00:12:34:56"


class Run:
    """The listener running on its own thread, and what it sent."""

    def __init__(self, host) -> None:
        self.sent: list[dict] = []
        self.notified: list[str] = []
        self.netlink_calls: list = []
        logs.setup(stream=None, sender=lambda MESSAGE, **fields: self.sent.append(
            dict(fields, MESSAGE=MESSAGE)))
        reader, self.udev_writer = os.pipe()
        self.listener = Listener(host.config(), uri="test:///default",
                                 udev_watch=pipe_udev_watch(reader), netlink_watch=None,
                                 notifier=Notifier(send=self.notified.append, environ={}),
                                 vf_netlink=VFNetlink(host.sysfs.root,
                                                      lambda: FakeIPRoute(self.netlink_calls)))
        self.thread = threading.Thread(target=self.listener.run, name="listener-under-test")
        self.thread.start()

    def messages(self, text: str = "", priority: str | None = None) -> list[str]:
        return [e["MESSAGE"] for e in self.sent if text in e["MESSAGE"]
                and (priority is None or e.get("PRIORITY") == priority)]

    def stop(self) -> None:
        self.listener.request_stop()
        self.thread.join(10)
        os.close(self.udev_writer)


@pytest.fixture
def connection(host):
    host.write_config({"physnet1": "ens1f0"})
    connection = libvirt.open("test:///default")
    runs: list[Run] = []

    def start_listener() -> Run:
        run = Run(host)
        runs.append(run)
        return run

    connection.start_listener = start_listener
    try:
        yield connection
    finally:
        for run in runs:
            run.stop()
            assert not run.thread.is_alive()
        remove_guests(connection, GUESTS)
        connection.close()


def vfs_metadata(entry: str) -> str:
    return (f"<metadata><vfmigrate:vfs xmlns:vfmigrate='{METADATA_NAMESPACE}'>{entry}"
            "</vfmigrate:vfs></metadata>")


def interface(vf, mac: str = MAC, extra: str = "") -> str:
    return (f"<interface type='hostdev' managed='yes'><mac address='{mac}'/>"
            f"{source_address(vf)}{extra}</interface>")


def with_metadata(xml: str, element: str) -> str:
    end = xml.index("</name>") + len("</name>")
    return xml[:end] + element + xml[end:]


def claim(host, vf, name: str, uuid: str) -> None:
    with host.ledger() as ledger, ledger.transaction():
        ledger.add(vf=vf, network="physnet1", domain_uuid=uuid, domain_name=name,
                   state=ACTIVE, reason="start: interface")


REJECTED = {
    "replug-done": (vfs_metadata(f"<vfmigrate:vf mac='{MAC}' network='physnet1' "
                                 "replug='done'/>"), "replug 'done' is not one of"),
    "dashed-mac": (vfs_metadata("<vfmigrate:vf mac='52-54-00-12-34-56' network='physnet1'/>"),
                   "is not a MAC address"),
    "vlan-5000": (vfs_metadata(f"<vfmigrate:vf mac='{MAC}' network='physnet1' vlan='5000'/>"),
                  "is not 0-4095"),
    "too-large": ("<description>" + "x" * (2 * 1024 * 1024) + "</description>",
                  "is more than the 2097152 a domain XML may have"),
}


def start_unreadable_guest_then_listener(host, connection, element: str):
    """A running guest 'unreadable' whose metadata ``element`` vfmigrate rejects, holding
    physnet1's third VF with an active claim; then the listener, once READY=1."""
    vf = host.physnet1_vfs[2]
    domain = connection.defineXML(with_metadata(guest_xml("unreadable", interface(vf)),
                                                element))
    domain.create()
    claim(host, vf, "unreadable", domain.UUIDString())
    run = connection.start_listener()
    wait_for(lambda: "READY=1" in run.notified, what="READY=1")
    return domain, vf, run


@pytest.mark.parametrize("kind", REJECTED)
def test_a_guest_whose_xml_vfmigrate_rejects_does_not_keep_the_listener_from_ready(
        host, connection, kind):
    """A running, persistent VF guest whose XML vfmigrate rejects, with its VF claimed.

    Old code: fix_persistent_definition (then label_guest, plug_pending_vfs) raised
    BadDomainXML out of reconcile_all, so READY=1 never went out and systemd restarted
    the listener again and again.  Also here: a device event and a reconcile for it
    later, and a second such guest started while the listener runs (STARTED runs
    configure_teamed_hostdevs, plug_pending_vfs, label_guest in turn): one warning per
    guest in all, and the listener keeps handling events.
    """
    element, problem = REJECTED[kind]
    domain, _, run = start_unreadable_guest_then_listener(host, connection, element)
    warnings = run.messages("guest unreadable ", priority="4")
    assert len(warnings) == 1, run.messages("unreadable")
    assert problem in warnings[0]
    assert "its VFs stay claimed" in warnings[0]

    # Later events for that guest add no warning and do not stop the listener.
    run.listener.work.put(DeviceChanged(domain.UUIDString(), "unreadable", "hostdev0",
                                         "removed"))
    run.listener.work.put(Reconcile("test"))
    other = connection.defineXML(guest_xml("healthy", interface(host.physnet1_vfs[5],
                                                                "52:54:00:00:00:05")))
    other.create()
    wait_for(lambda: any(c.domain_name == "healthy" for c in host.live_claims()),
             what="the listener to handle the next guest")
    assert len(run.messages("guest unreadable ", priority="4")) == 1
    second = connection.defineXML(with_metadata(
        guest_xml("unreadable2", interface(host.physnet1_vfs[6], "52:54:00:00:00:06")),
        element))
    second.create()
    wait_for(lambda: run.messages("guest unreadable2", priority="4"),
             what="the warning for the guest started later")
    run.listener.work.put(Reconcile("test"))
    wait_for(lambda: run.listener.work.empty(), what="the reconcile")
    assert len(run.messages("guest unreadable2", priority="4")) == 1
    assert run.messages("unexpected error") == []
    assert [call for call in run.netlink_calls if call != "close"] == []   # nothing reset


@pytest.mark.parametrize("kind", ["replug-done", "too-large"])
def test_the_claims_of_a_guest_with_unreadable_xml_stay(host, connection, kind):
    """Running, unknown: its claims stay.  Needs the reconcile side (helper "ledger"):
    old reconcile dropped the guest from the running list and released its claim."""
    element, _ = REJECTED[kind]
    _, vf, run = start_unreadable_guest_then_listener(host, connection, element)
    assert [(c.domain_name, c.vf, c.state) for c in host.live_claims()] == [
        ("unreadable", vf, ACTIVE)]
    assert run.netlink_calls == []


def test_a_malformed_ledger_row_does_not_kill_the_listener(host, connection):
    """Old code: _update_status ran outside the fence in run(): the PciAddress of a
    malformed row raised ValueError and the listener thread died (systemd restart
    loop).  Also tried: the row present at start (the first reconcile fails; READY still
    goes out, the error is logged)."""
    run = connection.start_listener()
    wait_for(lambda: "READY=1" in run.notified, what="READY=1")
    ledger = sqlite3.connect(host.state_dir / "ledger.sqlite3")
    with ledger:
        ledger.execute("INSERT INTO claims (vf, network, domain_uuid, domain_name, state, "
                       "created, updated, reason) VALUES ('not-a-pci-address', 'physnet1', "
                       "'00000000-0000-4000-8000-000000000001', 'ghost', 'active', 1, 1, 'x')")
    ledger.close()
    run.listener.work.put(("no-such-event",))
    wait_for(lambda: run.messages("status"), what="the status failure to be logged")
    assert run.thread.is_alive()
    assert any(s.startswith("STATUS=connected to test:///default; ledger unreadable")
               for s in run.notified)
    with sqlite3.connect(host.state_dir / "ledger.sqlite3") as ledger:
        ledger.execute("DELETE FROM claims WHERE vf = 'not-a-pci-address'")
    domain = connection.defineXML(guest_xml("healthy", interface(host.physnet1_vfs[1])))
    domain.create()
    wait_for(lambda: len(host.live_claims()) == 1, what="the listener to keep working")


def test_a_malformed_ledger_row_at_start_still_lets_the_listener_become_ready(host,
                                                                              connection):
    with host.ledger():
        pass
    with sqlite3.connect(host.state_dir / "ledger.sqlite3") as ledger:
        ledger.execute("INSERT INTO claims (vf, network, domain_uuid, domain_name, state, "
                       "created, updated, reason) VALUES ('not-a-pci-address', 'physnet1', "
                       "'00000000-0000-4000-8000-000000000001', 'ghost', 'active', 1, 1, 'x')")
    run = connection.start_listener()
    wait_for(lambda: "READY=1" in run.notified, what="READY=1")
    assert run.thread.is_alive()


def redefine(connection, domain, devices: str):
    """``virsh edit`` of the saved definition: same name and UUID, these devices."""
    xml = guest_xml(domain.name(), devices)
    end = xml.index("</name>") + len("</name>")
    return connection.defineXML(xml[:end] + f"<uuid>{domain.UUIDString()}</uuid>" + xml[end:])


def saved_vf(domain) -> str:
    return domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def test_a_vf_the_admin_moved_in_the_saved_definition_stays_moved(host, connection):
    """The admin moves the VF to another one in the saved definition (``virsh edit``)
    of a running guest that was started here, not migrated.

    Old code: every listener start (and reconnect) rewrote the saved definition back
    to the VF the running guest holds."""
    vf, moved_to = host.physnet1_vfs[2], host.physnet1_vfs[4]
    domain = connection.defineXML(guest_xml("editable", interface(vf)))
    domain.create()
    redefine(connection, domain, interface(moved_to))   # virsh edit
    before = saved_vf(domain)
    assert "function='0x4'" in before
    run = connection.start_listener()
    wait_for(lambda: "READY=1" in run.notified, what="READY=1")
    run.listener.work.put(Reconcile("reconnect"))
    wait_for(lambda: run.listener.work.empty(), what="the reconcile")
    assert saved_vf(domain) == before
    assert run.messages("saved definition") == []


def test_a_device_added_before_another_in_the_saved_definition_is_not_paired_by_position(
        host, connection):
    """The admin adds a passthrough GPU before an NVMe device (both without MAC or alias)
    in the saved definition of a running guest.

    Old code paired the devices by position: the new GPU got the NVMe's address, the
    saved definition named the NVMe twice and defineXML failed (an error at every
    start)."""
    nvme = "<hostdev mode='subsystem' type='pci' managed='yes'>{}</hostdev>"
    gpu_address = "<source><address type='pci' domain='0x0000' bus='0x65' slot='0x00' " \
                  "function='0x0'/></source>"
    nvme_address = "<source><address type='pci' domain='0x0000' bus='0x66' slot='0x00' " \
                   "function='0x0'/></source>"
    domain = connection.defineXML(guest_xml("editable", nvme.format(nvme_address)))
    domain.create()
    redefine(connection, domain, nvme.format(gpu_address) + nvme.format(nvme_address))
    before = saved_vf(domain)
    run = connection.start_listener()
    wait_for(lambda: "READY=1" in run.notified, what="READY=1")
    assert saved_vf(domain) == before
    assert run.messages("defineXML") == [] and run.messages("saved definition") == []
