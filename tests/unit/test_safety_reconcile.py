"""Never harm a running guest (issue 12): reconcile releases and resets only on
positive evidence, resets run outside the ledger lock, and VF selection keeps
away from VFs it must not hand out.

Scenarios are built as they happen on a host: guests as libvirt reports them
(``Guest`` with the live XML bytes), claims made by the real hook (in process
or as the installed executable in a subprocess), a fake sysfs tree, a real
SQLite ledger.  The PF driver is the one stand-in: an rtnetlink object whose
calls can be made to hang, as a slow or wedged driver does (pyroute2 has no
timeout).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from vfmigrate.events import Event
from vfmigrate.ledger import ACTIVE
from vfmigrate.domxml import mentioned_addresses
from vfmigrate.reconcile import Reconciler
from vfmigrate.vfnetlink import VFNetlink
from vfmigrate.virt import Guest

from .conftest import PACKAGE_PARENT
from .domains import guest_uuid, teaming_guest
from .test_reconcile import FakeIPRoute

SOURCE_VF = "0000:5e:02.3"


class HangingIPRoute(FakeIPRoute):
    """A PF whose driver does not answer until ``answer`` is set (or ever)."""

    def __init__(self, calls: list, entered: threading.Event, answer: threading.Event) -> None:
        super().__init__(calls)
        self.entered, self.answer = entered, answer

    def link(self, command: str, **kwargs) -> None:
        self.entered.set()
        self.answer.wait(120)
        super().link(command, **kwargs)


@pytest.fixture
def pf():
    """The hardware stand-in: calls made, and the events that make it hang."""
    class PF:
        calls: list = []
        entered = threading.Event()
        answer = threading.Event()

        def netlink(self, host, hanging: bool = False) -> VFNetlink:
            if hanging:
                return VFNetlink(host.sysfs.root,
                                 lambda: HangingIPRoute(self.calls, self.entered, self.answer))
            return VFNetlink(host.sysfs.root, lambda: FakeIPRoute(self.calls))
    state = PF()
    state.calls = []
    yield state
    state.answer.set()   # let hung worker threads end


def guest(name: str, xml: bytes) -> Guest:
    """A running guest as libvirt's listAllDomains/XMLDesc report it."""
    return Guest(guest_uuid(name), name, True, xml)


def status_json(host) -> dict:
    from vfmigrate.cli import main
    out, err = io.StringIO(), io.StringIO()
    assert main(["vfmigrate", "--config", str(host.config_path), "status", "--json"],
                out, err) == 0, err.getvalue()
    return json.loads(out.getvalue())


def status_text(host) -> str:
    from vfmigrate.cli import main
    out, err = io.StringIO(), io.StringIO()
    assert main(["vfmigrate", "--config", str(host.config_path), "status"], out, err) == 0
    return out.getvalue()


def vf_state(host, address) -> str:
    for network in status_json(host)["networks"]:
        for pf_status in network["pfs"]:
            for vf in pf_status["vfs"]:
                if vf["address"] == str(address):
                    return vf["state"]
    raise AssertionError(f"{address} not in status")


def release_and_leave_pending(host, name: str, vf) -> None:
    """A guest that held ``vf`` stopped: its claim is released, the VF not reset yet."""
    xml = teaming_guest(name, [str(vf)])
    assert host.hook("start", xml, domain=name).code == 0
    assert host.hook("release", xml, domain=name).code == 0


# -- defect 1: a running guest whose XML vfmigrate rejects ------------------

def rejected(xml: bytes, kind: str) -> bytes:
    if kind == "replug done":     # metadata of a newer vfmigrate
        return xml.replace(b"network='physnet1'/>", b"network='physnet1' replug='done'/>", 1)
    if kind == "dashed mac":      # an admin's typo in the metadata
        return xml.replace(b"alias='ua-vf0'", b"mac='52-54-00-12-34-56'", 1)
    if kind == "vlan 5000":
        return xml.replace(b"network='physnet1'/>", b"network='physnet1' vlan='5000'/>", 1)
    if kind == "too large":       # a big <description>: over MAX_XML_BYTES
        return xml.replace(b"<memory", b"<description>" + b"x" * (2 * 1024 * 1024)
                           + b"</description><memory", 1)
    if kind == "unknown address form":   # decimal, double quotes: vfmigrate rejects 'bus'
        return xml.replace(b"bus='0x3b'", b'bus="59 "', 1)
    raise AssertionError(kind)


REJECTED = ("replug done", "dashed mac", "vlan 5000", "too large", "unknown address form")


@pytest.mark.parametrize("kind", REJECTED)
def test_a_running_guest_whose_xml_is_rejected_keeps_its_claims_and_vfs(host, pf, kind):
    """The guest runs with VF a (claimed) and VF b (hot-plugged, no claim yet), and b
    has a pending reset from the guest that had it before.

    Old code: Reconciler.guests_from dropped the guest from the running set; reconcile
    released a ("the guest is not running") and reset a and b (MAC 0, VLAN 0) while
    the guest used them.  Also tried: the same with the guest's XML fixed afterwards
    (the next reconcile adds b's claim, resets nothing)."""
    a, b = host.physnet1_vfs[2], host.physnet1_vfs[3]
    release_and_leave_pending(host, "before", b)
    good = teaming_guest("unreadable", [str(a), str(b)], networks=["physnet1", "physnet1"])
    assert host.hook("start", teaming_guest("unreadable", [str(a)]),
                     domain="unreadable").code == 0
    bad = rejected(good, kind)
    reconciler = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host))
    corrections = reconciler.reconcile([guest("unreadable", bad)])
    [warning] = corrections
    assert warning.event is Event.CONFLICT and warning.domain_name == "unreadable"
    assert warning.detail.startswith("cannot read its XML: domain XML rejected: ")
    assert "its VFs stay claimed" in warning.detail
    assert [(c.domain_name, c.vf, c.state) for c in host.live_claims()] == [
        ("unreadable", a, ACTIVE)]
    assert pf.calls == []
    with host.ledger() as ledger:
        assert [c.vf for c in ledger.pending_resets()] == [b]

    corrections = reconciler.reconcile([guest("unreadable", good)])   # the admin fixed it
    assert [(c.event, c.vf, c.detail) for c in corrections] == [
        (Event.CORRECTED, b, "held without a claim: claim added")]
    assert pf.calls == []


def test_a_stopped_guests_claim_on_a_vf_an_unreadable_guest_names_stays(host, pf):
    """Releasing it would put the VF in the free pool while a running guest may use it."""
    vf = host.physnet1_vfs[4]
    assert host.hook("start", teaming_guest("stale", [str(vf)]), domain="stale").code == 0
    bad = rejected(teaming_guest("unreadable", [str(vf)], networks=["physnet1"]), "vlan 5000")
    reconciler = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host))
    assert [c.event for c in reconciler.reconcile([guest("unreadable", bad)])] == [
        Event.CONFLICT]
    assert [(c.domain_name, c.vf) for c in host.live_claims()] == [("stale", vf)]
    assert pf.calls == []


def test_mentioned_addresses_reads_raw_xml_leniently():
    xml = (b"<domain><devices><hostdev><source><address type='pci' domain='0x0000' "
           b"bus='0x3b' slot='0x01' function='0x2'/></source></hostdev>"
           b'<hostdev><source><address bus="59" slot="1" function="3" type="pci"/></source>'
           b"</hostdev></devices><metadata><v:vf address='0000:AF:00.4'/></metadata>"
           b"<trunc")
    found = {str(address) for address in mentioned_addresses(xml)}
    assert {"0000:3b:01.2", "0000:3b:01.3", "0000:59:01.3", "0000:af:00.4"} <= found


# -- defect 7: resets outside the ledger lock, with a timeout ----------------

def test_a_hanging_reset_does_not_lock_out_hooks_and_the_vf_is_not_handed_out(host, pf):
    """The PF driver hangs in the reset of a released VF.

    Old code: reset_pending held the ledger's write lock during the netlink call: the
    migrate hook failed with "ledger ... stayed locked for 2 s" (exit 5), and so did
    every start, until the listener was killed.  Now the migrate hook claims another
    VF, a start naming the VF being reset is refused, status says ``resetting``; once
    the driver answers the reset completes and the VF is free again."""
    host.write_config(lock_timeout=2)
    vf = host.physnet2_vfs[0]
    release_and_leave_pending(host, "gone", vf)
    result: list = []

    def listener() -> None:   # SQLite wants the thread that opened the connection
        with host.ledger() as ledger:
            reconciler = Reconciler(host.config(), ledger, vf_netlink=pf.netlink(host, True),
                                    reset_timeout=60)
            result.extend(reconciler.reconcile([]))
    worker = threading.Thread(target=listener)
    worker.start()
    try:
        assert pf.entered.wait(30), "the reset never reached the PF"
        migrated = host.hook_process("migrate", teaming_guest("web1", [SOURCE_VF],
                                                              networks=["physnet2"]))
        assert migrated.code == 0, migrated.stderr
        assert [str(c.vf) for c in host.live_claims() if c.domain_name == "web1"] == [
            str(host.physnet2_vfs[1])]
        started = host.hook_process("prepare", teaming_guest("static", [str(vf)]),
                                    domain="static")
        assert started.code == 1
        assert f"VF {vf} named by guest 'static' is being reset by vfmigrate right now" \
            in started.stderr
        assert vf_state(host, vf) == "resetting"
    finally:
        pf.answer.set()
        worker.join(30)
    [done] = result
    assert done.event is Event.RESET and done.domain_name == "gone"
    assert done.detail.startswith("reset on PF 0000:af:00.0 vf 0: MAC 0, VLAN 0")
    assert vf_state(host, vf) == "free"
    reconciler = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host))
    assert reconciler.reconcile([guest("web1", migrated.stdout)]) == []


def test_a_reset_that_times_out_keeps_the_vf_out_of_use_until_a_reset_succeeds(host, pf):
    """Old code waited for the driver for ever (no timeout) with the lock held.  Now:
    the wait ends after reset_timeout, the VF stays out of the free pool, status lists
    it, a later reconcile does not start a second call while the first still hangs,
    and retries once it has ended."""
    vf = host.physnet2_vfs[0]
    release_and_leave_pending(host, "gone", vf)
    others = [str(address) for address in host.physnet2_vfs[1:]]
    assert host.hook("start", teaming_guest("others", others), domain="others").code == 0
    reconciler = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host, True),
                            reset_timeout=0.2)
    [failed] = reconciler.reconcile([guest("others", teaming_guest("others", others))])
    assert failed.event is Event.RESET
    assert failed.detail == ("reset failed: no answer from the PF driver within 0.2 s "
                             "(reset_timeout); the VF stays out of use until a reset succeeds")
    assert vf_state(host, vf) == "reset-failed"
    assert f"VF 0   {vf}  reset-failed" in status_text(host)
    [problem] = status_json(host)["problems"]
    assert problem.startswith(f"VF {vf} (physnet2) is out of use: reset failed: no answer")
    assert f"problem: {problem}\n" in status_text(host)
    refused = host.hook_process("migrate", teaming_guest("web1", [SOURCE_VF],
                                                         networks=["physnet2"]))
    assert refused.code == 1 and "no free VF in network 'physnet2'" in refused.stderr

    running = [guest("others", teaming_guest("others", others))]
    [still] = reconciler.reconcile(running)
    assert "still hangs in the PF driver; the VF stays out of use" in still.detail
    assert vf_state(host, vf) == "reset-failed"

    pf.answer.set()
    for _ in range(200):   # the hung call ends; the next reconcile retries it
        corrections = reconciler.reconcile(running)
        if corrections and corrections[0].detail.startswith("reset on PF"):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"no successful reset: {corrections}")
    assert vf_state(host, vf) == "free"
    assert reconciler.reconcile(running) == []


def test_a_failed_reset_is_retried_and_a_guest_may_start_with_the_vf(host, pf):
    """A reset refused by the driver leaves the VF out of the free pool; a guest that
    names the VF itself at start takes it (it brings its own MAC), which ends the reset
    claim: no later reconcile resets it under the guest.  (Old code: the failed reset
    left the VF "free" in status and in the pool.)"""
    vf = host.physnet1_vfs[6]
    release_and_leave_pending(host, "gone", vf)
    failing = VFNetlink(host.sysfs.root, lambda: FakeIPRoute([], {"mac": 5}))
    [failed] = Reconciler(host.config(), host.ledger(), vf_netlink=failing).reconcile([])
    assert failed.detail.startswith("reset failed: cannot set mac of VF")
    assert vf_state(host, vf) == "reset-failed"
    xml = teaming_guest("static", [str(vf)])
    started = host.hook_process("prepare", xml, domain="static")
    assert started.code == 0, started.stderr
    assert [(c.domain_name, c.vf) for c in host.live_claims()] == [("static", vf)]
    reconciler = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host))
    assert reconciler.reconcile([guest("static", xml)]) == []
    assert pf.calls == []


def test_a_running_guest_reconnecting_with_a_vf_under_a_reset_claim_keeps_it(host, pf):
    """libvirtd restarts; its reconnect hook reports a running guest that holds a VF
    whose reset had failed (the admin hot-plugged it with virsh meanwhile).  The reset
    claim ends, the guest's claim is added, and no reconcile resets the VF after."""
    vf = host.physnet1_vfs[6]
    release_and_leave_pending(host, "gone", vf)
    failing = VFNetlink(host.sysfs.root, lambda: FakeIPRoute([], {"mac": 5}))
    Reconciler(host.config(), host.ledger(), vf_netlink=failing).reconcile([])
    xml = teaming_guest("hotplugged", [str(vf)])
    result = host.hook_process("reconnect", xml, domain="hotplugged")
    assert result.code == 0, result.stderr
    assert [(c.domain_name, c.vf) for c in host.live_claims()] == [("hotplugged", vf)]
    reconciler = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host))
    assert reconciler.reconcile([guest("hotplugged", xml)]) == []
    assert pf.calls == []


def test_reconcile_ends_a_reset_claim_on_a_vf_a_running_guest_holds(host, pf):
    """The same without a reconnect hook: the listener's reconcile sees the guest."""
    vf = host.physnet1_vfs[6]
    release_and_leave_pending(host, "gone", vf)
    failing = VFNetlink(host.sysfs.root, lambda: FakeIPRoute([], {"mac": 5}))
    Reconciler(host.config(), host.ledger(), vf_netlink=failing).reconcile([])
    xml = teaming_guest("hotplugged", [str(vf)])
    reconciler = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host))
    corrections = reconciler.reconcile([guest("hotplugged", xml)])
    assert [(c.event, c.detail) for c in corrections] == [
        (Event.CORRECTED, "no longer waits for a reset (its reset failed): running guest "
                          "'hotplugged' holds this VF"),
        (Event.CORRECTED, "held without a claim: claim added")]
    assert [(c.domain_name, c.vf) for c in host.live_claims()] == [("hotplugged", vf)]
    assert reconciler.reconcile([guest("hotplugged", xml)]) == []
    assert pf.calls == []


DIES_MID_RESET = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from vfmigrate import config
from vfmigrate.ledger import Ledger
from vfmigrate.reconcile import Reconciler
from vfmigrate.vfnetlink import VFNetlink

class Hung:
    def link_lookup(self, ifname):
        return [7]
    def link(self, *args, **kwargs):
        print("hanging", flush=True)
        time.sleep(600)
    def close(self):
        pass

settings = config.load(sys.argv[2])
with Ledger(settings.ledger_path) as ledger:
    Reconciler(settings, ledger, vf_netlink=VFNetlink(settings.sysfs_root, Hung),
               reset_timeout=600).reconcile([])
"""


def test_a_reset_claim_left_by_a_listener_that_died_is_taken_over(host, pf):
    """A listener killed (SIGKILL: watchdog, OOM) in the middle of a reset leaves its
    reset claim.  It keeps the VF out of use while the reset could still be running,
    and is taken over and retried once it is older than reset + lock timeout.  Old
    code had no claim at all: hooks waited on its lock instead."""
    vf = host.physnet1_vfs[5]
    release_and_leave_pending(host, "gone", vf)
    dying = subprocess.Popen([sys.executable, "-c", DIES_MID_RESET, str(PACKAGE_PARENT),
                              str(host.config_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert dying.stdout.readline().strip() == "hanging"
    finally:
        dying.send_signal(signal.SIGKILL)
        dying.wait()
    assert vf_state(host, vf) == "resetting"
    now = time.time()
    fresh = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host),
                       clock=lambda: now)
    assert fresh.reconcile([]) == []      # it could still be running: left alone
    assert pf.calls == []
    later = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host),
                       clock=lambda: now + 3600)
    [done] = later.reconcile([])
    assert done.detail.startswith("reset on PF 0000:3b:00.0 vf 5: MAC 0")
    assert vf_state(host, vf) == "free"


# -- S1: a guest starting while reconcile runs ------------------------------

def test_a_claim_made_after_the_guest_list_was_taken_is_not_released(host, pf):
    """At boot the listener lists the running guests; an autostart guest's prepare hook
    then claims its VF before reconcile reads the claims.

    Old code (the guests passed as a list taken before the claim): the new claim was
    released ("the guest is not running") and the VF reset while the guest started.
    Now the caller passes the listing as a function (or a snapshot taken before
    listing): only claims older than the list are released."""
    vf = host.physnet1_vfs[1]
    xml = teaming_guest("booting", [str(vf)])

    def list_guests():
        listed: list[Guest] = []   # "booting" is not running yet
        assert host.hook_process("prepare", xml, domain="booting").code == 0
        return listed
    reconciler = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host))
    assert reconciler.reconcile(list_guests) == []
    assert [(c.domain_name, c.vf) for c in host.live_claims()] == [("booting", vf)]
    assert pf.calls == []
    # The next reconcile sees it running: nothing to do; once it stopped, released.
    assert reconciler.reconcile(lambda: [guest("booting", xml)]) == []
    assert [c.detail for c in reconciler.reconcile(lambda: [])][0] == "the guest is not running"


def test_a_snapshot_taken_before_listing_guards_the_same_race(host, pf):
    vf = host.physnet1_vfs[1]
    reconciler = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host))
    before = reconciler.claims_before()
    listed: list[Guest] = []
    assert host.hook_process("prepare", teaming_guest("booting", [str(vf)]),
                             domain="booting").code == 0
    assert reconciler.reconcile(listed, claims_before=before) == []
    assert [c.domain_name for c in host.live_claims()] == ["booting"]
    assert pf.calls == []


def test_apply_leaves_a_claim_a_hook_changed_after_the_plan(host, pf):
    """Plan: an incoming claim whose guest never arrived, past the reservation timeout.
    Before apply, the guest's ``started`` hook activates it.  Old code: apply checked
    only that the claim id was live and released the now active claim."""
    host.write_config(reservation_timeout=1)
    xml = teaming_guest("late", [SOURCE_VF], networks=["physnet2"])
    assert host.hook("migrate", xml, domain="late", clock=lambda: 100.0).code == 0
    reconciler = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host))
    plan = reconciler.plan([])
    assert [c.event for c in plan] == [Event.EXPIRED]
    assert host.hook_process("started", xml, domain="late").code == 0
    assert reconciler.apply(plan) == []
    assert [(c.domain_name, c.state) for c in host.live_claims()] == [("late", ACTIVE)]


# -- defect 11: managed='no' needs a VF already bound to vfio-pci ------------

def bind(host, address, driver: str) -> None:
    """What ``echo ADDR > /sys/bus/pci/drivers/DRIVER/bind`` leaves in sysfs."""
    device = (host.sysfs.root / "bus/pci/devices" / str(address)).resolve()
    (device / "driver").unlink()
    os.symlink(os.path.relpath(host.sysfs.root / "bus/pci/drivers" / driver, device),
               device / "driver")


def unmanaged(xml: bytes) -> bytes:
    return xml.replace(b"managed='yes'", b"managed='no'")


def test_an_unmanaged_hostdev_gets_a_vf_bound_to_vfio_pci(host):
    """VFs 0-3 of physnet1 are on vfio-pci; 0 and 1 are taken, 2 and 3 rebound to iavf,
    5 bound to vfio-pci.  Old code gave the managed='no' device VF 2 (now on iavf):
    libvirt does not rebind it and the guest cannot start there.  A managed='yes' device
    still gets the first free VF, as before."""
    vfs = host.physnet1_vfs
    assert host.hook("start", teaming_guest("holder", [str(vfs[0]), str(vfs[1])]),
                     domain="holder").code == 0
    bind(host, vfs[2], "iavf")
    bind(host, vfs[3], "iavf")
    bind(host, vfs[5], "vfio-pci")
    xml = unmanaged(teaming_guest("web1", [SOURCE_VF], networks=["physnet1"], hostdev=True))
    result = host.hook("migrate", xml)
    assert result.code == 0, result.stderr
    assert [str(c.vf) for c in host.live_claims() if c.domain_name == "web1"] == [str(vfs[5])]
    managed = teaming_guest("web2", [SOURCE_VF], networks=["physnet1"], hostdev=True)
    assert host.hook("migrate", managed, domain="web2").code == 0
    assert [str(c.vf) for c in host.live_claims() if c.domain_name == "web2"] == [str(vfs[2])]


def test_an_unmanaged_hostdev_is_refused_when_no_vfio_pci_vf_is_free(host):
    vfs = host.physnet1_vfs
    assert host.hook("start", teaming_guest("holder", [str(v) for v in vfs[:4]]),
                     domain="holder").code == 0
    xml = unmanaged(teaming_guest("web1", [SOURCE_VF], networks=["physnet1"], hostdev=True))
    result = host.hook("migrate", xml)
    assert result.code == 1
    assert result.stderr == (
        "vfmigrate: no free VF bound to vfio-pci in network 'physnet1' on this host for "
        "hostdev ua-vf0 (VF 0000:5e:02.3) of guest 'web1' (managed='no': libvirt will not "
        "bind it); bind free VFs to vfio-pci, or make the device managed='yes'\n")
    assert {c.domain_name for c in host.live_claims()} == {"holder"}


# -- a ledger row reconcile cannot read -------------------------------------

def test_a_live_row_that_cannot_be_read_holds_back_every_reset(host, pf):
    """The row may name any VF, one a guest arriving by migration was promised among
    them: reconcile reports it (once per whole-host run) and resets nothing until it is
    corrected; other corrections go on.  Old code: ValueError out of reconcile (the
    listener's first reconcile failed, ``vfmigrate reconcile`` exited 70)."""
    import sqlite3
    vf = host.physnet1_vfs[5]
    release_and_leave_pending(host, "gone", vf)
    assert host.hook("start", teaming_guest("stale", [str(host.physnet1_vfs[6])]),
                     domain="stale").code == 0
    with sqlite3.connect(host.state_dir / "ledger.sqlite3") as db:
        row = db.execute("INSERT INTO claims (vf, network, domain_uuid, domain_name, state, "
                         "created, updated, reason) VALUES ('0000:3b:01.x', 'physnet1', "
                         "'00000000-0000-4000-8000-000000000001', 'ghost', 'incoming', 1, 1, "
                         "'x')").lastrowid
    db.close()
    reconciler = Reconciler(host.config(), host.ledger(), vf_netlink=pf.netlink(host))
    corrections = reconciler.reconcile([])
    assert [(c.event, c.domain_name, c.detail) for c in corrections] == [
        (Event.CONFLICT, None, f"ledger {host.state_dir / 'ledger.sqlite3'} row {row} cannot "
                               "be read (not a PCI address (DDDD:BB:SS.F): '0000:3b:01.x'); no "
                               "VF is reset and none handed out until it is corrected or "
                               "deleted"),
        (Event.CORRECTED, "stale", "the guest is not running")]
    assert pf.calls == []
    with sqlite3.connect(host.state_dir / "ledger.sqlite3") as db:
        db.execute("DELETE FROM claims WHERE id = ?", (row,))
    db.close()
    assert {c.vf for c in reconciler.reconcile([]) if c.event is Event.RESET} == {
        vf, host.physnet1_vfs[6]}
