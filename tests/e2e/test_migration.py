"""Live migration with vfmigrate between real libvirtd hosts (simulated VF pools).

Every migration is a real ``virsh migrate --live`` between two libvirtd in
their own namespaces; guests hold simulated VFs (see vfhosts.py).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from tests.testbed.errors import CommandFailed
from tests.testbed.guests import no_os_guest_xml
from vfmigrate.events import Event

from .vfhosts import installation, simulated_vf_of, vf_testbed, wait_until

MODES = {
    "p2p": dict(p2p=True, options=()),
    "direct": dict(p2p=False, options=()),
    "persistent-undefinesource": dict(p2p=True, options=("--persistent", "--undefinesource")),
}


def migrate(source, destination, guest, mode, **kwargs):
    settings = MODES[mode]
    return source.host.migrate(guest, destination.host, *settings["options"],
                               p2p=settings["p2p"], **kwargs)


def message_ids(host) -> list[str]:
    return [entry.get("MESSAGE_ID") for entry in host.journal()]


@pytest.mark.between_versions
@pytest.mark.parametrize("mode", MODES)
def test_guest_without_vf_migrates_as_before(hosts, mode):
    a, b = hosts
    a.host.create_domain(no_os_guest_xml("plain"), persistent=mode.startswith("persistent"))
    migrate(a, b, "plain", mode)
    assert b.host.domain_state("plain") == "running"
    assert a.host.domain_state("plain") is None
    assert a.claims() == [] and b.claims() == []
    assert Event.REFUSED.message_id not in message_ids(a) + message_ids(b)


@pytest.mark.daemon_layout
@pytest.mark.between_versions
@pytest.mark.parametrize("mode", MODES)
def test_vf_guest_gets_a_vf_of_the_destination(hosts, mode):
    a, b = hosts
    persistent = mode.startswith("persistent")
    a.start_guest("web1", a.vfs[2], persistent=persistent)
    assert a.claim_summary() == [("web1", str(a.vfs[2]), "active")]

    migrate(a, b, "web1", mode)

    assert b.host.domain_state("web1") == "running" and a.host.domain_state("web1") is None
    assert simulated_vf_of(b.host.virsh("dumpxml", "web1").stdout) == str(b.vfs[0])
    assert b.claim_summary() == [("web1", str(b.vfs[0]), "active")]
    wait_until(lambda: a.claims() == [], 15, "the source's claim to be released")
    [released] = [c for c in a.history() if c.domain_name == "web1"]
    assert (released.state, released.reason) == ("released", "stopped: guest stopped")
    wait_until(lambda: Event.RESET.message_id in message_ids(a), 15,
               "the source listener to handle the released VF")
    if persistent:
        wait_until(lambda: simulated_vf_of(b.host.virsh("dumpxml", "--inactive", "web1").stdout)
                   == str(b.vfs[0]), 15, "the destination's saved definition to name its VF")
        assert "web1" not in a.host.domain_names(inactive=True)
    reserved = [e for e in b.journal() if e.get("MESSAGE_ID") == Event.RESERVED.message_id]
    assert [(e["VFMIGRATE_DOMAIN"], e["VFMIGRATE_VF"], e["VFMIGRATE_NETWORK"])
            for e in reserved] == [("web1", str(b.vfs[0]), "physnet1")]
    migrated = [e for e in a.journal() if e.get("MESSAGE_ID") == Event.MIGRATED.message_id]
    assert migrated and migrated[0]["VFMIGRATE_DIRECTION"] == "out"
    assert int(migrated[0]["VFMIGRATE_DOWNTIME_MS"]) >= 0


@pytest.mark.between_versions
def test_no_free_vf_refuses_the_migration_and_the_guest_stays(hosts):
    a, b = hosts
    for index, vf in enumerate(b.vfs):
        b.start_guest(f"local{index}", vf)
    before_b = b.claim_summary()
    a.start_guest("web1", a.vfs[0])

    with pytest.raises(CommandFailed) as refused:
        a.host.migrate("web1", b.host)

    error = refused.value.stderr
    assert "vfmigrate: no free VF in network 'physnet1' on this host " \
           "(4 VFs, 4 claimed or in use)" in error
    assert a.host.domain_state("web1") == "running"
    assert b.host.domain_state("web1") is None
    assert a.claim_summary() == [("web1", str(a.vfs[0]), "active")]
    assert b.claim_summary() == before_b
    refusals = [e for e in b.journal() if e.get("MESSAGE_ID") == Event.REFUSED.message_id]
    assert refusals and refusals[0]["VFMIGRATE_DOMAIN"] == "web1"


def test_two_migrations_race_for_the_last_vf(hosts):
    a, b = hosts
    for index, vf in enumerate(b.vfs[:3]):
        b.start_guest(f"local{index}", vf)
    a.start_guest("first", a.vfs[0])
    a.start_guest("second", a.vfs[1])
    results: dict[str, object] = {}
    start = threading.Barrier(2)

    def race(name: str) -> None:
        start.wait()
        results[name] = a.host.migrate(name, b.host, check=False)

    threads = [threading.Thread(target=race, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    outcomes = {name: result.completed.returncode for name, result in results.items()}
    assert sorted(outcomes.values()) == [0, 1], outcomes
    winner = next(name for name, code in outcomes.items() if code == 0)
    loser = next(name for name, code in outcomes.items() if code != 0)
    assert "no free VF in network 'physnet1'" in results[loser].completed.stderr
    assert b.host.domain_state(winner) == "running" and a.host.domain_state(loser) == "running"
    assert [c.domain_name for c in b.claims()].count(winner) == 1
    assert loser not in [c.domain_name for c in b.claims()]
    assert len({c.vf for c in b.claims()}) == 4
    wait_until(lambda: [c.domain_name for c in a.claims()] == [loser], 15,
               "the winner's source claim to be released")


BEFORE_HOOK = """\
import sys
xml = sys.stdin.read()
if sys.argv[2] == "migrate":
    sys.stdout.write(xml.replace("</name>", "</name><description>before</description>", 1))
"""

AFTER_HOOK = """\
import sys
xml = sys.stdin.read()
if sys.argv[2] == "migrate":
    sys.stdout.write(xml.replace("</description>", " after</description>", 1))
"""


@pytest.mark.daemon_layout
def test_hooks_before_and_after_vfmigrate_keep_working(tmp_path):
    def install_other_hooks(host):
        for name, text in (("00-before", BEFORE_HOOK), ("zz-after", AFTER_HOOK)):
            script = tmp_path / name
            script.write_text(text)
            host.install_hook(name, script, interpreter=sys.executable)

    with vf_testbed(2, extra_hooks=install_other_hooks) as (a, b):
        a.start_guest("web1", a.vfs[3])
        a.host.migrate("web1", b.host)
        live = b.host.virsh("dumpxml", "web1").stdout
        assert "<description>before after</description>" in live
        assert simulated_vf_of(live) == str(b.vfs[0])
        a.start_guest("plain", None)
        a.host.migrate("plain", b.host)   # vfmigrate prints nothing: the chain goes on
        assert "<description>before after</description>" in \
            b.host.virsh("dumpxml", "plain").stdout


def test_status_and_reconcile_commands_on_a_live_host(hosts):
    a, b = hosts
    a.start_guest("web1", a.vfs[1])
    status = a.vfmigrate("status").stdout
    assert f"VF 1   {a.vfs[1]}  active   web1 (" in status
    dry = a.vfmigrate("reconcile", "--dry-run").stdout
    assert dry == "ledger agrees with libvirt and sysfs: nothing to correct\n"
    doctor = a.vfmigrate("doctor", check=False).stdout
    assert "OK   hook: /etc/libvirt/hooks/qemu.d/vfmigrate is installed" in doctor
    assert (f"OK   libvirt: libvirt at qemu:///system is {a.host.flavour.libvirt_version}\n"
            in doctor)
    assert "OK   network physnet1: 4 VFs on 1 PF" in doctor


@pytest.mark.daemon_layout
def test_the_hook_on_the_hosts_is_the_one_under_test(hosts):
    a, _ = hosts
    installed = installation().name == "installed package"
    hook = (a.host.hooks_dir / "qemu.d" / "vfmigrate").read_text().splitlines()
    # the package's program starts Python without site and names its own directory
    repo = Path(__file__).resolve().parents[2]
    assert hook[0] == ("#!/usr/bin/python3 -ISB" if installed else f"#!{sys.executable} -ISB")
    dirs = ["/usr/lib/python3/dist-packages"] if installed else [
        str(repo), "/usr/lib/python3/dist-packages"]
    assert f"sys.path[0:0] = {dirs!r}  # vfmigrate-python-dirs" in hook
    listener = a.listener.args
    if installed:
        assert listener[-1] == "/usr/libexec/vfmigrate/vfmigrate-listener"
    else:
        assert f"sys.path.insert(0, {str(repo)!r})" in listener[-1]
        assert f"runpy.run_path({str(repo / 'listener/vfmigrate-listener')!r}" in listener[-1]
