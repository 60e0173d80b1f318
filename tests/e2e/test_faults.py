"""Failures in the middle of a migration: nothing leaks, nothing is doubled.

The guest is the tiny Linux guest (256 MiB, ~67 MiB of it written) migrated
with a bandwidth cap so that the transfer takes ~10 s: the fault is injected
once the destination has reserved a VF for it and its QEMU is receiving.
Afterwards, whatever was killed is restarted and both listeners reconcile;
then the guest runs on exactly one host and each host's live claims are
exactly the simulated VFs of the guests running there.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.testbed.guests import SerialLog, linux_guest_xml

from .vfhosts import guest_mac_for, simulated_vf_of, vf_testbed, wait_until, with_simulated_vf

BANDWIDTH_MIB_S = "8"


def start_linux_guest(source, image, testbed, name="lin"):
    serial = testbed.shared_dir / f"{name}.serial.log"
    xml = with_simulated_vf(linux_guest_xml(name, image, serial), source.vfs[0],
                            guest_mac_for(name))
    source.host.create_domain(xml)
    SerialLog(serial).wait_ready(timeout=120)
    return name


def migrate_in_background(source, destination, name, bandwidth=BANDWIDTH_MIB_S):
    outcome = {}

    def run():
        outcome["result"] = source.host.migrate(name, destination.host, "--bandwidth",
                                                bandwidth, check=False, timeout=180)

    thread = threading.Thread(target=run, name="migration")
    thread.start()
    return thread, outcome


def wait_for_transfer(destination, name):
    """Until the destination holds a claim for the guest and its QEMU runs."""
    wait_until(lambda: any(c.domain_name == name for c in destination.claims())
               and destination.host.qemu_pids(), 60, "the incoming migration to be under way")
    time.sleep(1.0)


def where_the_guest_is(hosts, name):
    """Each host's ``domstate --reason`` and the tails of the guest's logs, for a failure."""
    lines = []
    for vf_host in hosts:
        state = vf_host.host.virsh("domstate", "--reason", name, check=False)
        lines.append(f"{vf_host.name}: {(state.stdout or state.stderr).strip()}")
        qemu_log = vf_host.host.qemu_log(name)
        if qemu_log.exists():
            tail = qemu_log.read_text(errors="replace").splitlines()[-8:]
            lines += [f"{vf_host.name} qemu log: {line}" for line in tail]
    serial = SerialLog(hosts.testbed.shared_dir / f"{name}.serial.log").text()
    lines += [f"serial: {line}" for line in serial.splitlines()[-15:]]
    return "\n".join(lines)


def assert_consistent(hosts, name):
    running_on = [h for h in hosts if h.host.domain_state(name) == "running"]
    assert len(running_on) == 1, where_the_guest_is(hosts, name)
    for vf_host in hosts:
        expected = []
        if vf_host is running_on[0]:
            expected = [(name, simulated_vf_of(vf_host.host.virsh("dumpxml", name).stdout),
                         "active")]
        wait_until(lambda: vf_host.claim_summary() == expected, 30,
                   f"host {vf_host.name}'s claims to be {expected} "
                   f"(are {vf_host.claim_summary()})")
    return running_on[0]


@pytest.fixture
def lab_hosts():
    with vf_testbed(2) as vf_hosts:
        yield vf_hosts


@pytest.mark.daemon_layout
def test_destination_libvirtd_killed_mid_migration(lab_hosts, linux_guest_image):
    a, b = lab_hosts
    name = start_linux_guest(a, linux_guest_image, lab_hosts.testbed)
    thread, outcome = migrate_in_background(a, b, name)
    wait_for_transfer(b, name)
    b.host.kill_libvirtd(signal.SIGKILL)
    thread.join(180)
    assert outcome["result"].completed.returncode != 0
    b.host.restart_libvirtd()
    assert assert_consistent(lab_hosts, name) is a


@pytest.mark.daemon_layout
def test_source_daemon_restarted_mid_migration(lab_hosts, linux_guest_image):
    """An admin restarts libvirt's daemon (virtqemud, or libvirtd) on the source while a guest
    is leaving: libvirt cancels the migration when it comes back, and the guest runs on there
    with its VF. The source's listener reconnects; the destination keeps no claim."""
    a, b = lab_hosts
    name = start_linux_guest(a, linux_guest_image, lab_hosts.testbed)
    thread, outcome = migrate_in_background(a, b, name, bandwidth="2")  # ~35 s of transfer
    wait_for_transfer(b, name)
    # On SIGTERM the daemon does not exit while the migration's job runs (it used up a 15 s
    # grace on every flavour); systemd's restart would wait for it.  Killed 3 s in, it
    # leaves the migration unfinished as that wait would: the transfer takes ~35 s.
    a.host.restart_libvirtd(grace=3)
    thread.join(180)
    assert outcome["result"].completed.returncode != 0
    assert assert_consistent(lab_hosts, name) is a
    wait_until(lambda: sum(1 for e in a.journal() if e["MESSAGE"].startswith("connected to"))
               >= 2, 60, "the source's listener to reconnect")
    assert a.listener.poll() is None


def test_destination_qemu_killed_mid_migration(lab_hosts, linux_guest_image):
    a, b = lab_hosts
    name = start_linux_guest(a, linux_guest_image, lab_hosts.testbed)
    thread, outcome = migrate_in_background(a, b, name)
    wait_for_transfer(b, name)
    for pid in b.host.qemu_pids():
        os.kill(pid, signal.SIGKILL)
    thread.join(180)
    assert outcome["result"].completed.returncode != 0
    assert assert_consistent(lab_hosts, name) is a
    # The destination's listener read the arriving guest without waiting for the job of
    # its migration (libvirt 11 made XMLDesc wait up to 30 s, and the listener with it).
    waited = [entry["MESSAGE"] for entry in b.journal()
              if "cannot acquire state change lock" in entry.get("MESSAGE", "")]
    assert waited == []


@pytest.mark.parametrize("which", ["source", "destination"])
def test_listener_killed_mid_migration(lab_hosts, linux_guest_image, which):
    a, b = lab_hosts
    name = start_linux_guest(a, linux_guest_image, lab_hosts.testbed)
    thread, outcome = migrate_in_background(a, b, name)
    wait_for_transfer(b, name)
    victim = a if which == "source" else b
    assert victim.stop_listener(signal.SIGKILL) == -signal.SIGKILL
    thread.join(180)
    assert outcome["result"].completed.returncode == 0, outcome["result"].completed.stderr
    victim.start_listener()
    assert assert_consistent(lab_hosts, name) is b
    # Whichever listener was down, the released source VF is reset once it is back.
    wait_until(lambda: not a.pending_resets(), 15, "the source's released VF to be reset")


def test_listener_killed_mid_batch_of_events(lab_hosts):
    a, _ = lab_hosts
    for index in range(4):
        a.start_guest(f"g{index}", a.vfs[index])
    stopper = threading.Thread(target=lambda: [a.host.virsh("destroy", f"g{index}")
                                               for index in range(4)])
    stopper.start()
    time.sleep(0.3)
    a.stop_listener(signal.SIGKILL)
    stopper.join(60)
    a.start_listener()
    wait_until(lambda: a.claims() == [] and not a.pending_resets(), 30,
               "the ledger to match libvirt (no guest runs)")
