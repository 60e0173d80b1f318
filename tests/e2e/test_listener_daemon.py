"""The listener as a daemon: real libvirtd, real journald, sd_notify, restarts."""

from __future__ import annotations

import signal
import sqlite3
import time

import pytest

import vfmigrate
from tests.testbed.guests import no_os_guest_xml
from vfmigrate.events import Event

from .vfhosts import vf_testbed, wait_until


def test_sd_notify_ready_status_watchdog_stopping(hosts):
    a, _ = hosts
    messages = a.notify.messages
    assert messages.count("READY=1") == 1
    assert any(m.startswith("STATUS=connected to qemu:///system; claims: 0 incoming, 0 active")
               for m in messages)
    pings = messages.count("WATCHDOG=1")
    wait_until(lambda: a.notify.count("WATCHDOG=1") >= pings + 2, 10,
               "two more WATCHDOG=1 pings (WATCHDOG_USEC=3 s)")
    assert a.stop_listener(signal.SIGTERM) == 0
    wait_until(lambda: "STOPPING=1" in a.notify.messages, 5, "STOPPING=1")


@pytest.mark.daemon_layout
def test_journal_gets_structured_fields_from_hook_and_listener(hosts):
    a, _ = hosts
    a.start_guest("web1", a.vfs[2])
    a.host.virsh("destroy", "web1")
    wait_until(lambda: any(e.get("MESSAGE_ID") == Event.RESET.message_id for e in a.journal()),
               15, "the listener's reset entry")
    entries = a.journal()
    by_action = {e["VFMIGRATE_ACTION"]: e for e in entries if "VFMIGRATE_ACTION" in e}
    activated = by_action["activated"]   # from the hook (prepare)
    assert (activated["VFMIGRATE_DOMAIN"], activated["VFMIGRATE_VF"],
            activated["VFMIGRATE_NETWORK"], activated["MESSAGE_ID"], activated["PRIORITY"]) == \
        ("web1", str(a.vfs[2]), "physnet1", Event.ACTIVATED.message_id, "6")
    assert by_action["released"]["VFMIGRATE_VF"] == str(a.vfs[2])   # hook (stopped)
    assert {e["VFMIGRATE_VERSION"] for e in by_action.values()} == {vfmigrate.__version__}
    reset = by_action["reset"]          # from the listener
    assert reset["VFMIGRATE_DOMAIN"] == "web1" and reset["LOGGER"] == "vfmigrate.listener"
    assert [e["MESSAGE"].split(" (")[0] for e in entries
            if e.get("VFMIGRATE_ACTION") == "listener"][:3] == [
        "listener starting", "connected to qemu:///system, 5 callbacks registered",
        f"vfmigrate {vfmigrate.__version__} is ready: claims reconciled with qemu:///system"]
    assert {e["_HOSTNAME"] for e in entries} == {a.host.hostname}


def test_device_events_reach_the_listener(hosts):
    a, _ = hosts
    a.host.create_domain(no_os_guest_xml("web1", hotplug_ports=2))
    a.host.virsh("attach-interface", "web1", "bridge", "vmbr0", "--model", "virtio",
                 "--live")
    wait_until(lambda: any("device net" in e["MESSAGE"] and "added" in e["MESSAGE"]
                           for e in a.journal()), 15, "the DEVICE_ADDED event to be handled")


@pytest.mark.daemon_layout
def test_reconcile_at_start_fixes_a_ledger_edited_behind_its_back(hosts):
    a, _ = hosts
    a.start_guest("keeper", a.vfs[0])
    a.start_guest("other", a.vfs[1])
    a.stop_listener(signal.SIGTERM)
    ledger = sqlite3.connect(a.host.state_dir / "ledger.sqlite3")
    with ledger:
        ledger.execute("DELETE FROM claims WHERE domain_name = 'keeper'")
        ledger.execute("INSERT INTO claims (vf, network, domain_uuid, domain_name, state, "
                       "created, updated, reason) VALUES (?, 'physnet1', "
                       "'00000000-0000-4000-8000-000000000001', 'ghost', 'active', 1, 1, 'x')",
                       (str(a.vfs[3]),))
        ledger.execute("UPDATE claims SET state = 'incoming', updated = 1 "
                       "WHERE domain_name = 'other'")
    ledger.close()
    a.start_listener()
    assert a.claim_summary() == [("keeper", str(a.vfs[0]), "active"),
                                 ("other", str(a.vfs[1]), "incoming")]
    corrections = [e["MESSAGE"] for e in a.journal()
                   if e.get("MESSAGE_ID") == Event.CORRECTED.message_id]
    assert any("guest ghost: the guest is not running" in m for m in corrections)
    assert any("guest keeper: held without a claim: claim added" in m for m in corrections)


@pytest.mark.daemon_layout
def test_listener_survives_a_libvirtd_restart(hosts):
    a, _ = hosts
    a.host.restart_libvirtd()
    wait_until(lambda: any("reconnecting" in e["MESSAGE"] for e in a.journal()), 30,
               "the listener to notice the lost connection")
    wait_until(lambda: sum(1 for e in a.journal() if e["MESSAGE"].startswith("connected to"))
               >= 2, 60, "the listener to reconnect")
    a.start_guest("after", a.vfs[1])
    a.host.virsh("destroy", "after")
    wait_until(lambda: any(e.get("MESSAGE_ID") == Event.RESET.message_id
                           and e.get("VFMIGRATE_DOMAIN") == "after" for e in a.journal()),
               20, "events to be handled after the reconnect")
    assert a.listener.poll() is None


@pytest.mark.daemon_layout
def test_listener_keeps_the_idle_daemon_running(hosts):
    """libvirt's daemons, as their units start them, exit after ``--timeout`` seconds
    without a client (virtqemud on Fedora and RHEL: 120 s) and systemd's socket starts them
    again.  The listener is a client: while it runs the daemon stays and no event is lost;
    once it stops, the daemon exits, and a listener started later finds it again."""
    a, _ = hosts
    a.stop_listener(signal.SIGTERM)
    a.host.qemu_daemon_args = ("--timeout", "4")
    a.host.restart_libvirtd()
    a.start_listener()
    daemon = a.host.libvirtd_pid
    time.sleep(10)
    assert a.host.libvirtd_running and a.host.libvirtd_pid == daemon
    a.stop_listener(signal.SIGTERM)
    wait_until(lambda: not a.host.libvirtd_running, 30,
               f"{a.host.qemu_daemon} to exit once idle for 4 s")
    a.host.qemu_daemon_args = ()
    a.host.restart_libvirtd()   # what its socket does on the next connection
    a.start_listener()
    a.start_guest("after", a.vfs[1])
    assert a.claim_summary() == [("after", str(a.vfs[1]), "active")]


@pytest.mark.daemon_layout
def test_listener_waits_for_libvirt_with_backoff():
    with vf_testbed(1, listeners=False) as (a,):
        a.host.stop_libvirtd()
        a.start_listener(wait_ready=False)
        wait_until(lambda: any(m.startswith("STATUS=waiting for libvirt at qemu:///system")
                               for m in a.notify.messages), 20, "STATUS=waiting for libvirt")
        assert "READY=1" not in a.notify.messages
        time.sleep(1.5)
        assert a.notify.count("WATCHDOG=1") >= 1   # pinged while waiting
        a.host.restart_libvirtd()
        wait_until(lambda: "READY=1" in a.notify.messages, 60, "READY=1 once libvirt is back")
        a.host.create_domain(no_os_guest_xml("late"))
        assert a.listener.poll() is None
