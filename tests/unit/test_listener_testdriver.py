"""The listener in process against libvirt's test driver (real libvirt API).

``test:///default`` is libvirt's in-process driver: real connections, real
lifecycle events, metadata and definitions, no QEMU.  The daemon-level
behaviour (real libvirtd, restarts, SIGKILL, journald, sd_notify) is tested
in tests/testbed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from tests.unit.test_reconcile import FakeIPRoute
from vfmigrate import logs
from vfmigrate.events import Event
from vfmigrate.ledger import ACTIVE
from vfmigrate.listener import Listener
from vfmigrate.supervision import DeviceChanged, JobCompleted, Notifier
from vfmigrate.vfnetlink import VFNetlink

libvirt = pytest.importorskip("libvirt")


def remove_guests(connection, names) -> None:
    """Destroy and undefine the named guests of a test-driver connection, if there."""
    for name in names:
        try:
            domain = connection.lookupByName(name)
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        except libvirt.libvirtError:
            pass


def pipe_udev_watch(pipe_reader: int):
    """A udev source over a real pipe: lines of 'action subsystem sys_name'."""
    def watch(on_event):
        def pump():
            with os.fdopen(pipe_reader) as lines:
                for line in lines:
                    on_event(*line.split())
        thread = threading.Thread(target=pump, name="fake-udev", daemon=True)
        thread.start()
        return lambda: None
    return watch


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def guest_xml(name: str, devices: str) -> str:
    """A guest of libvirt's test driver with these devices."""
    return (f"<domain type='test'><name>{name}</name><memory unit='KiB'>65536</memory>"
            f"<os><type arch='x86_64'>hvm</type></os><devices>{devices}</devices></domain>")


def source_address(vf) -> str:
    return "<source><address type='pci' {}/></source>".format(
        " ".join(f"{key}='{value}'" for key, value in vf.xml_attributes().items()))


def hostdev_guest(name: str, vf) -> str:
    return guest_xml(name, "<interface type='hostdev' managed='yes'><mac "
                             f"address='52:54:00:12:34:56'/>{source_address(vf)}</interface>")


@contextmanager
def running_listener(host, vf_netlink, **watches):
    """A Listener on libvirt's test driver, running on a thread until the block ends,
    and a connection of the test's own: (listener, connection, sd_notify messages)."""
    notified = []
    listener = Listener(host.config(), uri="test:///default", vf_netlink=vf_netlink,
                        notifier=Notifier(send=notified.append, environ={}), **watches)
    thread = threading.Thread(target=listener.run, name="listener-under-test")
    thread.start()
    connection = libvirt.open("test:///default")
    try:
        wait_for(lambda: "READY=1" in notified, what="READY=1")
        yield listener, connection, notified
    finally:
        listener.request_stop()
        thread.join(10)
        remove_guests(connection, ("vfguest",))
        connection.close()
    assert not thread.is_alive()
    assert "STOPPING=1" in notified


@pytest.fixture
def listener_run(host):
    host.write_config({"physnet1": "ens1f0"})
    sent, netlink_calls = [], []
    logs.setup(stream=None, sender=lambda MESSAGE, **fields: sent.append(
        dict(fields, MESSAGE=MESSAGE)))
    reader, writer = os.pipe()
    with running_listener(host, VFNetlink(host.sysfs.root, lambda: FakeIPRoute(netlink_calls)),
                          udev_watch=pipe_udev_watch(reader), netlink_watch=None
                          ) as (listener, connection, notified):
        yield listener, connection, sent, notified, netlink_calls, os.fdopen(writer, "w")


def test_start_labels_and_claims_stop_releases_and_resets(host, listener_run):
    listener, connection, sent, notified, netlink_calls, udev = listener_run
    vf = host.physnet1_vfs[2]
    domain = connection.defineXML(hostdev_guest("vfguest", vf))
    domain.create()
    wait_for(lambda: [c.state for c in host.live_claims()] == [ACTIVE], what="claim")
    wait_for(lambda: "vfmigrate:vf" in domain.XMLDesc(0), what="metadata label")
    assert 'mac="52:54:00:12:34:56" network="physnet1"' in domain.XMLDesc(0)
    assert 'network="physnet1"' in domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    labelled = [e for e in sent if e.get("MESSAGE_ID") == Event.METADATA.message_id]
    assert labelled and labelled[0]["VFMIGRATE_DOMAIN"] == "vfguest"

    udev.write(f"remove pci {vf}\n")
    udev.flush()
    host.sysfs.remove_vfs("0000:3b:00.0")
    udev.write("remove pci 0000:3b:01.0\n")
    udev.flush()
    wait_for(lambda: any(e.get("MESSAGE_ID") == Event.VANISHED.message_id for e in sent),
             what="vanished VF logged")
    vanished = next(e for e in sent if e.get("MESSAGE_ID") == Event.VANISHED.message_id)
    assert (vanished["VFMIGRATE_VF"], vanished["PRIORITY"]) == (str(vf), "3")

    domain.destroy()
    wait_for(lambda: host.live_claims() == [], what="claim released")
    wait_for(lambda: any(e.get("MESSAGE_ID") == Event.VANISHED.message_id
                         and "nothing to reset" in e["MESSAGE"] for e in sent),
             what="reset attempt of a vanished VF")
    assert any(s.startswith("STATUS=connected to test:///default; claims: 0 incoming, "
                            "0 active") for s in notified)


def test_reset_through_netlink_after_stop(host, listener_run):
    listener, connection, sent, notified, netlink_calls, udev = listener_run
    vf = host.physnet1_vfs[3]
    domain = connection.defineXML(hostdev_guest("vfguest", vf))
    domain.create()
    wait_for(lambda: len(host.live_claims()) == 1, what="claim")
    domain.destroy()
    wait_for(lambda: any(e.get("MESSAGE_ID") == Event.RESET.message_id for e in sent),
             what="reset logged")
    assert ("set", 7, {"vf": 3, "mac": "00:00:00:00:00:00"}) in netlink_calls
    resets = [e for e in sent if e.get("MESSAGE_ID") == Event.RESET.message_id]
    assert resets[0]["VFMIGRATE_VF"] == str(vf)
    assert resets[0]["VFMIGRATE_NETWORK"] == "physnet1"


def test_malformed_work_is_logged_not_fatal(host, listener_run):
    listener, connection, sent, notified, netlink_calls, udev = listener_run
    listener.work.put(("no-such-event", 1, 2))
    listener.work.put(JobCompleted("not-a-uuid", "x", None))   # params: not a dict
    listener.work.put(DeviceChanged("00000000-0000-0000-0000-000000000000", "x", "ua-x",
                                    "removed"))
    wait_for(lambda: any("unexpected error handling JobCompleted(uuid='not-a-uuid'" in e["MESSAGE"]
                         for e in sent), what="error logged")
    assert any("ignoring unknown work item" in e["MESSAGE"] for e in sent)
    domain = connection.defineXML(hostdev_guest("vfguest", host.physnet1_vfs[1]))
    domain.create()
    wait_for(lambda: len(host.live_claims()) == 1, what="listener still alive")


def teamed_hostdev_guest(name: str, vf) -> str:
    return guest_xml(name, (
        "<interface type='bridge'><mac address='52:54:00:ab:cd:ef'/><source bridge='br0'/>"
        "<model type='virtio'/><teaming type='persistent'/><alias name='ua-net0'/></interface>"
        f"<hostdev mode='subsystem' type='pci' managed='yes'>{source_address(vf)}"
        "<teaming type='transient' persistent='ua-net0'/></hostdev>"))


def test_teamed_hostdev_vf_gets_its_partners_mac(host, listener_run):
    listener, connection, sent, notified, netlink_calls, udev = listener_run
    vf = host.physnet1_vfs[6]
    domain = connection.defineXML(teamed_hostdev_guest("vfguest", vf))
    domain.create()
    wait_for(lambda: any(e.get("MESSAGE_ID") == Event.CONFIGURED.message_id for e in sent),
             what="the MAC to be set")
    assert ("set", 7, {"vf": 6, "mac": "52:54:00:ab:cd:ef"}) in netlink_calls
    configured = next(e for e in sent if e.get("MESSAGE_ID") == Event.CONFIGURED.message_id)
    assert configured["VFMIGRATE_VF"] == str(vf)


def test_vf_settings_changed_on_the_pf_are_recorded_in_the_metadata(host):
    """Trust and a rate set on the PF reach the running guest's metadata when the
    kernel says the PF changed (RTM_NEWLINK); set back, they leave it."""
    from tests.fakenetlink import FakePFs

    host.write_config({"physnet1": "ens1f0"})
    kernel = FakePFs()
    kernel.add("ens1f0", 8)
    link_changed = []
    logs.setup(stream=sys.stderr, sender=None)

    def netlink_watch(on_change):
        link_changed.append(on_change)
        return lambda: None

    with running_listener(host, VFNetlink(host.sysfs.root, kernel.iproute), udev_watch=None,
                          netlink_watch=netlink_watch) as (listener, connection, notified):
        vf = host.physnet1_vfs[5]
        domain = connection.defineXML(hostdev_guest("vfguest", vf))
        domain.create()
        wait_for(lambda: 'network="physnet1"' in domain.XMLDesc(0), what="metadata label")
        assert "trust=" not in domain.XMLDesc(0)

        kernel.vf("ens1f0", 5).trust, kernel.vf("ens1f0", 5).max_tx_rate = 1, 100
        link_changed[0]("eth-unrelated")
        link_changed[0]("ens1f0")
        wait_for(lambda: 'trust="on" max-tx-rate="100"' in domain.XMLDesc(0),
                 what="settings recorded")
        assert 'trust="on"' in domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

        kernel.vf("ens1f0", 5).trust, kernel.vf("ens1f0", 5).max_tx_rate = 0, 0
        link_changed[0]("ens1f0")
        wait_for(lambda: "trust=" not in domain.XMLDesc(0), what="settings forgotten")
        assert 'network="physnet1"' in domain.XMLDesc(0)
        assert [request for request in kernel.requests] == []   # recording only reads


def test_an_arriving_guest_gets_the_recorded_vlan_priority_after_libvirts_tag(host):
    """libvirt sets an <interface type='hostdev'>'s VLAN tag with priority 0; the
    listener then gives it the priority recorded on the source."""
    from tests.fakenetlink import FakePFs
    from vfmigrate.virt import LibvirtHost

    host.write_config({"physnet1": "ens1f0"})
    kernel = FakePFs()
    kernel.add("ens1f0", 8)
    vf = host.physnet1_vfs[6]
    sent = []
    logs.setup(stream=None, sender=lambda MESSAGE, **fields: sent.append(
        dict(fields, MESSAGE=MESSAGE)))
    listener = Listener(host.config(), uri="test:///default", udev_watch=None,
                        netlink_watch=None,
                        vf_netlink=VFNetlink(host.sysfs.root, kernel.iproute))
    connection = libvirt.open("test:///default")
    listener.host = LibvirtHost(connection, libvirt)
    try:
        xml = guest_xml("vfguest", "<interface type='hostdev' managed='yes'><mac "
                        f"address='52:54:00:12:34:56'/>{source_address(vf)}<vlan><tag "
                        "id='100'/></vlan></interface>").replace(
            "</devices>", "</devices><metadata><vfmigrate:vfs xmlns:vfmigrate="
            "'https://vfmigrate.dev/xmlns/domain/1'><vfmigrate:vf mac='52:54:00:12:34:56' "
            "network='physnet1' vlan-qos='5' vlan-proto='802.1ad'/></vfmigrate:vfs>"
            "</metadata>")
        domain = connection.createXML(xml, 0)
        listener.apply_vlan_priority(domain.UUIDString())
        arrived = kernel.vf("ens1f0", 6)
        assert (arrived.vlan, arrived.qos) == (100, 5)
        assert kernel.requests == [("ens1f0", 6, {"vlan": {"vlan": 100, "qos": 5}})]
        [warning] = [e for e in sent if e.get("MESSAGE_ID") == Event.UNAPPLIED.message_id]
        assert warning["MESSAGE"] == (f"guest vfguest arrived, but VF {vf} did not get the "
                                      "source's VLAN protocol 802.1ad (vfmigrate sets 802.1Q "
                                      "only)")
        assert warning["PRIORITY"] == "4"
    finally:
        remove_guests(connection, ("vfguest",))
        connection.close()
