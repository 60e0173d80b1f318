"""Never harm a running guest (issue 12) on the namespaced testbed: interrupted
``vfmigrate migrate``, late unplugs, and arrivals the listener used to miss.

The moved device is a stand-in virtio NIC (see test_assisted.py); the tiny
Linux guest really unplugs it and reports what NICs it sees on its console.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from vfmigrate.events import Event

from .test_assisted import (STAND_IN_MAC, stand_in_guest, stand_in_hosts,  # noqa: F401
                            stand_in_present)
from vfmigrate import domxml

from .vfhosts import vf_testbed, wait_until

TESTBED = "allow_stand_ins = yes\n"   # the simulated VFs are test-only metadata entries


def simulated_vf_of(xml: str) -> str | None:
    devices = [d for d in domxml.parse(xml.encode(), allow_stand_ins=True).devices
               if d.kind == "metadata"]
    return str(devices[0].address) if devices else None


def start_migrate(source, destination, name, *options):
    """``vfmigrate migrate`` as its own process on the source (to be signalled)."""
    return source.host.popen([*source.install.cli, "migrate", name, destination.host.uri,
                              "--p2p", *options], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)


def device_gone(source, name) -> bool:
    """The stand-in NIC is no longer a device of the guest (only its metadata names it)."""
    xml = source.host.virsh("dumpxml", name).stdout
    devices = xml[xml.index("<devices>"):]
    return f"<mac address='{STAND_IN_MAC}'/>" not in devices


def device_back(source, name) -> bool:
    xml = source.host.virsh("dumpxml", name).stdout
    devices = xml[xml.index("<devices>"):]
    return f"<mac address='{STAND_IN_MAC}'/>" in devices


def migrate_until_under_way(a, b, name: str):
    """``vfmigrate migrate`` of ``name`` at 1 MiB/s, once its NIC is unplugged on ``a``
    and its incoming migration runs on ``b``; the command's process."""
    process = start_migrate(a, b, name, "--bandwidth", "1")
    wait_until(lambda: any(c.domain_name == name for c in b.claims()) and b.host.qemu_pids(),
               90, "the incoming migration to be under way")
    assert device_gone(a, name)
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=lambda signum: signal.Signals(signum).name)
def test_a_signal_during_the_migration_rolls_back(stand_in_hosts, linux_guest_image, signum):
    """SIGTERM (Ctrl-C, SIGHUP) to ``vfmigrate migrate`` while the migration runs, after
    the unplug: the migration job is aborted and the VF plugged back.

    Old code: SIGTERM and SIGHUP ended the command at once, SIGINT's KeyboardInterrupt
    skipped the rollback; the guest kept running on the source without its NIC, metadata
    ``replug="on-arrival"``."""
    a, b = stand_in_hosts
    name, serial = stand_in_guest(stand_in_hosts.testbed, a, linux_guest_image)
    process = migrate_until_under_way(a, b, name)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stdout + stderr
    assert (f"aborted: interrupted by {signal.Signals(signum).name}; the guest keeps running "
            "on the source with its VF plugged back in") in stderr, stderr
    assert "aborting the migration job" in stdout
    assert a.host.domain_state(name) == "running" and b.host.domain_state(name) is None
    live = a.host.virsh("dumpxml", name).stdout
    assert device_back(a, name) and "replug=" not in live and "vfmigrate-migration" not in live
    assert a.claim_summary() == [(name, str(a.vfs[1]), "active")]
    wait_until(lambda: stand_in_present(serial), 60, "the guest to see its NIC again")


def test_a_killed_command_is_rolled_back_by_the_source_listener(stand_in_hosts,
                                                                 linux_guest_image):
    """``vfmigrate migrate`` killed with SIGKILL after the unplug, its p2p migration still
    running in libvirtd; then the admin aborts that job (``virsh domjobabort``).

    While the migration job runs, the source's listener leaves the guest alone (a
    migration owns it).  Once no job runs and the command is gone, it plugs the NIC
    back and restores the metadata from the lease.  Old code: nothing on the source
    ever plugged it back (the guest stayed without its NIC, ``replug="on-arrival"``)."""
    a, b = stand_in_hosts
    name, serial = stand_in_guest(stand_in_hosts.testbed, a, linux_guest_image)
    process = migrate_until_under_way(a, b, name)
    process.kill()
    process.communicate(timeout=30)
    time.sleep(3)
    assert device_gone(a, name), "the listener plugged back while the migration ran"
    a.host.virsh("domjobabort", name)
    wait_until(lambda: device_back(a, name), 30, "the source's listener to plug the NIC back",
               a.listener_log)
    live = a.host.virsh("dumpxml", name).stdout
    assert "replug=" not in live and "vfmigrate-migration" not in live
    assert a.host.domain_state(name) == "running"
    assert a.claim_summary() == [(name, str(a.vfs[1]), "active")]
    attached = [e["MESSAGE"] for e in a.journal(VFMIGRATE_ACTION="attached")]
    assert any("plugged back in: the vfmigrate migrate that unplugged it is gone" in m
               for m in attached), attached
    wait_until(lambda: stand_in_present(serial), 60, "the guest to see its NIC again")


def test_an_unplug_that_completes_after_the_timeout_is_plugged_back(stand_in_hosts,
                                                                     linux_guest_image):
    """S2: the guest lets go of the VF only after ``--unplug-timeout`` (here 0 s: the
    tiny guest takes ~0.1 s).  The command rolls back while the device is still there;
    the guest's late unplug then reaches the source's listener as DEVICE_REMOVED.

    Old code: the metadata was restored without ``replug`` before the late removal, so
    the listener released the claim (and reset the VF) and nothing plugged the NIC
    back: the guest stayed without it."""
    a, b = stand_in_hosts
    name, serial = stand_in_guest(stand_in_hosts.testbed, a, linux_guest_image)
    result = a.vfmigrate("migrate", name, b.host.uri, "--p2p", "--unplug-timeout", "0",
                         check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "did not unplug" in result.stderr
    wait_until(lambda: a.journal(VFMIGRATE_ACTION="attached"), 30,
               "the listener to plug back the late-unplugged NIC", a.listener_log)
    wait_until(lambda: device_back(a, name), 30, "the NIC to be back")
    live = a.host.virsh("dumpxml", name).stdout
    assert "replug=" not in live and "vfmigrate-migration" not in live
    assert a.claim_summary() == [(name, str(a.vfs[1]), "active")]
    assert not [e for e in a.journal() if e.get("MESSAGE_ID") == Event.RESET.message_id]
    wait_until(lambda: stand_in_present(serial), 60, "the guest to see its NIC again")


def test_a_guest_that_arrives_paused_counts_as_arrived():
    """S3: ``virsh migrate --live --suspend --persistent``: the destination sees
    STARTED/MIGRATED then SUSPENDED/PAUSED (seen here; no RESUMED/MIGRATED and no
    JOB_COMPLETED on the destination in libvirt 9.0).

    Old code handled only RESUMED/MIGRATED: the saved definition kept naming the
    source's VF until the listener restarted.  Also tried: JOB_COMPLETED on the
    destination (never emitted there; jobStats on the destination during an incoming
    migration fails with "migration statistics are available only on the source
    host", which the listener reads as a migration still running); post-copy
    (``--postcopy`` then ``virsh migrate-postcopy`` on the tiny Linux guest at 1 MiB/s):
    STARTED/MIGRATED, RESUMED/POSTCOPY, then RESUMED/MIGRATED when it completes, so
    old code handled post-copy already and the new code arrives on that same event."""
    with vf_testbed(2, extra_config=TESTBED) as (a, b):
        a.start_guest("web1", a.vfs[2], persistent=True)
        a.host.migrate("web1", b.host, "--suspend", "--persistent", "--undefinesource")
        assert b.host.domain_state("web1") == "paused"
        assert simulated_vf_of(b.host.virsh("dumpxml", "web1").stdout) == str(b.vfs[0])
        wait_until(lambda: simulated_vf_of(b.host.virsh("dumpxml", "--inactive", "web1")
                                           .stdout) == str(b.vfs[0]), 15,
                   "the destination's saved definition to name its VF", b.listener_log)
        assert b.claim_summary() == [("web1", str(b.vfs[0]), "active")]
        corrected = [e["MESSAGE"] for e in b.journal()
                     if e.get("MESSAGE_ID") == Event.CORRECTED.message_id]
        assert any("saved definition now names VF" in m for m in corrected), corrected


def test_a_saved_definition_the_admin_edits_after_an_arrival_stays_as_edited():
    """Defect 3 on real libvirt: after a ``--persistent`` arrival the listener fixes the
    saved definition once; the admin then moves the VF in it (``virsh edit``) and the
    listener restarts: the edit stays (old code moved it back at every start)."""
    with vf_testbed(2, extra_config=TESTBED) as (a, b):
        a.start_guest("web1", a.vfs[2], persistent=True)
        a.host.migrate("web1", b.host, "--persistent", "--undefinesource")
        wait_until(lambda: simulated_vf_of(b.host.virsh("dumpxml", "--inactive", "web1")
                                           .stdout) == str(b.vfs[0]), 15,
                   "the destination's saved definition to name its VF", b.listener_log)
        saved = b.host.virsh("dumpxml", "--inactive", "web1").stdout
        edited = saved.replace(f"address='{b.vfs[0]}'", f"address='{b.vfs[3]}'").replace(
            f'address="{b.vfs[0]}"', f'address="{b.vfs[3]}"')
        assert edited != saved
        path = b.host.directory / "edited.xml"
        path.write_text(edited)
        b.host.virsh("define", str(path))
        b.stop_listener(signal.SIGTERM)
        b.start_listener()
        assert simulated_vf_of(b.host.virsh("dumpxml", "--inactive", "web1").stdout) \
            == str(b.vfs[3])


def test_an_arrival_while_the_listener_was_down_is_fixed_at_its_start():
    """The other side of defect 3 (a guard, old code passed it too): a guest that
    arrived with ``--persistent`` while the destination's listener was stopped has its
    saved definition fixed when the listener starts: libvirt's state reason says
    ``migrated`` and the saved definition has no record of this host."""
    with vf_testbed(2, extra_config=TESTBED) as (a, b):
        b.stop_listener(signal.SIGTERM)
        a.start_guest("web1", a.vfs[2], persistent=True)
        a.host.migrate("web1", b.host, "--persistent", "--undefinesource")
        assert simulated_vf_of(b.host.virsh("dumpxml", "--inactive", "web1").stdout) \
            == str(a.vfs[2])
        b.start_listener()
        assert simulated_vf_of(b.host.virsh("dumpxml", "--inactive", "web1").stdout) \
            == str(b.vfs[0])
